"""The canonical quantized form every lowering target packs from.

A `QuantizedTensor` is a weight matrix (out, in) as integer (or fp8) values plus one scale (and
for asymmetric schemes one zero point) per group of `group_size` consecutive input elements of
each output row. Values are stored unpacked (one int8 per element, int4 values in [-8, 7] or
[0, 15]); how they are packed into bytes is the target's business, not the scheme's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edge.errors import EdgeError


class QuantError(EdgeError):
    """Bad input to quantization (NaN weights, groups that do not divide a dimension, ...)."""


@dataclass
class QuantizedTensor:
    scheme: str  # scheme name, e.g. "int4_g32_sym", "int8_pc", "fp8_e4m3_pc"
    qdata: torch.Tensor  # (out, in) int8 (int schemes) or float8_e4m3fn (fp8)
    scale: torch.Tensor  # (out, in // group_size) float32, every value fp16-representable
    zero_point: torch.Tensor | None  # (out, in // group_size) int8 or None (symmetric)
    group_size: int
    bits: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.qdata.shape)

    def dequantize(self, rows=None) -> torch.Tensor:
        """(out, in) float32; `rows` (a slice or a tensor of row indices, any shape) selects
        rows first, so only those are ever materialized in float: rows (..., in)."""
        qd, sc, zp = self.qdata, self.scale, self.zero_point
        if rows is not None:
            qd, sc = qd[rows], sc[rows]
            zp = None if zp is None else zp[rows]
        n = qd.shape[-1]
        q = qd.float().unflatten(-1, (n // self.group_size, self.group_size))
        if zp is not None:
            q = q - zp.float().unsqueeze(-1)
        return (q * sc.unsqueeze(-1)).flatten(-2)

    def nbytes(self) -> int:
        """Storage at the scheme's nominal size: bits per value + fp16 scales / 8-bit zeros."""
        n = self.qdata.numel() * self.bits // 8
        n += self.scale.numel() * 2
        if self.zero_point is not None:
            n += self.zero_point.numel() * (1 if self.bits > 4 else 0.5)
        return int(n)

    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes() / self.qdata.numel()


def grouped(w: torch.Tensor, group_size: int, name: str, check: bool = True) -> torch.Tensor:
    """(out, in) -> (out, in // g, g), with the checks every scheme needs (check=False skips
    the scan for NaN/Inf, for callers that checked the tensor they derive w from)."""
    if w.dim() != 2:
        raise QuantError(f"tensor '{name}': expected a 2-D weight, got shape {list(w.shape)}")
    out, n = w.shape
    if group_size <= 0 or n % group_size:
        raise QuantError(f"tensor '{name}': group size {group_size} does not divide the input "
                         f"dimension {n}; choose a group size that divides it")
    if check and not bool(torch.isfinite(w).all()):
        raise QuantError(f"tensor '{name}': contains NaN/Inf values; refusing to quantize")
    return w.float().reshape(out, n // group_size, group_size)


# The range scales are clamped to before rounding, per scale dtype: fp16's normal range, and for
# bf16 the part of it whose bf16 values are all fp16 values.
SCALE_BOUNDS = {
    "fp16": (torch.finfo(torch.float16).tiny, torch.finfo(torch.float16).max),
    "bf16": (torch.finfo(torch.float16).tiny,
             float(torch.tensor(torch.finfo(torch.float16).max).to(torch.bfloat16).float()) / 2),
}


def fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """Round scales to fp16 (what targets store) and keep them positive and finite: a zero
    scale (all-zero group) becomes the smallest normal fp16 so dequantization gives zeros,
    never NaN."""
    s = scale.clamp(*SCALE_BOUNDS["fp16"])
    return s.to(torch.float16).float()


def bf16_scale(scale: torch.Tensor) -> torch.Tensor:
    """Round scales to bf16 within fp16's normal range: values every target stores exactly (bf16
    for XNNPACK's block-wise int4, fp16 for the rest: a bf16 value in fp16's normal range is an
    fp16 value)."""
    s = scale.clamp(*SCALE_BOUNDS["bf16"])
    return s.to(torch.bfloat16).float()


SCALE_ROUNDING = {"fp16": fp16_scale, "bf16": bf16_scale}
