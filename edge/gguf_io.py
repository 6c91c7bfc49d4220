"""A bounds-checked GGUF parser, shared by the toolchain (GGUF checkpoints) and the runtime
(validating a .gguf before llama.cpp opens it). Torch-free.

Walks the whole header (key/values and tensor infos) with every length, count, type, alignment
and offset checked against the file before anything is trusted, and returns plain Python
metadata plus tensor descriptors. Tensor bytes are memory-mapped; dequantization is left to the
`gguf` package (see gguf_loader.py).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import CheckpointError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4
# Real files have < 100 keys and < 10k tensors; a count past these is a corrupt header, caught
# before the count drives any loop or allocation.
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 20

# value type id -> (struct format, size); 8 = string, 9 = array
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
            6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
       10: "<u8", 11: "<i8", 12: "<f8"}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order: shape[0] is the innermost (contiguous) dimension
    type_id: int
    type_name: str
    start: int  # absolute file offset
    nbytes: int


class _Cursor:
    def __init__(self, path: Path, buf):
        self.path, self.buf, self.pos, self.size = path, buf, 0, len(buf)

    def fail(self, msg):
        raise CheckpointError(self.path, f"GGUF header at byte {self.pos}: {msg}")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            self.fail(f"{what} needs {n} bytes but only {self.size - self.pos} remain "
                      "(truncated or corrupt file)")
        b = self.buf[self.pos:self.pos + n]  # slicing an mmap copies: no exported buffer
        self.pos += n
        return b

    def scalar(self, tid: int, what: str):
        fmt, n = _SCALARS[tid]
        return struct.unpack(fmt, self.take(n, what))[0]

    def string(self, what: str) -> str:
        n = self.scalar(10, f"{what} length")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid UTF-8")

    def value(self, tid: int, key: str):
        if tid in _SCALARS:
            return self.scalar(tid, f"value of '{key}'")
        if tid == 8:
            return self.string(f"value of '{key}'")
        if tid == 9:
            et = self.scalar(4, f"array type of '{key}'")
            count = self.scalar(10, f"array length of '{key}'")
            if et in _SCALARS:
                n = _SCALARS[et][1] * count
                raw = self.take(n, f"array '{key}' ({count} items)")
                arr = np.frombuffer(raw, dtype=_NP[et])
                return (arr.astype(bool) if et == 7 else arr).tolist()
            if et == 8:
                if count > self.size - self.pos:  # every string takes >= 8 bytes
                    self.fail(f"array '{key}' claims {count} strings, more than the file holds")
                return [self.string(f"item {i} of '{key}'") for i in range(count)]
            self.fail(f"array '{key}' has unsupported element type {et}")
        self.fail(f"key '{key}' has unknown value type {tid}")


def _no_description(path) -> str:
    return ""


def parse_gguf(path, describe=_no_description) -> tuple[dict, list[GGUFTensor], int]:
    """Return (metadata, tensors, version) after validating the complete header. `describe`
    adds what a file with the wrong magic looks like (e.g. '; it looks like an HTML page')."""
    import gguf  # toolchain dependency: block sizes of the quantization types

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        import mmap

        if size < 24:
            raise CheckpointError(path, f"file is {size} bytes: too small to be GGUF")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        c = _Cursor(path, buf)
        magic = c.take(4, "magic")
        if magic != GGUF_MAGIC:
            raise CheckpointError(path, f"bad magic {magic!r}: not a GGUF file{describe(path)}")
        version = c.scalar(4, "version")
        if version not in SUPPORTED_VERSIONS:
            swapped = struct.unpack(">I", struct.pack("<I", version))[0]
            if swapped in SUPPORTED_VERSIONS:
                raise CheckpointError(path, "big-endian (byte-swapped) GGUF is not supported; "
                                      "convert it to little-endian")
            raise CheckpointError(path, f"GGUF version {version} is not supported (supported: "
                                  f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
        n_tensors, n_kv = c.scalar(11, "tensor count"), c.scalar(11, "key/value count")
        if not 0 <= n_kv <= MAX_KV:
            raise CheckpointError(path, f"key/value count {n_kv} is negative or absurd")
        if not 0 <= n_tensors <= MAX_TENSORS:
            raise CheckpointError(path, f"tensor count {n_tensors} is negative or absurd")
        meta: dict = {}
        for _ in range(n_kv):
            key = c.string("key")
            if key in meta:
                c.fail(f"duplicate key '{key}'")
            tid = c.scalar(4, f"type of '{key}'")
            meta[key] = c.value(tid, key)
        align = meta.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise CheckpointError(path, f"general.alignment={align!r} is not a power of two")
        infos = []
        names = set()
        for _ in range(n_tensors):
            name = c.string("tensor name")
            if name in names:
                c.fail(f"duplicate tensor '{name}'")
            names.add(name)
            nd = c.scalar(4, f"dims of '{name}'")
            if not 1 <= nd <= MAX_DIMS:
                c.fail(f"tensor '{name}' has {nd} dimensions (1..{MAX_DIMS} allowed)")
            dims = tuple(c.scalar(10, f"dim of '{name}'") for _ in range(nd))
            tid = c.scalar(4, f"type of '{name}'")
            off = c.scalar(10, f"offset of '{name}'")
            try:
                qt = gguf.GGMLQuantizationType(tid)
                block, tsize = gguf.GGML_QUANT_SIZES[qt]
            except (ValueError, KeyError):
                c.fail(f"tensor '{name}' has unknown type id {tid}")
            if any(d <= 0 for d in dims) or dims[0] % block:
                c.fail(f"tensor '{name}' dims {list(dims)} are invalid for {qt.name} "
                       f"(blocks of {block})")
            nbytes = math.prod(dims) // block * tsize
            if off % align:
                c.fail(f"tensor '{name}' offset {off} is not aligned to {align}")
            infos.append((name, dims, tid, qt.name, off, nbytes))
        data_start = -(-c.pos // align) * align
        tensors, ranges = [], []
        for name, dims, tid, qname, off, nbytes in infos:
            start = data_start + off
            if start + nbytes > size:
                raise CheckpointError(path, f"tensor '{name}' ({qname}, {nbytes} bytes at "
                                      f"{start}) runs past the end of the {size}-byte file: "
                                      "the data section is too short (truncated download?)")
            tensors.append(GGUFTensor(name, dims, tid, qname, start, nbytes))
            ranges.append((start, start + nbytes, name))
        ranges.sort()
        for (s0, e0, n0), (s1, _e1, n1) in zip(ranges, ranges[1:]):
            if s1 < e0:
                raise CheckpointError(path, f"tensors '{n0}' and '{n1}' overlap")
        return meta, tensors, version
    finally:
        buf.close()


def tensor_bytes(path, t: GGUFTensor) -> np.ndarray:
    """The raw bytes of one tensor, memory-mapped (read-only)."""
    return np.memmap(path, dtype=np.uint8, mode="r", offset=t.start, shape=(t.nbytes,))
