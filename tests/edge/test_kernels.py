"""Compute kernels (edge/csrc) against the quantization library's definitions (quant/schemes).

The chain of trust, link by link:
  1. layout: edge/packing.py stores each QuantizedTensor so that both the numpy and the C++
     dequantization reproduce QuantizedTensor.dequantize() bit for bit;
  2. activations: the kernels' per-token int8 quantization is DynamicInt8Act(symmetric=False)
     exactly (values, scale, zero point);
  3. the scalar kernels compute quant/apply.py's QuantLinear forward (fake-quantized
     activations, dequantized weight) to float32 accuracy;
  4. every SIMD kernel set the CPU offers matches the scalar set, with bit-exact decoding of
     every weight kind;
  5. the Python boundary rejects malformed views and inputs with a ValueError naming the
     problem;
  6. those checks fail on a single wrong scale (a few fp16 ulps off, or a neighbour's), on
     stale row sums, and on layout slips.
"""

from __future__ import annotations

import functools
import gc
from dataclasses import replace

import numpy as np
import pytest
import torch

from edge import _kernels as K
from edge import packing
from quant.schemes import DynamicInt8Act, FP8Weight, IntWeight, QuantizedTensor

# Dequantization is exact arithmetic plus one float32 product per element, done identically
# by torch, numpy and the kernels: results must agree to 0 ulp.
LAYOUT_MAX_ULP = 0

# Kernel output vs the float64 reference: max|y - ref| / max_r sum_k |x_k w_rk| over a whole
# output (`normalized_error`; the denominator is the scale of float32 rounding in x W^T).
# llama.cpp checks its SIMD dot products against the reference at RMSE 1e-4
# (tests/test-quantize-fns.cpp) and matmuls across backends at normalized MSE 5e-4
# (tests/test-backend-ops.cpp). Ours is stricter: float32 accumulation over these widths
# reaches 8.5e-7 here, while one group's scale off by one fp16 ulp (2^-10) moves the output by
# about 2.2e-6 (1 group of 12, see section 6); 4e-6 sits between the two, so a scale two ulps
# off in a single group fails.
REF_TOL = 4e-6
# SIMD kernel sets vs the scalar set, same normalization. They differ only in summation order
# (and, for int8 activations, in folding the zero point through the row sums).
SIMD_TOL = 4e-6

# dot / axpy against float64, elementwise worst-case bounds of float32 arithmetic in any
# summation order (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., 3.1):
# |dot - exact| <= gamma_n * sum|a_i b_i|, gamma_n = n u / (1 - n u), and
# |axpy - exact| <= 2 u (|alpha x| + |y|) (one rounded product, one rounded sum).
U = 2.0 ** -24


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


AXPY_REL = gamma(2)

ISAS = K.available_isas()
SIMD_ISAS = [i for i in ISAS if i != "scalar"]
ACT = DynamicInt8Act(symmetric=False)

# Shapes: output rows (not multiples of the 4-row blocks), tokens (decode, and prefill batches
# not multiples of the 3- and 4-token blocks) and input widths per weight family.
ROWS = (1, 3, 37)
TOKENS = (1, 2, 3, 4, 5, 17, 33)
FLOAT_K = (13, 64, 100, 577)  # odd widths and one without a tail after 8-wide steps
PC_K = (13, 100, 576, 577)  # per-channel integer / fp8 weights: groups as wide as the row
Q4_K = (64, 192, 576)


# ------------------------------------------------------------------------------ helpers
def normalized_error(y: np.ndarray, ref: np.ndarray, magnitude: float) -> float:
    """max|y - ref| over an output, relative to its magnitude (see `magnitude`)."""
    return float(np.abs(np.asarray(y, np.float64) - ref).max() / magnitude)


def magnitude(x: np.ndarray, w_deq: np.ndarray, act_int8: bool) -> float:
    """max over outputs of sum_k |x_k w_k|: the scale of float32 rounding errors in y = x W^T.
    (Normalizing by max|ref| instead fails on single outputs that cancel to nearly zero.)"""
    if act_int8:
        x = ACT.fake_quantize(torch.from_numpy(x)).numpy()
    return float((np.abs(x.astype(np.float64)) @ np.abs(w_deq.astype(np.float64)).T).max())


def ulp_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Largest distance in float32 units in the last place (0 for identical values)."""
    def ordered(x):
        i = np.ascontiguousarray(x, np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    return int(np.abs(ordered(a) - ordered(b)).max(initial=0))


def to_packed(qt: QuantizedTensor, act_int8: bool = False) -> packing.Packed:
    """A quant QuantizedTensor in kernel layout (torch -> numpy)."""
    fp8 = qt.qdata.dtype == torch.float8_e4m3fn
    values = qt.qdata.view(torch.uint8).numpy() if fp8 else qt.qdata.numpy()
    zp = None if qt.zero_point is None else qt.zero_point.numpy()
    return packing.from_canonical(values, qt.scale.numpy(), zp, qt.bits, qt.group_size,
                                  fp8=fp8, act_int8=act_int8)


def first_rows(p: packing.Packed, n: int) -> packing.Packed:
    """The weight made of p's first n output rows (row-major, so still contiguous)."""
    def rows(a):
        return None if a is None else np.ascontiguousarray(a[:n])
    return replace(p, shape=(n, p.shape[1]), data=rows(p.data), scale=rows(p.scale),
                   zp=rows(p.zp), rowsum=rows(p.rowsum))


