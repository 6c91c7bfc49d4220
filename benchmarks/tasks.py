"""Speed of the tasks with and without prompt-lookup speculation, on the documents the repository
ships (benchmarks/data/tasks/, the project's own text).

    python benchmarks/tasks.py -m build/bench/smollm2-int8/edge --name smollm2 --threads 2

For every document and case (summarize; rewrite in the formal style with the task's decoding
defaults; the same rewrite with a repetition penalty of 1.1 instead of the n-gram ban) the task runs
with --speculative off and lookup in alternation, --repeat times each, on one loaded model (one
runner per mode, each with its own prefix cache, both warmed by one run first). Reports per case
the median and minimum wall time, the minimum process CPU time (user + sys of all threads),
the speedups (off / lookup) by each, generated tokens, verification passes, acceptance rate,
and same_text: every lookup run's text equals the off run's. Writes
benchmarks/results/tasks_NAME.{json,md}.

Timing on a shared machine: wall times inflate when other work runs; the minimum over
alternating runs and the CPU time are the steadier figures (both are reported).

Prefix cache: on a fresh runner, the time to first token of the first request (nothing cached)
and of later ones (the task's fixed prompt part reused), for short inputs (each document's first
paragraph, rewritten) where the fixed part is a large share of the prompt; reported beside that
share.

Fidelity (with --reference FLOAT and --fidelity LABEL=MODEL ...): every document is summarized
and rewritten by the float model (the task defaults, and plain greedy decoding) and by each
artifact (the task defaults), and benchmarks/fidelity.py scores each artifact's text against the
float model's: ROUGE-L, greedy token match (the outputs re-encoded), and the share of the input's
numbers and names kept (recall) and of the output's found in the input (precision). The float
model's plain-greedy recall is the bar the shipped defaults must reach.

    python benchmarks/tasks.py -m INT8 --name smollm2 --reference FLOAT \
        --fidelity float=FLOAT --fidelity int8=INT8 --fidelity 8da4w=8DA4W
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
            ("rewrite (penalty 1.1)", "rewrite", STYLE,
             {"repetition_penalty": 1.1, "no_repeat_ngram": 0})]


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


def prefix_cache(engine, docs, repeat: int) -> dict:
    """TTFT of a first request (cold) and of the next ones (the fixed prompt part cached), on a
    fresh runner per round, rewriting each document's first paragraph."""
    from edge.taskrun import TaskRunner

    firsts = [d.read_text(encoding="utf-8").strip().split("\n\n")[0] for d in docs]
    cold, warm, shares = [], [], []
    for _ in range(repeat):
        runner = TaskRunner(engine, "off")
        for i, text in enumerate(firsts):
            j = runner.run("rewrite", text, style=STYLE).to_json()
            p = j["pieces"][0]
            (cold if i == 0 else warm).append(p["ttft_s"])
            if i:
                shares.append(p["prefix_cached_tokens"] / p["prompt_tokens"])
    # the same first request with the cache already filled, so cold and warm see one prompt
    runner = TaskRunner(engine, "off")
    runner.run("rewrite", firsts[1 % len(firsts)], style=STYLE)
    same = [runner.run("rewrite", firsts[0], style=STYLE).pieces[0].ttft_s for _ in range(repeat)]
    cold_m, same_m = statistics.median(cold), statistics.median(same)
    return {"requests": len(firsts), "rounds": repeat,
            "cold_ttft_median_s": round(cold_m, 4),
            "warm_ttft_same_prompt_median_s": round(same_m, 4),
            "warm_ttft_other_prompts_median_s": round(statistics.median(warm), 4),
            "cached_share_median": round(statistics.median(shares), 3),
            "ttft_reduction": round(1 - same_m / cold_m, 3)}


