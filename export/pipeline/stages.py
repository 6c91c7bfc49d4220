"""The export pipeline: a list of named stages, each a function from state to state, each
logged with its wall time and its own peak resident memory.

Stages: load -> prune (when --prune is given) -> quantize (when a recipe is given) -> lower (one
per target, export/targets) -> verify and quality (export/pipeline/verify.py) -> report. The
request is checked whole before any work: targets, recipe (parsed once), pruning spec, memory.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
from pathlib import Path
from typing import Callable

from edge.errors import EdgeError
from edge.memory import (peak_rss_mb, reset_peak_rss, return_free_memory, reusing_heap,
                         rss_mb)

from .. import targets
from ..loaders import load_checkpoint
from ..quantize import parse_recipe
from .config import ExportConfig, ExportState
from .memory import check_memory, source_weight_bytes
from .verify import stage_quality, stage_reference, stage_verify


def stage_load(st: ExportState) -> ExportState:
    st.checkpoint = load_checkpoint(st.cfg.checkpoint, allow_pickle=st.cfg.allow_pickle)
    ck = st.checkpoint
    weights = sum(t.numel() * t.element_size() for t in ck.tensors.values())
    params = ck.config.num_parameters()
    need = check_memory(st.cfg, weights, params, held_bytes=int(rss_mb() * 2**20))
    st.report["model"] = {"source": str(ck.path), "format": ck.format, "parameters": params,
                          "config": ck.config.to_hf_dict(), "notes": ck.notes}
    if need is not None:
        st.report["memory_estimate_mb"] = round(need / 2**20, 1)
    return st


def stage_prune(st: ExportState) -> ExportState:
    from ..pruning import parse_prune, prune_checkpoint

    spec = parse_prune(st.cfg.prune, st.cfg.prune_method)
    st.checkpoint, rep = prune_checkpoint(st.checkpoint, spec, st.cfg.calib,
                                          heal_steps=st.cfg.heal_steps,
                                          heal_budget=st.cfg.heal_budget)
    st.report["pruning"] = rep.to_json()
    st.report["model"]["pruned_parameters"] = rep.params_after
    return st


def stage_quantize(st: ExportState) -> ExportState:
    from ..quantize import quantized_model
    from .progress import stage_bar

    ck = st.checkpoint
    bar = stage_bar(f"quantize ({st.recipe.label})", ck.config.num_layers, "layer")

    def progress(i, n):
        bar.total = n
        bar.n = i
        bar.refresh()

    try:
        with reusing_heap():
            model, rep = quantized_model(ck, st.recipe, st.cfg.calib, progress=progress,
                                         cache=st.cfg.cache, log=st.log)
    finally:
        bar.close()
    st.model, st.applied = model, rep.applied
    if rep.cache.get("hit"):
        st.log(f"quantization read from the cache ({rep.cache['key'][:16]}..., computed in "
               f"{rep.cache['quantize_seconds']:.1f} s; --no-cache to quantize again)")
    st.report["quantization"] = {"recipe": rep.recipe, "seconds": round(rep.seconds, 2),
                                 **rep.totals(), "notes": rep.notes, "cache": rep.cache}
    if rep.auto:  # what auto chose per unit, and each tensor's scheme as applied
        st.report["quantization"]["auto"] = rep.auto
        st.report["quantization"]["schemes"] = {
            r.pattern: r.config.name for r in rep.applied.rules if r.config is not None}
    return st


def release_source(st: ExportState) -> None:
    """Drop the checkpoint's float tensors (shapes and dtypes stay, on the meta device) when
    every target lowers from the quantized model and the checkpoint can be read again (it was
    not pruned in memory): lowering then holds the quantized model, not both. The quality stage
    reads them back (source_tensors)."""
    if st.model is None or st.cfg.prune or \
            not all(targets.get(t).from_quantized for t in st.cfg.targets):
        return
    ck = st.checkpoint
    ck.tensors = {k: v.to("meta") for k, v in ck.tensors.items()}


def source_tensors(st: ExportState) -> dict:
    """The checkpoint's float tensors, read again if release_source dropped them."""
    if not st.checkpoint.tensors["model.embed_tokens.weight"].is_meta:
        return st.checkpoint.tensors
    return load_checkpoint(st.cfg.checkpoint, allow_pickle=st.cfg.allow_pickle).tensors


