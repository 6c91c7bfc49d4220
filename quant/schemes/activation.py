"""Dynamic int8 activations, one scale (and zero point) per token, computed at run time: the
activation half of 8da4w / 8da8w (the mobile CPU recipe of ExecuTorch / XNNPACK).

asymmetric (default, as XNNPACK's dynamically quantized linears):
    s = (max(x, 0) - min(x, 0)) / 255,  z = clamp(round(-128 - min / s), -128, 127)
    q = clamp(round(x / s) + z, -128, 127),  x ~= (q - z) * s
symmetric:
    s = max|x| / 127,  q = clamp(round(x / s), -127, 127)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Scale floor: an all-zero token row gets this scale, so it quantizes to zeros, never NaN.
EPS = 1e-10


@dataclass(frozen=True)
class DynamicInt8Act:
    symmetric: bool = False

    @property
    def name(self) -> str:
        return "int8_dyn_token_" + ("sym" if self.symmetric else "asym")

    def choose_qparams(self, x: torch.Tensor):
        """x (..., k) -> scale (..., 1), zero point (..., 1) (float tensors)."""
        x = x.float()
        if self.symmetric:
            return (x.abs().amax(-1, keepdim=True) / 127.0).clamp(min=EPS), None
        lo = x.amin(-1, keepdim=True).clamp(max=0.0)
        hi = x.amax(-1, keepdim=True).clamp(min=0.0)
        s = ((hi - lo) / 255.0).clamp(min=EPS)
        z = torch.clamp(torch.round(-128.0 - lo / s), -128, 127)
        return s, z

    def quantize(self, x: torch.Tensor, scale, zp):
        q = torch.round(x.float() / scale)
        if zp is not None:
            return torch.clamp(q + zp, -128, 127)
        return torch.clamp(q, -127, 127)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize (what the integer kernel computes, in float)."""
        s, z = self.choose_qparams(x)
        q = self.quantize(x, s, z)
        return ((q - z) * s if z is not None else q * s).to(x.dtype)
