"""Lower a (possibly quantized) LlamaModel to an ONNX decoder that onnxruntime (and
onnxruntime-genai) runs with a KV cache.

The artifact is a directory (`--target onnx` writes OUT/onnx):

    model.onnx          the decoder graph (opset 21 + com.microsoft contrib ops)
    model.onnx.data     every large initializer, written tensor by tensor (external data)
    genai_config.json   what onnxruntime-genai needs to load and generate
    tokenizer.json, tokenizer_config.json (with the chat template)
    llama_edge_onnx.json  our manifest: format + version, model config, chat format, special
                        ids, max context, recipe, and the size + sha256 of every file

Graph (the names onnxruntime-genai expects; B batch, S new tokens, P cached tokens, T = P + S):

    inputs   input_ids (B, S) int64, attention_mask (B, T) int64, position_ids (B, S) int64,
             past_key_values.{i}.key / .value (B, n_kv_heads, P, head_dim) float32
    outputs  logits (B, S, vocab) float32, present.{i}.key / .value (B, n_kv_heads, T, head_dim)

    embedding -> per layer: RMSNorm, q/k/v linears, GroupQueryAttention (rotary from cos / sin
    tables with llama3 scaling, GQA, causal, KV cache), o linear, SkipSimplifiedLayerNormalization
    (residual add + RMSNorm), gate/up linears, SiLU * up, down linear -> final norm -> lm_head.

Weights: the canonical QuantizedTensor values go into com.microsoft MatMulNBits unchanged. Its
layout (onnxruntime's contrib-op spec): B (N, K / block, block * bits / 8) uint8, values packed
along K, two 4-bit values per byte low nibble first; scales (N, K / block) float32; without a
zero_points input the zero point is 2^(bits - 1), so a symmetric value q is stored as q + 8
(4-bit) or q + 128 (8-bit); asymmetric schemes store their uint values and pass their zero
points (packed the same way). `block` must be a power of two >= 16: a group of g values uses the
largest such power (at most MAX_BLOCK) dividing g, its scale repeated over the blocks of the
group (exact). A quantized embedding is a GatherBlockQuantized over the same bytes; a tied
output layer shares that initializer. Float weights are stored as float32.

Activations: weight-only layers run MatMulNBits with accuracy_level 0 (float32 activations, the
dequantized weights exactly). A recipe that rounds activations to symmetric int8 blocks of the
weight block length (8da4w) runs accuracy_level 4, where onnxruntime does that rounding itself
and multiplies in integers. Other dynamic int8 schemes (per token, asymmetric: `mobile`) have no
onnxruntime kernel; the graph rounds the input exactly as the reference does with standard ops
(ReduceMin / ReduceMax / Round / Clip) and MatMulNBits multiplies in float32.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edge.artifact import sha256_file
from edge.errors import EdgeError
from edge.onnx_engine import (DATA_FILE, FORMAT, GENAI_CONFIG, MANIFEST, MODEL_FILE, VERSION,
                              ALIGN_LARGE, ALIGN_SMALL)

OPSET = 21
MS = "com.microsoft"
MAX_BLOCK = 128  # larger blocks do not make MatMulNBits faster; smaller ones round activations
# (accuracy_level 4) more finely
MIN_BLOCK = 16  # MatMulNBits / GatherBlockQuantized: block_size is a power of two >= 16
INLINE_BYTES = 1024  # initializers up to this size stay inside model.onnx
LARGE_BYTES = 1 << 20  # initializers from this size are aligned to ALIGN_LARGE (mmap-friendly)
DEFAULT_MAX_CONTEXT = 4096  # as the edge target: rope tables and genai's context_length
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
        if w.group_size is not None and block_for(w.group_size) is None:
            raise EdgeError(f"{where} ({w.name}): groups of {w.group_size} are not a multiple of "
                            f"MatMulNBits' {MIN_BLOCK}-value blocks; {FIX} for --target onnx")


def check_request(cfg, recipe) -> None:
    if recipe is not None:
        check_recipe(recipe)
    if cfg.dtype not in ("auto", "fp32"):
        raise EdgeError(f"--dtype {cfg.dtype}: the ONNX target stores unquantized weights as "
                        "fp32; use --dtype auto or fp32 with --target onnx")


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


def write_sidecars(dest: Path, cfg, tokenizer, chat_template, chat_format: str, max_ctx: int,
                   recipe: str | None, info: dict) -> None:
    """tokenizer files, genai_config.json and our manifest (last: it lists every file)."""
    tokenizer.save(dest, chat_template)
    eos = sorted(set(cfg.eos_token_ids) | set(tokenizer.eos_ids))
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else cfg.bos_token_id
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else eos[0] if eos else 0
    genai = {
        "model": {
            "bos_token_id": bos, "context_length": max_ctx,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL_FILE, "head_size": cfg.head_dim,
                "hidden_size": cfg.hidden_size,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": cfg.num_heads, "num_hidden_layers": cfg.num_layers,
                "num_key_value_heads": cfg.num_kv_heads},
            "eos_token_id": eos if len(eos) != 1 else eos[0], "pad_token_id": pad,
            "type": "llama", "vocab_size": cfg.vocab_size},
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True,
                   "length_penalty": 1.0, "max_length": max_ctx, "min_length": 0,
                   "no_repeat_ngram_size": 0, "num_beams": 1, "num_return_sequences": 1,
                   "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }
    (dest / GENAI_CONFIG).write_text(json.dumps(genai, indent=2) + "\n")
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(dest.iterdir()) if p.name != MANIFEST}
    manifest = {"format": FORMAT, "version": VERSION, "config": cfg.to_hf_dict(),
                "name": cfg.name, "max_context": max_ctx, "chat_format": chat_format,
                "tokenizer": {"bos_token_id": bos, "eos_token_ids": eos,
                              "add_bos": bool(tokenizer.add_bos)},
                "recipe": recipe, **info, "files": files}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def write_onnx_into(dest: Path, model, tokenizer, *, chat_template=None, max_context=None,
                    recipe: str | None = None) -> dict:
    """Write the ONNX artifact of `model` into the existing empty directory `dest`; return the
    summary (weight kinds, accuracy levels, exactness)."""
    import onnx

    from edge.chat import detect_chat_format

    from .lower_onnx_graph import build_graph

    if tokenizer is None:
        raise EdgeError("the ONNX target needs the model's tokenizer and this checkpoint has "
                        "none; add tokenizer.json to the checkpoint directory")
    cfg = model.config
    from .pipeline import resolve_max_context

    max_ctx = resolve_max_context(max_context, cfg, DEFAULT_MAX_CONTEXT)
    data = DataFile(dest)
    try:
        graph, summary = build_graph(model, data, max_ctx)
    finally:
        data.close()
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET),
                                                     onnx.helper.make_opsetid(MS, 1)],
                               producer_name="llama-edge")
    m.ir_version = 10
    with open(dest / MODEL_FILE, "wb") as f:
        f.write(m.SerializeToString())
    onnx.checker.check_model(str(dest / MODEL_FILE))
    template = chat_template if chat_template is not None else tokenizer.chat_template
    write_sidecars(dest, cfg, tokenizer, template, detect_chat_format(tokenizer), max_ctx,
                   recipe, {"weights": summary["weights"], "exact": summary["exact"]})
    summary["max_context"] = max_ctx
    return summary


def write_onnx(model, tokenizer, out, force: bool = False, **kw) -> dict:
    """Write the ONNX artifact directory `out` atomically (temp directory + rename)."""
    from .writers import atomic_dir

    with atomic_dir(out, force) as tmp:
        return write_onnx_into(Path(tmp), model, tokenizer, **kw)


# ------------------------------------------------------------------------------ pipeline stage
def activation_note(summary: dict) -> str | None:
    notes = []
    blocks = sorted(summary["int8_act_blocks"])
    if blocks:
        notes.append("MatMulNBits with accuracy_level 4 rounds its input to symmetric int8 in "
                     f"blocks of {'/'.join(map(str, blocks))} values (one float scale per "
                     "block, the recipe's own scheme) and multiplies in integers")
    if summary["act_emulated"]:
        notes.append(f"the recipe's {', '.join(summary['act_emulated'])} rounding is computed in "
                     "the graph with standard ops (ReduceMin / ReduceMax / Round / Clip, as the "
                     "reference), then MatMulNBits multiplies in float32 (accuracy_level 0)")
    return "; ".join(notes) or None


def stage(st):
    import onnxruntime

    import torch

    from .model import LlamaModel

    ck = st.checkpoint
    dest = st.workdir / "onnx"
    dest.mkdir()
    # Unquantized: the checkpoint's own tensors (no fp32 copy of the whole model); each weight
    # is converted to float32 on its own as it is written.
    model = st.model if st.model is not None else LlamaModel.from_state_dict(
        ck.config, ck.tensors, ck.dtype if ck.dtype.is_floating_point else torch.float32,
        max_seq_len=1)
    template = (ck.tokenizer.chat_template or ck.chat_template) if ck.tokenizer else None
    summary = write_onnx_into(dest, model, ck.tokenizer, chat_template=template,
                              max_context=st.cfg.max_context, recipe=st.cfg.recipe)
    st.artifacts["onnx"] = dest
    size = sum(p.stat().st_size for p in dest.iterdir())
    info = {"path": "onnx", "dtype": "+".join(sorted(summary["weights"])), "bytes": size,
            "max_context": summary["max_context"], "exact": summary["exact"],
            "runtime": f"onnxruntime {onnxruntime.__version__}",
            "weights": summary["weights"], "ops": summary["ops"]}
    note = activation_note(summary)
    if note:
        info["activations"] = note
    st.report.setdefault("artifacts", {})["onnx"] = info
    return st


def artifact_logits(path, max_seq_len: int):
    import torch

    from edge.onnx_engine import OnnxEngine

    sess = OnnxEngine(path, max_context=max_seq_len, threads=torch.get_num_threads()).session()
    return lambda w: torch.from_numpy(sess.logits_all(w[0].tolist()))
