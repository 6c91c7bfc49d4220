"""Dynamic int8 activations, quantized at run time: the activation half of 8da4w / 8da8w.

Per token (group_size None), asymmetric (as XNNPACK's dynamically quantized linears):
    s = (max(x, 0) - min(x, 0)) / 255,  z = clamp(round(-128 - min / s), -128, 127)
    q = clamp(round(x / s) + z, -128, 127),  x ~= (q - z) * s
Per token, symmetric:
    s = max|x| / 127,  q = clamp(round(x / s), -127, 127)
Per block of `group_size` consecutive values of a token, symmetric (as llama.cpp's Q8_0
activations; what the edge kernels use for 8da recipes):
    s_b = max_b |x| / 127,  q = clamp(round(x / s_b), -127, 127)

One scale per token lets a single large activation (models have a few "massive" channels,
hundreds of times the median) flatten every other value of the token to a handful of levels, so
the result hinges on how values next to a rounding boundary fall; blocks confine that to the
outlier's own 32 values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import QuantError

# Scale floor: an all-zero token row (or block) gets this scale, so it quantizes to zeros,
# never NaN.
EPS = 1e-10


@dataclass(frozen=True)
class DynamicInt8Act:
    symmetric: bool = False
    group_size: int | None = None  # None: one scale per token

    def __post_init__(self):
        if self.group_size is not None:
            if not self.symmetric:
                raise ValueError("block-wise activation quantization is symmetric")
            if self.group_size <= 0:
                raise ValueError(f"activation group_size must be positive, got {self.group_size}")

    @property
    def name(self) -> str:
        if self.group_size is not None:
            return f"int8_dyn_g{self.group_size}_sym"
        return "int8_dyn_token_" + ("sym" if self.symmetric else "asym")

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        k = x.shape[-1]
        if k % self.group_size:
            raise QuantError(f"activation block size {self.group_size} does not divide the input "
                             f"width {k}")
        return x.reshape(*x.shape[:-1], k // self.group_size, self.group_size)

    def choose_qparams(self, x: torch.Tensor):
        """x (..., k) -> scale (..., 1) [or (..., k/g, 1) per block], zero point (..., 1) or
        None (float tensors)."""
        x = x.float()
        if self.group_size is not None:
            x = self._blocks(x)
        if self.symmetric:
            return (x.abs().amax(-1, keepdim=True) / 127.0).clamp(min=EPS), None
        lo = x.amin(-1, keepdim=True).clamp(max=0.0)
        hi = x.amax(-1, keepdim=True).clamp(min=0.0)
        s = ((hi - lo) / 255.0).clamp(min=EPS)
        z = torch.clamp(torch.round(-128.0 - lo / s), -128, 127)
        return s, z

    def quantize(self, x: torch.Tensor, scale, zp):
        x = x.float()
        if self.group_size is not None:
            x = self._blocks(x)
        q = torch.round(x / scale)
        if zp is not None:
            return torch.clamp(q + zp, -128, 127)
        return torch.clamp(q, -127, 127)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize (what the integer kernel computes, in float)."""
        s, z = self.choose_qparams(x)
        q = self.quantize(x, s, z)
        y = (q - z) * s if z is not None else q * s
        return y.reshape(x.shape).to(x.dtype)
