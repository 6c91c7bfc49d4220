"""GGUF checkpoints (llama architecture): metadata -> LlamaConfig, tensors dequantized by the
`gguf` package, GGUF's interleaved Q/K rows put back in HF order, tokenizer and chat template
from the metadata."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from edge.config import LlamaConfig, RopeScaling, rope_inv_freq
from edge.errors import CheckpointError, ConfigError

from .common import Checkpoint, check_finite, check_shapes
from .gguf_io import parse_gguf, tensor_bytes
from .layout import interleaved_to_half

# Types the gguf package dequantizes that we accept as input. (Not Q8_K: llama.cpp only uses it
# for intermediate products, and gguf.quants raises NotImplementedError for it.)
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K",
                   "Q4_K", "Q5_K", "Q6_K")

_LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    if suffix != "weight":
        return None
    if base in _TOP:
        return f"{_TOP[base]}.weight"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER:
        return f"model.layers.{int(parts[1])}.{_LAYER[parts[2]]}.weight"
    return None


def config_from_metadata(path, meta: dict, tensors) -> LlamaConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(path, f"general.architecture={arch!r}: only 'llama' GGUF files "
                              "(Llama 3.x, SmolLM2 and other Llama-architecture models) are "
                              "supported")

    def need(key):
        v = meta.get(f"llama.{key}")
        if not isinstance(v, int) or v <= 0:
            raise CheckpointError(path, f"metadata 'llama.{key}' is missing or invalid ({v!r})")
        return v

    def opt(key, types, default=None):
        # Metadata values carry their own GGUF type: a string or array where a number belongs
        # would otherwise fail later in int() / float() without naming the key.
        v = meta.get(key, default)
        if v is not None and (not isinstance(v, types) or isinstance(v, bool)):
            raise CheckpointError(path, f"metadata '{key}' has the wrong type ({v!r:.60})")
        return v

    by_name = {t.name: t for t in tensors}
    emb = by_name.get("token_embd.weight")
    if emb is None:
        raise CheckpointError(path, "tensor 'token_embd.weight' is missing")
    if len(emb.shape) != 2:
        raise CheckpointError(path, f"tensor 'token_embd.weight' has shape {list(emb.shape)}; "
                              "expected 2 dimensions")
    hidden, heads = need("embedding_length"), need("attention.head_count")
    kv = opt("llama.attention.head_count_kv", int, heads)
    head_dim = (opt("llama.attention.key_length", int)
                or opt("llama.rope.dimension_count", int))
    head_dim = head_dim or (hidden // heads)
    vocab = opt("llama.vocab_size", int) or emb.shape[1]
    theta = float(opt("llama.rope.freq_base", (int, float), 10000.0))
    ctx = opt("llama.context_length", int, 4096)
    opt("llama.rope.scaling.original_context_length", int)
    scaling = None
    if "rope_freqs.weight" in by_name:
        scaling = _llama3_scaling_from_factors(path, meta, by_name["rope_freqs.weight"],
                                               head_dim, theta)
    eos = opt("tokenizer.ggml.eos_token_id", int)
    bos = opt("tokenizer.ggml.bos_token_id", int)
    try:
        cfg = LlamaConfig(
            vocab_size=int(vocab), hidden_size=hidden,
            intermediate_size=need("feed_forward_length"), num_layers=need("block_count"),
            num_heads=heads, num_kv_heads=int(kv), head_dim=int(head_dim),
            rms_norm_eps=float(opt("llama.attention.layer_norm_rms_epsilon", (int, float),
                                   1e-5)),
            rope_theta=theta, rope_scaling=scaling, max_position_embeddings=int(ctx),
            tie_word_embeddings="output.weight" not in by_name,
            bos_token_id=bos, eos_token_ids=(eos,) if eos is not None else (),
            name=str(meta.get("general.name", "llama")))
        return cfg.validate(f"{path} metadata")
    except ConfigError as e:
        raise CheckpointError(path, str(e)) from None


def _llama3_scaling_from_factors(path, meta, t, head_dim, theta) -> RopeScaling:
    """GGUF stores llama3 rope scaling as per-frequency divisors; recover the parameters and
    check that they reproduce the stored factors exactly."""
    import gguf

    if t.type_name not in ("F32", "F16", "BF16"):  # llama.cpp writes F32; others may not dequantize
        raise CheckpointError(path, f"tensor 'rope_freqs.weight' has type {t.type_name}; "
                              "expected F32")
    # one factor per rotated pair: checked before the head size sizes any array
    if math.prod(t.shape) != head_dim // 2 or head_dim < 2:
        raise CheckpointError(path, f"tensor 'rope_freqs.weight' has shape {list(t.shape)}; the "
                              f"head size {head_dim} needs {head_dim // 2} rope factors")
    stored = gguf.quants.dequantize(tensor_bytes(path, t), gguf.GGMLQuantizationType(t.type_id))
    stored = np.asarray(stored, dtype=np.float64).reshape(-1)
    orig = int(meta.get("llama.rope.scaling.original_context_length", 8192))
    rs = RopeScaling(factor=float(stored.max()), low_freq_factor=1.0, high_freq_factor=4.0,
                     original_max_position_embeddings=orig)
    probe = LlamaConfig(vocab_size=1, hidden_size=head_dim, intermediate_size=1, num_layers=1,
                        num_heads=1, num_kv_heads=1, head_dim=head_dim, rope_theta=theta)
    base = rope_inv_freq(probe)
    factors = base / rope_inv_freq(probe.replace(rope_scaling=rs))
    if stored.shape != factors.shape or not np.allclose(stored, factors, rtol=1e-3):
        raise CheckpointError(path, "tensor 'rope_freqs.weight' holds rope factors that are not "
                              "llama3 scaling with low/high frequency factors 1/4; unsupported")
    return rs


def load_gguf(path, load_tokenizer: bool = True) -> Checkpoint:
    import gguf

    path = Path(path)
    meta, tinfos, _ = parse_gguf(path)
    cfg = config_from_metadata(path, meta, tinfos)
    mapped, shapes, qtypes = {}, {}, {}
    for t in tinfos:
        name = hf_name(t.name)
        if name is None:
            if t.name == "rope_freqs.weight":
                continue
            raise CheckpointError(path, f"unexpected tensor '{t.name}' for the llama "
                                  "architecture")
        if t.type_name not in SUPPORTED_TYPES:
            raise CheckpointError(path, f"tensor '{t.name}' has type {t.type_name}; supported: "
                                  f"{', '.join(SUPPORTED_TYPES)}")
        mapped[name] = t
        shapes[name] = tuple(reversed(t.shape))
        qtypes[t.type_name] = qtypes.get(t.type_name, 0) + 1
    check_shapes(path, cfg, shapes)
    tensors = {}
    for name, t in mapped.items():
        raw = tensor_bytes(path, t)
        qt = gguf.GGMLQuantizationType(t.type_id)
        if t.type_name == "F32":
            arr = torch.from_numpy(np.array(raw.view(np.float32)))
        elif t.type_name == "BF16":
            arr = torch.from_numpy(np.array(raw.view(np.int16))).view(torch.bfloat16)
        else:
            arr = torch.from_numpy(np.ascontiguousarray(
                gguf.quants.dequantize(raw, qt), dtype=np.float32))
        arr = arr.reshape(shapes[name])
        check_finite(path, t.name, arr)
        if name.endswith("q_proj.weight"):
            arr = interleaved_to_half(arr, cfg.num_heads)
        elif name.endswith("k_proj.weight"):
            arr = interleaved_to_half(arr, cfg.num_kv_heads)
        tensors[name] = arr.contiguous()
    tok, template = None, meta.get("tokenizer.chat_template")
    if load_tokenizer:
        from edge.tokenizer import Tokenizer
        from .hf import check_tokenizer

        tok = Tokenizer.from_gguf_fields(meta, str(path))
        check_tokenizer(path, cfg, tok)
        cfg = cfg.replace(eos_token_ids=tuple(dict.fromkeys(cfg.eos_token_ids + tok.eos_ids)))
        template = tok.chat_template or template
    notes = [f"dequantized from GGUF types {dict(sorted(qtypes.items()))}"]
    return Checkpoint(path, "gguf", cfg, tensors, tok, template, {}, notes)
