"""The export's memory: an estimate of its peak refuses, before any expensive stage, an export
this machine cannot hold (and writes nothing); the quality stage scores artifacts against
reference logits kept on disk, so the source's float weights are freed before any artifact's
runtime loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.config import PRESETS
from edge.errors import EdgeError
import dataclasses

from export.pipeline import memory, stages, verify
from export.targets import edge as edge_target
from export.cli import main
from export.pipeline import ExportConfig, run_export


# The tiny checkpoint's estimated peak is PEAK_FIXED_BYTES plus a little: this much available
# memory is too little for it, and far more than the test process needs.
TOO_LITTLE = 10 * 2**20


@pytest.fixture(autouse=True)
def short_quality_text(tmp_path, monkeypatch):
    """A few windows of the packaged evaluation text (byte-level tokenizer: a token per byte)."""
    f = tmp_path.parent / f"{tmp_path.name}-eval.txt"
    f.write_text(verify.QUALITY_TEXT.read_text(encoding="utf-8")[:1100], encoding="utf-8")
    monkeypatch.setattr(verify, "QUALITY_TEXT", f)


def test_estimate_for_the_3b_shape_names_sizes_and_the_way_out(monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 8 * 10**9)
    cfg = ExportConfig(checkpoint="preset:llama3.2-3b", out=Path("unused"), recipe="mobile")
    with pytest.raises(EdgeError) as e:
        memory.check_memory(cfg, memory.source_weight_bytes(cfg.checkpoint), None)
    weights = 2 * PRESETS["llama3.2-3b"].num_parameters()
    need = memory.PEAK_PER_WEIGHT_BYTE * weights + memory.PEAK_FIXED_BYTES
    msg = str(e.value)
    assert f"needs about {need / 1e9:.1f} GB" in msg and f"{weights / 1e9:.2f} GB of weights" in msg
    assert "8.0 GB is available" in msg and "--skip-memory-check" in msg
    # what the process already holds counts as available (the check after loading)
    assert memory.check_memory(cfg, weights, None, held_bytes=10**10) == int(need)


def test_refused_before_loading_and_nothing_written(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: TOO_LITTLE)
    monkeypatch.setattr(stages, "load_checkpoint", lambda *a, **k: pytest.fail("loaded"))
    out = tmp_path / "out"
    with pytest.raises(EdgeError, match="needs about"):
        run_export(ExportConfig(checkpoint=str(tiny_ckpt), out=out), log=lambda s: None)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_checked_again_with_the_loaded_size(tiny_ckpt, tmp_path, monkeypatch):
    """A source whose size on disk says nothing (here: unknown) is checked once loaded, before
    quantizing."""
    monkeypatch.setattr(stages, "source_weight_bytes", lambda ck: None)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: TOO_LITTLE)
    monkeypatch.setattr(stages, "rss_mb", lambda: 0.0)
    monkeypatch.setattr(stages, "stage_quantize", lambda st: pytest.fail("quantized"))
    out = tmp_path / "out"
    with pytest.raises(EdgeError, match="needs about"):
        run_export(ExportConfig(checkpoint=str(tiny_ckpt), out=out, recipe="int8"),
                   log=lambda s: None)
    assert not out.exists()


def test_cli_refuses_then_runs_with_skip(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: TOO_LITTLE)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["export", str(tiny_ckpt), "-o", str(out), "--max-context",
                                  "256"])
    assert r.exit_code != 0 and "needs about" in r.output and not out.exists()
    r = CliRunner().invoke(main, ["export", str(tiny_ckpt), "-o", str(out), "--max-context",
                                  "256", "--skip-memory-check", "--json"])
    assert r.exit_code == 0, r.output
    assert (out / "edge" / "manifest.json").is_file()


def test_quality_stage_frees_the_reference_before_any_artifact_runs(tiny_ckpt, tmp_path,
                                                                    monkeypatch):
    """No reference model is alive while an artifact is loaded and scored in the quality stage
    (scoring against spilled logits equals scoring against the live reference: tested in
    tests/quant/test_recipes_apply.py)."""
    import gc
    import weakref

    from export import model as model_mod
    from export.model import LlamaModel

    live: list[weakref.ref] = []
    orig = edge_target.TARGET.artifact_logits
    in_quality = []

    real = model_mod.reference_model

    def reference_model(*a, **k):
        m = real(*a, **k)
        live.append(weakref.ref(m))
        return m

    def artifact_logits(path, n):
        if n == verify.QUALITY_CTX:
            gc.collect()
            in_quality.append([r() for r in live if isinstance(r(), LlamaModel)])
        return orig(path, n)

    monkeypatch.setattr(model_mod, "reference_model", reference_model)
    monkeypatch.setattr(edge_target, "TARGET",
                        dataclasses.replace(edge_target.TARGET, artifact_logits=artifact_logits))
    st = run_export(ExportConfig(checkpoint=str(tiny_ckpt), out=tmp_path / "out",
                                 recipe="int8", max_context=256), log=lambda s: None)
    assert in_quality == [[]]  # the edge artifact, scored with no reference model alive
    q = st.report["artifacts"]["edge"]["quality"]
    assert 0 < q["kld_mean"] < 0.05 and q["windows"] >= 3


def test_each_stage_reports_its_own_peak(tiny_ckpt, tmp_path, monkeypatch):
    """A stage's transient allocation shows in that stage's peak, not in the next one's; the
    report keeps the whole export's peak."""
    if not stages.reset_peak_rss():
        pytest.skip("the peak resident memory cannot be reset on this system")
    big = 300  # MB, far above the tiny stages' own footprint
    real = edge_target.TARGET.stage

    def lower_with_transient(st):
        buf = bytearray(big * 2**20)  # zero-filled: resident
        del buf
        return real(st)

    monkeypatch.setattr(edge_target, "TARGET",
                        dataclasses.replace(edge_target.TARGET, stage=lower_with_transient))
    st = run_export(ExportConfig(checkpoint=str(tiny_ckpt), out=tmp_path / "out",
                                 max_context=256), log=lambda s: None)
    peaks = {x["stage"]: x["peak_rss_mb"] for x in st.report["stages"]}
    after = {x["stage"]: x["rss_after_mb"] for x in st.report["stages"]}
    assert peaks["lower:edge"] >= after["load"] + 0.9 * big
    assert peaks["report"] < peaks["lower:edge"] - 0.5 * big
    assert st.report["peak_rss_mb"] >= max(peaks.values())
