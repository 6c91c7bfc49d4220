"""Speed of the tasks with and without prompt-lookup speculation, on the documents the repository
ships (benchmarks/data/tasks/, the project's own text).

    python benchmarks/tasks.py -m build/bench/smollm2-int8/edge --name smollm2 --threads 2

For every document and case (summarize; rewrite in the formal style with the task's decoding
defaults; the same rewrite with plain greedy decoding, repetition penalty 1.0) the task runs
with --speculative off and lookup in alternation, --repeat times each, on one loaded model (one
runner per mode, each with its own prefix cache, both warmed by one run first). Reports per case
the median and minimum wall time, the minimum process CPU time (user + sys of all threads),
the speedups (off / lookup) by each, generated tokens, verification passes, acceptance rate,
and same_text: every lookup run's text equals the off run's. Writes
benchmarks/results/tasks_NAME.{json,md}.

Timing on a shared machine: wall times inflate when other work runs; the minimum over
alternating runs and the CPU time are the steadier figures (both are reported).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

DOCS = HERE / "data" / "tasks"
MODES = ("off", "lookup")
STYLE = "formal"


def cases():
    """(label, task, style, parameter overrides) of every measured case."""
    return [("summarize", "summarize", None, {}),
            ("rewrite", "rewrite", STYLE, {}),
            ("rewrite (rp 1.0)", "rewrite", STYLE, {"repetition_penalty": 1.0})]


def run_case(runners, task, style, params, text, repeat):
    runs = {m: [] for m in MODES}
    for _ in range(repeat):
        for mode in MODES:  # alternating, so slow spells of the machine hit both
            t0, c0 = time.perf_counter(), time.process_time()
            res = runners[mode].run(task, text, params=params, style=style)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            j = res.to_json()
            passes = sum((p["speculative"] or {}).get("verify_passes", 0) for p in j["pieces"])
            runs[mode].append({"wall_s": wall, "cpu_s": cpu, "text": res.text,
                               "generated_tokens": j["generated_tokens"],
                               "pieces": j["n_pieces"], "verify_passes": passes,
                               **{k: j["speculative"][k] for k in
                                  ("drafted_tokens", "accepted_tokens", "acceptance_rate")}})
    return runs


def summarize_runs(runs) -> dict:
    out = {}
    for mode, rs in runs.items():
        walls, cpus = [r["wall_s"] for r in rs], [r["cpu_s"] for r in rs]
        last = rs[-1]
        out[mode] = {"wall_median_s": round(statistics.median(walls), 3),
                     "wall_min_s": round(min(walls), 3), "cpu_min_s": round(min(cpus), 3),
                     "walls_s": [round(w, 3) for w in walls],
                     "generated_tokens": last["generated_tokens"], "pieces": last["pieces"],
                     "verify_passes": last["verify_passes"],
                     "drafted_tokens": last["drafted_tokens"],
                     "accepted_tokens": last["accepted_tokens"],
                     "acceptance_rate": last["acceptance_rate"]}
    off, look = out["off"], out["lookup"]
    ref = runs["off"][0]["text"]
    out["speedup_wall_median"] = round(off["wall_median_s"] / look["wall_median_s"], 3)
    out["speedup_wall_min"] = round(off["wall_min_s"] / look["wall_min_s"], 3)
    out["speedup_cpu_min"] = round(off["cpu_min_s"] / look["cpu_min_s"], 3)
    out["same_text"] = all(r["text"] == ref for m in MODES for r in runs[m])
    out["text"] = ref
    return out


def markdown(report: dict) -> str:
    lines = [f"# Tasks with and without prompt-lookup speculation: {report['name']}", "",
             f"Model `{report['model']}`, {report['threads']} threads, ISA {report['isa']}, "
             f"{report['repeat']} alternating runs per mode; rewrite style `{STYLE}`. "
             "Speedup = off / lookup (median wall, minimum wall, minimum CPU time). "
             "Command: `" + report["command"] + "`.", "",
             "| document | case | off wall s (median / min) | lookup wall s (median / min) | "
             "speedup median | speedup min | speedup CPU | tokens | passes (lookup) | "
             "acceptance | same text |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        off, look = r["off"], r["lookup"]
        lines.append(
            f"| {r['document']} | {r['case']} | {off['wall_median_s']:.2f} / "
            f"{off['wall_min_s']:.2f} | {look['wall_median_s']:.2f} / {look['wall_min_s']:.2f} | "
            f"{r['speedup_wall_median']:.2f}x | {r['speedup_wall_min']:.2f}x | "
            f"{r['speedup_cpu_min']:.2f}x | {look['generated_tokens']} | "
            f"{look['verify_passes']} | {look['acceptance_rate']:.0%} | "
            f"{'yes' if r['same_text'] else 'NO'} |")
    lines += ["", "Machine load during the run (1-minute load average, 2 cores): "
              f"{report['load_before']} before, {report['load_after']} after.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--name", required=True, help="results go to benchmarks/results/tasks_NAME.*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--docs", default=str(DOCS))
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    if a.repeat < 1:
        ap.error("--repeat must be at least 1")
    import os

    from edge.engines import open_model
    from edge.sampling import SamplingParams
    from edge.taskrun import TaskRunner
    from edge.tasks import task_defaults

    docs = sorted(Path(a.docs).glob("*.txt"))
    if not docs:
        ap.error(f"{a.docs}: no .txt documents")
    engine = open_model(a.model, threads=a.threads)
    runners = {m: TaskRunner(engine, m) for m in MODES}
    warm = docs[0].read_text(encoding="utf-8")
    for r in runners.values():
        r.run("summarize", warm)
    load_before = round(os.getloadavg()[0], 2)
    results = []
    for doc in docs:
        text = doc.read_text(encoding="utf-8")
        for label, task, style, over in cases():
            params = replace(SamplingParams(**task_defaults(task)), **over)
            runs = run_case(runners, task, style, params, text, a.repeat)
            row = {"document": doc.name, "case": label, **summarize_runs(runs)}
            results.append(row)
            print(f"{doc.name:24s} {label:18s} off {row['off']['wall_median_s']:7.2f}s "
                  f"lookup {row['lookup']['wall_median_s']:7.2f}s speedup "
                  f"{row['speedup_wall_median']:.2f}x (min {row['speedup_wall_min']:.2f}x, cpu "
                  f"{row['speedup_cpu_min']:.2f}x) acceptance "
                  f"{row['lookup']['acceptance_rate']:.0%} same_text {row['same_text']}",
                  flush=True)
    report = {"name": a.name, "model": a.model, "threads": a.threads,
              "isa": getattr(engine, "isa", None), "repeat": a.repeat,
              "command": f"python benchmarks/tasks.py -m {a.model} --name {a.name} "
                         f"--threads {a.threads} --repeat {a.repeat}",
              "load_before": load_before, "load_after": round(os.getloadavg()[0], 2),
              "results": results}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"tasks_{a.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"tasks_{a.name}.md").write_text(markdown(report))
    print(f"wrote {out / f'tasks_{a.name}.md'}")
    return 0 if all(r["same_text"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
