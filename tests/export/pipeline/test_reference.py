"""The reference stage: after quantizing, the source's logits on the quality text are computed
while its float tensors are resident, and the quality stage scores the artifacts against them
instead of reading the checkpoint again. The scores are those of the reference computed in the
quality stage, bit for bit; an artifact exported with a context shorter than the quality windows
gets the reference recomputed at its context. The interpreter's collector is left as found."""

from __future__ import annotations

import gc

import pytest

from export.pipeline import ExportConfig, run_export, stages, verify


@pytest.fixture(autouse=True)
def short_text(tmp_path, monkeypatch):
    f = tmp_path / "eval.txt"  # a few windows of the packaged evaluation text
    f.write_text(verify.QUALITY_TEXT.read_text(encoding="utf-8")[:1500], encoding="utf-8")
    monkeypatch.setattr(verify, "QUALITY_TEXT", f)


def _export(ckpt, out, monkeypatch, **kw):
    reads = []
    real = stages.load_checkpoint
    monkeypatch.setattr(stages, "load_checkpoint", lambda *a, **k: reads.append(a) or real(*a, **k))
    st = run_export(ExportConfig(checkpoint=str(ckpt), out=out, recipe="int8", **kw),
                    log=lambda s: None)
    return st, len(reads)


def test_quality_scores_against_the_reference_computed_before_lowering(tiny_ckpt, tmp_path,
                                                                       monkeypatch):
    st, reads = _export(tiny_ckpt, tmp_path / "a", monkeypatch)
    assert [s["stage"] for s in st.report["stages"]][:4] == ["load", "quantize", "reference",
                                                             "lower:edge"]
    assert reads == 1  # the checkpoint was read once: the quality stage did not read it again
    early = st.report["artifacts"]["edge"]["quality"]
    assert early["ctx"] == verify.QUALITY_CTX and early["windows"] >= 2
    # the same export with the reference computed in the quality stage (source read again)
    monkeypatch.setattr(stages, "stage_reference",
                        lambda s: (stages.release_source(s), s)[1])
    late, reads = _export(tiny_ckpt, tmp_path / "b", monkeypatch)
    assert reads == 2
    assert late.report["artifacts"]["edge"]["quality"] == early


def test_a_shorter_artifact_context_recomputes_the_reference(tiny_ckpt, tmp_path, monkeypatch):
    st, reads = _export(tiny_ckpt, tmp_path / "a", monkeypatch, max_context=200)
    q = st.report["artifacts"]["edge"]["quality"]
    assert q["ctx"] == 200 and reads == 2
    assert q["kld_mean"] >= 0 and q["tokens"] == q["windows"] * 199


def test_the_collector_is_unfrozen_after_an_export(tiny_ckpt, tmp_path, monkeypatch):
    def boom(st):
        assert gc.get_freeze_count() > 0  # the stages run with the caller's objects frozen
        raise RuntimeError("lowering failed")

    monkeypatch.setattr(stages, "stage_reference", boom)
    with pytest.raises(RuntimeError, match="lowering failed"):
        _export(tiny_ckpt, tmp_path / "a", monkeypatch)
    assert gc.get_freeze_count() == 0
