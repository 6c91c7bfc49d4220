"""Activation-aware weight scaling (AWQ-style).

Input channels that carry large activations matter more; scaling those weight columns up by s
(and the activations down by s) gives them finer quantization steps. The scale is
s = mean|x|^alpha (normalised), alpha chosen per group of linears sharing an input by a grid
search that minimises the output error on calibration activations:

    || Q(W diag(s)) (x / s) - W x ||^2

1/s is then folded into the operation that produces x (an RMSNorm's weight, or the rows of the
previous linear), so the model keeps its standard structure and every target runs it as is.
"""

from __future__ import annotations

import torch

from ..native import fake_quantizer, scheme_args
from ..native import kernels as _native
from ..schemes import IntWeight

GRID = 20  # alpha in {0, 1/20, ..., 1}
# The search visits the grid coarse to fine: every COARSE-th point, then halving steps around
# the best so far. The error summed over thousands of tokens and every output is smooth and
# single-minimum in alpha, so this finds the grid's minimum in at most 10 evaluations instead
# of 21 (a single minimum lies within one coarse step of the best coarse point, and each
# halving keeps it within the step).
COARSE = 4


def _grid_search(err_at, n: int = GRID, coarse: int = COARSE) -> int:
    """Index in 0..n of the smallest err_at(i) (each evaluated at most once): the points
    0, coarse, 2 coarse, ..., n, then steps coarse/2, coarse/4, ..., 1 around the best; ties
    go to the smaller index, as a full scan's first minimum does."""
    seen: dict[int, float] = {}

    def err(i):
        if i not in seen:
            seen[i] = err_at(i)
        return seen[i]

    best = min(sorted(set(range(0, n + 1, coarse)) | {n}), key=lambda i: (err(i), i))
    step = coarse // 2
    while step:
        best = min((i for i in (best - step, best, best + step) if 0 <= i <= n),
                   key=lambda i: (err(i), i))
        step //= 2
    return best


@torch.no_grad()
def search_scales(weights: list[torch.Tensor], x: torch.Tensor, quantize, act=None,
                  coarse: int = COARSE):
    """weights: [(out_i, in)], x: (tokens, in) calibration inputs, quantize(w) -> deq(w).
    Returns (scales (in,), best alpha, relative error at alpha=0, best relative error).
    coarse=1 scans the whole grid."""
    x = x.float()
    mean_abs = x.abs().mean(0).clamp(min=1e-8)
    ref = [x @ w.float().t() for w in weights]
    norm = sum(float((r ** 2).sum()) for r in ref) or 1.0

    def scales(i):
        s = mean_abs.pow(i / GRID)
        return s / (s.max() * s.min()).sqrt()

    def err_at(i):
        s = scales(i)
        xs = x / s
        if act is not None:
            xs = act.fake_quantize(xs)
        err = 0.0
        for w, r in zip(weights, ref):
            d = torch.addmm(r, xs, quantize(w.float() * s).t(), beta=-1).view(-1)  # out - ref
            err += float(torch.dot(d, d))
        return err / norm

    errors: dict[int, float] = {}

    def recorded(i):
        errors[i] = err_at(i)
        return errors[i]

    best = _grid_search(recorded, GRID, coarse)
    return scales(best), best / GRID, errors[0], errors[best]


CLIP_GRID = 20  # clip ratios 1.0, 0.975, ..., 0.525
CLIP_MIN = 0.5
CLIP_TOKENS = 512  # calibration tokens used by the clipping search
CLIP_ROWS = 1024  # output rows processed at once (bounds the working copies of w)


def clip_ratios() -> list[float]:
    """The clipping search's candidate ratios of a group's max |w|, largest first."""
    return [1.0 - i * (1.0 - CLIP_MIN) / CLIP_GRID for i in range(CLIP_GRID)]


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, scheme, use_native: bool = True) -> torch.Tensor:
    """Per (output row, group): the clipping ratio r of the group's max |w| that minimises the
    group's contribution to the output error on calibration inputs. Returns w clamped to
    +-r max|w| per group; quantizing it gives scales from the clipped range.

    A group's error over the tokens, sum_t (delta . x_t)^2, is delta G delta^T with G the
    group's (g, g) Gram matrix of the inputs: computed once, it replaces a pass over
    every token for every candidate ratio. use_native=False runs the search in torch (the
    C++ search's reference: the same candidates, its error sums in another order)."""
    w = w.detach().float().contiguous()
    out, n = w.shape
    g = scheme.group_for(n)
    fq = fake_quantizer(scheme)  # clamp to the bound, then quantize-dequantize
    ng = n // g
    xs = x[:CLIP_TOKENS].float().reshape(-1, ng, g).transpose(0, 1)  # (groups, t, g)
    gram = xs.transpose(1, 2) @ xs  # (groups, g, g)
    if use_native and _native is not None and isinstance(scheme, IntWeight):
        bounds = torch.empty(out, ng)
        ratios = torch.tensor(clip_ratios(), dtype=torch.float32)
        _native.clip_search(w.numpy(), gram.contiguous().numpy(), ratios.numpy(), g,
                            *scheme_args(scheme), bounds.numpy(), torch.get_num_threads())
        b = bounds.unsqueeze(-1)
        return torch.maximum(torch.minimum(w.reshape(out, ng, g), b), -b).reshape(out, n)
    result = w.clone()
    for r0 in range(0, out, CLIP_ROWS):
        wb = w[r0:r0 + CLIP_ROWS].reshape(-1, ng, g)  # (rows, groups, g)
        amax = wb.abs().amax(-1, keepdim=True)
        best_err = torch.full(wb.shape[:2], float("inf"))
        best_bound = amax  # per group: the clipping bound chosen so far
        for r in clip_ratios():
            bound = amax * r
            deq = fq(wb.reshape(-1, n), bound.reshape(-1, ng)).reshape(wb.shape)
            d = (deq - wb).transpose(0, 1)  # (groups, rows, g)
            err = ((d @ gram) * d).sum(-1).t()  # (rows, groups)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_bound = torch.where(better.unsqueeze(-1), bound, best_bound)
        best = torch.maximum(torch.minimum(wb, best_bound), -best_bound)
        result[r0:r0 + CLIP_ROWS] = best.reshape(-1, n)
    return result
