"""Scheme references: round trips within named tolerances, degenerate groups, NaN input,
determinism."""

from __future__ import annotations

import math

import pytest
import torch

from quant.schemes import DynamicInt8Act, FP8Weight, IntWeight, KVCacheInt8, QuantError

# llama.cpp's quantization tests use this smooth synthetic data (0.1 + 2 cos(i)) and bound
# sqrt(sum of squared errors) / n at 0.002 for its 4- and 8-bit types (test-quantize-fns).
def smooth(n=4096, offset=0.0):
    i = torch.arange(n, dtype=torch.float64)
    return (0.1 + 2 * torch.cos(i + offset)).float()


LLAMA_CPP_TOTAL_ERROR = 0.002


def llama_cpp_error(a, b):
    return float(((a.double() - b.double()) ** 2).sum().sqrt()) / a.numel()
# Gaussian weights (std 1): relative RMSE bounds from the step size (range/levels/sqrt(12)).
REL_RMSE = {"int8_pc_sym": 0.012, "int8_g32_sym": 0.006, "int4_g32_sym": 0.11,
            "int4_g32_asym": 0.10, "int4_g128_sym": 0.14, "int4_g256_sym": 0.15,
            "int4_g64_sym": 0.12, "fp8_e4m3_pc": 0.04, "fp8_e4m3_g32": 0.035,
            # each extra bit halves the step (and the bound)
            "int5_g32_sym": 0.055, "int6_g32_sym": 0.028, "int6_g64_sym": 0.03}

SCHEMES = [IntWeight(8, None), IntWeight(8, 32), IntWeight(4, 32), IntWeight(4, 32, False),
           IntWeight(4, 64), IntWeight(4, 128), IntWeight(4, 256), FP8Weight(None),
           FP8Weight(32), IntWeight(5, 32), IntWeight(6, 32), IntWeight(6, 64)]


def rmse(a, b):
    return float(((a - b) ** 2).mean().sqrt())


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_round_trip_gaussian(scheme):
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    qt = scheme.quantize_tensor(w, "w")
    assert qt.qdata.shape == w.shape
    err = rmse(qt.dequantize(), w) / float(w.std())
    assert err < REL_RMSE[scheme.name], err


@pytest.mark.parametrize("scheme", [IntWeight(4, 32), IntWeight(4, 32, False), IntWeight(8, 32),
                                    IntWeight(8, None), FP8Weight(None)],
                         ids=lambda s: s.name)
def test_round_trip_smooth_llama_cpp_style(scheme):
    w = smooth().view(8, 512)
    assert llama_cpp_error(scheme.quantize_tensor(w).dequantize(), w) < LLAMA_CPP_TOTAL_ERROR


def test_int_values_stay_in_range_and_scales_positive():
    w = torch.randn(32, 256) * 3
    for s in (IntWeight(4, 32), IntWeight(8, None)):
        qt = s.quantize_tensor(w)
        lo, hi = s.qrange()
        assert int(qt.qdata.min()) >= lo and int(qt.qdata.max()) <= hi
        assert bool((qt.scale > 0).all())
    qt = IntWeight(4, 32, False).quantize_tensor(w)
    assert int(qt.qdata.min()) >= 0 and int(qt.qdata.max()) <= 15
    assert int(qt.zero_point.max()) <= 15


@pytest.mark.parametrize("bits", [4, 5, 6])
def test_low_bit_extreme_is_exact(bits):
    """The largest-magnitude value of a group is reproduced exactly (no clipping): a negative
    one on the grid's lowest level, a positive one on its highest."""
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    w[:, 5] = -4.0  # negative extreme -> -2^(bits-1) * scale
    w[:, 40] = 5.0  # positive extreme -> (2^(bits-1) - 1) * scale
    qt = IntWeight(bits, 32).quantize_tensor(w)
    deq = qt.dequantize()
    assert torch.allclose(deq[:, 5], w[:, 5], rtol=1e-3)
    assert torch.allclose(deq[:, 40], w[:, 40], rtol=1e-3)
    assert bool((qt.qdata[:, 5] == -(1 << (bits - 1))).all())
    assert bool((qt.qdata[:, 40] == (1 << (bits - 1)) - 1).all())


DEGENERATE = {
    "zeros": torch.zeros(4, 256),
    "constant": torch.full((4, 256), 0.37),
    "negative_constant": torch.full((4, 256), -2.5),
    "outlier": torch.cat([torch.full((4, 255), 1e-3), torch.full((4, 1), 1e4)], 1),
    "subnormal": torch.full((4, 256), 1e-42),
    "past_fp8_range": torch.linspace(-1e6, 1e6, 1024).view(4, 256),
    "tiny_and_huge_mix": torch.tensor([1e-30, -1e30] * 512).view(4, 256),
}


