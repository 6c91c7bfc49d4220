"""The quantizer's C++ loops (quant/csrc/quant_kernels.cpp) give the torch code's values exactly,
for every integer scheme (symmetric and asymmetric, 4 and 8 bits, fp16 and bf16 scales):
GPTQ's column loop (integers, scales, zero points; groups inside a column block and
per-channel groups reaching past it, widths that are not a multiple of the block, groups whose
extremes tie in magnitude, all-zero groups, dead input channels) and the fake quantization of
the AWQ searches, with and without clipping."""

from __future__ import annotations

import pytest
import torch

from quant import native
from quant.algorithms import gptq
from quant.schemes import IntWeight

pytestmark = pytest.mark.skipif(native.kernels is None, reason="quant._native is not built")

SCHEMES = [IntWeight(4, 32), IntWeight(4, 64, symmetric=False), IntWeight(8, 32),
           IntWeight(8, None), IntWeight(4, None), IntWeight(8, 128, symmetric=False),
           IntWeight(4, 32, scale_dtype="bf16"), IntWeight(4, 128, scale_dtype="bf16"),
           IntWeight(5, 32), IntWeight(6, 64), IntWeight(6, 32, symmetric=False)]


def _problem(out: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * n, n, generator=g) @ (torch.eye(n) + 0.3 * torch.randn(n, n, generator=g))
    x[:, 5] = 0.0  # a dead input channel (its H diagonal is zero)
    w = torch.randn(out, n, generator=g) * torch.rand(1, n, generator=g).add(0.1)
    w[3, :64] = 0.0  # all-zero groups
    w[4, 0], w[4, 1] = 2.5, -2.5  # extremes of equal magnitude, the positive one first
    w[5, 32], w[5, 40] = -3.0, 3.0  # and the negative one first
    return w, (x.double().t() @ x.double())


# (out, in): three whole column blocks, and two and a half (groups up to 64 divide it)
CASES = [(s, 70, 384) for s in SCHEMES] + [(s, 9, 320) for s in SCHEMES
                                           if s.group_size is None or 320 % s.group_size == 0]


@pytest.mark.parametrize("scheme,out,n", CASES,
                         ids=lambda v: f"{v.name}_{v.scale_dtype}" if isinstance(v, IntWeight)
                         else str(v))
def test_native_loop_equals_torch_loop(scheme, out, n):
    w, h = _problem(out, n, seed=out + n)
    a = gptq.gptq_quantize(w, h, scheme, use_native=True)
    b = gptq.gptq_quantize(w, h, scheme, use_native=False)
    assert torch.equal(a.qdata, b.qdata)
    assert torch.equal(a.scale, b.scale)
    assert (a.zero_point is None) == (b.zero_point is None)
    if a.zero_point is not None:
        assert a.zero_point.dtype == b.zero_point.dtype
        assert torch.equal(a.zero_point, b.zero_point)
    # the problem is not degenerate: GPTQ moved some values away from plain rounding
    rtn = scheme.quantize_tensor(w)
    assert not torch.equal(a.qdata, rtn.qdata)


def test_native_loop_refuses_a_copy():
    """The kernel writes in place: an array it would have to convert is refused, not copied."""
    wt = torch.zeros(4, 8, dtype=torch.float64).numpy()
    f = torch.zeros(4, 8).numpy()
    with pytest.raises(TypeError, match="float32"):
        gptq._native.gptq_block(wt, torch.eye(4).numpy(), torch.zeros(8, 4).numpy(), 0, 4, 4,
                                True, 0, 1e-4, 1e4, f, torch.zeros(8, 4).numpy(),
                                torch.zeros(1, 8).numpy(), None, None, None, 1)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: f"{s.name}_{s.scale_dtype}")
def test_native_fake_quantize_equals_reference(scheme):
    w, _ = _problem(70, 384, seed=7)
    g = scheme.group_for(384)
    fast = native.fake_quantizer(scheme)
    assert torch.equal(fast(w), scheme.fake_quantize(w))
    # clipped to 0.6-1.0 of each group's max |w|: clipping makes both extremes of many groups
    # equal in magnitude, the tie case of the 4-bit scales
    grouped = w.reshape(70, 384 // g, g)
    amax = grouped.abs().amax(-1)
    bound = amax * torch.linspace(0.6, 1.0, amax.numel()).reshape(amax.shape)
    clipped = torch.maximum(torch.minimum(grouped, bound.unsqueeze(-1)), -bound.unsqueeze(-1))
    want = scheme.fake_quantize(clipped.reshape(70, 384))
    assert torch.equal(fast(w, bound), want)
    assert not torch.equal(want, scheme.fake_quantize(w))


# Two candidates' errors closer than this (relative, in float64) are a tie that the search's
# float32 sums may order either way.
CLIP_TIE_RTOL = 1e-5


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s.bits == 4],
                         ids=lambda s: f"{s.name}_{s.scale_dtype}")
def test_native_clip_search_picks_the_torch_search_candidate(scheme):
    """The C++ clipping search adds its error sums in another order than torch's batched
    product: every group gets the same bound, or one whose error (float64) ties with it."""
    from quant.algorithms.awq import CLIP_TOKENS, search_clip

    w, _ = _problem(70, 384, seed=11)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(CLIP_TOKENS, 384, generator=gen) * torch.rand(384, generator=gen).add(0.05)
    g = scheme.group_for(384)
    a = search_clip(w, x, scheme, use_native=True)
    b = search_clip(w, x, scheme, use_native=False)
    ba, bb = (t.reshape(70, -1, g).abs().amax(-1) for t in (a, b))
    amax = w.reshape(70, -1, g).abs().amax(-1)
    assert (bb < amax).float().mean() > 0.3  # clipping won in many groups: not degenerate
    xs = x.double().reshape(-1, 384 // g, g).transpose(0, 1)
    gram = xs.transpose(1, 2) @ xs

    def err(bound):
        deq = native.fake_quantizer(scheme)(w, bound).double().reshape(70, -1, g)
        d = (deq - w.double().reshape(70, -1, g)).transpose(0, 1)
        return ((d @ gram) * d).sum(-1).t()

    ea, eb = err(ba), err(bb)
    differ = ba != bb
    assert differ.float().mean() < 0.02
    assert torch.allclose(ea[differ], eb[differ], rtol=CLIP_TIE_RTOL, atol=0)
    # the clipped weights are w held to each group's bound
    assert torch.equal(a, torch.maximum(torch.minimum(w.reshape(70, -1, g), ba.unsqueeze(-1)),
                                        -ba.unsqueeze(-1)).reshape(70, 384))