def make_weight(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Gaussian rows of varied magnitude, with outliers, an all-zero group, an all-positive and
    an all-negative row (the cases that move scales and zero points to their extremes)."""
    w = rng.standard_normal((n, k)) * np.exp(rng.normal(0.0, 1.0, (n, 1)))
    w[rng.random((n, k)) < 0.01] *= 20.0
    w[0, :min(32, k // 2)] = 0.0
    if n > 2:
        w[1] = np.abs(w[1])
        w[2] = -np.abs(w[2])
    return w.astype(np.float32)


# Token rows: plain Gaussian, all-negative (activation zero point 127), all-positive (zero
# point -128) and Gaussian with one large outlier.
REGIMES = ("gaussian", "negative", "positive", "outlier")


def make_token(rng: np.random.Generator, k: int, regime: str) -> np.ndarray:
    x = rng.standard_normal(k) * rng.uniform(0.1, 3.0)
    if regime == "negative":
        x = -np.abs(x)
    elif regime == "positive":
        x = np.abs(x)
    elif regime == "outlier":
        x[rng.integers(k)] = 40.0
    return x.astype(np.float32)


def token_batches(rng: np.random.Generator, k: int, counts):
    """(m, k) activation batches for each token count; single tokens once per regime (the
    decode path), longer batches cycling through the regimes."""
    for m in counts:
        if m == 1:
            for regime in REGIMES:
                yield make_token(rng, k, regime)[None]
        else:
            yield np.stack([make_token(rng, k, REGIMES[i % 4]) for i in range(m)])


def reference(x: np.ndarray, w_deq: np.ndarray, act_int8: bool) -> np.ndarray:
    """quant/apply.py QuantLinear.forward in float64: fake-quantized activations (8da
    schemes) times the dequantized weight."""
    if act_int8:
        x = ACT.fake_quantize(torch.from_numpy(x)).numpy()
    return x.astype(np.float64) @ w_deq.astype(np.float64).T


# ------------------------------------------------------------------ 1. layout
LAYOUT_SCHEMES = [
    IntWeight(4, 32), IntWeight(4, 64), IntWeight(4, 128), IntWeight(4, None),
    IntWeight(4, 32, False), IntWeight(4, 64, False), IntWeight(4, 128, False),
    IntWeight(4, None, False),
    IntWeight(8, 32), IntWeight(8, None), IntWeight(8, 32, False), IntWeight(8, None, False),
    FP8Weight(None), FP8Weight(32),
    IntWeight(5, 32), IntWeight(5, 64, False), IntWeight(5, None), IntWeight(6, 32),
    IntWeight(6, 128), IntWeight(6, 32, False), IntWeight(6, None, False),
]
EXPECTED_KIND = {(4, True): "q4", (4, False): "q4", (8, True): "q8", (8, False): "q8u",
                 (5, True): "q5", (5, False): "q5", (6, True): "q6", (6, False): "q6"}
# bytes per row of k values of the packed kinds
ROW_BYTES = {"q4": lambda k: k // 2, "q5": lambda k: k * 5 // 8, "q6": lambda k: k * 3 // 4}


def scheme_id(s) -> str:
    return s.name


@functools.cache
def quantized(scheme, n: int, k: int, seed: int = 0) -> QuantizedTensor:
    w = make_weight(np.random.default_rng(seed), n, k)
    return scheme.quantize_tensor(torch.from_numpy(w), "w")


@pytest.mark.parametrize("scheme", LAYOUT_SCHEMES, ids=scheme_id)
def test_layout_dequantizes_to_the_scheme_exactly(scheme):
    qt = quantized(scheme, 7, 384)
    is_int = isinstance(scheme, IntWeight)
    p = to_packed(qt, act_int8=is_int)
    ref = qt.dequantize().numpy()
    n, k = ref.shape
    g = qt.group_size

    assert p.kind == (EXPECTED_KIND[(scheme.bits, scheme.symmetric)] if is_int else "f8")
    assert p.data.shape == (n, ROW_BYTES.get(p.kind, lambda k: k)(k))
    assert p.scale.dtype == np.float16 and p.scale.shape == (n, k // g)
    assert (p.zp is not None) == (qt.zero_point is not None)
    assert ulp_distance(packing.dequantize(p), ref) <= LAYOUT_MAX_ULP
    assert ulp_distance(K.dequantize(packing.view(p, K)), ref) <= LAYOUT_MAX_ULP
    if is_int:
        np.testing.assert_array_equal(
            p.rowsum, ref.astype(np.float64).sum(axis=1).astype(np.float32))


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_float_layout_rounds_as_torch(kind):
    rng = np.random.default_rng(1)
    # magnitudes 1e-8 .. 4e4: fp16 subnormals, underflow to zero, and the top of the range
    w = (rng.standard_normal((5, 96)) * 10.0 ** rng.integers(-8, 5, (5, 96))).astype(np.float32)
    # exact ties of the bf16 rounding (round half to even): mantissa low half 0x8000
    w.view(np.uint32)[0, :16] = (w.view(np.uint32)[0, :16] & 0xFFFF0000) | 0x8000
    dtype = torch.float16 if kind == "f16" else torch.bfloat16
    ref = torch.from_numpy(w).to(dtype).float().numpy()
    p = packing.from_float(w, kind)
    assert ulp_distance(packing.dequantize(p), ref) <= LAYOUT_MAX_ULP
    assert ulp_distance(K.dequantize(packing.view(p, K)), ref) <= LAYOUT_MAX_ULP


@pytest.mark.parametrize("shape", [(1, 64), (3, 128), (5, 576)])
def test_pack_q4_round_trip(shape):
    rng = np.random.default_rng(2)
    u = rng.integers(0, 16, shape, dtype=np.uint8)
    packed = packing.pack_q4(u)
    assert packed.shape == (shape[0], shape[1] // 2) and packed.dtype == np.uint8
    np.testing.assert_array_equal(packing.unpack_q4(packed), u)
    b = rng.integers(0, 256, (shape[0], shape[1] // 2), dtype=np.uint8)
    np.testing.assert_array_equal(packing.pack_q4(packing.unpack_q4(b)), b)


def test_pack_q4_byte_layout():
    # byte j of a 32-byte block: value j in the low nibble, value j + 32 in the high nibble
    u = (np.arange(128) % 16).astype(np.uint8)[None]
    packed = packing.pack_q4(u)[0]
    for blk in range(2):
        for j in range(32):
            byte = packed[blk * 32 + j]
            assert byte & 0x0F == u[0, blk * 64 + j]
            assert byte >> 4 == u[0, blk * 64 + j + 32]


@pytest.mark.parametrize("bits", [5, 6])
def test_pack_low_bit_round_trip_and_byte_layout(bits):
    rng = np.random.default_rng(3)
    u = rng.integers(0, 1 << bits, (3, 192), dtype=np.uint8)
    packed = packing.pack_low_bit(u, bits)
    assert packed.shape == (3, 192 * bits // 8) and packed.dtype == np.uint8
    np.testing.assert_array_equal(packing.unpack_low_bit(packed, bits), u)
    run_bytes = 64 * bits // 8
    for r in range(3):
        for blk in range(3):
            run, vals = packed[r, blk * run_bytes:(blk + 1) * run_bytes], u[r, blk * 64:][:64]
            for j in range(64):  # the documented layout (edge/packing.py), value by value
                lo = run[j % 32] & 0x0F if j < 32 else run[j % 32] >> 4
                if bits == 6:
                    hi = (run[32 + j % 16] >> (2 * (j // 16))) & 3
                else:
                    hi = (run[32 + j % 8] >> (j // 8)) & 1
                assert lo | (hi << 4) == vals[j], (r, blk, j)


def test_pack_q4_rejects_partial_blocks():
    with pytest.raises(ValueError, match="multiple of 64"):
        packing.pack_q4(np.zeros((2, 96), np.uint8))


def finite_patterns(kind: str) -> np.ndarray:
    """Every finite bit pattern of an 8- or 16-bit float format."""
    if kind == "f8":
        b = np.arange(256, dtype=np.uint8)
        return b[(b & 0x7F) != 0x7F]
    b = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    exp_all_ones = (b & 0x7C00) == 0x7C00 if kind == "f16" else (b & 0x7F80) == 0x7F80
    return b[~exp_all_ones]


def torch_decode(kind: str, bits: np.ndarray) -> np.ndarray:
    dtype = {"f8": torch.float8_e4m3fn, "f16": torch.float16, "bf16": torch.bfloat16}[kind]
    t = torch.from_numpy(bits.view(np.int8) if kind == "f8" else bits.view(np.int16))
    return t.view(dtype).float().numpy()


def exhaustive_view(kind: str):
    """A weight holding every finite pattern of `kind` (scale 1 for f8), and their values."""
    bits = finite_patterns(kind)
    k = 64
    bits = np.resize(bits, (-(-bits.size // k), k))  # wraps around to fill the last row
    n = bits.shape[0]
    if kind == "f8":
        p = packing.Packed("f8", (n, k), k, bits, np.ones((n, 1), np.float16))
    elif kind == "f16":
        p = packing.Packed("f16", (n, k), k, bits.view(np.float16))
    else:
        p = packing.Packed("bf16", (n, k), k, bits)
    return p, torch_decode(kind, bits.ravel()).reshape(n, k)


@pytest.mark.parametrize("kind", ["f8", "f16", "bf16"])
def test_every_finite_pattern_decodes_as_torch(kind):
    p, ref = exhaustive_view(kind)
    if kind == "f8":
        assert ulp_distance(packing.fp8_e4m3_to_f32(p.data), ref) <= LAYOUT_MAX_ULP
    assert ulp_distance(packing.dequantize(p), ref) <= LAYOUT_MAX_ULP
    assert ulp_distance(K.dequantize(packing.view(p, K)), ref) <= LAYOUT_MAX_ULP


# ------------------------------------------------------------------ 2. activation quantization
def act_rows():
    rng = np.random.default_rng(3)
    cases = {}
    for k in (1, 7, 576):
        g = rng.standard_normal(k)
        cases[f"gaussian-{k}"] = g
        cases[f"zero-{k}"] = np.zeros(k)
        cases[f"positive-{k}"] = np.abs(g) + 0.01
        cases[f"negative-{k}"] = -np.abs(g) - 0.01
        outl = g.copy()
        outl[k // 2] = 1e4
        cases[f"outlier-{k}"] = outl
        low = g.copy()
        low[0] = -3e3
        cases[f"negative-outlier-{k}"] = low
        cases[f"tiny-{k}"] = g * 1e-9  # (max - min) / 255 near the 1e-10 scale floor
        cases[f"below-floor-{k}"] = g * 1e-13  # scale floored at 1e-10
        cases[f"subnormal-{k}"] = g * 1e-39
        cases[f"huge-{k}"] = g * 1e30
    # x / s lands exactly on .5 (s = 1): round half to even in the values
    cases["value-ties"] = np.array([255.0, 0.5, 1.5, 2.5, 3.5, 100.5, 0.0])
    # -128 - min / s lands exactly on .5 (s = 1, min = -2.5): ties in the zero point
    cases["zero-point-ties"] = np.array([-2.5, 252.5, 0.0, -1.5, 7.5])
    return {name: v.astype(np.float32) for name, v in cases.items()}


ACT_ROWS = act_rows()


@pytest.mark.parametrize("name", list(ACT_ROWS))
def test_quantize_acts_matches_dynamic_int8_act(name):
    x = ACT_ROWS[name][None]
    q, s, z = K.quantize_acts(x)
    scale, zp = ACT.choose_qparams(torch.from_numpy(x))
    q_ref = ACT.quantize(torch.from_numpy(x), scale, zp)
    assert q.dtype == np.int8 and s.dtype == np.float32 and z.dtype == np.int32
    np.testing.assert_array_equal(s, scale[:, 0].numpy())
    np.testing.assert_array_equal(z, zp[:, 0].numpy().astype(np.int32))
    np.testing.assert_array_equal(q, q_ref.numpy().astype(np.int8))


def test_quantize_acts_rows_are_independent():
    rows = [ACT_ROWS[f"{c}-576"] for c in ("gaussian", "zero", "negative", "outlier", "tiny")]
    x = np.stack(rows)
    q, s, z = K.quantize_acts(x)
    for i, r in enumerate(rows):
        qi, si, zi = K.quantize_acts(r[None])
        np.testing.assert_array_equal(q[i], qi[0])
        assert s[i] == si[0] and z[i] == zi[0]


def test_quantize_acts_all_zero_row_is_zero_at_the_floor_scale():
    q, s, z = K.quantize_acts(np.zeros((1, 9), np.float32))
    assert s[0] == np.float32(1e-10)
    np.testing.assert_array_equal(q[0] - z[0], 0)


# ------------------------------------------------------------------ 3. scalar vs quant
def ref_cases():
    """Every layout scheme with float activations; integer ones also with int8 activations
    (the 8da4w / 8da8w recipes)."""
    for scheme in LAYOUT_SCHEMES:
        for act_int8 in (False, True) if isinstance(scheme, IntWeight) else (False,):
            yield pytest.param(scheme, act_int8,
                               id=f"{scheme.name}-{'int8' if act_int8 else 'f32'}-acts")


@pytest.mark.parametrize("scheme,act_int8", list(ref_cases()))
def test_scalar_kernel_computes_quant_linear(scheme, act_int8):
    qt = quantized(scheme, 37, 384)
    full = to_packed(qt, act_int8=act_int8)
    w_deq = qt.dequantize().numpy()
    rng = np.random.default_rng(4)
    for n in ROWS:
        view = packing.view(first_rows(full, n), K)
        for x in token_batches(rng, 384, (1, 2, 5, 17)):
            y = K.matmul(view, x, act_int8=act_int8, isa="scalar")
            err = normalized_error(y, reference(x, w_deq[:n], act_int8),
                                   magnitude(x, w_deq[:n], act_int8))
            assert err <= REF_TOL, f"rows={n} tokens={len(x)}: error {err:.3g}"


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
def test_scalar_kernel_float_weights(kind):
    rng = np.random.default_rng(5)
    for k in FLOAT_K:
        w = make_weight(rng, 37, k)
        p = packing.from_float(w, kind)
        view = packing.view(p, K)
        w_ref = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[kind]
        w_deq = torch.from_numpy(w).to(w_ref).float().numpy()
        for x in token_batches(rng, k, (1, 3, 17)):
            y = K.matmul(view, x, isa="scalar")
            err = normalized_error(y, reference(x, w_deq, False), magnitude(x, w_deq, False))
            assert err <= REF_TOL, f"k={k} tokens={len(x)}: error {err:.3g}"


# ------------------------------------------------------------------ 4. SIMD vs scalar
# label -> (scheme or float kind, input widths): every kind, symmetric and asymmetric, per
# channel and grouped. Group 96 is a multiple of 32 but not of 64, so groups change inside a
# packed 4-bit block; group 16 takes the 8-bit kernels' paths for groups not a multiple of 32.
SIMD_CONFIGS = {
    "f32": ("f32", FLOAT_K),
    "f16": ("f16", FLOAT_K),
    "bf16": ("bf16", FLOAT_K),
    "q8-pc": (IntWeight(8, None), PC_K),
    "q8-g32": (IntWeight(8, 32), Q4_K),
    "q8-g16": (IntWeight(8, 16), Q4_K),
    "q8u-pc": (IntWeight(8, None, False), PC_K),
    "q8u-g32": (IntWeight(8, 32, False), Q4_K),
    "q4-sym-g32": (IntWeight(4, 32), Q4_K),
    "q4-sym-g64": (IntWeight(4, 64), Q4_K),
    "q4-sym-g96": (IntWeight(4, 96), (192, 576)),
    "q4-sym-pc": (IntWeight(4, None), Q4_K),
    "q4-asym-g32": (IntWeight(4, 32, False), Q4_K),
    "q4-asym-g64": (IntWeight(4, 64, False), Q4_K),
    "q4-asym-g96": (IntWeight(4, 96, False), (192, 576)),
    "q4-asym-pc": (IntWeight(4, None, False), Q4_K),
    "f8-pc": (FP8Weight(None), PC_K),
    "f8-g32": (FP8Weight(32), Q4_K),
    "q5-sym-g32": (IntWeight(5, 32), Q4_K),
    "q5-asym-g96": (IntWeight(5, 96, False), (192, 576)),
    "q6-sym-g32": (IntWeight(6, 32), Q4_K),
    "q6-sym-g64": (IntWeight(6, 64), Q4_K),
    "q6-asym-g32": (IntWeight(6, 32, False), Q4_K),
    "q6-sym-pc": (IntWeight(6, None), Q4_K),
}


@functools.cache
def simd_weight(config: str, k: int) -> packing.Packed:
    """37 output rows of the config at width k (views of 1 and 3 rows are its first rows)."""
    how, _ = SIMD_CONFIGS[config]
    w = make_weight(np.random.default_rng(6), max(ROWS), k)
    if isinstance(how, str):
        return packing.from_float(w, how)
    qt = how.quantize_tensor(torch.from_numpy(w), "w")
    return to_packed(qt, act_int8=isinstance(how, IntWeight))


def simd_cases():
    for config, (how, widths) in SIMD_CONFIGS.items():
        acts = [False, True] if isinstance(how, IntWeight) else [False]
        for k in widths:
            for act_int8 in acts:
                yield pytest.param(config, k, act_int8,
                                   id=f"{config}-k{k}-{'int8' if act_int8 else 'f32'}-acts")


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("config,k,act_int8", list(simd_cases()))
def test_simd_matmul_matches_scalar(isa, config, k, act_int8):
    full = simd_weight(config, k)
    w_deq = packing.dequantize(full)
    rng = np.random.default_rng(7)
    for n in ROWS:
        view = packing.view(first_rows(full, n), K)
        for x in token_batches(rng, k, TOKENS):
            y_ref = K.matmul(view, x, act_int8=act_int8, isa="scalar")
            y = K.matmul(view, x, act_int8=act_int8, isa=isa)
            assert y.shape == y_ref.shape == (len(x), n)
            err = normalized_error(y, y_ref, magnitude(x, w_deq[:n], act_int8))
            assert err <= SIMD_TOL, f"rows={n} tokens={len(x)}: error {err:.3g}"


# Steps of up to STEP_MAX_TOKENS tokens (speculative drafts checked in one pass): each token's
# outputs equal its decode outputs bit for bit, for every kernel set and float-activation weight
# kind (edge/csrc/kernels/kernels.h); speculation's greedy tokens equal plain decoding's because
# of it.
STEP_MAX_TOKENS = 8
STEP_CONFIGS = ("f32", "f16", "bf16", "q8-pc", "q8-g32", "q8-g16", "q8u-g32", "q4-sym-g32",
                "q4-asym-g96", "f8-g32")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("config", STEP_CONFIGS)
def test_step_tokens_equal_their_decode_outputs(isa, config):
    _, widths = SIMD_CONFIGS[config]
    rng = np.random.default_rng(8)
    for k in widths:
        view = packing.view(first_rows(simd_weight(config, k), max(ROWS)), K)
        for m in range(2, STEP_MAX_TOKENS + 1):
            x = next(token_batches(rng, k, [m]))
            y = K.matmul(view, x, act_int8=False, isa=isa)
            alone = np.concatenate([K.matmul(view, x[i:i + 1], act_int8=False, isa=isa)
                                    for i in range(m)])
            assert np.array_equal(y.view(np.uint32), alone.view(np.uint32)), \
                f"k={k} tokens={m}: a step's outputs differ from the tokens' decode outputs"
            # and the step still computes the product (scalar reference within SIMD_TOL)
            y_ref = K.matmul(view, x, act_int8=False, isa="scalar")
            err = normalized_error(y, y_ref, magnitude(x, packing.dequantize(
                first_rows(simd_weight(config, k), max(ROWS))), False))
            assert err <= SIMD_TOL, f"k={k} tokens={m}: error {err:.3g}"


# Per-block int8 activations (8da schemes): token counts around the prompt tiles (8 tokens on
# 512-bit vectors, 4 on 256-bit ones, below TILE_MIN_TOKENS the per-row path) and their tails;
# row counts around the 8- and 16-row panels.
BLOCK_ACT = DynamicInt8Act(symmetric=True, group_size=32)
BLOCK_TOKENS = (1, 2, 7, 8, 12, 15, 17, 33)
BLOCK_ROWS = (1, 3, 16, 37)
BLOCK_CONFIGS = [c for c, (how, _) in SIMD_CONFIGS.items()
                 if isinstance(how, IntWeight) and (how.group_size or 0) % 32 == 0
                 and how.group_size is not None]


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("config", BLOCK_CONFIGS)
def test_simd_block_act_matmul_matches_scalar(isa, config):
    _, widths = SIMD_CONFIGS[config]
    if config == "q8-g32":  # 8-bit rows whose width is not a multiple of 64
        widths = (*widths, 96, 160)
    rng = np.random.default_rng(11)
    for k in widths:
        full = simd_weight(config, k)
        w_deq = packing.dequantize(full)
        for n in BLOCK_ROWS:
            view = packing.view(first_rows(full, n), K)
            for m in BLOCK_TOKENS:
                x = rng.standard_normal((m, k)).astype(np.float32)
                x[:, rng.integers(0, k)] *= 40.0  # one outlier channel, as real activations
                y_ref = K.matmul(view, x, act_int8=True, act_blocks=True, isa="scalar")
                y = K.matmul(view, x, act_int8=True, act_blocks=True, isa=isa)
                assert y.shape == y_ref.shape == (m, n)
                xq = BLOCK_ACT.fake_quantize(torch.from_numpy(x)).numpy()
                mag = float((np.abs(xq.astype(np.float64)) @ np.abs(w_deq[:n].astype(np.float64)).T).max())
                err = normalized_error(y, y_ref, mag)
                assert err <= SIMD_TOL, f"k={k} rows={n} tokens={m}: error {err:.3g}"


@pytest.mark.parametrize("isa", ISAS)
def test_block_act_quantization_is_the_definition(isa):
    """Every kernel set quantizes activation blocks exactly as quant/'s DynamicInt8Act (same
    ints, same float32 scales), ties and all-zero blocks included."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((9, 576)).astype(np.float32)
    x[0, :32] = 0.0
    x[1, 32:64] = np.arange(32, dtype=np.float32) * 0.5 - 8.0  # exact .5 ties
    x[2, 100] = 3e4
    q, s, bsum = K.quantize_acts_blocks(x, isa=isa)
    t = torch.from_numpy(x)
    scale, _ = BLOCK_ACT.choose_qparams(t)
    q_ref = BLOCK_ACT.quantize(t, scale, None).reshape(x.shape).to(torch.int8).numpy()
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(s, scale.squeeze(-1).numpy())
    np.testing.assert_array_equal(bsum, q_ref.reshape(9, -1, 32).astype(np.int32).sum(-1))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("config", list(SIMD_CONFIGS))
