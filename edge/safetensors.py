"""Validating safetensors header reader (torch-free; shared by the checkpoint loaders and the
edge artifact reader).

The header is checked completely before any tensor is touched: its length against the file,
JSON with duplicate keys refused, known dtypes, non-negative shapes, element counts that cannot
overflow, and byte ranges that match shape x dtype, are sorted, contiguous, non-overlapping and
end exactly at the end of the file.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

# Headers of real checkpoints are well under 1 MB even with thousands of tensors; safetensors
# itself caps them at 100 MB. A larger value is a corrupt or hostile file.
MAX_HEADER_BYTES = 100 * 1024 * 1024

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
            "U8": 1, "U16": 2, "U32": 4, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def loads_strict(text: str | bytes):
    """json.loads that refuses duplicate keys (the stdlib silently keeps the last one)."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        # A few kB of "[[[[..." exhausts the parser's recursion; report it as malformed JSON
        # (callers catch ValueError) rather than let a RecursionError escape.
        raise ValueError("nested too deeply to parse") from None


def read_header(path: Path, error=CheckpointError, hint=lambda path: "") -> tuple[dict[str, TensorInfo], dict]:
    """Validate a safetensors file's header; return (tensors by name, __metadata__).

    error(path, message) builds the exception raised; hint(path) may add what the file looks
    like instead.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise error(path, f"file is {size} bytes, too small to be safetensors "
                              "(truncated download?)")
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        if hlen > MAX_HEADER_BYTES or hlen > size - 8:
            raise error(path, f"safetensors header length {hlen} is past the end of "
                        f"the {size}-byte file or absurdly large: file truncated or "
                        f"not safetensors{hint(path)}")
        raw = f.read(hlen)
    try:
        header = loads_strict(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise error(path, f"safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise error(path, "safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    data_start = 8 + hlen
    infos = []
    for name, d in header.items():
        where = f"tensor '{name}'"
        if not isinstance(d, dict) or set(d) - {"dtype", "shape", "data_offsets"}:
            raise error(path, f"{where}: malformed header entry {d!r}")
        dt = d.get("dtype")
        if not isinstance(dt, str) or dt not in ITEMSIZE:  # a list / object is unhashable
            raise error(path, f"{where}: unknown dtype {dt!r}; known: "
                                  f"{', '.join(ITEMSIZE)}")
        shape, offs = d.get("shape"), d.get("data_offsets")
        if (not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                   and s >= 0 for s in shape) or len(shape) > 8):
            raise error(path, f"{where}: bad shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise error(path, f"{where}: bad data_offsets {offs!r}")
        numel = math.prod(shape)  # Python ints: no overflow, compared against the file below
        nbytes = numel * ITEMSIZE[dt]
        if offs[0] < 0 or offs[1] < offs[0]:
            raise error(path, f"{where}: data_offsets {offs} run backwards")
        if offs[1] - offs[0] != nbytes:
            raise error(path, f"{where}: shape {shape} x {dt} needs {nbytes} bytes "
                                  f"but data_offsets {offs} cover {offs[1] - offs[0]}")
        infos.append(TensorInfo(name, dt, tuple(shape), data_start + offs[0],
                                data_start + offs[1]))
    infos.sort(key=lambda t: (t.start, t.end))
    cursor = data_start
    for t in infos:
        if t.end > size:  # name the tensor the file was cut in (or that points past it)
            raise error(path, f"tensor '{t.name}': data ends at byte {t.end} but the "
                                  f"file has {size} bytes: truncated")
        if t.start != cursor:
            kind = "overlaps the previous tensor" if t.start < cursor else "leaves a gap"
            raise error(path, f"tensor '{t.name}': data at byte {t.start} {kind} "
                                  f"(expected {cursor})")
        cursor = t.end
    if cursor != size:
        raise error(path, f"tensor data ends at byte {cursor} but the file has {size} "
                              "bytes: " + ("truncated" if cursor > size else "trailing garbage"))
    return {t.name: t for t in infos}, meta
