"""Weight layouts of the edge kernels (edge/csrc/kernels/kernels.h), built from the canonical
quantized form (integer or fp8 values + one fp16 scale [+ zero point] per group of a row).

Kinds and their stored tensors (all row-major, one row per output feature):

    f32 / f16 / bf16   data (n, k)
    q8                 data int8 (n, k), scale fp16 (n, k/g)                 symmetric int8
    q8u                data uint8 (n, k), scale, zp uint8 (n, k/g)           asymmetric int8
    q4                 data uint8 (n, k/2), scale [, zp uint8 (n, k/g)]      4-bit, u in [0, 15]
    q5                 data uint8 (n, 5k/8), scale [, zp]                    5-bit, u in [0, 31]
    q6                 data uint8 (n, 3k/4), scale [, zp]                    6-bit, u in [0, 63]
    f8                 data uint8 (n, k) e4m3fn bits, scale                  fp8

q4 holds u = q + 8 for symmetric weights (q in [-8, 7], no zero point stored) and u = q for
asymmetric ones (with zero points). 64 values pack into 32 bytes: byte j carries value j in its
low nibble and value j + 32 in its high nibble, so one 32-byte load yields two runs of 32.
q5 / q6 hold u = q + 16 / q + 32 (symmetric) the same way: per run of 64 values, the 32 bytes
of their low nibbles as q4's, then their high bits: q6, 16 bytes, bits 4-5 of value i + 16 c
in bits 2c, 2c + 1 of byte i; q5, 8 bytes, bit 4 of value i + 8 c in bit c of byte i (c, i
from 0). 48 / 40 bytes per 64 values.

Linears whose activations the runtime quantizes to int8 also store `rowsum` float32 (n): the sum
of each row's dequantized weights, which turns the activation zero point into one multiply per
row (y = s_x * (sum_k q_x w - z_x * rowsum)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = {"f32": 0, "f16": 1, "bf16": 2, "q8": 3, "q8u": 4, "q4": 5, "f8": 6, "q5": 7, "q6": 8}
Q4_BLOCK = 64  # values per run of a 4- to 6-bit row (32 bytes of low nibbles + high bits)
LOW_BIT_KINDS = {"q4": 4, "q5": 5, "q6": 6}  # kind -> bits


def low_bit_row_bytes(bits: int, k: int) -> int:
    """Bytes of a packed 4- to 6-bit row of k values: 8 bytes per bit of width per run of 64."""
    return k // Q4_BLOCK * 8 * bits


@dataclass
class Packed:
    """One weight in kernel layout: the arrays to store and how to read them."""

    kind: str
    shape: tuple[int, int]
    group: int  # inputs per scale (k for per channel; k for float kinds)
    data: np.ndarray
    scale: np.ndarray | None = None  # float16
    zp: np.ndarray | None = None  # uint8
    rowsum: np.ndarray | None = None  # float32

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"data": self.data}
        for name in ("scale", "zp", "rowsum"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())


def pack_q4(u: np.ndarray) -> np.ndarray:
    """(n, k) values in [0, 15] -> (n, k/2) bytes in the 64-value block layout."""
    n, k = u.shape
    if k % Q4_BLOCK:
        raise ValueError(f"4-bit rows need a multiple of {Q4_BLOCK} values, got {k}")
    b = u.astype(np.uint8).reshape(n, k // Q4_BLOCK, 2, 32)
    return (b[:, :, 0, :] | (b[:, :, 1, :] << 4)).reshape(n, k // 2)


def unpack_q4(p: np.ndarray) -> np.ndarray:
    """Inverse of pack_q4: (n, k/2) bytes -> (n, k) values in [0, 15]."""
    n, half = p.shape
    b = p.reshape(n, half // 32, 32)
    return np.stack([b & 0x0F, b >> 4], axis=2).reshape(n, half * 2)


def pack_low_bit(u: np.ndarray, bits: int) -> np.ndarray:
    """(n, k) values in [0, 2^bits) -> (n, k * bits / 8) bytes in the run layout (bits 4-6)."""
    if bits == 4:
        return pack_q4(u)
    n, k = u.shape
    if k % Q4_BLOCK:
        raise ValueError(f"{bits}-bit rows need a multiple of {Q4_BLOCK} values, got {k}")
    u = u.astype(np.uint8).reshape(n, k // Q4_BLOCK, Q4_BLOCK)
    lo = pack_q4((u & 0x0F).reshape(n, k)).reshape(n, k // Q4_BLOCK, 32)
    hi = u >> 4
    if bits == 6:  # (n, runs, 4, 16): value i + 16 c -> bits 2c of byte i
        h = hi.reshape(n, k // Q4_BLOCK, 4, 16)
        plane = h[:, :, 0] | (h[:, :, 1] << 2) | (h[:, :, 2] << 4) | (h[:, :, 3] << 6)
    elif bits == 5:  # (n, runs, 8, 8): value i + 8 c -> bit c of byte i
        h = hi.reshape(n, k // Q4_BLOCK, 8, 8)
        plane = np.zeros((n, k // Q4_BLOCK, 8), np.uint8)
        for c in range(8):
            plane |= h[:, :, c] << c
    else:
        raise ValueError(f"no run layout for {bits}-bit values")
    return np.concatenate([lo, plane.astype(np.uint8)], axis=2).reshape(n, -1)


def unpack_low_bit(p: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of pack_low_bit: (n, k * bits / 8) bytes -> (n, k) values in [0, 2^bits)."""
    if bits == 4:
        return unpack_q4(p)
    n = p.shape[0]
    rb = low_bit_row_bytes(bits, Q4_BLOCK)
    runs = p.reshape(n, -1, rb)
    lo = unpack_q4(np.ascontiguousarray(runs[:, :, :32]).reshape(n, -1)).reshape(n, -1, 64)
    plane = runs[:, :, 32:]
    if bits == 6:
        hi = np.stack([(plane >> (2 * c)) & 3 for c in range(4)], axis=2)
    else:
        hi = np.stack([(plane >> c) & 1 for c in range(8)], axis=2)
    return (lo | (hi.reshape(n, -1, 64) << 4)).reshape(n, -1).astype(np.uint8)