def test_matmul_decodes_weights_exactly(isa, config):
    """Multiplying by the identity (one-hot tokens) returns the weights as the kernel decoded
    them, with no rounding: every set's dequantization is bit-exact."""
    _, widths = SIMD_CONFIGS[config]
    for k in widths:
        p = first_rows(simd_weight(config, k), 5)
        y = K.matmul(packing.view(p, K), np.eye(k, dtype=np.float32), isa=isa)
        assert ulp_distance(y.T, packing.dequantize(p)) <= LAYOUT_MAX_ULP, f"k={k}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("config", [c for c, (how, _) in SIMD_CONFIGS.items()
                                    if isinstance(how, IntWeight)])
def test_int8_matmul_one_hot_tokens_are_exact(isa, config):
    """Token 255 * e_j quantizes to s = 1, z = -128, q = 127 at j and -128 elsewhere, so the
    integer product holds one term: every set returns fl(scale * 255 * (u - zp)), alone and in
    batches (the single-token decode kernels included)."""
    _, widths = SIMD_CONFIGS[config]
    for k in widths:
        p = first_rows(simd_weight(config, k), 3)
        view = packing.view(p, K)
        q = np.rint(packing.dequantize(replace(p, scale=np.ones_like(p.scale))))  # u - zp
        s = np.repeat(p.scale.astype(np.float32), p.group, axis=1)
        want = (s * (255 * q).astype(np.float32)).T
        x = 255 * np.eye(k, dtype=np.float32)
        y = K.matmul(view, x, act_int8=True, isa=isa)
        assert ulp_distance(y, want) <= LAYOUT_MAX_ULP, f"k={k}"
        for j in range(0, k, 7):
            y = K.matmul(view, x[j:j + 1], act_int8=True, isa=isa)
            assert ulp_distance(y[0], want[j]) <= LAYOUT_MAX_ULP, f"k={k} input {j}"


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("kind", ["f8", "f16", "bf16"])
def test_simd_decodes_every_finite_pattern(isa, kind):
    p, ref = exhaustive_view(kind)
    y = K.matmul(packing.view(p, K), np.eye(p.shape[1], dtype=np.float32), isa=isa)
    assert ulp_distance(y.T, ref) <= LAYOUT_MAX_ULP


