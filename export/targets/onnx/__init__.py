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
from pathlib import Path

from edge.artifact import sha256_file
from edge.engines.onnxruntime import FORMAT, GENAI_CONFIG, MANIFEST, MODEL_FILE, VERSION
from edge.errors import EdgeError

from .. import Target
from ..common import chat_template, dir_bytes, resolve_max_context
from .graph import build_graph
from .weights import MS, OPSET, DataFile, check_recipe

NAME = "onnx"
DEFAULT_MAX_CONTEXT = 4096  # as the edge target: rope tables and genai's context_length


# ------------------------------------------------------------------------------ the target
def check_request(cfg, choice) -> None:
    if choice.recipe is not None:
        check_recipe(choice.recipe)
    if cfg.dtype not in ("auto", "fp32"):
        raise EdgeError(f"--dtype {cfg.dtype}: the ONNX target stores unquantized weights as "
                        "fp32; use --dtype auto or fp32 with --target onnx")


def write_sidecars(dest: Path, cfg, tokenizer, chat_template, chat_format: str, max_ctx: int,
                   recipe, info: dict) -> None:
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
                    recipe=None) -> dict:
    """Write the ONNX artifact of `model` into the existing empty directory `dest`; return the
    summary (weight kinds, accuracy levels, exactness)."""
    import onnx

    from edge.chat import detect_chat_format

    if tokenizer is None:
        raise EdgeError("the ONNX target needs the model's tokenizer and this checkpoint has "
                        "none; add tokenizer.json to the checkpoint directory")
    cfg = model.config
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
    from edge.atomic import atomic_dir

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
    """Pipeline stage lower:onnx."""
    import onnxruntime
    import torch

    from ...model import LlamaModel

    ck = st.checkpoint
    dest = st.workdir / NAME
    dest.mkdir()
    # Unquantized: the checkpoint's own tensors (no fp32 copy of the whole model); each weight
    # is converted to float32 on its own as it is written.
    model = st.model if st.model is not None else LlamaModel.from_state_dict(
        ck.config, ck.tensors, ck.dtype if ck.dtype.is_floating_point else torch.float32,
        max_seq_len=1)
    summary = write_onnx_into(dest, model, ck.tokenizer, chat_template=chat_template(ck),
                              max_context=st.cfg.max_context, recipe=st.recipe_record)
    st.artifacts[NAME] = dest
    info = {"path": NAME, "dtype": "+".join(sorted(summary["weights"])),
            "bytes": dir_bytes(dest),
            "max_context": summary["max_context"], "exact": summary["exact"],
            "runtime": f"onnxruntime {onnxruntime.__version__}",
            "weights": summary["weights"], "ops": summary["ops"]}
    note = activation_note(summary)
    if note:
        info["activations"] = note
    st.report.setdefault("artifacts", {})[NAME] = info
    return st


def artifact_logits(path, max_seq_len: int):
    import torch

    from edge.engines.onnxruntime import OnnxEngine

    sess = OnnxEngine(path, max_context=max_seq_len, threads=torch.get_num_threads()).session()
    return lambda w: torch.from_numpy(sess.logits_all(w[0].tolist()))


TARGET = Target(NAME, stage, artifact_logits, check_request, from_quantized=True)
