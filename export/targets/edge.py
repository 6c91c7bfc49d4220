"""The edge target: a (possibly quantized) LlamaModel lowered to the edge artifact, every weight
in the kernels' layout (edge/packing.py), written by edge/artifact.py and run by the edge
kernels (edge/engines/native.py) for verification."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edge.artifact import ACT_INT8, ACTS, TensorEntry
from edge.errors import EdgeError
from edge.packing import from_canonical, from_float
from quant.apply import QuantEmbedding, QuantLinear
from quant.schemes import QuantizedTensor

from ..model import LlamaModel
from . import Target
from .common import dir_bytes, dtype_for, model_to_lower, resolve_max_context

NAME = "edge"
DEFAULT_MAX_CONTEXT = 4096

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


def check_request(cfg, recipe) -> None:
    """Refuse what the edge kernels cannot run, before any work: activation schemes they do
    not implement."""
    if recipe.recipe is None:
        return
    for rule in recipe.recipe.rules:
        if rule.config is not None and rule.config.act is not None:
            act_name(rule.config.act, rule.pattern)


def stage(st):
    """Pipeline stage lower:edge."""
    from edge.artifact import write_artifact_into
    from edge.chat import detect_chat_format
    from edge.sampling import sampling_defaults

    ck = st.checkpoint
    if ck.tokenizer is None:
        raise EdgeError(f"{ck.path}: the edge artifact needs the model's tokenizer and this "
                        "checkpoint has none; add tokenizer.json to the checkpoint directory")
    dest = st.workdir / NAME
    dest.mkdir()
    weights, norms = edge_weights(model_to_lower(st), dtype_for(ck, st.cfg.dtype))
    max_ctx = resolve_max_context(st.cfg.max_context, ck.config, DEFAULT_MAX_CONTEXT)
    write_artifact_into(dest, ck.config, weights, norms, ck.tokenizer,
                        detect_chat_format(ck.tokenizer), max_ctx, recipe=st.recipe_record,
                        generation=sampling_defaults(ck.generation))
    kinds = sorted({w.packed.kind for w in weights.values() if w.packed is not None})
    st.artifacts[NAME] = dest
    # Quantized activations make the model itself sensitive to rounding: a value next to a
    # rounding boundary goes either way with the order of float sums, so the kernels match the
    # reference statistically (top-1 agreement, KLD in the quality stage), not to a tolerance.
    st.report.setdefault("artifacts", {})[NAME] = {
        "path": NAME, "dtype": "+".join(kinds), "bytes": dir_bytes(dest), "max_context": max_ctx,
        "exact": not any(w.act for w in weights.values())}
    return st


def artifact_logits(path, max_seq_len: int):
    from edge.engines.native import EdgeEngine

    sess = EdgeEngine(path, max_context=max_seq_len, threads=torch.get_num_threads()).session()
    return lambda w: torch.from_numpy(sess.logits_all(w[0].tolist()))


TARGET = Target(NAME, stage, artifact_logits, check_request, from_quantized=True)
