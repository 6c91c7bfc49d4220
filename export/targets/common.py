"""What several targets share: the float model of an unquantized export, context and dtype
choices, sizes."""

from __future__ import annotations

from pathlib import Path

import torch

from edge.errors import EdgeError

from ..evaluate import QUALITY_CTX


def float_model(ck, max_seq_len: int = QUALITY_CTX):
    """The checkpoint as an fp32 LlamaModel (targets of an export without a recipe)."""
    from ..model import LlamaModel

    return LlamaModel.from_state_dict(ck.config, ck.tensors, torch.float32, max_seq_len=max_seq_len)


def model_to_lower(st):
    """The quantized model when a recipe ran, otherwise the checkpoint's float model."""
    return st.model if st.model is not None else float_model(st.checkpoint)


def resolve_max_context(requested: int | None, cfg, default: int) -> int:
    """--max-context, or min(model positions, the target's default); checked against the model."""
    n = requested or min(cfg.max_position_embeddings, default)
    if not 0 < n <= cfg.max_position_embeddings:
        raise EdgeError(f"--max-context {n} is outside 1..{cfg.max_position_embeddings} (the "
                        "model's positions)")
    return n


def dtype_for(ck, name: str) -> torch.dtype:
    """Dtype of unquantized weights: --dtype, where auto keeps the source's bf16 / fp16."""
    if name == "auto":
        return ck.dtype if ck.dtype in (torch.bfloat16, torch.float16) else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def chat_template(ck) -> str | None:
    """The chat template the checkpoint ships (tokenizer's, else the checkpoint's own)."""
    return (ck.tokenizer.chat_template or ck.chat_template) if ck.tokenizer else None
