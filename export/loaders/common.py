"""The in-memory form every loader produces, and the checks every loader shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from edge.config import LlamaConfig
from edge.errors import CheckpointError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class Checkpoint:
    """config + canonical tensors (HF names, HF Q/K order) + tokenizer + chat template."""

    path: Path
    format: str  # "hf" | "meta" | "gguf" | "random"
    config: LlamaConfig
    tensors: dict[str, torch.Tensor]
    tokenizer: object | None = None  # edge.tokenizer.Tokenizer
    chat_template: str | None = None
    generation: dict = field(default_factory=dict)  # defaults: temperature, top_p, ...
    notes: list[str] = field(default_factory=list)

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors["model.embed_tokens.weight"].dtype

    def nbytes(self) -> int:
        seen, n = set(), 0
        for t in self.tensors.values():
            if id(t) not in seen:
                seen.add(id(t))
                n += t.numel() * t.element_size()
        return n


def check_shapes(path, cfg: LlamaConfig, shapes: dict[str, tuple], dtypes: dict[str, str]
                 | None = None, ignore=("rotary_emb.inv_freq",)) -> None:
    """Compare tensor names/shapes (from headers, before loading data) with the config."""
    if cfg.num_layers > len(shapes):  # a layer count no file of these tensors can hold: said
        # before the expected names (9 per layer) are listed
        have = {int(n.split(".")[2]) for n in shapes
                if n.startswith("model.layers.") and n.split(".")[2].isdigit()}
        first = next(i for i in range(len(have) + 1) if i not in have)
        raise CheckpointError(path, f"tensor 'model.layers.{first}.input_layernorm.weight' is "
                              f"missing: the config says {cfg.num_layers} layers, the file has "
                              f"{len(shapes)} tensors")
    expected = cfg.expected_shapes()
    names = {n for n in shapes if not any(n.endswith(s) for s in ignore)}
    if cfg.tie_word_embeddings and "lm_head.weight" in names:
        names.discard("lm_head.weight")  # checked for equality by resolve_tied
        if tuple(shapes["lm_head.weight"]) != (cfg.vocab_size, cfg.hidden_size):
            raise CheckpointError(path, f"tensor 'lm_head.weight' has shape "
                                  f"{list(shapes['lm_head.weight'])}, the config implies "
                                  f"{[cfg.vocab_size, cfg.hidden_size]}")
    missing = sorted(set(expected) - names)
    if missing:
        hint = ""
        if missing == ["lm_head.weight"]:
            hint = (" (config.json says tie_word_embeddings=false; set it to true if the "
                    "output layer shares the embedding)")
        raise CheckpointError(path, f"tensor '{missing[0]}' is missing"
                              f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}"
                              f"{hint}")
    extra = sorted(names - set(expected))
    if extra:
        if any(("scale" in n or "qweight" in n or "zeros" in n) for n in extra):
            raise CheckpointError(path, f"tensor '{extra[0]}' shows an already-quantized "
                                  "checkpoint; supported inputs are unquantized bf16/fp16/fp32 "
                                  "HF or Meta checkpoints, or GGUF files")
        raise CheckpointError(path, f"unexpected tensor '{extra[0]}' for a Llama model with "
                              f"{cfg.num_layers} layers (config and tensors disagree)")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise CheckpointError(path, f"tensor '{name}' has shape {list(shapes[name])}, the "
                                  f"config implies {list(shape)}")
    for name, dt in (dtypes or {}).items():
        if name in expected and dt not in ("F32", "F16", "BF16"):
            raise CheckpointError(path, f"tensor '{name}' has dtype {dt}; only F32/F16/BF16 "
                                  "weights are accepted (already quantized checkpoints are not "
                                  "supported as input)")


def check_state_dict(path, sd) -> None:
    """weights_only=True still unpickles any container of plain values (lists, ints, nested
    dicts); accept only {str: tensor} before anything calls tensor methods on the values."""
    if not isinstance(sd, dict):
        raise CheckpointError(path, f"does not hold a state dict (found a {type(sd).__name__})")
    for k, v in sd.items():
        if not isinstance(k, str):
            raise CheckpointError(path, f"state dict key {k!r} is not a tensor name")
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(path, f"entry '{k}' is a {type(v).__name__}, not a tensor "
                                  "(expected a flat state dict of tensors)")


# Elements checked per step: isfinite's temporaries stay small on a 128k x 2048 table.
FINITE_CHUNK = 1 << 24


def check_finite(path, name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES or not t.numel():
        return
    flat = t.reshape(-1)
    if not all(bool(torch.isfinite(flat[i:i + FINITE_CHUNK]).all())
               for i in range(0, flat.numel(), FINITE_CHUNK)):
        n = int((~torch.isfinite(t)).sum())
        raise CheckpointError(path, f"tensor '{name}' contains {n} NaN/Inf values; the "
                              "checkpoint is corrupt")


def resolve_tied(path, cfg: LlamaConfig, tensors: dict, has_lm_head: bool) -> None:
    """Honour tie_word_embeddings: drop a redundant identical lm_head, refuse a conflicting one."""
    if cfg.tie_word_embeddings and has_lm_head:
        lm, emb = tensors.pop("lm_head.weight"), tensors["model.embed_tokens.weight"]
        if lm.shape != emb.shape or not torch.equal(lm, emb):
            raise CheckpointError(path, "config says tie_word_embeddings=true but "
                                  "'lm_head.weight' differs from the embedding; set "
                                  "tie_word_embeddings to false to keep a separate output layer")
