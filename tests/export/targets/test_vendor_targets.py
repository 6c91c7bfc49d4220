"""The vendor NPU targets (qnn, mediatek) without their SDKs: the static chunk program against
the model, the vendor-quantized program's simulated quality in the export report, the saved
program reloaded, the missing-SDK and not-a-valid-SDK errors, refused recipes before any work,
and the MediaTek quantizer loaded without the compiler packages."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch

from edge.errors import EdgeError
from export.targets import mediatek as lower_mediatek, qnn as lower_qnn, vendor
from export.targets.gguf import write_gguf
from export.model import LlamaModel, RMSNorm
from export.model.static import StaticProgram
from export.pipeline import ExportConfig, build_stages, run_export
from quant.eval import compare
from support.tiny import CFG, tiny_model, tiny_tokenizer

MODULES = {"qnn": lower_qnn, "mediatek": lower_mediatek}
# The float static program (chunks of 32 over a 128-position cache, the last chunk padded)
# against LlamaModel on the same ids: the same fp32 math in another order. Measured: 7.4e-6.
STATIC_FLOAT_ATOL = 1e-4
# Simulated vendor programs on the tiny model (16-bit activations, 4-bit transformer linears,
# 8-bit output layer) against the float model on the short evaluation text. Measured: mean KLD
# qnn 0.0016 / mediatek 0.0012, top-1 0.68 / 0.65 (a random model's flat distributions make
# top-1 fragile; KLD is the measure).
TINY_KLD_MAX = 0.01
# Logits of the reloaded program against the float model on the probe ids. Measured: max abs
# difference qnn 0.29 / mediatek 0.24 (logits of magnitude ~10).
TINY_LOGIT_ATOL = 1.0
CONTEXT = 256  # --max-context of the test exports: one past chunk plus one chunk of 128
SDK_VARS = ("QNN_SDK_ROOT", "MEDIATEK_SDK_ROOT")


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """Short calibration and evaluation texts (byte-level tokenizer: one token per byte)."""
    from export.evaluate import QUALITY_TEXT
    from export.quantize import DEFAULT_CALIBRATION

    d = tmp_path_factory.mktemp("texts")
    calib, ev = d / "calib.txt", d / "eval.txt"
    calib.write_text(DEFAULT_CALIBRATION.read_text(encoding="utf-8")[:600], encoding="utf-8")
    ev.write_text(QUALITY_TEXT.read_text(encoding="utf-8")[:800], encoding="utf-8")
    return calib, ev


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.gguf"
    write_gguf(tiny_model(), tiny_tokenizer(), path, torch.float32)
    return path


@pytest.fixture(scope="module")
def no_sdk_env():
    with pytest.MonkeyPatch.context() as mp:
        for v in SDK_VARS:
            mp.delenv(v, raising=False)
        yield mp


def _export(ckpt, out, target, texts, **kw):
    calib, ev = texts
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("export.evaluate.QUALITY_TEXT", ev)
        with pytest.raises(EdgeError) as e:
            run_export(ExportConfig(checkpoint=str(ckpt), out=out, targets=(target,),
                                    calib=calib, max_context=CONTEXT, **kw), log=lambda s: None)
    return str(e.value)


@pytest.fixture(scope="module")
def exports(tiny_ckpt, texts, tmp_path_factory, no_sdk_env):
    root = tmp_path_factory.mktemp("vendor")
    return {t: (root / t, _export(tiny_ckpt, root / t, t, texts)) for t in MODULES}


# ------------------------------------------------------------------------------ static program
@pytest.mark.parametrize("fused_norm", [True, False])
@torch.no_grad()
def test_static_program_matches_the_model(fused_norm):
    m = LlamaModel.from_state_dict(CFG, tiny_model().state_dict(), max_seq_len=128)
    static = StaticProgram(m, 32, 128, fused_norm).eval()
    ids = torch.randint(0, CFG.vocab_size, (1, 100), generator=torch.Generator().manual_seed(0))
    got = torch.from_numpy(vendor.chunk_runner(static, CFG, 32, 128).logits_all(ids[0].tolist()))
    assert got.shape == (100, CFG.vocab_size)
    assert float((got - m(ids)[0]).abs().max()) < STATIC_FLOAT_ATOL
    with pytest.raises(EdgeError, match="exceed the static program's context of 128"):
        vendor.chunk_runner(static, CFG, 32, 128).logits_all([0] * 129)
    assert not any(n.fused for n in m.modules() if isinstance(n, RMSNorm))  # m is untouched


# ------------------------------------------------------------------------------ without the SDK
@pytest.mark.parametrize("target", list(MODULES))
def test_export_without_sdk_reports_simulated_quality_then_fails(exports, target):
    out, msg = exports[target]
    mod = MODULES[target]
    assert "\n" not in msg and msg.startswith(f"{target}: ")
    assert "is not installed" in msg and mod.SDK_VAR in msg and mod.SDK_NAME in msg
    for version in mod.SDK_VERSION.split(", "):
        assert version in msg
    assert str(out / target) in msg and "simulated mean KLD" in msg
    rep = json.loads((out / "export_report.json").read_text())
    assert rep["errors"] == [msg]
    info = rep["artifacts"][target]
    assert info["compiled"] is False and info["exact"] is False
    assert info["sdk"]["present"] is False and info["sdk"]["variable"] == mod.SDK_VAR
    assert info["sdk"]["version"] == mod.SDK_VERSION
    q = info["quality"]
    assert q["simulated"] is True and math.isfinite(q["kld_mean"])
    assert 0 <= q["kld_mean"] < TINY_KLD_MAX
    assert info["reload_max_abs_logit_diff"] <= vendor.RELOAD_ATOL
    assert info["bytes"] == sum(p.stat().st_size for p in (out / target).iterdir())
    meta = json.loads((out / target / "program.json").read_text())
    assert meta["chunk"] == vendor.CHUNK and meta["context"] == CONTEXT
    assert meta["quantization"]["lm_head"] == "int8_pc"
    assert meta["quantization"]["layers"] == (["int4_b32"] if target == "qnn" else ["int4_pc"])
    assert os.environ.get("QNN_SDK_ROOT") is None  # the quantizer's stand-in value is gone


@pytest.mark.parametrize("target", list(MODULES))
@torch.no_grad()
def test_saved_program_reloads_with_the_reported_quality(exports, texts, target):
    out, _ = exports[target]
    rep = json.loads((out / "export_report.json").read_text())
    prog = vendor.load_program(out / target / "model_quantized.pt2")
    # HTP quantizes RMSNorm as one operator; rounding each of its steps to 16 bits broke
    # SmolLM2 (mean KLD 8.9). MediaTek's quantizer matches the spelled-out form as a unit.
    norms = [n for n in prog.graph.nodes if n.target == torch.ops.aten.rms_norm.default]
    assert len(norms) == (2 * CFG.num_layers + 1 if target == "qnn" else 0)
    runner = vendor.chunk_runner(prog, CFG, vendor.CHUNK, CONTEXT)

    def run(w):
        return torch.from_numpy(runner.logits_all(w[0].tolist()))

    tok = tiny_tokenizer()
    ids = tok.encode(texts[1].read_text(encoding="utf-8"))
    ref = LlamaModel.from_state_dict(CFG, tiny_model().state_dict(), max_seq_len=CONTEXT)
    r = compare(run, lambda w: ref(w)[0], ids, CONTEXT)
    assert r.kld_mean == pytest.approx(rep["artifacts"][target]["quality"]["kld_mean"],
                                       abs=1e-6)
    probe = torch.tensor([ids[:200]])
    a, b = run(probe), run(probe)
    assert torch.equal(a, b)
    assert float((a - ref(probe)[0]).abs().max()) < TINY_LOGIT_ATOL


def test_corrupt_program_is_one_line_error(tmp_path):
    bad = tmp_path / "model_quantized.pt2"
    bad.write_bytes(b"PK\x03\x04 not an archive")
    with pytest.raises(EdgeError) as e:
        vendor.load_program(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------ SDK checks
def test_qnn_export_with_an_empty_sdk_dir(tiny_ckpt, texts, tmp_path, monkeypatch):
    fake = tmp_path / "qnn-sdk"
    fake.mkdir()
    monkeypatch.setenv("QNN_SDK_ROOT", str(fake))
    msg = _export(tiny_ckpt, tmp_path / "out", "qnn", texts)
    assert f"not a valid SDK at {fake}" in msg and "libQnnHtp.so" in msg
    assert (tmp_path / "out" / "qnn" / "model_quantized.pt2").is_file()


@pytest.mark.parametrize("target", list(MODULES))
def test_sdk_variable_pointing_to_an_empty_dir(target, tmp_path, monkeypatch):
    mod = MODULES[target]
    monkeypatch.setenv(mod.SDK_VAR, str(tmp_path))
    st = mod.sdk_status()
    assert not st.present and f"not a valid SDK at {tmp_path}" in st.problem
    monkeypatch.setenv(mod.SDK_VAR, str(tmp_path / "missing"))
    assert "not a valid SDK at" in mod.sdk_status().problem


def test_mediatek_sdk_dir_with_wheels_says_what_to_install(tmp_path, monkeypatch):
    for name in ("mtk_converter-8.13.0+public-cp310-cp310-manylinux_2_17_x86_64.whl",
                 "mtk_neuron-8.2.23-py3-none-linux_x86_64.whl"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("MEDIATEK_SDK_ROOT", str(tmp_path))
    p = lower_mediatek.sdk_status().problem
    assert p.startswith("the MediaTek NeuroPilot Express SDK at") and "pip install" in p
    assert str(tmp_path / "mtk_neuron-8.2.23-py3-none-linux_x86_64.whl") in p


def test_qnn_sdk_version_is_the_one_executorch_downloads():
    from executorch.backends.qualcomm.scripts.download_qnn_sdk import QNN_VERSION

    assert lower_qnn.SDK_VERSION == QNN_VERSION


@pytest.mark.optional("the NeuroPilot packages: when installed, the check does not apply")
def test_mediatek_quantizer_loads_without_the_compiler_packages():
    pkg = "executorch.backends.mediatek"
    mod = lower_mediatek.quantizer_module()
    assert mod.NeuropilotQuantizer is not None and mod.Precision.A16W4 is not None
    if lower_mediatek._sdk_importable():
        pytest.skip("the NeuroPilot packages are installed here")
    assert pkg not in sys.modules
    with pytest.raises(ModuleNotFoundError, match="mtk_"):
        __import__(pkg)


# ------------------------------------------------------------------------------ requests
def _recipe_file(tmp_path, weight: dict) -> str:
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"name": "r", "rules": [
        {"pattern": "*", "config": {"weight": weight}}]}))
    return str(p)


@pytest.mark.parametrize("target", list(MODULES))
@pytest.mark.parametrize("recipe,message", [
    ("fp8", "integer weights only"),
    ("auto", "not auto"),
    ("auto:4.5", "not auto:4.5"),
    ({"type": "int", "bits": 4, "group_size": 24}, "groups of 24"),
])
def test_unsupported_recipes_fail_before_any_work(target, recipe, message, tmp_path):
    if isinstance(recipe, dict):
        recipe = _recipe_file(tmp_path, recipe)
    cfg = ExportConfig(checkpoint=str(tmp_path / "no-such-model"), out=tmp_path / "o",
                       recipe=recipe, targets=(target,))
    with pytest.raises(EdgeError, match=message) as e:
        build_stages(cfg)
    assert "\n" not in str(e.value) and f"--target {target}" in str(e.value)
    with pytest.raises(EdgeError, match=message):
        run_export(cfg, log=lambda s: None)  # the request fails, not the missing checkpoint
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("target", list(MODULES))
def test_context_without_past_positions_is_refused(target, tmp_path):
    cfg = ExportConfig(checkpoint="x", out=tmp_path / "o", targets=(target,),
                       max_context=vendor.CHUNK)
    with pytest.raises(EdgeError, match="leaves no past positions"):
        build_stages(cfg)


def test_recipes_choose_weight_bits(tmp_path):
    from quant.recipes import load_recipe

    r = load_recipe("int4-g128")
    qnn, qnotes = vendor.weight_plan("qnn", r, block_weights=True)
    mtk, mnotes = vendor.weight_plan("mediatek", r, block_weights=False)
    layer = "model.layers.3.mlp.down_proj"
    assert qnn(layer) == vendor.WeightSpec(4, 128) and qnn("lm_head") == vendor.WeightSpec(8)
    assert mtk(layer) == vendor.WeightSpec(4) and mtk("lm_head") == vendor.WeightSpec(8)
    assert any("algorithm is not applied" in n for n in qnotes)
    assert any("no groups" in n for n in mnotes) and not any("no groups" in n for n in qnotes)
    default, _ = vendor.weight_plan("qnn", None, block_weights=True)
    assert default(layer) == vendor.WeightSpec(4, vendor.DEFAULT_BLOCK)
    assert default("lm_head") == vendor.WeightSpec(8)
    keep = load_recipe(_recipe_file(tmp_path, {"type": "int", "bits": 8}))
    assert vendor.weight_plan("qnn", keep, True)[0]("lm_head") == vendor.WeightSpec(8, 32)