def fidelity(reference, artifacts: dict, docs, threads: int, ctx: int | None) -> dict:
    """Each artifact's task text against the float model's, and the facts each keeps."""
    import fidelity as fid

    from edge.engines import open_model
    from edge.sampling import SamplingParams
    from edge.taskrun import TaskRunner
    from edge.tasks import task_defaults

    plain = {"repetition_penalty": 1.0, "no_repeat_ngram": 0}
    jobs = [("summarize", None), ("rewrite", STYLE)]
    texts = {d.name: d.read_text(encoding="utf-8") for d in docs}

    def outputs(path, with_plain: bool):
        engine = open_model(path, max_context=ctx, threads=threads)
        runner = TaskRunner(engine, "lookup")
        out = {}
        for name, text in texts.items():
            for task, style in jobs:
                base = SamplingParams(**task_defaults(task))
                out[(name, task, "defaults")] = runner.run(task, text, params=base,
                                                           style=style).text
                if with_plain:
                    out[(name, task, "greedy")] = runner.run(
                        task, text, params=replace(base, **plain), style=style).text
        return out, engine.tokenizer

    ref, tok = outputs(reference, True)

    def row(label, key, text, against: str, compare_tokens: bool) -> dict:
        (name, task, mode), r = key, against
        rec, prec = fid.kept(texts[name], text)
        return {"artifact": label, "decoding": mode, "document": name, "task": task,
                "rouge_l": round(fid.rouge_l(text, r), 4),
                "token_match": round(fid.token_match(tok.encode(text), tok.encode(r)), 4)
                if compare_tokens else None,
                "facts_recall": round(rec, 4), "facts_precision": round(prec, 4), "text": text}

    # the float model's plain-greedy text is scored against its own text with the defaults
    rows = [row("float (reference)", k, text, ref[(k[0], k[1], "defaults")], False)
            for k, text in ref.items()]
    for label, path in artifacts.items():
        rows += [row(label, k, text, ref[k], True)
                 for k, text in outputs(path, False)[0].items()]
    means = {}
    for row in rows:
        key = f"{row['artifact']} / {row['decoding']}"
        means.setdefault(key, []).append(row)
    summary = {k: {m: round(statistics.mean(r[m] for r in v), 4)
                   for m in ("rouge_l", "facts_recall", "facts_precision")}
               for k, v in means.items()}
    bar = summary["float (reference) / greedy"]["facts_recall"]
    for v in summary.values():
        v["keeps_at_least_float_greedy"] = v["facts_recall"] >= bar
    return {"reference": reference, "artifacts": artifacts, "rows": rows, "summary": summary}


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib); no plot", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fid = report.get("fidelity")
    fig, axes = plt.subplots(1, 2 if fid else 1, figsize=(13 if fid else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    rows = report["results"]
    labels = [f"{r['document'].removesuffix('.txt')}\n{r['case']}" for r in rows]
    ax.bar(range(len(rows)), [r["speedup_wall_median"] for r in rows], color="tab:blue",
           label="median wall")
    ax.plot(range(len(rows)), [r["speedup_cpu_min"] for r in rows], "o", color="tab:orange",
            label="min CPU time")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=60, ha="right")
    ax.set_ylabel("speedup with lookup speculation (off / lookup)")
    ax.set_title(f"{report['name']}: prompt-lookup speculation, {report['threads']} threads")
    ax.legend(fontsize=8)
    if fid:
        ax = axes[0][1]
        keys = list(fid["summary"])
        vals = [fid["summary"][k] for k in keys]
        x = range(len(keys))
        ax.bar([i - 0.2 for i in x], [v["facts_recall"] for v in vals], 0.4,
               label="facts kept (recall)")
        ax.bar([i + 0.2 for i in x], [v["rouge_l"] for v in vals], 0.4,
               label="ROUGE-L to float / defaults")
        bar = fid["summary"]["float (reference) / greedy"]["facts_recall"]
        ax.axhline(bar, color="red", lw=0.8, ls="--", label="float greedy recall")
        ax.set_xticks(list(x), keys, fontsize=7, rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title("fidelity (mean over documents and tasks)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


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
    pc = report.get("prefix_cache")
    if pc:
        lines += ["", "## Prefix cache", "",
                  f"Rewrite of each document's first paragraph, {pc['rounds']} rounds on fresh "
                  "runners: time to first token of the first request (nothing cached) and of "
                  "the same request once the task's fixed prompt part is cached.", "",
                  "| cold TTFT s | warm TTFT s (same prompt) | warm TTFT s (other prompts) | "
                  "cached share of the prompt | TTFT reduction |", "|---|---|---|---|---|",
                  f"| {pc['cold_ttft_median_s']:.4f} | {pc['warm_ttft_same_prompt_median_s']:.4f}"
                  f" | {pc['warm_ttft_other_prompts_median_s']:.4f} | "
                  f"{pc['cached_share_median']:.0%} | {pc['ttft_reduction']:.0%} |"]
    fid = report.get("fidelity")
    if fid:
        lines += ["", "## Fidelity to the float model", "",
                  "Mean over documents and tasks (summarize; rewrite, style "
                  f"`{STYLE}`); ROUGE-L against the float model's text with the same decoding; "
                  "facts = the input's numbers and names (benchmarks/fidelity.py).", "",
                  "| artifact / decoding | ROUGE-L | facts kept (recall) | facts precision | "
                  "recall >= float greedy |", "|---|---|---|---|---|"]
        for k, v in fid["summary"].items():
            lines.append(f"| {k} | {v['rouge_l']:.3f} | {v['facts_recall']:.3f} | "
                         f"{v['facts_precision']:.3f} | "
                         f"{'yes' if v['keeps_at_least_float_greedy'] else 'NO'} |")
        lines += ["", "| artifact | decoding | document | task | ROUGE-L | token match | "
                  "recall | precision |", "|---|---|---|---|---|---|---|---|"]
        for r in fid["rows"]:
            tm = "" if r["token_match"] is None else f"{r['token_match']:.2f}"
            lines.append(f"| {r['artifact']} | {r['decoding']} | {r['document']} | {r['task']} "
                         f"| {r['rouge_l']:.3f} | {tm} | {r['facts_recall']:.2f} | "
                         f"{r['facts_precision']:.2f} |")
    lines += ["", "Machine load during the run (1-minute load average, 2 cores): "
              f"{report['load_before']} before, {report['load_after']} after.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--name", required=True, help="results go to benchmarks/results/tasks_NAME.*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=None, help="context to allocate (default: the "
                    "model's)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--docs", default=str(DOCS))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--reference", help="the float model the fidelity is measured against")
    ap.add_argument("--fidelity", action="append", default=[], metavar="LABEL=MODEL",
                    help="an artifact whose task text is scored against --reference (repeatable)")
    a = ap.parse_args(argv)
    artifacts = {}
    for item in a.fidelity:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            ap.error(f"--fidelity {item!r}: expected LABEL=MODEL")
        artifacts[label] = path
    if artifacts and not a.reference:
        ap.error("--fidelity needs --reference (the float model)")
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
    engine = open_model(a.model, max_context=a.ctx, threads=a.threads)
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
    pc = prefix_cache(engine, docs, a.repeat)
    print(f"prefix cache: cold TTFT {pc['cold_ttft_median_s']:.4f}s, warm "
          f"{pc['warm_ttft_same_prompt_median_s']:.4f}s (cached share "
          f"{pc['cached_share_median']:.0%}, reduction {pc['ttft_reduction']:.0%})", flush=True)
    fid = fidelity(a.reference, artifacts, docs, a.threads, a.ctx) if a.reference else None
    command = (f"python benchmarks/tasks.py -m {a.model} --name {a.name} --threads {a.threads} "
               f"--repeat {a.repeat}" + (f" --ctx {a.ctx}" if a.ctx else ""))
    if a.reference:
        command += f" --reference {a.reference}" + "".join(
            f" --fidelity {k}={v}" for k, v in artifacts.items())
    report = {"name": a.name, "model": a.model, "threads": a.threads,
              "isa": getattr(engine, "isa", None), "repeat": a.repeat, "command": command,
              "load_before": load_before, "load_after": round(os.getloadavg()[0], 2),
              "results": results, "prefix_cache": pc, "fidelity": fid}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"tasks_{a.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"tasks_{a.name}.md").write_text(markdown(report))
    if plot(report, out / f"tasks_{a.name}.png"):
        print(f"wrote {out / f'tasks_{a.name}.png'}")
    print(f"wrote {out / f'tasks_{a.name}.md'}")
    ok = all(r["same_text"] for r in results)
    if fid:
        ok = ok and all(v["keeps_at_least_float_greedy"] for k, v in fid["summary"].items()
                        if k.endswith("/ defaults"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
