"""FP8 e4m3 weights (the "fn" variant: no infinities, max 448) with one scale per output
channel or per group. Saturating: values are clamped to +-448 before the cast, so the result is
never NaN.

    s = max|w| / 448,   q = fp8(clamp(w / s, -448, 448)),   w ~= float(q) * s
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import QuantizedTensor, fp16_scale, grouped

FP8_MAX = 448.0  # largest finite e4m3fn value


@dataclass(frozen=True)
class FP8Weight:
    group_size: int | None = None  # None: per output channel

    @property
    def name(self) -> str:
        return f"fp8_e4m3_{'pc' if self.group_size is None else f'g{self.group_size}'}"

    def group_for(self, in_features: int) -> int:
        return in_features if self.group_size is None else self.group_size

    def choose_qparams(self, w: torch.Tensor, name: str = "weight", check: bool = True):
        g = grouped(w, self.group_for(w.shape[1]), name, check)
        return fp16_scale(g.abs().amax(-1) / FP8_MAX), None

    def quantize(self, w: torch.Tensor, scale, zero_point=None, name: str = "weight"):
        g = grouped(w, self.group_for(w.shape[1]), name)
        x = (g / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX)
        return x.reshape(w.shape).to(torch.float8_e4m3fn)

    def quantize_tensor(self, w: torch.Tensor, name: str = "weight") -> QuantizedTensor:
        scale, _ = self.choose_qparams(w, name)
        return QuantizedTensor(self.name, self.quantize(w, scale, name=name), scale, None,
                               self.group_for(w.shape[1]), 8)

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        """quantize_tensor(w).dequantize(), value for value, without the NaN/Inf scan (w must
        be finite)."""
        scale, _ = self.choose_qparams(w, check=False)
        g = w.float().reshape(w.shape[0], scale.shape[1], -1)
        x = (g / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return (x.float() * scale.unsqueeze(-1)).reshape(w.shape)