def fp8_e4m3_to_f32(bits: np.ndarray) -> np.ndarray:
    """float8 e4m3fn bit patterns -> float32 (NaN for the 0x7f / 0xff pattern)."""
    b = bits.astype(np.int32)
    sign = np.where(b & 0x80, -1.0, 1.0)
    e, m = (b >> 3) & 0xF, b & 0x7
    val = np.where(e == 0, m / 8.0 * 2.0 ** -6, (1 + m / 8.0) * 2.0 ** (e.astype(np.float64) - 7))
    val = np.where((b & 0x7F) == 0x7F, np.nan, val)
    return (sign * val).astype(np.float32)


def dequantize(p: Packed) -> np.ndarray:
    """(n, k) float32: what the kernels compute with (the numpy reference of the layout)."""
    n, k = p.shape
    if p.kind == "f32":
        return p.data.astype(np.float32)
    if p.kind == "f16":
        return p.data.astype(np.float32)
    if p.kind == "bf16":
        return (p.data.astype(np.uint32) << 16).view(np.float32)
    g = p.group
    if p.kind in LOW_BIT_KINDS:
        bits = LOW_BIT_KINDS[p.kind]
        q = unpack_low_bit(p.data, bits).astype(np.float32)
        z = (p.zp.astype(np.float32) if p.zp is not None
             else np.full((n, k // g), float(1 << (bits - 1)), np.float32))
    elif p.kind == "q8":
        q, z = p.data.astype(np.float32), np.zeros((n, k // g), np.float32)
    elif p.kind == "q8u":
        q, z = p.data.astype(np.float32), p.zp.astype(np.float32)
    elif p.kind == "f8":
        q, z = fp8_e4m3_to_f32(p.data), np.zeros((n, k // g), np.float32)
    else:
        raise ValueError(f"unknown kind {p.kind!r}")
    s = p.scale.astype(np.float32)
    q = q.reshape(n, k // g, g) - z[..., None]
    return (q * s[..., None]).reshape(n, k)


def rowsum(p: Packed) -> np.ndarray:
    """Sum of each row's dequantized weights, accumulated in float64."""
    return dequantize(p).astype(np.float64).sum(axis=1).astype(np.float32)


def from_canonical(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None,
                   bits: int, group: int, fp8: bool = False, act_int8: bool = False) -> Packed:
    """Canonical quantized tensor (quant/schemes/base.py, as numpy) -> kernel layout.

    values: (n, k) int8 (symmetric), uint8 (asymmetric) or, for fp8, the e4m3fn bit patterns
    as uint8; scale: (n, k/group) float values that fp16 represents exactly.
    """
    n, k = values.shape
    s16 = scale.astype(np.float16)
    if not np.array_equal(s16.astype(np.float32), scale.astype(np.float32)):
        raise ValueError("scales must be fp16-representable")
    if fp8:
        p = Packed("f8", (n, k), group, values.astype(np.uint8), s16)
    elif bits == 8:
        if zero_point is None:
            p = Packed("q8", (n, k), group, values.astype(np.int8), s16)
        else:
            p = Packed("q8u", (n, k), group, values.astype(np.uint8), s16,
                       zero_point.astype(np.uint8))
    elif f"q{bits}" in LOW_BIT_KINDS:
        if zero_point is None:
            u = values.astype(np.int16) + (1 << (bits - 1))
            zp = None
        else:
            u = values.astype(np.int16)
            zp = zero_point.astype(np.uint8)
        if u.min(initial=0) < 0 or u.max(initial=0) >= 1 << bits:
            raise ValueError(f"{bits}-bit values out of range")
        p = Packed(f"q{bits}", (n, k), group, pack_low_bit(u.astype(np.uint8), bits), s16, zp)
    else:
        raise ValueError(f"unsupported bit width {bits}")
    if act_int8:
        if p.kind == "f8":
            raise ValueError("int8 activations need integer weights")
        p.rowsum = rowsum(p)
    return p


def from_float(w: np.ndarray, kind: str) -> Packed:
    """An unquantized weight stored as f32, f16 or bf16."""
    n, k = w.shape
    if kind == "f32":
        data = np.ascontiguousarray(w, dtype=np.float32)
    elif kind == "f16":
        data = np.ascontiguousarray(w, dtype=np.float16)
    elif kind == "bf16":
        f = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
        # round to nearest even, as torch's bfloat16 conversion
        data = ((f + 0x7FFF + ((f >> 16) & 1)) >> 16).astype(np.uint16)
    else:
        raise ValueError(f"unknown float kind {kind!r}")
    return Packed(kind, (n, k), k, data)


def view(p: Packed, kernels):
    """The compiled module's WeightView over p's arrays (which it keeps alive)."""
    return kernels.WeightView(KINDS[p.kind], p.shape[0], p.shape[1], p.group, p.data, p.scale,
                              p.zp, p.rowsum)
