"""quantize(model, recipe): replace a torch model's linear and embedding layers by quantized
ones, choosing the integer values with the recipe's algorithm.

Works on any torch model: modules are found by name. Algorithms that calibrate (GPTQ, AWQ) run
block by block: the caller names the repeated blocks (e.g. a transformer's decoder layers) and,
for AWQ, which operation feeds which linears inside a block, so scales can be folded there. The
quantized modules compute in float with dequantized weights (and fake-quantized activations for
8da schemes): this is the reference every integer kernel is compared with.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .algorithms.awq import search_clip, search_scales
from .algorithms.gptq import gptq_quantize
from .native import fake_quantizer
from .recipes import QuantConfig, Recipe
from .schemes import DynamicInt8Act, IntWeight, QuantError, QuantizedTensor


# Rows of a weight quantized, or dequantized per matmul, at a time: the widest layer (Llama 3.2's
# 128256-row output layer, 1 GB in fp32) never exists whole in float.
DEQUANT_CHUNK_ROWS = 8192


def linear_by_rows(x: torch.Tensor, rows, n_rows: int, chunk: int) -> torch.Tensor:
    """F.linear(x, W) with W's float rows produced `chunk` at a time by rows(slice) (all at once
    by rows(None) when it has no more), so a large W never exists whole in float."""
    if n_rows <= chunk:
        return F.linear(x, rows(None))
    return torch.cat([F.linear(x, rows(slice(i, i + chunk))) for i in range(0, n_rows, chunk)],
                     dim=-1)


class QuantLinear(nn.Module):
    """A linear held only as its QuantizedTensor. forward dequantizes on the fly, in row chunks,
    so a quantized model costs its integer bytes, not a float copy; `materialize(model)` caches
    the float weights instead (for many small calls: token-by-token decoding)."""

    def __init__(self, qt: QuantizedTensor, act: DynamicInt8Act | None, config: QuantConfig):
        super().__init__()
        self.qt, self.act, self.config = qt, act, config
        self.cached: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        """(out, in) fp32: the dequantized weight."""
        return self.cached if self.cached is not None else self.qt.dequantize()

    @property
    def in_features(self) -> int:
        return self.qt.shape[1]

    @property
    def out_features(self) -> int:
        return self.qt.shape[0]

    def forward(self, x):
        if self.act is not None:
            x = _fake_quantized_act(self.act, x)
        x = x.float()
        if self.cached is not None:
            return F.linear(x, self.cached)
        return linear_by_rows(x, self.qt.dequantize, self.qt.shape[0], DEQUANT_CHUNK_ROWS)


_act_memo = threading.local()


@contextlib.contextmanager
def shared_act_quant():
    """Within the block, linears fed the same (unmodified) input tensor with the same activation
    scheme, as q/k/v and gate/up are, quantize it once and share the result."""
    _act_memo.on, _act_memo.entry = True, None
    try:
        yield
    finally:
        _act_memo.on, _act_memo.entry = False, None


def _fake_quantized_act(act: DynamicInt8Act, x: torch.Tensor) -> torch.Tensor:
    if not getattr(_act_memo, "on", False) or x.is_inference():  # (no version counter)
        return act.fake_quantize(x)
    e = _act_memo.entry
    if e is not None and e[0] is x and e[1] == x._version and e[2] == act:
        return e[3]
    fq = act.fake_quantize(x)
    _act_memo.entry = (x, x._version, act, fq)
    return fq


class QuantEmbedding(nn.Module):
    """An embedding held only as its QuantizedTensor: forward dequantizes the looked-up rows."""

    def __init__(self, qt: QuantizedTensor, config: QuantConfig):
        super().__init__()
        self.qt, self.config = qt, config
        self.cached: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        """(vocab, dim) fp32: the dequantized table."""
        return self.cached if self.cached is not None else self.qt.dequantize()

    def forward(self, ids):
        if self.cached is not None:
            return F.embedding(ids, self.cached)
        return self.qt.dequantize(ids)


def materialize(model: nn.Module, on: bool = True) -> nn.Module:
    """Cache (or drop) the float weight of every quantized module; modules sharing one
    QuantizedTensor (a tied output layer) share one float tensor."""
    done: dict[int, torch.Tensor] = {}
    for m in model.modules():
        if isinstance(m, (QuantLinear, QuantEmbedding)):
            if on and id(m.qt) not in done:
                done[id(m.qt)] = m.cached if m.cached is not None else m.qt.dequantize()
            m.cached = done[id(m.qt)] if on else None
    return model


@dataclass
class QuantReport:
    recipe: str
    modules: dict = field(default_factory=dict)  # name -> {scheme, bytes, bpw, algorithm, ...}
    seconds: float = 0.0
    notes: list = field(default_factory=list)
    auto: dict | None = None  # `auto`'s choices (export/quantize.py)
    cache: dict = field(default_factory=dict)  # from the quantization cache or not (export)

    def totals(self, float_bytes_per_param: float = 2.0, params: dict | None = None) -> dict:
        by_scheme: dict[str, int] = {}
        for m in self.modules.values():
            by_scheme[m["scheme"]] = by_scheme.get(m["scheme"], 0) + m["bytes"]
        q_bytes = sum(by_scheme.values())
        q_params = sum(m["params"] for m in self.modules.values())
        return {"bytes_by_scheme": by_scheme, "quantized_bytes": q_bytes,
                "quantized_params": q_params,
                "bits_per_weight": round(8 * q_bytes / q_params, 4) if q_params else None}


def _set_module(model: nn.Module, name: str, new: nn.Module):
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _rtn(cfg: QuantConfig, w: torch.Tensor, name: str) -> QuantizedTensor:
    """Round to nearest, DEQUANT_CHUNK_ROWS rows at a time (every scheme's scales are per row or
    per group within a row), so the fp32 working copies of a large table stay small."""
    w = w.detach()
    if w.shape[0] <= DEQUANT_CHUNK_ROWS:
        return cfg.weight.quantize_tensor(w.float(), name)
    parts = [cfg.weight.quantize_tensor(w[i:i + DEQUANT_CHUNK_ROWS].float(), name)
             for i in range(0, w.shape[0], DEQUANT_CHUNK_ROWS)]
    zp = None if parts[0].zero_point is None else torch.cat([q.zero_point for q in parts])
    return QuantizedTensor(parts[0].scheme, torch.cat([q.qdata for q in parts]),
                           torch.cat([q.scale for q in parts]), zp, parts[0].group_size,
                           parts[0].bits)


@torch.no_grad()
def quantize(model: nn.Module, recipe: Recipe, calib: torch.Tensor | None = None,
             blocks: nn.ModuleList | None = None, awq_map: list | None = None,
             progress=None) -> QuantReport:
    """Quantize `model` in place. Its float weights may be held in a lower precision (shared with
    a bf16 checkpoint): they are read, never written; quantizing computes in fp32.

    calib: (n, seq) token ids for calibrating algorithms; blocks: the repeated blocks run one at
    a time; awq_map: [(producer name in block, [consumer linear names])], producers being a norm
    (with .weight) or a linear whose output rows feed the consumers.
    """
    t0 = time.perf_counter()
    rep = QuantReport(recipe.name)
    names = dict(model.named_modules())
    targets = {n: recipe.config_for(n) for n, m in names.items()
               if isinstance(m, (nn.Linear, nn.Embedding))}
    targets = {n: c for n, c in targets.items() if c is not None}
    for n, c in targets.items():
        if getattr(names[n], "bias", None) is not None:
            raise QuantError(f"module '{n}': linear layers with a bias are not supported")
    # Tied weights: the embedding's quantization is shared by the layer tied to it.
    tied = {}
    embs = {id(m.weight): n for n, m in names.items() if isinstance(m, nn.Embedding)}
    for n, m in names.items():
        if isinstance(m, nn.Linear) and id(m.weight) in embs:
            tied[n] = embs[id(m.weight)]
    needs_calib = any(c.algorithm != "rtn" for c in targets.values())
    done: dict[str, QuantizedTensor] = {}
    if needs_calib:
        if calib is None or blocks is None:
            raise QuantError(f"recipe '{recipe.name}' uses a calibrating algorithm (GPTQ/AWQ) "
                             "and needs calibration text")
        block_names = _block_prefixes(model, blocks)
        _calibrated(model, blocks, block_names, targets, calib, awq_map or [], done, rep,
                    recipe.calib_inputs == "quantized", progress)
    for n, c in targets.items():
        if n in done or n in tied:
            continue
        done[n] = _rtn(c, names[n].weight, n)
        rep.modules[n] = {"algorithm": "rtn"}
    for n, src in tied.items():
        if n in targets and src in done:
            c = targets[n]
            if c.weight != targets[src].weight:
                rep.notes.append(f"'{n}' is tied to '{src}' and shares its {targets[src].weight.name}"
                                 f" weights (its own rule asked for {c.weight.name})")
            done[n] = done[src]
            rep.modules[n] = {"algorithm": "tied", "tied_to": src}
    for n, qt in done.items():
        c = targets[n]
        m = names[n]
        new = QuantEmbedding(qt, c) if isinstance(m, nn.Embedding) else QuantLinear(qt, c.act, c)
        _set_module(model, n, new)
        info = rep.modules.setdefault(n, {})
        info.update(scheme=c.name, params=qt.qdata.numel(),
                    bytes=0 if info.get("algorithm") == "tied" else qt.nbytes(),
                    bpw=round(qt.bits_per_weight(), 4))
        if info.get("algorithm") == "tied":
            info["params"] = 0
    model.float()  # what stays unquantized (norms, unmatched layers) computes in fp32 too
    rep.seconds = time.perf_counter() - t0
    return rep


def _block_prefixes(model, blocks) -> list[str]:
    ids = {id(b): i for i, b in enumerate(blocks)}
    out = [None] * len(blocks)
    for n, m in model.named_modules():
        if id(m) in ids:
            out[ids[id(m)]] = n
    return out


class _Stop(Exception):
    pass


def _f32(a):
    return a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a


def _calibrated(model, blocks, block_names, targets, calib, awq_map, done, rep, quantized_inputs,
                progress):
    """Run calibration block by block and quantize each block's targets. The next block's
    inputs are the block's float outputs, computed in the pass that gathers its statistics, or
    with quantized_inputs those of the quantized block (a second pass)."""
    # 1. capture the first block's inputs (args/kwargs are shared by all blocks)
    captured = []

    def grab(mod, args, kwargs):
        captured.append((tuple(_f32(a) for a in args), {k: _f32(v) for k, v in kwargs.items()}))
        raise _Stop

    # Embeddings held in bf16 / fp16 hand fp32 rows to the blocks (and so fp32 everything
    # derived from their dtype).
    hooks = [m.register_forward_hook(lambda m, i, o: _f32(o)) for m in model.modules()
             if isinstance(m, nn.Embedding)]
    hooks.append(blocks[0].register_forward_pre_hook(grab, with_kwargs=True))
    try:
        for row in calib:
            try:
                model(row.unsqueeze(0))
            except _Stop:
                pass
    finally:
        for h in hooks:
            h.remove()
    xs = [a[0] for a, _ in captured]
    rest = [(a[1:], k) for a, k in captured]
    for bi, block in enumerate(blocks):
        # The block computes in fp32 on its own copy of its weights (AWQ rescales them in place;
        # the model may share its tensors with a checkpoint held in bf16), one block at a time.
        for p in block.parameters():
            p.data = p.data.float().clone()
        prefix = block_names[bi] + "."
        mine = {n[len(prefix):]: c for n, c in targets.items() if n.startswith(prefix)}
        if not mine:
            xs = [block(x, *a, **k) for x, (a, k) in zip(xs, rest)]
            continue
        outs = None if quantized_inputs else []
        stats = _collect(block, mine, xs, rest, outs)
        # AWQ: scale, fold, and transform the collected Hessians accordingly
        for producer, consumers in awq_map:
            cs = [c for c in consumers if c in mine and "awq" in mine[c].algorithm]
            if not cs or len(cs) != len(consumers):
                continue
            cfg = mine[cs[0]]
            ws = [block.get_submodule(c).weight for c in cs]
            sample = stats[cs[0]]["sample"]
            for c, w in zip(cs, ws):
                if not bool(torch.isfinite(w).all()):
                    raise QuantError(f"tensor '{prefix + c}': contains NaN/Inf values; "
                                     "refusing to quantize")
            s, alpha, e0, e1 = search_scales(ws, sample, fake_quantizer(cfg.weight), cfg.act)
            prod = block.get_submodule(producer)
            if isinstance(prod, nn.Linear):
                prod.weight.div_(s.unsqueeze(1).to(prod.weight.dtype))
            else:
                prod.weight.div_(s.to(prod.weight.dtype))
            scaled: list[tuple[torch.Tensor, torch.Tensor]] = []  # shared H: scaled once
            for c in cs:
                block.get_submodule(c).weight.mul_(s.unsqueeze(0).to(ws[0].dtype))
                st = stats[c]
                h = next((new for old, new in scaled if old is st["h"]), None)
                if h is None:
                    h = st["h"] / s.unsqueeze(0) / s.unsqueeze(1)
                    scaled.append((st["h"], h))
                st["h"] = h
                st["sample"] = st["sample"] / s
                rep.modules[prefix + c] = {"awq_alpha": alpha,
                                           "awq_rel_err": [round(e0, 6), round(e1, 6)]}
        weights = {}
        for n, c in mine.items():
            w = block.get_submodule(n).weight
            if "awq" in c.algorithm and isinstance(c.weight, IntWeight) and c.weight.bits < 8:
                w = search_clip(w, stats[n]["sample"], c.weight)
            weights[n] = w
        qts = {}
        for names in _gptq_groups(mine, stats):
            c = mine[names[0]]
            full = prefix + names[0]
            if len(names) == 1:
                qts[names[0]] = gptq_quantize(weights[names[0]], stats[names[0]]["h"],
                                              c.weight, full)
                continue
            # linears sharing an input (one H): GPTQ is row by row, so one stacked run
            stacked = torch.cat([weights[n].float() for n in names])
            qt = gptq_quantize(stacked, stats[names[0]]["h"], c.weight,
                               " / ".join(prefix + n for n in names))
            r0 = 0
            for n in names:
                r1 = r0 + weights[n].shape[0]
                qts[n] = QuantizedTensor(qt.scheme, qt.qdata[r0:r1].clone(),
                                         qt.scale[r0:r1].clone(),
                                         None if qt.zero_point is None
                                         else qt.zero_point[r0:r1].clone(), qt.group_size,
                                         qt.bits)
                r0 = r1
        for n, c in mine.items():
            full = prefix + n
            qt = qts[n] if n in qts else _rtn(c, weights[n], full)
            done[full] = qt
            rep.modules.setdefault(full, {})["algorithm"] = c.algorithm
            _set_module(block, n, QuantLinear(qt, c.act, c))
        if outs is not None:
            xs = outs
        else:  # the quantized block's outputs, its weights dequantized once for all windows
            materialize(block)
            with shared_act_quant():
                xs = [block(x, *a, **k) for x, (a, k) in zip(xs, rest)]
            materialize(block, on=False)
        if progress:
            progress(bi + 1, len(blocks))


def _gptq_groups(mine, stats) -> list[list[str]]:
    """The GPTQ targets of a block, grouped: linears holding the same H and the same weight
    scheme go together (in block order)."""
    groups: list[list[str]] = []
    for n, c in mine.items():
        if "gptq" not in c.algorithm:
            continue
        for grp in groups:
            if stats[grp[0]]["h"] is stats[n]["h"] and mine[grp[0]].weight == c.weight:
                grp.append(n)
                break
        else:
            groups.append([n])
    return groups


# Column blocks of gram(): about this many columns each.
GRAM_BLOCK = 384


def gram(x: torch.Tensor) -> torch.Tensor:
    """x^T x, computed block row by block row on and above the diagonal and mirrored below it:
    about (nb + 1) / 2nb of the full product's work for nb blocks, each entry still the same dot
    product over the rows of x."""
    n = x.shape[1]
    nb = max(1, round(n / GRAM_BLOCK))
    if nb == 1:
        return x.t() @ x
    b = -(-n // nb)
    h = torch.empty(n, n, dtype=x.dtype)
    for i0 in range(0, n, b):
        i1 = min(n, i0 + b)
        blk = x[:, i0:i1].t() @ x[:, i0:]
        h[i0:i1, i0:] = blk
        h[i1:, i0:i1] = blk[:, i1 - i0:].t()
    return h


# Activations kept per linear for AWQ's search (a random subset of calibration tokens). 512
# instead of 2048 made the 8da4w recipe's export of SmolLM2 22 s faster, and its mean KLD on three
# held-out texts 1.5-3.8 % lower (with float calibration inputs, float32 Hessians).
AWQ_SAMPLE_TOKENS = 512
# Calibration windows stacked into one x^T x product (a longer inner dimension runs nearer the
# machine's peak; the stack costs GRAM_WINDOWS windows of one linear's inputs).
GRAM_WINDOWS = 4


def _collect(block, mine, xs, rest, outs=None):
    """Per target linear: H = sum x x^T (float32) and a sample of its inputs. Linears fed the
    same input tensor (q/k/v, gate/up) share one H: it is computed once, and their entries hold
    the same tensor object. outs: a list to append the block's output per window to (the block
    then runs to its end)."""
    acc = {n: {"h": None, "rows": [], "pending": []} for n in mine}
    owner: dict[str, str] = {}  # linear -> the linear whose accumulator it shares
    seen: list[tuple[str, torch.Tensor]] = []  # inputs of the current call, by identity
    fired: set[str] = set()  # targets whose input the current call has reached
    hooks = []

    def flush(st):
        if st["pending"]:
            xtx = gram(torch.cat(st["pending"]))
            st["pending"].clear()
            if st["h"] is None:
                st["h"] = xtx
            else:
                st["h"] += xtx

    def record(n, x):
        x = x.detach().reshape(-1, x.shape[-1]).float()
        st = acc[n]
        st["pending"].append(x)
        if len(st["pending"]) == GRAM_WINDOWS:
            flush(st)
        st["rows"].append(x[:: max(1, x.shape[0] // 256)])

    for n in mine:
        mod = block.get_submodule(n)

        def hook(mod, args, n=n):
            fired.add(n)
            for first, t in seen:
                if t is args[0]:
                    owner[n] = first
                    break
            else:
                seen.append((n, args[0]))
                record(n, args[0])
            if outs is None and len(fired) == len(mine):  # nothing after this is collected
                raise _Stop

        hooks.append(mod.register_forward_pre_hook(hook))
    try:
        for x, (a, k) in zip(xs, rest):
            seen.clear()
            fired.clear()
            try:
                y = block(x, *a, **k)
                if outs is not None:
                    outs.append(y)
            except _Stop:
                pass
    finally:
        seen.clear()
        for h in hooks:
            h.remove()
    g = torch.Generator().manual_seed(0)
    stats, all_rows = {}, {}
    for n in mine:  # samples drawn per linear, in order, from its input's rows
        src = owner.get(n, n)
        if src not in all_rows:
            all_rows[src] = torch.cat(acc[src].pop("rows"))
            flush(acc[src])
        rows = all_rows[src]
        if rows.shape[0] > AWQ_SAMPLE_TOKENS:
            rows = rows[torch.randperm(rows.shape[0], generator=g)[:AWQ_SAMPLE_TOKENS]]
        stats[n] = {"h": acc[src]["h"], "sample": rows}
    return stats
