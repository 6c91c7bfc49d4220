"""The quantizer's C++ inner loops (quant/csrc/quant_kernels.cpp), value for value the torch code
they replace. `kernels` is None in a source tree that was not built; callers then run torch."""

from __future__ import annotations

import torch

from .schemes import IntWeight
from .schemes.base import SCALE_BOUNDS

try:
    from . import _native as kernels
except ImportError:
    kernels = None


def scheme_args(scheme: IntWeight) -> tuple:
    """(bits, symmetric, scale kind, scale clamp low, high) as the kernels take them."""
    lo, hi = SCALE_BOUNDS[scheme.scale_dtype]
    return scheme.bits, scheme.symmetric, 0 if scheme.scale_dtype == "fp16" else 1, lo, hi


def fake_quantizer(scheme):
    """f(w, bound=None): scheme.fake_quantize(w), each group of w first clamped to +-bound
    (rows, groups) when given; in C++ for integer schemes when the kernels are built."""
    def reference(w, bound=None):
        if bound is not None:
            g = w.reshape(w.shape[0], bound.shape[1], -1)
            b = bound.unsqueeze(-1)
            w = torch.maximum(torch.minimum(g, b), -b).reshape(w.shape)
        return scheme.fake_quantize(w)

    if kernels is None or not isinstance(scheme, IntWeight):
        return reference
    args = scheme_args(scheme)

    def native(w, bound=None):
        if w.dim() != 2 or w.shape[1] % scheme.group_for(w.shape[1]):
            return reference(w, bound)  # the scheme's own error, naming the tensor
        w = w.float().contiguous()
        out = torch.empty_like(w)
        b = None if bound is None else bound.float().contiguous().numpy()
        kernels.fake_quantize(w.numpy(), scheme.group_for(w.shape[1]), *args, b, out.numpy(),
                              torch.get_num_threads())
        return out
    return native
