"""Long fuzzing runs of every parser of untrusted bytes, with a results table.

    python benchmarks/fuzz.py [--runs 1000000] [--targets gguf,pte,...] [--jobs 1]

Each target (tests/fuzz/targets.py) runs under atheris from its seed corpus for `--runs`
executions (its corpus kept in build/fuzz/TARGET, so a second run continues from what the first
found). The table (benchmarks/results/fuzz.{md,json}) gives executions, time, executions per
second, coverage (libFuzzer's `cov` edges and `ft` features), corpus size and findings. A
finding is an input in build/fuzz/TARGET/findings/: copy it to tests/fuzz/regressions/TARGET/
(replayed by the test suite) and fix the parser.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "tests" / "fuzz" / "run.py"
sys.path[:0] = [str(REPO / "tests"), str(REPO)]
STAT = re.compile(r"^#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED).*?cov: (\d+) ft: (\d+) "
                  r"corp: (\d+)/", re.MULTILINE)


def run_target(name: str, runs: int, work: Path) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(RUN), name, "--runs", str(runs), "--work", str(work)],
                       capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    stats = STAT.findall(r.stderr)
    execs, cov, ft, corp = map(int, stats[-1]) if stats else (0, 0, 0, 0)
    m = re.search(r"number_of_executed_units: (\d+)", r.stderr)
    execs = int(m.group(1)) if m else execs
    findings = sorted(f.name for f in (work / "findings").iterdir())
    (work / "last_run.log").write_text(r.stderr[-20000:])
    return {"target": name, "executions": execs, "seconds": round(wall, 1),
            "exec_per_s": round(execs / wall, 1) if wall else 0, "cov": cov, "ft": ft,
            "corpus": corp, "findings": findings, "exit": r.returncode}


def main() -> int:
    from fuzz.targets import TARGETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--jobs", type=int, default=1, help="targets run at once")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fuzz")
    a = ap.parse_args()
    names = [n for n in a.targets.split(",") if n]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    previous = {}
    if a.out.with_suffix(".json").is_file():
        previous = {r["target"]: r for r in json.loads(a.out.with_suffix(".json").read_text())[
            "results"]}
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as ex:
        jobs = {n: ex.submit(run_target, n, a.runs, REPO / "build" / "fuzz" / n) for n in names}
        for n, j in jobs.items():
            r = j.result()
            previous[n] = r
            print(f"{n:12s} {r['executions']:>9d} runs {r['seconds']:>8.1f} s  cov {r['cov']:>5d} "
                  f"ft {r['ft']:>5d}  findings {len(r['findings'])}", flush=True)
    results = [previous[n] for n in TARGETS if n in previous]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(
        {"machine": platform.processor() or platform.machine(), "results": results}, indent=1))
    lines = ["# Fuzzing: every parser of untrusted bytes", "",
             ("`python benchmarks/fuzz.py --runs N` (atheris, coverage-guided; one process per "
              "target, from the seeds in tests/fuzz/corpus/)."), "",
             "| target | executions | seconds | exec/s | cov | ft | corpus | findings |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['target']} | {r['executions']:,} | {r['seconds']:,.0f} | "
                     f"{r['exec_per_s']:,.0f} | {r['cov']} | {r['ft']} | {r['corpus']} | "
                     f"{', '.join(r['findings']) or 'none'} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 1 if any(r["findings"] or r["exit"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