@pytest.mark.parametrize("name", DEGENERATE)
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_degenerate_groups_never_nan(scheme, name):
    w = DEGENERATE[name]
    deq = scheme.quantize_tensor(w, name).dequantize()
    assert bool(torch.isfinite(deq).all()), name
    if name == "zeros":
        assert bool((deq == 0).all())
    if name in ("constant", "negative_constant"):
        assert torch.allclose(deq, w, rtol=1e-2)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_nan_input_names_the_tensor(scheme):
    w = torch.randn(4, 64)
    w[2, 7] = math.nan
    with pytest.raises(QuantError, match="model.layers.3.mlp.up_proj"):
        scheme.quantize_tensor(w, "model.layers.3.mlp.up_proj")


def test_group_not_dividing_is_an_error():
    with pytest.raises(QuantError, match="does not divide"):
        IntWeight(4, 32).quantize_tensor(torch.randn(4, 48), "w")


def test_deterministic_bytes():
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(1))
    for s in SCHEMES:
        a, b = s.quantize_tensor(w.clone()), s.quantize_tensor(w.clone())
        assert a.qdata.view(torch.uint8).numpy().tobytes() == \
            b.qdata.view(torch.uint8).numpy().tobytes()
        assert torch.equal(a.scale, b.scale)


def test_fp8_saturates():
    w = torch.tensor([[1e9, -1e9, 1.0, 0.0] * 8])
    qt = FP8Weight(None).quantize_tensor(w)
    assert bool(torch.isfinite(qt.qdata.float()).all())
    assert float(qt.qdata.float().abs().max()) == 448.0


def test_bits_per_weight():
    w = torch.randn(64, 256)
    assert IntWeight(4, 32).quantize_tensor(w).bits_per_weight() == pytest.approx(4.5)
    assert IntWeight(8, 32).quantize_tensor(w).bits_per_weight() == pytest.approx(8.5)
    assert IntWeight(4, 32, False).quantize_tensor(w).bits_per_weight() == pytest.approx(4.625)


@pytest.mark.parametrize("sym", [False, True])
def test_dynamic_activation_quant(sym):
    act = DynamicInt8Act(sym)
    x = torch.randn(5, 300) * torch.tensor([0.1, 1, 10, 100, 0]).view(5, 1)
    y = act.fake_quantize(x)
    assert bool(torch.isfinite(y).all())
    assert bool((y[4] == 0).all())  # all-zero token row
    if sym:
        step = x.abs().amax(1) / 127
    else:
        step = (x.amax(1).clamp(min=0) - x.amin(1).clamp(max=0)) / 255
    assert bool(((y - x).abs().amax(1) <= step * 0.51 + 1e-12).all())


def test_kv_int8_per_token_head():
    kv = KVCacheInt8()
    x = torch.randn(2, 4, 10, 64)
    q, s = kv.quantize(x)
    assert q.dtype == torch.int8 and s.shape == (2, 4, 10, 1)
    assert rmse(kv.dequantize(q, s), x) / float(x.std()) < 0.01


def test_bf16_scales_are_exact_in_bf16_and_fp16():
    """scale_dtype bf16 (XNNPACK's block-wise int4 stores bf16 scales): every scale is a bf16
    value inside fp16's normal range, so fp16 targets hold it exactly too."""
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) * 0.05
    w[0] = 0.0  # an all-zero row: the smallest scale
    w[1, :32] *= 1e-4  # tiny groups
    qt = IntWeight(4, 32, scale_dtype="bf16").quantize_tensor(w)
    s = qt.scale
    assert torch.equal(s.to(torch.bfloat16).float(), s)
    assert torch.equal(s.half().float(), s)
    assert float(s.min()) >= torch.finfo(torch.float16).tiny
    err16 = (IntWeight(4, 32).quantize_tensor(w).dequantize() - w).abs().mean()
    err_bf = (qt.dequantize() - w).abs().mean()
    assert err_bf <= BF16_SCALE_ERROR_RATIO * err16
    with pytest.raises(ValueError, match="scale_dtype"):
        IntWeight(4, 32, scale_dtype="fp8")


# Coarser scales cost little: the mean weight error with bf16 scales stays within this factor
# of fp16 scales' (the rounding step of a 4-bit grid dwarfs a 2^-9 relative scale change).
BF16_SCALE_ERROR_RATIO = 1.01
