"""Q/K row-order conversions, in one place.

Hugging Face Llama checkpoints order each head's Q/K rows "rotate-half" style (first all real
parts, then all imaginary parts); Meta's consolidated.pth and GGUF files interleave them
(real, imag, real, imag, ...). Our model uses the HF order, so Meta and GGUF weights pass
through `interleaved_to_half` once, at load time.
"""

from __future__ import annotations

import torch


def interleaved_to_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n_heads*head_dim, in) interleaved pairs -> rotate-half order."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, hd // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `interleaved_to_half` (used when writing Meta / GGUF layouts)."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, 2, hd // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)
