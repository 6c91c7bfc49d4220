"""The verify stage: every artifact is run on its own runtime and compared with the model it was
lowered from. Exact-arithmetic artifacts are held to a bound measured from the reference's own
float32 reordering spread; artifacts whose runtime rounds activations itself are held to a
logit correlation. Structural faults fail either way."""

from __future__ import annotations

import copy

import pytest
import torch

from edge.errors import EdgeError
from export.pipeline import verify
from export.pipeline.verify import logit_correlation, stage_verify
from quant.recipes import load_recipe
from support.tiny import quantized, tiny_model
from support.verify import export_state as _state
from support.verify import serve as _serve


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
    assert info["logit_correlation"] > verify.VERIFY_MIN_LOGIT_CORR
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


def _float_faults(model, fault: str):
    bad = copy.deepcopy(model)
    layers = bad.model.layers
    if fault == "swap_layers":
        layers[0], layers[1] = layers[1], layers[0]
    elif fault == "doubled_weight":
        layers[1].mlp.down_proj.weight.data *= 2
    else:  # a projection's rows reversed
        w = layers[0].self_attn.o_proj.weight
        w.data = w.data.flip(0)
    return bad


class _Reordered(torch.nn.Module):
    """The same model run token by token through its cache: the float32 sums in another order,
    as a sound exact artifact computes them."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x):
        self.m.setup_cache(max_seq_len=x.shape[1])
        try:
            return torch.cat([self.m(x[:, i:i + 1], i) for i in range(x.shape[1])], dim=1)
        finally:
            self.m.clear_cache()


@torch.inference_mode()
def test_an_exact_artifact_within_the_reordering_spread_passes(monkeypatch):
    ref = tiny_model()
    _serve(monkeypatch, _Reordered(copy.deepcopy(ref)))
    info = stage_verify(_state(ref, exact=True)).report["artifacts"]["x"]
    assert info["max_abs_logit_diff"] <= info["exact_tolerance"]
    assert info["exact_tolerance"] >= verify.VERIFY_LOGIT_ATOL_EXACT


@pytest.mark.parametrize("fault", ["swap_layers", "doubled_weight", "rows_reversed"])
@torch.inference_mode()
def test_faults_in_an_exact_artifact_fail(monkeypatch, fault):
    ref = tiny_model()
    _serve(monkeypatch, _float_faults(ref, fault))
    with pytest.raises(EdgeError, match="verification of the x artifact failed: logits differ"):
        stage_verify(_state(ref, exact=True))


def test_the_exact_bound_scales_with_the_measured_spread():
    assert verify.exact_tolerance(0.0) == verify.VERIFY_LOGIT_ATOL_EXACT
    spread = 5e-4  # a model with large logits and activations
    assert verify.exact_tolerance(spread) == pytest.approx(verify.VERIFY_SPREAD_FACTOR * spread)
