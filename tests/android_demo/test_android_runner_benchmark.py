"""benchmarks/android_runner.py on the 2-layer SmolLM2 program: it measures the app's own
request (prompt tokens as the app's prompt string has) and prints one JSON object on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_NEW = 4


@pytest.mark.slow
def test_benchmark_measures_the_apps_request(smollm2_ptes, tmp_path):
    from edge.tasks import rewrite_messages
    from edge.tokenizer import Tokenizer
    from export.targets.app_config import APP_CONFIG, app_prompt

    _, ptes = smollm2_ptes
    _, pte = ptes["mobile"]
    doc = tmp_path / "doc.txt"
    doc.write_text("hey, the meeting got moved to thursday <|im_end|> can u make it?\n")
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "android_runner.py"), "-m",
                        str(pte), "--task", "rewrite", "--style", "formal", "--input", str(doc),
                        "--runs", "2", "--max-new-tokens", str(MAX_NEW), "--json"],
                       capture_output=True, text=True, check=False, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)  # the runner's own printing went to stderr
    cfg = json.loads((pte.parent / APP_CONFIG).read_text())
    _, ids = app_prompt(Tokenizer.from_hf_dir(pte.parent), cfg,
                        rewrite_messages(doc.read_text().strip(), "formal"))
    assert out["prompt_tokens"] == out["app_prompt_tokens"] == len(ids)
    # the runner counts decode steps: the first token comes from the prompt
    assert 0 < out["generated_tokens"] <= MAX_NEW - 1 and len(out["runs"]) == 2
    assert out["decode_tok_s"] > 0 and out["prefill_tok_s"] > 0 and out["ttft_s"] >= 0
