"""Quantize a loaded checkpoint with a recipe: the bridge between export/ (model, loaders) and
quant/ (which knows nothing of either)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edge.errors import EdgeError
from quant.apply import QuantReport, quantize
from quant.recipes import Recipe, Rule, load_recipe

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


@dataclass(frozen=True)
class RecipeChoice:
    """--recipe, parsed once: no quantization, a fixed recipe (preset or file), or `auto` with
    a size target (bits per weight, or megabytes of quantized weights)."""

    text: str
    recipe: Recipe | None = None  # the fixed recipe
    auto_bits: float | None = None  # auto:BITS
    auto_megabytes: float | None = None  # auto:SIZEMB
    # weight bit widths auto may choose: 5- and 6-bit weights only where every target holds
    # them (the edge runtime; build_stages narrows this for the others)
    auto_widths: tuple[int, ...] = (4, 5, 6, 8)
    # auto's activation handling: weight-only (None), or 8-bit dynamic activations for every
    # linear, the output layer included (build_stages: blocks of 32, the edge runtime's form,
    # when the edge runtime is the only target)
    auto_act: object = None

    @property
    def quantized(self) -> bool:
        return self.recipe is not None or self.is_auto

    @property
    def is_auto(self) -> bool:
        return self.auto_bits is not None or self.auto_megabytes is not None

    def target_bpw(self, n_params: int) -> float:
        """auto's size target in bits per weight for a model of n_params parameters."""
        if self.auto_megabytes is not None:
            return self.auto_megabytes * 8e6 / n_params
        return self.auto_bits

    @property
    def label(self) -> str:
        return self.recipe.name if self.recipe is not None else self.text


NO_RECIPE = RecipeChoice("none")


def parse_recipe(text: str) -> RecipeChoice:
    """'none' | a preset name | a recipe .json | 'auto' | 'auto:4.5' (bits per weight) |
    'auto:60MB' (megabytes); a bad name, file or size fails here, before any work."""
    text = str(text).strip()
    if text == "none":
        return NO_RECIPE
    if text == "auto" or text.startswith("auto:"):
        arg = text.partition(":")[2].strip().lower()
        try:
            if not arg:
                return RecipeChoice(text, auto_bits=AUTO_DEFAULT_BPW)
            if arg.endswith("mb"):
                mb = float(arg[:-2])
                if mb > 0:
                    return RecipeChoice(text, auto_megabytes=mb)
            else:
                bits = float(arg.removesuffix("bpw"))
                if 1 <= bits <= 16:
                    return RecipeChoice(text, auto_bits=bits)
        except ValueError:
            pass
        raise EdgeError(f"--recipe {text}: give a size as auto:BITS (bits per weight, 1..16, "
                        "e.g. auto:4.5) or auto:SIZEMB (e.g. auto:80MB)")
    return RecipeChoice(text, recipe=load_recipe(text))


def applied_recipe(model: nn.Module, choice: RecipeChoice) -> Recipe:
    """The rules a quantized model was given, one per quantized module by its exact name (for
    `auto`, the schemes it chose): what the artifacts record as their recipe."""
    from quant.apply import QuantEmbedding, QuantLinear

    rules = tuple(Rule(n, m.config) for n, m in model.named_modules()
                  if isinstance(m, (QuantLinear, QuantEmbedding)))
    base = choice.recipe
    return Recipe(choice.label, rules, kv_cache=base.kv_cache if base else None,
                  description=base.description if base else f"chosen by --recipe {choice.text}")


def quantized_model(ck: Checkpoint, recipe: RecipeChoice | Recipe | str,
                    calib: Path | None = None, progress=None,
                    max_seq_len: int = 2048, cache: bool = False,
                    log=None) -> tuple[LlamaModel, QuantReport]:
    """A LlamaModel of `ck` quantized with `recipe` (the fake-quant reference, computing in fp32).

    A recipe's model shares the checkpoint's tensors (quantize never writes them) and holds
    nothing but integers once quantized: peak memory is about the checkpoint plus its quantized
    bytes. `auto` rewrites weights in place while it measures, so it works on fp32 copies.
    The report's `applied` is the recipe as applied (applied_recipe); its `cache` says whether
    the quantization came from the cache (export/quant_cache.py; used when `cache` is true)."""
    from . import quant_cache

    if isinstance(recipe, str):
        recipe = parse_recipe(recipe)
    choice = recipe if isinstance(recipe, RecipeChoice) else RecipeChoice(recipe.name, recipe)
    if not choice.quantized:
        raise EdgeError("quantized_model needs a recipe other than 'none'")
    if choice.is_auto:
        target = choice.target_bpw(ck.config.num_parameters())
        calib_ids = [calibration_ids(ck.tokenizer, calib, AUTO_MEASURE_WINDOWS, 512),
                     calibration_ids(ck.tokenizer, calib, 16, 512)]
        recipe_key = {"auto": target, "widths": list(choice.auto_widths),
                      "act": choice.auto_act.name if choice.auto_act is not None else None}
    else:
        r = choice.recipe
        calib_ids = [calibration_ids(ck.tokenizer, calib, r.calib_windows, r.calib_seq_len)] \
            if r.needs_calibration() else []
        recipe_key = r.to_dict()
    key = model = None
    if cache and quant_cache.cache_root() is not None:
        key = quant_cache.cache_key(ck.tensors, ck.config.to_hf_dict(), recipe_key, calib_ids,
                                    max_seq_len)
        model = LlamaModel.from_state_dict(ck.config, ck.tensors, None, max_seq_len=max_seq_len)
        t0 = time.perf_counter()
        cached = quant_cache.load(key, model, log)
        if cached is not None:
            rep = QuantReport(cached["recipe"], cached["modules"], time.perf_counter() - t0,
                              cached["notes"], cached.get("auto"),
                              {"hit": True, "key": key, "quantize_seconds": cached["seconds"]})
            rep.applied = applied_recipe(model, choice)
            return model, rep
    t0 = time.perf_counter()
    if choice.is_auto:
        from quant.auto import auto_quantize

        def factory():
            m = LlamaModel.from_state_dict(
                ck.config, {k: v.float().clone() for k, v in ck.tensors.items()},
                max_seq_len=max_seq_len)
            return m, m.model.layers

        model, auto_report, rep = auto_quantize(factory, calib_ids[0], calib_ids[1], target,
                                                LLAMA_AWQ_MAP, act=choice.auto_act,
                                                progress=progress, widths=choice.auto_widths)
        rep.recipe = f"auto:{target:g}"
        rep.notes.append(f"auto: {auto_report}")
        rep.auto = auto_report
        rep.seconds = time.perf_counter() - t0  # the measurement included
    else:
        if model is None:  # (a cache miss left the float model it was looked up for)
            model = LlamaModel.from_state_dict(ck.config, ck.tensors, None,
                                               max_seq_len=max_seq_len)
        rep = quantize(model, r, calib_ids[0] if calib_ids else None, blocks=model.model.layers,
                       awq_map=LLAMA_AWQ_MAP, progress=progress)
    rep.applied = applied_recipe(model, choice)
    rep.cache = {"hit": False}
    if key is not None:
        saved = {"recipe": rep.recipe, "modules": rep.modules, "seconds": rep.seconds,
                 "notes": rep.notes, "auto": rep.auto}
        where = quant_cache.store(key, model, ck.tensors, saved, log)
        rep.cache = {"hit": False, "key": key, "stored": where is not None}
    return model, rep