@pytest.mark.parametrize("isa", ISAS)
def test_dot_and_axpy_within_float32_bounds(isa):
    rng = np.random.default_rng(8)
    for n in range(1, 71):
        a = rng.standard_normal(n).astype(np.float32)
        b = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(np.float32)
        exact = float(np.dot(a.astype(np.float64), b.astype(np.float64)))
        bound = gamma(n) * float(np.abs(a.astype(np.float64) * b).sum())
        d = K.dot(a, b, isa=isa)
        assert abs(d - exact) <= bound, f"dot n={n}: {d} vs {exact}"
        assert abs(d - K.dot(a, b, isa="scalar")) <= 2 * bound, f"dot n={n} vs scalar"

        alpha = np.float32(rng.standard_normal())
        out = K.axpy(float(alpha), a, b, isa=isa)
        exact = b.astype(np.float64) + np.float64(alpha) * a
        bound = AXPY_REL * (np.abs(np.float64(alpha) * a) + np.abs(b.astype(np.float64)))
        assert np.all(np.abs(out - exact) <= bound), f"axpy n={n}"
        assert np.all(np.abs(out - K.axpy(float(alpha), a, b, isa="scalar")) <= 2 * bound)


def test_isa_selection(monkeypatch):
    monkeypatch.delenv("EDGE_ISA", raising=False)
    assert ISAS[0] == "scalar" and K.best_isa() == ISAS[-1]
    view = packing.view(simd_weight("q4-sym-g32", 192), K)
    x = np.random.default_rng(11).standard_normal((3, 192)).astype(np.float32)
    for act_int8 in (False, True):
        np.testing.assert_array_equal(K.matmul(view, x, act_int8=act_int8),
                                      K.matmul(view, x, act_int8=act_int8, isa=K.best_isa()))
    with pytest.raises(ValueError, match="unknown instruction set 'sse9'"):
        K.dot(np.ones(3, np.float32), np.ones(3, np.float32), isa="sse9")


