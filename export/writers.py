"""Writing checkpoints back out: a normal Hugging Face directory (what pruning produces and
every target accepts) and a Meta directory (interop and test fixtures).

Everything is written through edge/atomic.py's atomic_dir: an interrupted or failed write never
leaves a half-written checkpoint or destroys the previous one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from edge.atomic import atomic_dir

from .loaders.common import Checkpoint
from .loaders.layout import half_to_interleaved
from .loaders.safetensors_io import write_safetensors


def write_hf(ck: Checkpoint, out, dtype=torch.bfloat16, force: bool = False,
             max_shard_bytes: int | None = None) -> Path:
    """Write an HF directory atomically (see write_hf_into)."""
    with atomic_dir(out, force, inputs=(ck.path,)) as tmp:
        write_hf_into(ck, tmp, dtype, max_shard_bytes)
    return Path(out)


def write_hf_into(ck: Checkpoint, dest: Path, dtype=torch.bfloat16,
                  max_shard_bytes: int | None = None) -> None:
    """config.json, model.safetensors (or shards + index), generation_config.json,
    tokenizer.json + tokenizer_config.json, into an existing empty directory."""
    tensors = {k: v.to(dtype) for k, v in ck.tensors.items()}
    if ck.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    cfg = ck.config.to_hf_dict()
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (dest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = dict(ck.generation)
    if ck.config.eos_token_ids:
        gen["eos_token_id"] = list(ck.config.eos_token_ids)
    if ck.config.bos_token_id is not None:
        gen["bos_token_id"] = ck.config.bos_token_id
    (dest / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if max_shard_bytes is None:
        write_safetensors(dest / "model.safetensors", tensors, {"format": "pt"})
    else:
        _write_sharded(dest, tensors, max_shard_bytes)
    if ck.tokenizer is not None:
        ck.tokenizer.save(dest)


def _write_sharded(tmp: Path, tensors: dict, max_bytes: int):
    shards, cur, size = [], {}, 0
    for k in sorted(tensors):
        n = tensors[k].numel() * tensors[k].element_size()
        if cur and size + n > max_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = tensors[k], size + n
    shards.append(cur)
    wmap = {}
    for i, sh in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(tmp / name, sh, {"format": "pt"})
        wmap.update({k: name for k in sh})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (tmp / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": wmap}, indent=2) + "\n")


_META = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
         "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
         "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
         "mlp.down_proj": "feed_forward.w2", "input_layernorm": "attention_norm",
         "post_attention_layernorm": "ffn_norm"}


def write_meta(ck: Checkpoint, out, dtype=torch.bfloat16, force: bool = False,
               tiktoken_model: Path | None = None) -> Path:
    """Write consolidated.00.pth + params.json (+ tokenizer.model when given)."""
    cfg = ck.config
    sd = {}
    for k, v in ck.tensors.items():
        v = v.to(dtype)
        if k == "model.embed_tokens.weight":
            sd["tok_embeddings.weight"] = v
        elif k == "model.norm.weight":
            sd["norm.weight"] = v
        elif k == "lm_head.weight":
            if not cfg.tie_word_embeddings:
                sd["output.weight"] = v
        else:
            _, _, i, rest = k.split(".", 3)
            mod = rest.removesuffix(".weight")
            if mod.endswith("q_proj"):
                v = half_to_interleaved(v, cfg.num_heads)
            elif mod.endswith("k_proj"):
                v = half_to_interleaved(v, cfg.num_kv_heads)
            sd[f"layers.{i}.{_META[mod]}.weight"] = v.contiguous()
    # ffn_dim_multiplier chosen so Meta's formula reproduces intermediate_size exactly.
    base = int(2 * (4 * cfg.hidden_size) / 3)
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_layers, "n_heads": cfg.num_heads,
              "n_kv_heads": cfg.num_kv_heads, "vocab_size": cfg.vocab_size,
              "multiple_of": 1, "ffn_dim_multiplier": cfg.intermediate_size / base,
              "norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
              "use_scaled_rope": cfg.rope_scaling is not None}
    if cfg.rope_scaling is not None:
        params["rope_scaling_factor"] = cfg.rope_scaling.factor
    with atomic_dir(out, force, inputs=(ck.path,)) as tmp:
        torch.save(sd, tmp / "consolidated.00.pth")
        (tmp / "params.json").write_text(json.dumps(params, indent=2) + "\n")
        if tiktoken_model is not None:
            shutil.copyfile(tiktoken_model, tmp / "tokenizer.model")
    return Path(out)
