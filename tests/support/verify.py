"""The verify stage on a stand-in target: an export state around a tiny model, and a target 'x'
whose runtime is a given torch model (shared by the verify and progress tests)."""

from __future__ import annotations

from pathlib import Path

from export.loaders.common import Checkpoint
from export.pipeline import ExportConfig, ExportState, verify
from export.targets import Target
from support.tiny import CFG, tiny_tokenizer


def export_state(model, exact: bool = False) -> ExportState:
    ck = Checkpoint(Path("tiny"), "random", CFG, {}, tiny_tokenizer())
    st = ExportState(ExportConfig(checkpoint="tiny", out=Path("o")), checkpoint=ck, model=model)
    st.artifacts = {"x": Path("x")}
    st.report["artifacts"] = {"x": {"exact": exact}}
    return st


def serve(monkeypatch, model) -> None:
    """Target 'x' whose runtime is `model`."""
    # the tiny byte-level tokenizer makes the probe text longer than the tiny model's context
    monkeypatch.setattr(verify, "PROBE_TEXT", verify.PROBE_TEXT[:100])
    spec = Target("x", None, lambda path, n: (lambda w: model(w)[0]))
    monkeypatch.setattr(verify.targets, "get", lambda name: spec)
