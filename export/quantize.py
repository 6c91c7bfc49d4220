"""Quantize a loaded checkpoint with a recipe: the bridge between export/ (model, loaders) and
quant/ (which knows nothing of either)."""

from __future__ import annotations

from pathlib import Path

import torch

from edge.errors import EdgeError
from quant.apply import QuantReport, quantize
from quant.recipes import Recipe, load_recipe

from .loaders.common import Checkpoint
from .model import LlamaModel

# Which operation feeds which linears inside a decoder layer: AWQ folds its scales there.
LLAMA_AWQ_MAP = [
    ("input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
    ("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"]),
    ("mlp.up_proj", ["mlp.down_proj"]),
]
DEFAULT_CALIBRATION = Path(__file__).resolve().parents[1] / "quant" / "data" / "calibration.txt"


def calibration_ids(tokenizer, path: Path | None, windows: int, seq_len: int) -> torch.Tensor:
    """(n, seq_len) token windows from a calibration text (the packaged default if None)."""
    src = Path(path) if path else DEFAULT_CALIBRATION
    try:
        text = src.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeError(f"{src}: cannot read calibration text ({e})") from None
    if tokenizer is None:
        raise EdgeError("calibration needs the model's tokenizer; this checkpoint has none")
    ids = tokenizer.encode(text)
    if len(ids) < seq_len:
        raise EdgeError(f"{src}: calibration text has {len(ids)} tokens, fewer than one window "
                        f"of {seq_len}")
    n = min(windows, len(ids) // seq_len)
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


# Sensitivity for `auto` is measured on this many calibration windows.
AUTO_MEASURE_WINDOWS = 2
AUTO_DEFAULT_BPW = 4.5


def parse_auto(spec: str, n_params: int) -> float | None:
    """'auto' | 'auto:4.5' (bits per weight) | 'auto:60MB' -> target bits per weight."""
    if spec != "auto" and not spec.startswith("auto:"):
        return None
    arg = spec.partition(":")[2].strip().lower()
    try:
        if not arg:
            return AUTO_DEFAULT_BPW
        if arg.endswith("mb"):
            return float(arg[:-2]) * 8e6 / n_params
        return float(arg.removesuffix("bpw"))
    except ValueError:
        raise EdgeError(f"--recipe {spec}: give a size as auto:BITS (e.g. auto:4.5) or "
                        "auto:SIZEMB (e.g. auto:80MB)") from None


def quantized_model(ck: Checkpoint, recipe: Recipe | str, calib: Path | None = None,
                    progress=None, max_seq_len: int = 2048) -> tuple[LlamaModel, QuantReport]:
    """A LlamaModel of `ck` quantized with `recipe` (the fake-quant reference, computing in fp32).

    A recipe's model shares the checkpoint's tensors (quantize never writes them) and holds
    nothing but integers once quantized: peak memory is about the checkpoint plus its quantized
    bytes. `auto` rewrites weights in place while it measures, so it works on fp32 copies."""
    def factory():
        m = LlamaModel.from_state_dict(
            ck.config, {k: v.float().clone() for k, v in ck.tensors.items()},
            max_seq_len=max_seq_len)
        return m, m.model.layers

    if isinstance(recipe, str):
        target = parse_auto(recipe, ck.config.num_parameters())
        if target is not None:
            from quant.auto import auto_quantize

            measure = calibration_ids(ck.tokenizer, calib, AUTO_MEASURE_WINDOWS, 512)
            algo = calibration_ids(ck.tokenizer, calib, 16, 512)
            model, auto_report, rep = auto_quantize(factory, measure, algo, target,
                                                    LLAMA_AWQ_MAP, progress=progress)
            rep.recipe = f"auto:{target:g}"
            rep.notes.append(f"auto: {auto_report}")
            rep.auto = auto_report
            return model, rep
        recipe = load_recipe(recipe)
    model = LlamaModel.from_state_dict(ck.config, ck.tensors, None, max_seq_len=max_seq_len)
    ids = None
    if recipe.needs_calibration():
        ids = calibration_ids(ck.tokenizer, calib, recipe.calib_windows, recipe.calib_seq_len)
    rep = quantize(model, recipe, ids, blocks=model.model.layers, awq_map=LLAMA_AWQ_MAP,
                   progress=progress)
    return model, rep