@pytest.mark.parametrize("name", [n for n in ("avx2", "avx512vnni", "neon", "neon-dotprod")
                                  if n not in ISAS])
def test_isa_missing_on_this_cpu_is_rejected(name):
    with pytest.raises(ValueError) as info:
        K.dot(np.ones(3, np.float32), np.ones(3, np.float32), isa=name)
    assert str(info.value) == f"instruction set '{name}' is not available on this CPU"


def test_edge_isa_variable_caps_the_choice(monkeypatch):
    monkeypatch.setenv("EDGE_ISA", "scalar")
    assert K.best_isa() == "scalar"


@pytest.mark.parametrize("value, says", [
    ("avx3", "EDGE_ISA=avx3 is not an instruction set (one of: scalar, avx2, avx512vnni, neon, "
             "neon-dotprod)"),
    ("AVX2", "EDGE_ISA=AVX2 is not an instruction set"),
    ("neon", "EDGE_ISA=neon: this CPU does not run neon (it runs: scalar"),
])
def test_edge_isa_variable_naming_no_set_here_is_an_error(monkeypatch, value, says):
    """A typo must not silently test or measure another kernel set."""
    if value == "neon" and "neon" in K.available_isas():
        pytest.skip("this CPU runs neon")
    monkeypatch.setenv("EDGE_ISA", value)
    with pytest.raises(ValueError) as info:
        K.best_isa()
    assert str(info.value).startswith(says)


