"""The quantization cache: a second export of the same weights, recipe and calibration text
reads the quantized model back instead of quantizing again, and writes the same bytes; a
changed input misses; a damaged or unwritable cache costs only the cache; it stays within its
size bound; --no-cache neither reads nor writes it."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from export import quant_cache
from export.cli import main
from export.pipeline import ExportConfig, run_export, verify

RECIPE = "8da4w"  # AWQ + GPTQ: calibrated, and AWQ changes the norms' float weights too


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("LLAMA_EDGE_CACHE", str(d))
    monkeypatch.delenv("LLAMA_EDGE_CACHE_MB", raising=False)
    f = tmp_path / "eval.txt"  # a few windows of the packaged evaluation text
    f.write_text(verify.QUALITY_TEXT.read_text(encoding="utf-8")[:1100], encoding="utf-8")
    monkeypatch.setattr(verify, "QUALITY_TEXT", f)
    return d


def _export(ckpt, out, log=None, **kw):
    lines = []
    st = run_export(ExportConfig(checkpoint=str(ckpt), out=out, recipe=kw.pop("recipe", RECIPE),
                                 **kw), log=lines.append)
    if log is not None:
        log.extend(lines)
    return st


def _weights_digest(out) -> str:
    return hashlib.sha256((out / "edge" / "weights.safetensors").read_bytes()).hexdigest()


def _entries(d):
    return sorted(p.name for p in d.iterdir() if (p / "entry.json").is_file()) if d.is_dir() \
        else []


def test_second_export_reads_the_cache_and_writes_the_same_artifact(tiny_ckpt, tmp_path,
                                                                    cache_dir):
    a = _export(tiny_ckpt, tmp_path / "a")
    q = a.report["quantization"]
    assert q["cache"]["hit"] is False and q["cache"]["stored"] is True
    assert _entries(cache_dir) == [q["cache"]["key"]]
    log = []
    b = _export(tiny_ckpt, tmp_path / "b", log)
    qb = b.report["quantization"]
    assert qb["cache"] == {"hit": True, "key": q["cache"]["key"],
                           "quantize_seconds": pytest.approx(q["seconds"], abs=0.01)}
    assert any("read from the cache" in line for line in log)
    assert _weights_digest(tmp_path / "a") == _weights_digest(tmp_path / "b")
    ma = json.loads((tmp_path / "a" / "edge" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "b" / "edge" / "manifest.json").read_text())
    assert ma["recipe"] == mb["recipe"]
    assert a.report["artifacts"]["edge"]["quality"] == b.report["artifacts"]["edge"]["quality"]


def test_changed_calibration_text_or_recipe_misses(tiny_ckpt, tmp_path, cache_dir):
    _export(tiny_ckpt, tmp_path / "a")
    calib = tmp_path / "calib.txt"
    calib.write_text(verify.QUALITY_TEXT.read_text(encoding="utf-8")[:4000], encoding="utf-8")
    b = _export(tiny_ckpt, tmp_path / "b", calib=calib)
    assert b.report["quantization"]["cache"]["hit"] is False
    c = _export(tiny_ckpt, tmp_path / "c", recipe="int8")
    assert c.report["quantization"]["cache"]["hit"] is False
    assert len(_entries(cache_dir)) == 3


def test_damaged_entry_is_ignored_and_rewritten(tiny_ckpt, tmp_path, cache_dir):
    a = _export(tiny_ckpt, tmp_path / "a")
    key = a.report["quantization"]["cache"]["key"]
    blob = cache_dir / key / "tensors.pt"
    blob.write_bytes(blob.read_bytes()[:100])
    log = []
    b = _export(tiny_ckpt, tmp_path / "b", log)
    assert b.report["quantization"]["cache"]["hit"] is False
    assert any("cannot be read" in line and key in line for line in log)
    assert _weights_digest(tmp_path / "a") == _weights_digest(tmp_path / "b")
    c = _export(tiny_ckpt, tmp_path / "c")  # the rewritten entry serves the next export
    assert c.report["quantization"]["cache"]["hit"] is True


def test_unwritable_cache_costs_only_the_cache(tiny_ckpt, tmp_path, cache_dir):
    cache_dir.write_text("a file where the cache directory should be")
    log = []
    st = _export(tiny_ckpt, tmp_path / "a", log)
    c = st.report["quantization"]["cache"]
    assert c["hit"] is False and c["stored"] is False
    assert any("cache not written" in line for line in log)
    assert (tmp_path / "a" / "edge" / "weights.safetensors").is_file()


def test_size_bound_removes_the_least_recently_used(tiny_ckpt, tmp_path, cache_dir,
                                                    monkeypatch):
    a = _export(tiny_ckpt, tmp_path / "a")
    key_a = a.report["quantization"]["cache"]["key"]
    size = sum(f.stat().st_size for f in (cache_dir / key_a).iterdir())
    monkeypatch.setenv("LLAMA_EDGE_CACHE_MB", str(1.5 * size / 2**20))  # room for one entry
    b = _export(tiny_ckpt, tmp_path / "b", recipe="int8")
    assert _entries(cache_dir) == [b.report["quantization"]["cache"]["key"]]


def test_no_cache_neither_reads_nor_writes(tiny_ckpt, tmp_path, cache_dir):
    r = CliRunner().invoke(main, ["export", str(tiny_ckpt), "-o", str(tmp_path / "a"),
                                  "--recipe", RECIPE, "--no-cache", "--json"])
    assert r.exit_code == 0, r.output
    assert not cache_dir.exists()
    _export(tiny_ckpt, tmp_path / "b")
    r = CliRunner().invoke(main, ["export", str(tiny_ckpt), "-o", str(tmp_path / "c"),
                                  "--recipe", RECIPE, "--no-cache", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output[r.output.index("{"):])
    assert report["quantization"]["cache"] == {"hit": False}


def test_cache_off_by_environment(tiny_ckpt, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("LLAMA_EDGE_CACHE", "off")
    assert quant_cache.cache_root() is None
    st = _export(tiny_ckpt, tmp_path / "a")
    assert st.report["quantization"]["cache"] == {"hit": False}
    assert not cache_dir.exists()
