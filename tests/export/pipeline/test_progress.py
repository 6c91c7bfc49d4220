"""Stage progress on a terminal: bars (with the time left) only when stderr is a terminal,
advanced by the verify stage per artifact and by the quality stage per window scored."""

from __future__ import annotations

import io
import sys

import torch

from export.pipeline import progress, verify
from export.pipeline.progress import counted, stage_bar
from export.pipeline.verify import stage_verify
from quant.recipes import load_recipe
from support.tiny import quantized
from support.verify import export_state as _state
from support.verify import serve as _serve


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_shows_the_time_left_on_a_terminal(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with stage_bar("quality", 4, "window") as bar:
        step = counted(lambda x: x * 2, bar)
        assert [step(i) for i in range(3)] == [0, 2, 4]
        assert bar.n == 3
        bar.refresh()  # tqdm redraws at most every 0.1 s on its own
    out = term.getvalue()
    assert "quality" in out and "3/4" in out
    # tqdm's "[elapsed<remaining" field: the estimated time left
    assert "<" in out.split("3/4", 1)[1]


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    assert not progress.shown()
    with stage_bar("quality", 4, "window") as bar:
        counted(lambda: None, bar)()
    assert pipe.getvalue() == ""


@torch.inference_mode()
def test_verify_draws_its_bar_on_a_terminal(monkeypatch):
    ref = quantized(load_recipe("mobile").with_algorithm("rtn"))
    _serve(monkeypatch, ref)
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bars = []

    def recorded(*args):
        bars.append(stage_bar(*args))
        return bars[-1]

    monkeypatch.setattr(verify, "stage_bar", recorded)
    stage_verify(_state(ref))
    assert "verify" in term.getvalue()
    assert [(b.n, b.total) for b in bars] == [(1, 1)]


def test_the_lowering_bar_advances_by_each_steps_share_of_the_time(monkeypatch):
    """The xnnpack lowering's bar counts percent of the lowering's time: a step's start moves it
    to the shares of the steps before it, and the time left is estimated from there."""
    import time

    from export.targets.xnnpack import LOWER_SHARES, LOWER_STEPS, lowering_progress

    assert sum(LOWER_SHARES) == 100 and len(LOWER_SHARES) == len(LOWER_STEPS)
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with stage_bar("lower:xnnpack", sum(LOWER_SHARES), "%") as bar:
        step = lowering_progress(bar)
        seen = []
        for name in LOWER_STEPS:
            step(name)
            seen.append(bar.n)
            time.sleep(0.01)
        assert seen == [sum(LOWER_SHARES[:i]) for i in range(len(LOWER_STEPS))]
    out = term.getvalue()
    assert "partition (XNNPACK)" in out and f"{LOWER_SHARES[0]}/100" in out
