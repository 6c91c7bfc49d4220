"""benchmarks/tasks.py end to end on tiny artifacts: the speed table with speculation on and off
(same text), the prefix cache's TTFT record, and the fidelity section scoring each artifact
against the float reference (the reference scored against itself is a perfect match, another
model is not)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import tasks as bench  # noqa: E402

from support.artifacts import write  # noqa: E402

CTX = 512  # the tiny tokenizer spends a token per byte of the task prompts
DOC = ("Cork opened in 1912 with 14 berths.\n\n"
       "The council spent 2.4 million in 1988.")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks_bench")
    docs = root / "docs"
    docs.mkdir()
    (docs / "harbour.txt").write_text(DOC, encoding="utf-8")
    (docs / "short.txt").write_text("Riga added 3 ferries in 2003.", encoding="utf-8")
    ref = write(root / "ref", max_context=CTX)
    other = write(root / "other", seed=3, max_context=CTX)
    out = root / "out"
    code = bench.main(["-m", str(ref), "--name", "tiny", "--threads", "1", "--repeat", "1",
                       "--ctx", str(CTX), "--docs", str(docs), "--out", str(out), "--reference", str(ref),
                       "--fidelity", f"same={ref}", "--fidelity", f"other={other}"])
    data = json.loads((out / "tasks_tiny.json").read_text())
    return code, data, (out / "tasks_tiny.md").read_text()


def test_speed_rows_and_same_text(report):
    _, data, md = report
    assert len(data["results"]) == 2 * len(bench.cases())
    assert all(r["same_text"] for r in data["results"])
    assert "| harbour.txt | rewrite |" in md


def test_prefix_cache_record(report):
    pc = report[1]["prefix_cache"]
    assert 0 < pc["cached_share_median"] < 1
    assert pc["cold_ttft_median_s"] > 0 and pc["warm_ttft_same_prompt_median_s"] > 0


def test_fidelity_scores_the_reference_as_itself_and_another_model_below_it(report):
    fid = report[1]["fidelity"]
    same = [r for r in fid["rows"] if r["artifact"] == "same"]
    other = [r for r in fid["rows"] if r["artifact"] == "other"]
    assert len(same) == len(other) == 2 * 2  # two documents x (summarize, rewrite)
    assert all(r["rouge_l"] == 1.0 and r["token_match"] == 1.0 for r in same)
    assert min(r["token_match"] for r in other) < 1.0
    summary = fid["summary"]
    assert summary["same / defaults"]["facts_recall"] == \
        summary["float (reference) / defaults"]["facts_recall"]
    assert {"float (reference) / greedy", "other / defaults"} <= set(summary)
    assert "## Fidelity to the float model" in report[2]