@pytest.mark.parametrize("isa", ISAS)
def test_zero_tokens_give_an_empty_output(isa):
    p = simd_weight("q4-sym-g32", 64)
    view = packing.view(p, K)
    for act_int8 in (False, True):
        y = K.matmul(view, np.zeros((0, 64), np.float32), act_int8=act_int8, isa=isa)
        assert y.shape == (0, 37)


def test_view_keeps_its_buffers_alive():
    p = simd_weight("q4-asym-g32", 64)
    x = np.random.default_rng(9).standard_normal((2, 64)).astype(np.float32)
    want = K.matmul(packing.view(p, K), x, act_int8=True, isa="scalar")
    own = replace(p, **{name: a.copy() for name, a in p.arrays().items()})
    view = packing.view(own, K)
    del own  # the view now holds the only references to its arrays
    gc.collect()
    # same-sized allocations, which would reuse the arrays' memory had it been freed
    scribble = [np.full(a.shape, 0xFF, a.dtype) for a in p.arrays().values()]
    np.testing.assert_array_equal(K.matmul(view, x, act_int8=True, isa="scalar"), want)
    del scribble


# ------------------------------------------------------------------ 5. errors at the boundary
def q8_arrays(n=2, k=64, g=32):
    return (np.zeros((n, k), np.int8), np.ones((n, k // g), np.float16),
            np.zeros((n, k // g), np.uint8), np.zeros(n, np.float32))


BAD_VIEWS = {
    "data-too-small": (lambda: K.WeightView(K.W_F32, 2, 8, 8, np.zeros((2, 7), np.float32)),
                       "weight data: 56 bytes, expected 64"),
    "data-wrong-dtype-size": (lambda: K.WeightView(K.W_F16, 2, 8, 8,
                                                   np.zeros((2, 8), np.float16)[:, :4].copy()),
                              "weight data: 16 bytes, expected 32"),
    "data-wrong-dtype": (lambda: K.WeightView(K.W_F16, 2, 8, 8, np.zeros((2, 4), np.float32)),
                         "weight data: element type 'f', expected 'e'"),
    "q4-data-unpacked": (lambda: K.WeightView(K.W_Q4, 2, 64, 32, np.zeros((2, 64), np.uint8),
                                              np.ones((2, 2), np.float16)),
                         "weight data: 128 bytes, expected 64"),
    "scales-float32": (lambda: K.WeightView(K.W_Q8, 2, 64, 32, q8_arrays()[0],
                                            np.ones((2, 1), np.float32)),
                       "scales: element type 'f', expected 'e'"),
    "scales-per-channel-for-groups": (lambda: K.WeightView(K.W_Q8, 2, 64, 32, q8_arrays()[0],
                                                           np.ones((2, 1), np.float16)),
                                      "scales: 4 bytes, expected 8"),
    "zero-points-short": (lambda: K.WeightView(K.W_Q8U, 2, 64, 32, q8_arrays()[0].view(np.uint8),
                                               q8_arrays()[1], np.zeros(3, np.uint8)),
                          "zero points: 3 bytes, expected 4"),
    "row-sums-float64": (lambda: K.WeightView(K.W_Q8, 2, 64, 32, *q8_arrays()[:2], None,
                                              np.zeros(1, np.float64)),
                         "row sums: element type 'd', expected 'f'"),
    "data-not-contiguous": (lambda: K.WeightView(K.W_F32, 2, 8, 8,
                                                 np.zeros((8, 2), np.float32).T),
                            "weight data: buffer is not contiguous"),
    "group-not-dividing": (lambda: K.WeightView(K.W_Q8, 2, 64, 24, *q8_arrays()[:2]),
                           "group size 24 does not divide 64"),
    "group-zero": (lambda: K.WeightView(K.W_Q8, 2, 64, 0, *q8_arrays()[:2]),
                   "group size 0 does not divide 64"),
    "q4-partial-block": (lambda: K.WeightView(K.W_Q4, 2, 96, 32, np.zeros((2, 48), np.uint8),
                                              np.ones((2, 3), np.float16)),
                         "4- to 6-bit rows need a multiple of 64 inputs"),
    "q4-group-16": (lambda: K.WeightView(K.W_Q4, 2, 64, 16, np.zeros((2, 32), np.uint8),
                                         np.ones((2, 4), np.float16)),
                    "4- to 6-bit groups must be multiples of 32"),
    "q8-without-scales": (lambda: K.WeightView(K.W_Q8, 2, 64, 32, q8_arrays()[0]),
                          "quantized weight without scales"),
    "f8-without-scales": (lambda: K.WeightView(K.W_F8, 2, 64, 64, np.zeros((2, 64), np.uint8)),
                          "quantized weight without scales"),
    "q8u-without-zero-points": (lambda: K.WeightView(K.W_Q8U, 2, 64, 32,
                                                     q8_arrays()[0].view(np.uint8), q8_arrays()[1]),
                                "asymmetric 8-bit weight without zero points"),
    "unknown-kind": (lambda: K.WeightView(9, 2, 8, 8, np.zeros((2, 8), np.float32)),
                     "unknown weight kind 9"),
    "empty": (lambda: K.WeightView(K.W_F32, 0, 8, 8, np.zeros((0, 8), np.float32)),
              "weight shape must be positive"),
}


@pytest.mark.parametrize("case", list(BAD_VIEWS))
def test_malformed_view_is_rejected(case):
    build, message = BAD_VIEWS[case]
    with pytest.raises(ValueError) as info:
        build()
    assert str(info.value) == message


def f16_view(rowsum=False):
    return K.WeightView(K.W_F16, 3, 64, 64, np.zeros((3, 64), np.float16),
                        rowsum=np.zeros(3, np.float32) if rowsum else None)


BAD_CALLS = {
    "int8-acts-on-f16": (lambda: K.matmul(f16_view(), np.ones((1, 64), np.float32),
                                          act_int8=True),
                         "int8 activations need integer weights"),
    "int8-acts-on-f16-with-row-sums": (lambda: K.matmul(f16_view(True),
                                                        np.ones((1, 64), np.float32),
                                                        act_int8=True),
                                       "int8 activations need integer weights"),
    "int8-acts-on-f8": (lambda: K.matmul(K.WeightView(K.W_F8, 3, 64, 64,
                                                      np.zeros((3, 64), np.uint8),
                                                      np.ones((3, 1), np.float16),
                                                      rowsum=np.zeros(3, np.float32)),
                                         np.ones((1, 64), np.float32), act_int8=True),
                        "int8 activations need integer weights"),
    "int8-acts-without-row-sums": (lambda: K.matmul(K.WeightView(K.W_Q8, 2, 64, 32,
                                                                 *q8_arrays()[:2]),
                                                    np.ones((1, 64), np.float32),
                                                    act_int8=True),
                                   "int8 activations need row sums"),
    "x-too-narrow": (lambda: K.matmul(f16_view(), np.ones((2, 63), np.float32)),
                     "x must be (m, k)"),
    "x-too-wide": (lambda: K.matmul(f16_view(), np.ones((2, 65), np.float32)),
                   "x must be (m, k)"),
    "x-one-dimensional": (lambda: K.matmul(f16_view(), np.ones(64, np.float32)),
                          "x must be (m, k)"),
    "acts-one-dimensional": (lambda: K.quantize_acts(np.ones(64, np.float32)),
                             "expected (m, k) activations"),
    "dot-lengths": (lambda: K.dot(np.ones(3, np.float32), np.ones(4, np.float32)),
                    "length mismatch"),
    "axpy-lengths": (lambda: K.axpy(1.0, np.ones(3, np.float32), np.ones(4, np.float32)),
                     "length mismatch"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_malformed_call_is_rejected(case):
    call, message = BAD_CALLS[case]
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


# ------------------------------------------------------------------ 6. the checks can fail
def with_scale(p: packing.Packed, scale: np.ndarray) -> packing.Packed:
    """p with other scales, and row sums (if any) that match them."""
    out = replace(p, scale=scale)
    return out if p.rowsum is None else replace(out, rowsum=packing.rowsum(out))


def bump_one_scale(p: packing.Packed, row: int, group: int, ulps: int = 1) -> packing.Packed:
    """p with one fp16 scale moved up by `ulps` units in the last place (2^-10 each)."""
    scale = p.scale.copy()
    scale.view(np.uint16)[row, group] += ulps
    return with_scale(p, scale)


def neighbour_scale(p: packing.Packed, row: int, group: int) -> packing.Packed:
    """p with one group reading the next group's scale (an off-by-one group index)."""
    scale = p.scale.copy()
    scale[row, group] = scale[row, group + 1]
    return with_scale(p, scale)


SCALE_MISTAKES = {
    "8-ulps": lambda p: bump_one_scale(p, row=5, group=3, ulps=8),
    "neighbour-scale": lambda p: neighbour_scale(p, row=5, group=3),
}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act_int8", [False, True], ids=["f32-acts", "int8-acts"])
@pytest.mark.parametrize("mistake", list(SCALE_MISTAKES))
def test_wrong_scale_in_one_group_is_caught(mistake, act_int8, isa):
    """One of the 37 x 12 scales of a 4-bit weight changed: the output check fails by a wide
    margin, while the kernel still meets the reference of the weight it was actually given."""
    qt = quantized(IntWeight(4, 32), 37, 384)
    x = np.stack([make_token(np.random.default_rng(10), 384, r) for r in REGIMES])
    ref = reference(x, qt.dequantize().numpy(), act_int8)
    bad = SCALE_MISTAKES[mistake](to_packed(qt, act_int8=act_int8))
    w_bad = packing.dequantize(bad)
    mag = magnitude(x, w_bad, act_int8)
    y_bad = K.matmul(packing.view(bad, K), x, act_int8=act_int8, isa=isa)
    assert normalized_error(y_bad, ref, mag) > 3 * max(REF_TOL, SIMD_TOL)
    assert normalized_error(y_bad, reference(x, w_bad, act_int8), mag) <= REF_TOL


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_stale_row_sums_are_caught(isa):
    """The SIMD int8-activation kernels fold the activation zero point through the stored row
    sums (the scalar kernel does not read them): row sums left over from before a scale change
    make those sets depart from the scalar one."""
    qt = quantized(IntWeight(4, 32), 37, 384)
    p = to_packed(qt, act_int8=True)
    stale = replace(bump_one_scale(p, row=5, group=3, ulps=8), rowsum=p.rowsum)
    x = np.stack([make_token(np.random.default_rng(12), 384, r) for r in REGIMES])
    view = packing.view(stale, K)
    y_ref = K.matmul(view, x, act_int8=True, isa="scalar")
    y = K.matmul(view, x, act_int8=True, isa=isa)
    err = normalized_error(y, y_ref, magnitude(x, packing.dequantize(stale), True))
    assert err > 3 * SIMD_TOL


def test_layout_mistakes_are_caught():
    qt = quantized(IntWeight(4, 32, False), 7, 384)
    p = to_packed(qt)
    ref = qt.dequantize().numpy()
    swapped = (p.data >> 4) | (p.data << 4)  # nibbles in the wrong halves of the block
    zp = p.zp.copy()
    zp[2, 1] += 1
    for bad in (replace(p, data=swapped), replace(p, zp=zp), bump_one_scale(p, 0, 5)):
        assert ulp_distance(packing.dequantize(bad), ref) > LAYOUT_MAX_ULP
        assert ulp_distance(K.dequantize(packing.view(bad, K)), ref) > LAYOUT_MAX_ULP
