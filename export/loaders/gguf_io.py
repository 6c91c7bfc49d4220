"""GGUF parsing for checkpoints: the bounds-checked parser lives in edge/gguf_io.py (the runtime
validates .gguf artifacts with it too); here it names what a mislabelled file looks like."""

from __future__ import annotations

from edge.gguf_io import GGUFTensor, tensor_bytes
from edge.gguf_io import parse_gguf as _parse_gguf

__all__ = ["GGUFTensor", "parse_gguf", "tensor_bytes"]


def parse_gguf(path):
    from . import looks_like

    return _parse_gguf(path, describe=looks_like)
