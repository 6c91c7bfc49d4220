"""Integer weight schemes: int8, int6, int5 and int4, per output channel or groupwise along the input
dimension, symmetric or asymmetric. The readable reference every kernel is tested against.

symmetric:  q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1)
            int8: s = max|w| / 127 (as Q8_0)
            int4: s = max|w| / 8 when the group's largest-magnitude value is negative (it lands
                  on -8, all 16 levels used, as Q4_0), max|w| / 7 otherwise (nothing clipped);
                  int5 / int6 the same with 16 / 15 and 32 / 31
asymmetric: q = clamp(round(w / s) + z, 0, 2^b - 1),  s = (max - min) / (2^b - 1),
            z = round(-min / s)   (min <= 0 <= max, so zero is exact)
Scales are rounded to fp16 (scale_dtype "fp16"), or to bf16 values inside fp16's range
(scale_dtype "bf16": what XNNPACK's block-wise int4 stores, and still exact in fp16 targets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import SCALE_ROUNDING, QuantizedTensor, grouped


@dataclass(frozen=True)
class IntWeight:
    bits: int = 4  # 4, 5, 6 or 8
    group_size: int | None = 32  # None: one group per output row (per channel)
    symmetric: bool = True
    scale_dtype: str = "fp16"  # "fp16" or "bf16" (see the module docstring)

    def __post_init__(self):
        if self.scale_dtype not in SCALE_ROUNDING:
            raise ValueError(f"IntWeight.scale_dtype must be one of {', '.join(SCALE_ROUNDING)}, "
                             f"got {self.scale_dtype!r}")
        if self.bits not in (4, 5, 6, 8):
            raise ValueError(f"IntWeight.bits must be 4, 5, 6 or 8, got {self.bits}")
        if self.group_size is not None and self.group_size <= 0:
            raise ValueError(f"IntWeight.group_size must be positive, got {self.group_size}")

    @property
    def name(self) -> str:
        g = "pc" if self.group_size is None else f"g{self.group_size}"
        return f"int{self.bits}_{g}_{'sym' if self.symmetric else 'asym'}"

    def qrange(self) -> tuple[int, int]:
        if self.symmetric:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1

    def group_for(self, in_features: int) -> int:
        return in_features if self.group_size is None else self.group_size

    # -------------------------------------------------------------- reference
    def choose_qparams(self, w: torch.Tensor, name: str = "weight", check: bool = True):
        """scale (out, groups) float32 > 0 [, zero point (out, groups) uint8]."""
        g = grouped(w, self.group_for(w.shape[1]), name, check)
        qmin, qmax = self.qrange()
        rounded = SCALE_ROUNDING[self.scale_dtype]
        if self.symmetric:
            if self.bits == 8:  # max|w| -> 127, as Q8_0 (an extra level is worth ~nothing)
                return rounded(g.abs().amax(-1) / qmax), None
            # 4- to 6-bit: the group's largest-magnitude value lands exactly on a grid end: on
            # -8 when it is negative (all 16 levels used, as Q4_0 does), on 7 otherwise, so
            # nothing is clipped and no scale is negative.
            # The extreme is the largest value or the smallest, whichever has the larger
            # magnitude; only when both magnitudes are equal does the first one in the group
            # decide (those few groups are looked up).
            hi, lo = g.amax(-1), g.amin(-1)
            extreme = torch.where(hi >= -lo, hi, lo)
            tie = hi == -lo
            if bool(tie.any()):
                tg = g[tie]
                idx = tg.abs().argmax(-1, keepdim=True)
                extreme[tie] = torch.gather(tg, -1, idx).squeeze(-1)
            div = torch.where(extreme < 0, float(-qmin), float(qmax))
            return rounded(extreme.abs() / div), None
        lo = g.amin(-1).clamp(max=0.0)
        hi = g.amax(-1).clamp(min=0.0)
        scale = rounded((hi - lo) / (qmax - qmin))
        zp = torch.clamp(torch.round(-lo / scale), qmin, qmax).to(torch.uint8)
        return scale, zp

    def quantize(self, w: torch.Tensor, scale, zero_point=None, name: str = "weight"):
        """(out, in) -> (out, in) integer values (int8, or uint8 for asymmetric)."""
        g = grouped(w, self.group_for(w.shape[1]), name)
        qmin, qmax = self.qrange()
        q = torch.round(g / scale.unsqueeze(-1))
        if zero_point is not None:
            q = q + zero_point.float().unsqueeze(-1)
        q = torch.clamp(q, qmin, qmax).reshape(w.shape)
        return q.to(torch.int8 if self.symmetric else torch.uint8)

    def quantize_tensor(self, w: torch.Tensor, name: str = "weight") -> QuantizedTensor:
        scale, zp = self.choose_qparams(w, name)
        q = self.quantize(w, scale, zp, name)
        return QuantizedTensor(self.name, q, scale, zp, self.group_for(w.shape[1]), self.bits)

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        """quantize_tensor(w).dequantize(), value for value, without the integer tensors or the
        NaN/Inf scan (w must be finite): the inner step of the calibrating searches."""
        scale, zp = self.choose_qparams(w, check=False)
        g = w.float().reshape(w.shape[0], scale.shape[1], -1)
        qmin, qmax = self.qrange()
        q = torch.round(g / scale.unsqueeze(-1))
        if zp is not None:
            zf = zp.float().unsqueeze(-1)
            return (torch.clamp(q + zf, qmin, qmax) - zf).mul_(scale.unsqueeze(-1)).reshape(
                w.shape)
        return torch.clamp(q, qmin, qmax).mul_(scale.unsqueeze(-1)).reshape(w.shape)
