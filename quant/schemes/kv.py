"""int8 KV cache: one symmetric scale per (token, head), so a cache row is written once and
never rescaled.

    s = max|x| / 127 over the head_dim values of one token and head,  q = round(x / s)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-10


@dataclass(frozen=True)
class KVCacheInt8:
    @property
    def name(self) -> str:
        return "kv_int8_token_head"

    def quantize(self, x: torch.Tensor):
        """x (..., head_dim) -> (int8 values, float32 scales (..., 1))."""
        s = (x.float().abs().amax(-1, keepdim=True) / 127.0).clamp(min=EPS)
        return torch.clamp(torch.round(x.float() / s), -127, 127).to(torch.int8), s

    def dequantize(self, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return q.float() * s

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        q, s = self.quantize(x)
        return self.dequantize(q, s).to(x.dtype)
