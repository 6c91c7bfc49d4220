"""The hf target: the (pruned) checkpoint as a normal Hugging Face directory, unquantized
(export/writers.py), checked by loading it back on the torch reference."""

from __future__ import annotations

import torch

from edge.errors import EdgeError

from . import Target
from .common import dir_bytes, dtype_for

NAME = "hf"


def check_request(cfg, recipe) -> None:
    if recipe.quantized:
        raise EdgeError("target hf holds unquantized weights; with --recipe use --target "
                        "edge or gguf")


def stage(st):
    """Pipeline stage lower:hf."""
    from ..writers import write_hf_into

    dest = st.workdir / NAME
    dest.mkdir()
    dtype = dtype_for(st.checkpoint, st.cfg.dtype)
    write_hf_into(st.checkpoint, dest, dtype)
    st.artifacts[NAME] = dest
    st.report.setdefault("artifacts", {})[NAME] = {
        "path": NAME, "dtype": str(dtype).removeprefix("torch."), "bytes": dir_bytes(dest),
        "exact": dtype == torch.float32 or dtype == st.checkpoint.dtype}
    return st


def artifact_logits(path, max_seq_len: int):
    from ..loaders import load_checkpoint
    from ..model import LlamaModel

    art = load_checkpoint(path)
    m = LlamaModel.from_state_dict(art.config, art.tensors, max_seq_len=max_seq_len)
    return lambda w: m(w)[0]


TARGET = Target(NAME, stage, artifact_logits, check_request)
