"""How the ONNX targets store weights: the MatMulNBits / GatherBlockQuantized packing of our
canonical integers and scales (layouts in export/targets/onnx/__init__.py), the checks that
refuse what ONNX cannot hold unchanged, and the external-data file both ONNX targets write."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge.engines.onnxruntime import ALIGN_LARGE, ALIGN_SMALL, DATA_FILE
from edge.errors import EdgeError

OPSET = 21
MS = "com.microsoft"
MAX_BLOCK = 128  # larger blocks do not make MatMulNBits faster; smaller ones round activations
# (accuracy_level 4) more finely
MIN_BLOCK = 16  # MatMulNBits / GatherBlockQuantized: block_size is a power of two >= 16
INLINE_BYTES = 1024  # initializers up to this size stay inside model.onnx
LARGE_BYTES = 1 << 20  # initializers from this size are aligned to ALIGN_LARGE (mmap-friendly)
ACCURACY_INT8 = 4  # MatMulNBits accuracy_level: round the input to int8 blocks
ACCURACY_FP32 = 0  # MatMulNBits accuracy_level: unset, float32 input as given
FIX = "use a recipe of int4 / int8 weights (e.g. --recipe int8, int4-g32, mobile or 8da4w)"


# ------------------------------------------------------------------------------ checks
def block_for(group: int) -> int | None:
    """The MatMulNBits block length for groups of `group` values (None when no power of two
    >= MIN_BLOCK divides it)."""
    b = MAX_BLOCK
    while b >= MIN_BLOCK:
        if group % b == 0:
            return b
        b //= 2
    return None


def check_recipe(recipe) -> None:
    """Refuse, before any work, recipe rules whose weights ONNX cannot hold unchanged."""
    from quant.schemes import FP8Weight

    for rule in recipe.rules:
        if rule.config is None:
            continue
        w, where = rule.config.weight, f"recipe '{recipe.name}', rule '{rule.pattern}'"
        if isinstance(w, FP8Weight):
            raise EdgeError(f"{where} ({w.name}): MatMulNBits has no FP8 weights, so the ONNX "
                            f"target cannot hold them; {FIX} for --target onnx")
        if w.bits not in (4, 8):
            raise EdgeError(f"{where} ({w.name}): the ONNX target lowers 4- and 8-bit weights "
                            f"only; {FIX} for --target onnx")
        if w.group_size is not None and block_for(w.group_size) is None:
            raise EdgeError(f"{where} ({w.name}): groups of {w.group_size} are not a multiple of "
                            f"MatMulNBits' {MIN_BLOCK}-value blocks; {FIX} for --target onnx")


def check_tensor(qt, name: str) -> int:
    """The MatMulNBits block length holding QuantizedTensor `qt` unchanged, or a clear error."""
    if qt.scheme.startswith("fp8"):
        raise EdgeError(f"tensor '{name}' ({qt.scheme}): MatMulNBits has no FP8 weights; {FIX}")
    if qt.bits not in (4, 8):
        raise EdgeError(f"tensor '{name}' ({qt.scheme}): {qt.bits}-bit weights are not "
                        f"supported by the ONNX target; {FIX}")
    block = block_for(qt.group_size)
    if block is None:
        raise EdgeError(f"tensor '{name}' ({qt.scheme}): groups of {qt.group_size} values are "
                        f"not a multiple of a power-of-two block >= {MIN_BLOCK}; {FIX}")
    return block


# ------------------------------------------------------------------------------ packing
def stored_values(qt, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(u (N, K) uint8 as MatMulNBits stores them, zero points (N, groups) uint8 or None)."""
    q = qt.qdata.numpy()
    hi = (1 << qt.bits) - 1
    if qt.zero_point is None:
        u = q.astype(np.int16) + (1 << (qt.bits - 1))
        zp = None
    else:
        u = q.astype(np.int16)
        zp = qt.zero_point.numpy().astype(np.uint8)
        if int(zp.max()) > hi:
            raise EdgeError(f"tensor '{name}' ({qt.scheme}): zero points above {hi}")
    if int(u.min()) < 0 or int(u.max()) > hi:
        raise EdgeError(f"tensor '{name}' ({qt.scheme}): integer values outside the "
                        f"{qt.bits}-bit range")
    return u.astype(np.uint8), zp


