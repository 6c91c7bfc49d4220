"""Determinism: the same artifact, prompt, seed and thread count give the same tokens in every
run and every process; and the thread count changes nothing either, because the kernels split
work by output rows and attention heads, never inside one sum (each logit is computed by one
thread, in the same order, whatever the number of threads)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from support import artifacts

from edge.engines.native import EdgeEngine

PROMPT = "The river rose in the night; by morning the bridge"
THREAD_COUNTS = (1, 2, 3)


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return artifacts.write(tmp_path_factory.mktemp("det") / "art")


@pytest.mark.parametrize("kv", ["f32", "int8"])
def test_logits_are_bit_identical_for_any_thread_count(art, kv):
    ids = list(range(40, 100))
    got = []
    for t in THREAD_COUNTS:
        s = EdgeEngine(art, max_context=128, threads=t, kv=kv).session()
        first = s.prefill(ids).copy()
        step = s.decode(7).copy()
        several = s.forward([9, 10, 11]).copy()
        got.append((first, step, several))
    for t, g in zip(THREAD_COUNTS[1:], got[1:]):
        for name, a, b in zip(("prefill", "decode", "3-token pass"), got[0], g):
            assert np.array_equal(a, b), f"{name} logits differ between 1 and {t} threads"


def _run(art, threads: int, seed: int) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", "-m", str(art), "--raw", "--prompt", PROMPT,
         "--temperature", "1.0", "--top-k", "0", "--seed", str(seed), "--max-new-tokens", "24",
         "--threads", str(threads), "--json"], capture_output=True, text=True, timeout=300,
        check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
def test_sampled_text_is_the_same_across_processes_and_thread_counts(smollm2_edge_int8):
    art = smollm2_edge_int8
    runs = [_run(art, t, seed=11) for t in (2, 2, 1)]
    assert runs[0]["text"] == runs[1]["text"] == runs[2]["text"]
    assert runs[0]["generated_tokens"] == 24
    # the seed does select the sample: a test that cannot tell seeds apart proves nothing
    others = {_run(art, 2, seed=s)["text"] for s in (12, 13)}
    assert others - {runs[0]["text"]}