def stage_report(st: ExportState) -> ExportState:
    (st.workdir / "export_report.json").write_text(json.dumps(st.report, indent=2) + "\n")
    return st


Stage = Callable[[ExportState], ExportState]


def build_stages(cfg: ExportConfig) -> tuple[ExportState, list[tuple[str, Stage]]]:
    """The initial state (with the parsed recipe) and the stages of `cfg`, after checking the
    whole request: a bad target, recipe, combination or pruning spec fails before any work."""
    if not cfg.targets:
        raise EdgeError(f"no target given; available: {', '.join(targets.TARGETS)}")
    chosen = [targets.get(t) for t in cfg.targets]
    st = ExportState(cfg, recipe=parse_recipe(cfg.recipe))
    if st.recipe.is_auto:
        from quant.schemes import DynamicInt8Act

        if any(t.name != "edge" for t in chosen):  # 5- and 6-bit weights run on edge only
            st.recipe = dataclasses.replace(st.recipe, auto_widths=(4, 8))
        else:  # the edge runtime's fast products: 8-bit activations in blocks of 32
            st.recipe = dataclasses.replace(
                st.recipe, auto_act=DynamicInt8Act(symmetric=True, group_size=32))
    for t in chosen:
        t.check_request(cfg, st.recipe)
    stages: list[tuple[str, Stage]] = [("load", stage_load)]
    if cfg.prune:
        from ..pruning import parse_prune

        parse_prune(cfg.prune, cfg.prune_method)
        stages.append(("prune", stage_prune))
    if st.recipe.quantized:
        stages += [("quantize", stage_quantize), ("reference", stage_reference)]
    stages += [(f"lower:{t.name}", t.stage) for t in chosen]
    stages += [("verify", stage_verify), ("quality", stage_quality), ("report", stage_report)]
    return st, stages


def run_export(cfg: ExportConfig, log: Callable[[str], None] = print) -> ExportState:
    st, stages = build_stages(cfg)  # validate the request before any work
    st.log = log
    check_memory(cfg, source_weight_bytes(cfg.checkpoint), None)  # and again once loaded
    inputs = (cfg.checkpoint,) if Path(cfg.checkpoint).exists() else ()
    # Objects alive before the export (imported modules, the caller's) are left out of the
    # collections between stages, which then scan only what the export made: each collection
    # of an interpreter holding torch had taken about 0.2 s. Not during lowering (below).
    gc.freeze()
    try:
        return _run_stages(cfg, st, stages, inputs)
    finally:
        gc.unfreeze()


def _run_stages(cfg: ExportConfig, st: ExportState, stages, inputs) -> ExportState:
    from edge.atomic import atomic_dir

    with atomic_dir(cfg.out, cfg.force, inputs=inputs) as tmp:
        st.workdir = tmp
        timings = st.report.setdefault("stages", [])
        t_all = time.perf_counter()
        overall = peak_rss_mb()
        for name, fn in stages:
            reset_peak_rss()
            t0 = time.perf_counter()
            # A lowering that traces the model makes millions of objects, and frozen objects
            # do not count towards the collector's own thresholds: with them frozen it ran
            # full collections so often that the 30-layer XNNPACK lowering took 14 % longer.
            lowering = name.startswith("lower:")
            if lowering:
                gc.unfreeze()
            st = fn(st)
            return_free_memory()
            if lowering:
                gc.freeze()
            dt = time.perf_counter() - t0
            peak, now = peak_rss_mb(), rss_mb()
            overall = max(overall, peak)
            timings.append({"stage": name, "seconds": round(dt, 3),
                            "peak_rss_mb": round(peak, 1), "rss_after_mb": round(now, 1)})
            st.log(f"[{name:<10}] {dt:7.2f} s   peak RSS {peak:8.1f} MB   (after: {now:.0f} MB)")
        st.report["total_seconds"] = round(time.perf_counter() - t_all, 3)
        st.report["peak_rss_mb"] = round(overall, 1)
        if st.deferred_errors:
            st.report["errors"] = list(st.deferred_errors)
        stage_report(st)
    st.artifacts = {k: Path(cfg.out) / v.relative_to(st.workdir) for k, v in st.artifacts.items()}
    st.workdir = Path(cfg.out)
    if st.deferred_errors:
        raise EdgeError(st.deferred_errors[0])
    return st