def pack_nbits(u: np.ndarray, bits: int, block: int) -> np.ndarray:
    """u (N, K) uint8 values < 2^bits -> MatMulNBits B (N, K / block, block * bits / 8)."""
    n, k = u.shape
    u = u.reshape(n, k // block, block)
    if bits == 8:
        return np.ascontiguousarray(u)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def unpack_nbits(b: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of pack_nbits: (N, K / block, blob) -> (N, K) uint8."""
    n = b.shape[0]
    if bits == 8:
        return b.reshape(n, -1).copy()
    out = np.empty(b.shape[:-1] + (b.shape[-1] * 2,), np.uint8)
    out[..., 0::2] = b & 0x0F
    out[..., 1::2] = b >> 4
    return out.reshape(n, -1)


def pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    """zp (N, blocks) uint8 -> MatMulNBits zero_points (N, ceil(blocks * bits / 8)) uint8."""
    if bits == 8:
        return np.ascontiguousarray(zp)
    n, kb = zp.shape
    if kb % 2:  # the unused high nibble of the last byte
        zp = np.concatenate([zp, np.zeros((n, 1), np.uint8)], axis=1)
    return (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)


def block_params(qt, name: str):
    """(block, B packed, scales (N, K / block) float32, packed zero points or None)."""
    block = check_tensor(qt, name)
    rep = qt.group_size // block
    scales = qt.scale.numpy().astype(np.float32)
    if not np.isfinite(scales).all() or (scales <= 0).any():
        raise EdgeError(f"tensor '{name}' ({qt.scheme}): scales must be positive and finite")
    u, zp = stored_values(qt, name)
    zpk = None if zp is None else pack_zero_points(np.repeat(zp, rep, axis=1), qt.bits)
    return block, pack_nbits(u, qt.bits, block), np.repeat(scales, rep, axis=1), zpk


# ------------------------------------------------------------------------------ file writing
class DataFile:
    """Initializers of one graph, large ones appended one at a time to an external data file
    (the graph keeps only name, shape, dtype, offset and length)."""

    def __init__(self, directory: Path, name: str = DATA_FILE):
        self.name = name
        self.path = Path(directory) / name
        self.f = open(self.path, "wb")
        self.tensors = []
        self.written = {}  # name -> TensorProto of external initializers

    def add(self, name: str, arr: np.ndarray) -> str:
        from onnx import helper, numpy_helper

        arr = np.ascontiguousarray(arr)
        if arr.nbytes <= INLINE_BYTES:
            self.tensors.append(numpy_helper.from_array(arr, name))
            return name
        return self.add_raw(name, arr, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape)

    def add_raw(self, name: str, raw: np.ndarray, data_type: int, shape) -> str:
        """An external initializer of ONNX type `data_type` and `shape` from its bytes."""
        from onnx import TensorProto

        raw = np.ascontiguousarray(raw)
        align = ALIGN_LARGE if raw.nbytes >= LARGE_BYTES else ALIGN_SMALL
        pos = self.f.tell()
        if pos % align:
            self.f.write(b"\0" * (align - pos % align))
            pos = self.f.tell()
        self.f.write(memoryview(raw).cast("B"))
        t = TensorProto()
        t.name = name
        t.data_type = data_type
        t.dims.extend(shape)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.name), ("offset", str(pos)),
                           ("length", str(raw.nbytes))):
            e = t.external_data.add()
            e.key, e.value = key, value
        self.tensors.append(t)
        self.written[name] = t
        return name

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
