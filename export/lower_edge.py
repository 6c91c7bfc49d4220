"""Lower a (possibly quantized) LlamaModel to the edge artifact: every weight in the kernels'
layout (edge/packing.py), written by edge/artifact.py."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edge.artifact import ACT_INT8, ACTS, TensorEntry
from edge.errors import EdgeError
from edge.packing import from_canonical, from_float
from quant.apply import QuantEmbedding, QuantLinear
from quant.schemes import QuantizedTensor

from .model import LlamaModel

FLOAT_KINDS = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def packed_quant(qt: QuantizedTensor, act_int8: bool, name: str):
    """A canonical quantized tensor in the kernels' layout (row sums when act_int8)."""
    fp8 = qt.scheme.startswith("fp8")
    values = qt.qdata.view(torch.uint8) if fp8 else qt.qdata
    zp = None if qt.zero_point is None else qt.zero_point.numpy()
    try:
        return from_canonical(values.numpy(), qt.scale.numpy(), zp, qt.bits, qt.group_size,
                              fp8=fp8, act_int8=act_int8)
    except ValueError as e:
        raise EdgeError(f"tensor '{name}' ({qt.scheme}) cannot be stored for the edge kernels: "
                        f"{e}") from None


def _act(module, name: str) -> str | None:
    act = getattr(module, "act", None)
    return None if act is None else act_name(act, name)


def act_name(act, name: str) -> str:
    """The artifact's name of an activation scheme the edge kernels implement."""
    if act.name not in ACTS:
        raise EdgeError(f"'{name}': the edge kernels do not implement activation quantization "
                        f"{act.name}; they implement {' and '.join(ACTS)}")
    return act.name


def edge_weights(model: LlamaModel, float_dtype: torch.dtype):
    """(weights, norms) of an fp32 LlamaModel whose linears / embedding may be quantized."""
    cfg = model.config
    weights: dict[str, TensorEntry] = {}
    norms: dict[str, np.ndarray] = {}
    kind = FLOAT_KINDS[float_dtype]
    names = [k.removesuffix(".weight") for k in cfg.expected_shapes()]
    if "lm_head" not in names:
        names.append("lm_head")
    mods = {n: model.get_submodule(n) for n in names}
    tied = cfg.tie_word_embeddings
    emb_qt = getattr(mods["model.embed_tokens"], "qt", None)
    head = mods["lm_head"]
    head_act = _act(head, "lm_head")
    for n, m in mods.items():
        if n == "lm_head" and tied:
            head_qt = getattr(head, "qt", None)
            if head_qt is not emb_qt:
                raise EdgeError("lm_head is tied to the embedding but quantized differently; "
                                "the edge artifact stores tied weights once")
            weights[n] = TensorEntry(None, head_qt.scheme if head_qt is not None else kind,
                                     head_act, tied_to="model.embed_tokens")
            continue
        if isinstance(m, (QuantLinear, QuantEmbedding)):
            act = _act(m, n)
            needs_rowsum = act == ACT_INT8 or (tied and n == "model.embed_tokens"
                                               and head_act == ACT_INT8)
            weights[n] = TensorEntry(packed_quant(m.qt, bool(needs_rowsum), n), m.qt.scheme, act)
        elif isinstance(m, (nn.Linear, nn.Embedding)):
            w = m.weight.detach().to(float_dtype).float().numpy()
            weights[n] = TensorEntry(from_float(w, kind), kind, None)
        else:  # RMSNorm
            norms[n] = m.weight.detach().float().numpy().copy()
    if tied and head_act and not isinstance(mods["model.embed_tokens"], QuantEmbedding):
        raise EdgeError("lm_head quantizes its activations but the tied embedding is not "
                        "quantized to integers")
    return weights, norms
