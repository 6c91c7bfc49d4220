"""The fuzz targets in CI: every seed and every past finding replayed, and a short
coverage-guided run of each target (the long runs are benchmarks/fuzz.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import EdgeError
from fuzz.targets import CORPUS, REGRESSIONS, TARGETS

RUN = Path(__file__).resolve().parent / "run.py"
# Executions per target in the short run: a few seconds each, enough to pass the seeds'
# first layer of checks with mutated input.
SHORT_RUNS = 3000


@pytest.fixture(scope="module", params=sorted(TARGETS))
def target(request):
    t = TARGETS[request.param]()
    t.setup()
    yield t
    t.teardown()


def test_every_seed_is_accepted(target):
    """A seed the product refuses would start every mutation from the first error branch."""
    seeds = sorted((CORPUS / target.name).iterdir())
    assert seeds, f"no seeds for {target.name}: run tests/fuzz/seeds.py"
    for f in seeds:
        try:
            target.run(f.read_bytes())
        except EdgeError as e:
            pytest.fail(f"seed {f.name} of {target.name} is refused: {e}")


def test_past_findings_are_handled(target):
    """Inputs that once escaped as a crash or a non-EdgeError exception."""
    d = REGRESSIONS / target.name
    for f in sorted(d.iterdir()) if d.is_dir() else []:
        target(f.read_bytes())  # raises on anything but an EdgeError


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_fuzz_run(name, tmp_path):
    r = subprocess.run([sys.executable, str(RUN), name, "--runs", str(SHORT_RUNS),
                        "--work", str(tmp_path)], capture_output=True, text=True, timeout=600,
                       check=False)
    findings = list((tmp_path / "findings").iterdir())
    assert r.returncode == 0 and not findings, (
        f"fuzz target {name} found a crash ({[f.name for f in findings]}); add it to "
        f"tests/fuzz/regressions/{name}/ and fix it:\n{r.stderr[-3000:]}")
    assert f"#{SHORT_RUNS}\tDONE" in r.stderr, r.stderr[-2000:]
