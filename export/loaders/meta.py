"""Meta-format checkpoints: consolidated.NN.pth + params.json (+ tokenizer.model).

Loaded with torch.load(weights_only=True, mmap=True): a pickle that tries to run code fails
without running it, and there is no fallback to an unsafe load. Names map onto the canonical HF
names; Q/K rows are converted from Meta's interleaved order in layout.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edge.config import LlamaConfig, RopeScaling
from edge.errors import CheckpointError, ConfigError

from .common import Checkpoint, check_finite, check_shapes, check_state_dict
from .layout import interleaved_to_half
from .safetensors_io import loads_strict

_LAYER = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
          "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
          "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
          "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm",
          "ffn_norm": "post_attention_layernorm"}
_TOP = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}
# Model-parallel shards split these along dim 1 (input features); everything else 2-D along
# dim 0; 1-D norms are replicated.
_SPLIT_DIM1 = ("attention.wo", "feed_forward.w2", "tok_embeddings")

# Llama 3.2's published llama3 rope scaling; params.json says only use_scaled_rope=true.
DEFAULT_ROPE_SCALING_FACTOR = 32.0


def hf_name(meta_name: str) -> str | None:
    base, _, suffix = meta_name.rpartition(".")
    if suffix != "weight":
        return None
    if base in _TOP:
        return f"{_TOP[base]}.weight"
    parts = base.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit() and parts[2] in _LAYER:
        return f"model.layers.{int(parts[1])}.{_LAYER[parts[2]]}.weight"
    return None


def _ffn_dim(dim: int, multiple_of: int, multiplier) -> int:
    hidden = int(2 * (4 * dim) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def read_params(root: Path, emb_rows: int | None) -> LlamaConfig:
    p = root / "params.json"
    try:
        d = loads_strict(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(root, "params.json is missing next to consolidated.*.pth") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(p, f"is not valid JSON ({e})") from None
    try:
        dim, heads = int(d["dim"]), int(d["n_heads"])
        vocab = int(d.get("vocab_size", -1))
        if vocab <= 0:
            vocab = emb_rows or 0
        scaling = None
        if d.get("use_scaled_rope"):
            scaling = RopeScaling(factor=float(d.get("rope_scaling_factor",
                                                     DEFAULT_ROPE_SCALING_FACTOR)))
        if heads <= 0 or dim % heads:
            raise ConfigError(f"{p}: n_heads ({heads}) must divide dim ({dim})")
        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=dim,
            intermediate_size=_ffn_dim(dim, int(d.get("multiple_of", 256)),
                                       d.get("ffn_dim_multiplier")),
            num_layers=int(d["n_layers"]), num_heads=heads,
            num_kv_heads=int(d.get("n_kv_heads") or heads), head_dim=dim // heads,
            rms_norm_eps=float(d.get("norm_eps", 1e-5)),
            rope_theta=float(d.get("rope_theta", 10000.0)), rope_scaling=scaling,
            max_position_embeddings=131072 if scaling else int(d.get("max_seq_len", 8192)),
            tie_word_embeddings=False)
        return cfg.validate(str(p))
    except KeyError as e:
        raise CheckpointError(p, f"missing required field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(p, f"has a field of the wrong type ({e})") from None
    except ConfigError as e:
        raise CheckpointError(root, str(e)) from None


def load_meta(root, load_tokenizer: bool = True) -> Checkpoint:
    root = Path(root)
    shards = sorted(root.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(root, "no consolidated.*.pth file found")
    parts = []
    for s in shards:
        try:
            parts.append(torch.load(s, map_location="cpu", weights_only=True, mmap=True))
        except Exception as e:  # unpickling refused or file corrupt: report, never fall back
            from . import looks_like

            first = str(e).strip().splitlines()[0][:240] if str(e).strip() else ""
            raise CheckpointError(s, f"cannot be loaded with weights_only=True (a corrupt file, "
                                  f"or a pickle that tries to run code): {type(e).__name__}: "
                                  f"{first}{looks_like(s)}") from None
        check_state_dict(s, parts[-1])
    names = set(parts[0])
    for s, p in zip(shards[1:], parts[1:]):
        if set(p) != names:
            raise CheckpointError(s, "holds different tensor names than " + shards[0].name)
    merged = {}
    for n in names:
        ts = [p[n] for p in parts]
        if len(ts) == 1 or ts[0].dim() <= 1:
            merged[n] = ts[0]
        else:
            try:
                merged[n] = torch.cat(ts, dim=1 if n.startswith(_SPLIT_DIM1) or
                                      any(k in n for k in _SPLIT_DIM1) else 0)
            except RuntimeError as e:  # shard slices whose shapes do not fit together
                raise CheckpointError(root, f"tensor '{n}' cannot be joined across the "
                                      f"consolidated.*.pth shards ({str(e).splitlines()[0]})"
                                      ) from None
    emb = merged.get("tok_embeddings.weight")
    cfg = read_params(root, emb.shape[0] if emb is not None and emb.dim() == 2 else None)
    tensors = {}
    for n, t in merged.items():
        if n == "rope.freqs":
            continue
        h = hf_name(n)
        if h is None:
            raise CheckpointError(root, f"unexpected tensor '{n}' in a Meta Llama checkpoint")
        tensors[h] = t
    # Meta checkpoints of tied models (Llama 3.2 1B/3B) have no output.weight.
    w1 = tensors.get("model.layers.0.mlp.gate_proj.weight")
    cfg = cfg.replace(tie_word_embeddings="lm_head.weight" not in tensors,
                      intermediate_size=w1.shape[0] if w1 is not None else cfg.intermediate_size)
    check_shapes(root, cfg, {k: tuple(v.shape) for k, v in tensors.items()})
    for k, v in tensors.items():
        check_finite(root, k, v)
        if k.endswith("q_proj.weight"):
            tensors[k] = interleaved_to_half(v, cfg.num_heads)
        elif k.endswith("k_proj.weight"):
            tensors[k] = interleaved_to_half(v, cfg.num_kv_heads)
    tok = None
    if load_tokenizer:
        from edge.tokenizer import Tokenizer
        from .hf import check_tokenizer

        tm = root / "tokenizer.model"
        if not tm.exists():
            raise CheckpointError(root, "tokenizer.model is missing next to params.json")
        tok = Tokenizer.from_tiktoken(tm)
        check_tokenizer(root, cfg, tok)
        cfg = cfg.replace(bos_token_id=tok.bos_id, eos_token_ids=tok.eos_ids)
    return Checkpoint(root, "meta", cfg, tensors, tok, None, {})
