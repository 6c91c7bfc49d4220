"""The verify stage: every artifact is run on its own runtime and compared with the model it was
lowered from; artifacts whose runtime rounds activations itself are held to a logit correlation,
which a structural fault in the artifact falls below."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from edge.errors import EdgeError
from export import pipeline
from export.loaders.common import Checkpoint
from export.pipeline import ExportConfig, ExportState, logit_correlation, stage_verify
from quant.recipes import load_recipe

sys.path.insert(0, str(Path(__file__).parent))
from test_lower_gguf import CFG, quantized, tiny_tokenizer  # noqa: E402


def _state(model) -> ExportState:
    ck = Checkpoint(Path("tiny"), "random", CFG, {}, tiny_tokenizer())
    st = ExportState(ExportConfig(checkpoint="tiny", out=Path("o")), checkpoint=ck, model=model)
    st.artifacts = {"x": Path("x")}
    st.report["artifacts"] = {"x": {"exact": False}}
    return st


def _serve(monkeypatch, model):
    # the tiny byte-level tokenizer makes the probe text longer than the tiny model's context
    monkeypatch.setattr(pipeline, "PROBE_TEXT", pipeline.PROBE_TEXT[:100])
    monkeypatch.setattr(pipeline, "artifact_logits",
                        lambda name, path, n: (lambda w: model(w)[0]))


@torch.inference_mode()
def test_a_sound_artifact_passes_and_is_reported(monkeypatch):
    ref = quantized(load_recipe("mobile").with_algorithm("rtn"))
    noisy = copy.deepcopy(ref)  # a runtime's own rounding: small, everywhere
    g = torch.Generator().manual_seed(0)
    for m in noisy.modules():
        if hasattr(m, "qt"):
            m.qt.scale = m.qt.scale * (1 + 0.02 * torch.randn(m.qt.scale.shape, generator=g))
    _serve(monkeypatch, noisy)
    st = stage_verify(_state(ref))
    info = st.report["artifacts"]["x"]
    assert info["logit_correlation"] > pipeline.VERIFY_MIN_LOGIT_CORR
    assert {"top1_agreement", "max_abs_logit_diff", "verify_tokens"} <= set(info)
    assert st.model is None  # dropped after its last use (keep_model is off)


@pytest.mark.parametrize("fault", ["swap_layers", "rows_reversed"])
@torch.inference_mode()
def test_a_structurally_wrong_artifact_is_rejected(monkeypatch, fault):
    ref = quantized(load_recipe("mobile").with_algorithm("rtn"))
    bad = copy.deepcopy(ref)
    if fault == "swap_layers":
        bad.model.layers[0], bad.model.layers[1] = bad.model.layers[1], bad.model.layers[0]
    else:
        qt = bad.model.layers[1].mlp.down_proj.qt
        qt.qdata, qt.scale = qt.qdata.flip(0), qt.scale.flip(0)
    _serve(monkeypatch, bad)
    with pytest.raises(EdgeError, match="verification of the x artifact failed: its logits "
                                        "correlate"):
        stage_verify(_state(ref))


def test_logit_correlation_is_scale_and_shift_free():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 50, generator=g)
    assert logit_correlation(a * 3 + 7, a) == pytest.approx(1.0)
    assert abs(logit_correlation(torch.randn(5, 50, generator=g), a)) < 0.3
