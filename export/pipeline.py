"""The export pipeline: a list of named stages, each a function from state to state, each
logged with its wall time and the process's peak memory so far.

Stages: load -> lower (one per target) -> verify (reload each artifact, compare logits with the
source) -> quality (PPL / KLD / same-top-token on the packaged evaluation text) -> report.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from edge.errors import EdgeError

from .loaders import Checkpoint, load_checkpoint

TARGETS = ("hf",)
RECIPES = ("none",)
# Verification: greedy tokens compared over this many steps on a fixed probe text, and logits
# within this absolute tolerance when the written dtype can hold the source exactly.
VERIFY_LOGIT_ATOL_EXACT = 1e-3
# The quality stage scores every artifact against the source on the packaged evaluation text
# (written for the project, independent of the calibration text) in windows of this length.
QUALITY_CTX = 256
QUALITY_TEXT = Path(__file__).resolve().parents[1] / "quant" / "data" / "eval.txt"
PROBE_TEXT = ("The library opens at nine in the morning and closes at six. On Saturdays it "
              "closes early, at one, and it is closed on Sundays and public holidays.")


@dataclass
class ExportConfig:
    checkpoint: str
    out: Path
    recipe: str = "none"
    targets: tuple[str, ...] = ("hf",)
    dtype: str = "auto"  # hf target: auto keeps the source precision
    force: bool = False
    allow_pickle: bool = False


@dataclass
class ExportState:
    cfg: ExportConfig
    workdir: Path | None = None
    checkpoint: Checkpoint | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    report: dict = field(default_factory=dict)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _dtype_for(ck: Checkpoint, name: str) -> torch.dtype:
    if name == "auto":
        return ck.dtype if ck.dtype in (torch.bfloat16, torch.float16) else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def stage_load(st: ExportState) -> ExportState:
    st.checkpoint = load_checkpoint(st.cfg.checkpoint, allow_pickle=st.cfg.allow_pickle)
    ck = st.checkpoint
    st.report["model"] = {"source": str(ck.path), "format": ck.format,
                          "parameters": ck.config.num_parameters(),
                          "config": ck.config.to_hf_dict(), "notes": ck.notes}
    return st


def stage_lower_hf(st: ExportState) -> ExportState:
    from .writers import write_hf_into

    dest = st.workdir / "hf"
    dest.mkdir()
    dtype = _dtype_for(st.checkpoint, st.cfg.dtype)
    write_hf_into(st.checkpoint, dest, dtype)
    st.artifacts["hf"] = dest
    size = sum(p.stat().st_size for p in dest.iterdir())
    st.report.setdefault("artifacts", {})["hf"] = {
        "path": "hf", "dtype": str(dtype).removeprefix("torch."), "bytes": size,
        "exact": dtype == torch.float32 or dtype == st.checkpoint.dtype}
    return st


@torch.inference_mode()
def stage_verify(st: ExportState) -> ExportState:
    """Reload every artifact and compare it with the in-memory reference."""
    from .model import LlamaModel

    ck = st.checkpoint
    ids = ck.tokenizer.encode(PROBE_TEXT) if ck.tokenizer is not None else list(range(1, 33))
    x = torch.tensor([ids])
    ref = LlamaModel.from_state_dict(ck.config, ck.tensors, max_seq_len=len(ids) + 1)
    ref_logits = ref(x)[0]
    for name, path in st.artifacts.items():
        art = load_checkpoint(path)
        m = LlamaModel.from_state_dict(art.config, art.tensors, max_seq_len=len(ids) + 1)
        got = m(x)[0]
        agree = float((got.argmax(-1) == ref_logits.argmax(-1)).float().mean())
        diff = float((got - ref_logits).abs().max())
        info = st.report["artifacts"][name]
        info.update(verify_tokens=len(ids), top1_agreement=round(agree, 4),
                    max_abs_logit_diff=diff)
        if info["exact"] and diff > VERIFY_LOGIT_ATOL_EXACT:
            raise EdgeError(f"verification of the {name} artifact failed: logits differ by "
                            f"{diff:.3g} (> {VERIFY_LOGIT_ATOL_EXACT}) from the source")
        if agree < 0.9:
            raise EdgeError(f"verification of the {name} artifact failed: only "
                            f"{agree:.0%} of top-1 tokens agree with the source")
    return st


@torch.inference_mode()
def stage_quality(st: ExportState) -> ExportState:
    """PPL, mean KLD and same-top-token rate of every artifact against the source."""
    from quant.eval import compare

    from .evaluate import read_text
    from .model import LlamaModel

    ck = st.checkpoint
    if ck.tokenizer is None:
        st.report["quality"] = "skipped: the checkpoint has no tokenizer"
        return st
    ids = ck.tokenizer.encode(read_text(QUALITY_TEXT))
    ref = LlamaModel.from_state_dict(ck.config, ck.tensors, max_seq_len=QUALITY_CTX)
    ref_fn = lambda w: ref(w)[0]  # noqa: E731
    for name, path in st.artifacts.items():
        art = load_checkpoint(path)
        m = LlamaModel.from_state_dict(art.config, art.tensors, max_seq_len=QUALITY_CTX)
        r = compare(lambda w: m(w)[0], ref_fn, ids, QUALITY_CTX)
        st.report["artifacts"][name]["quality"] = {**r.to_json(), "text": QUALITY_TEXT.name}
    return st


def stage_report(st: ExportState) -> ExportState:
    (st.workdir / "export_report.json").write_text(json.dumps(st.report, indent=2) + "\n")
    return st


def build_stages(cfg: ExportConfig) -> list[tuple[str, Callable[[ExportState], ExportState]]]:
    for t in cfg.targets:
        if t not in TARGETS:
            raise EdgeError(f"unknown target {t!r}; available: {', '.join(TARGETS)}")
    if cfg.recipe not in RECIPES:
        raise EdgeError(f"unknown recipe {cfg.recipe!r}; available: {', '.join(RECIPES)}")
    stages = [("load", stage_load)]
    if "hf" in cfg.targets:
        stages.append(("lower:hf", stage_lower_hf))
    stages += [("verify", stage_verify), ("quality", stage_quality), ("report", stage_report)]
    return stages


def run_export(cfg: ExportConfig, log: Callable[[str], None] = print) -> ExportState:
    from .writers import atomic_dir

    stages = build_stages(cfg)  # validate the request before any work
    st = ExportState(cfg)
    inputs = (cfg.checkpoint,) if Path(cfg.checkpoint).exists() else ()
    with atomic_dir(cfg.out, cfg.force, inputs=inputs) as tmp:
        st.workdir = tmp
        timings = st.report.setdefault("stages", [])
        t_all = time.perf_counter()
        for name, fn in stages:
            t0 = time.perf_counter()
            st = fn(st)
            dt = time.perf_counter() - t0
            timings.append({"stage": name, "seconds": round(dt, 3),
                            "peak_rss_mb": round(peak_rss_mb(), 1)})
            log(f"[{name:<10}] {dt:7.2f} s   peak RSS {peak_rss_mb():8.1f} MB")
        st.report["total_seconds"] = round(time.perf_counter() - t_all, 3)
        stage_report(st)
    st.artifacts = {k: Path(cfg.out) / v.name for k, v in st.artifacts.items()}
    st.workdir = Path(cfg.out)
    return st
