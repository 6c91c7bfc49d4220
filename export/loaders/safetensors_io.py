"""A validating, zero-copy safetensors reader.

The header is checked completely before any tensor is touched (edge/safetensors.py). Tensors are
then views into a private (copy-on-write) memory map of the file: nothing is read until used, and
nothing is ever written back.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import torch

from edge.errors import CheckpointError
from edge.safetensors import MAX_HEADER_BYTES, TensorInfo, loads_strict  # noqa: F401
from edge.safetensors import read_header as _read_header

DTYPES = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1), "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
}
TORCH_TO_ST = {v[0]: k for k, v in DTYPES.items()}


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict]:
    """Validate a checkpoint's safetensors header (edge/safetensors.py), with checkpoint errors
    and a hint when the file is plainly something else."""
    from . import looks_like

    infos, meta = _read_header(path, CheckpointError, looks_like)
    for t in infos.values():
        if t.dtype not in DTYPES:
            raise CheckpointError(path, f"tensor '{t.name}': unknown dtype {t.dtype!r}; known: "
                                  f"{', '.join(DTYPES)}")
    return infos, meta


class SafetensorsFile:
    """Validated header + lazily mapped tensors."""

    def __init__(self, path):
        self.path = Path(path)
        self.tensors, self.metadata = read_header(self.path)
        self._mm = None

    def _map(self):
        if self._mm is None:
            with open(self.path, "rb") as f:
                # ACCESS_COPY: private mapping, so writes to a tensor can never reach the file.
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._mm

    def get(self, name: str) -> torch.Tensor:
        t = self.tensors[name]
        dtype, itemsize = DTYPES[t.dtype]
        numel = (t.end - t.start) // itemsize
        if numel == 0:
            return torch.empty(t.shape, dtype=dtype)
        return torch.frombuffer(self._map(), dtype=dtype, count=numel,
                                offset=t.start).view(t.shape)


def write_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict | None = None):
    """Write via the safetensors library (sorted names: identical input -> identical bytes)."""
    from safetensors.torch import save_file

    ordered = {k: tensors[k].contiguous() for k in sorted(tensors)}
    save_file(ordered, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
