"""llama-edge-bench, the standalone bench program (edge/csrc/tools/bench_main.cpp) for boards
without Python: on a bench bundle (edge/bench_bundle.py) it computes what the Python runtime
computes (the same kernels and forward pass: greedy tokens equal, on this host and on aarch64
under qemu-user) and writes records of the same schema."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge.bench import artifact_digest, prompt_ids, record_problems
from edge.bench_bundle import write_bundle
from support.generation import greedy

REPO = Path(__file__).resolve().parents[2]
GREEDY = 6
ARM_GREEDY = 3  # emulated: fewer steps
PROMPT = 8
RUN_TIMEOUT = 600


def _sources() -> list[str]:
    """The runtime and kernel sources CMakeLists.txt lists (without the Python bindings)."""
    text = (REPO / "CMakeLists.txt").read_text()
    srcs = re.findall(r"edge/csrc/[\w/]+\.cpp", text)
    return [str(REPO / s) for s in srcs if not s.endswith("bindings.cpp")]


@pytest.fixture(scope="module")
def host_bench(tmp_path_factory) -> Path:
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    out = tmp_path_factory.mktemp("bench-bin") / "llama-edge-bench"
    cmd = ["g++", "-std=c++20", "-O2", "-fno-math-errno", "-I", str(REPO / "edge" / "csrc"),
           str(REPO / "edge/csrc/tools/bench_main.cpp"), *_sources(), "-o", str(out), "-lpthread"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def bundle(smollm2_edge_int8, tmp_path_factory) -> Path:
    return write_bundle(smollm2_edge_int8, tmp_path_factory.mktemp("bundle") / "smol.lebench")


def _run(cmd: list) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)


@pytest.fixture(scope="module")
def python_greedy(smollm2_edge_int8) -> list[int]:
    from edge.engines.native import EdgeEngine

    eng = EdgeEngine(smollm2_edge_int8, max_context=64)
    return greedy(eng.session(), prompt_ids(PROMPT, eng.config.vocab_size), GREEDY)


def test_greedy_tokens_equal_the_python_runtime(host_bench, bundle, python_greedy):
    r = _run([host_bench, "-m", bundle, "--greedy", GREEDY, "-p", PROMPT, "--ctx", 64])
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["prompt"] == prompt_ids(PROMPT, 49152)  # the ids llama-edge bench draws
    assert got["tokens"] == python_greedy


def test_records_have_the_schema(host_bench, bundle, smollm2_edge_int8):
    r = _run([host_bench, "-m", bundle, "-p", "8", "-n", "2", "-d", "0,40", "-r", "2",
              "--warmup", "0", "--ctx", "48", "-t", "1", "--board", "static-host"])
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["n_prompt"], x["n_gen"], x["n_depth"]) for x in rows] == [
        (8, 0, 0), (8, 0, 40), (0, 2, 0), (0, 2, 40)]
    for x in rows:
        assert not record_problems(x), record_problems(x)
        assert x["artifact_sha256"] == artifact_digest(str(smollm2_edge_int8))
        assert x["board"] == "static-host" and x["n_threads"] == 1 and x["recipe"] == "int8"
    ok = {(x["n_prompt"], x["n_depth"]): x for x in rows}
    assert ok[(8, 0)]["status"] == "ok" and len(ok[(8, 0)]["samples_ns"]) == 2
    # 40 + 8 fits 48 positions; tg at depth 40 needs 40 + 2 + 1
    assert ok[(8, 40)]["status"] == "ok"
    assert ok[(0, 40)]["status"] == "ok"


def test_a_test_past_the_context_is_a_failed_row(host_bench, bundle):
    r = _run([host_bench, "-m", bundle, "-p", "16", "-n", "0", "-d", "40", "-r", "1",
              "--warmup", "0", "--ctx", "48"])
    row = json.loads(r.stdout)
    assert row["status"] == "failed" and "raise --ctx" in row["error"]
    assert not record_problems(row)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"NOTBENCH" + b[8:], "not a bench bundle"),
    (lambda b: b[: len(b) // 2], "past the end of the file"),
    (lambda b: b[:12], "too short"),
])
def test_bad_bundle_is_refused_in_one_line(host_bench, bundle, tmp_path, damage, message):
    bad = tmp_path / "bad.lebench"
    bad.write_bytes(damage(bundle.read_bytes()))
    r = _run([host_bench, "-m", bad, "-p", "8", "-n", "0", "-r", "1"])
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1
    assert str(bad) in r.stderr and message in r.stderr


def test_bad_option_is_refused(host_bench, bundle):
    r = _run([host_bench, "-m", bundle, "-p", "8,x"])
    assert r.returncode == 2 and "-p: 'x' is not a whole number" in r.stderr


def test_bundle_command_writes_and_refuses(smollm2_edge_int8, bundle, tmp_path):
    import sys

    cli = [sys.executable, "-m", "edge.cli", "bundle", "-m", str(smollm2_edge_int8), "-o"]
    r = subprocess.run([*cli, str(tmp_path / "b.lebench")], capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "b.lebench").read_bytes() == bundle.read_bytes()
    r = subprocess.run([*cli, str(tmp_path / "no" / "dir" / "b.lebench")], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "cannot write the bench bundle" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not list(tmp_path.rglob("*.partial-*"))


def test_tied_weights_are_stored_once(bundle, smollm2_edge_int8):
    header = bundle.read_bytes()[16:16 + 100_000].decode(errors="replace")
    emb = re.search(r"^tensor model\.embed_tokens \S+ \S+ \S+ \S+ \S+ (\S+)", header, re.M)
    head = re.search(r"^tensor lm_head \S+ \S+ \S+ \S+ \S+ (\S+)", header, re.M)
    assert emb.group(1) == head.group(1)  # SmolLM2 ties them: one copy in the file
    assert bundle.stat().st_size < 1.05 * sum(
        f.stat().st_size for f in Path(smollm2_edge_int8).iterdir())


@pytest.mark.slow
def test_aarch64_static_program_equals_python(arm64, bundle, python_greedy):
    """The statically linked aarch64 program (scripts/setup_arm64.sh) under qemu-user, on a
    Cortex-A53 (no dot product instructions)."""
    r = _run(["qemu-aarch64", "-cpu", "cortex-a53", arm64 / "llama-edge-bench", "-m", bundle,
              "--greedy", ARM_GREEDY, "-p", PROMPT, "--ctx", 64, "-t", 2])
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["isa"] == "neon" and got["tokens"] == python_greedy[:ARM_GREEDY]
