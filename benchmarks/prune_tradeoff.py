"""Pruning trade-off on a real model: parameters, perplexity and mean KLD to the unpruned model
for several pruning levels, three ways of choosing what to remove (importance, magnitude,
random), with and without healing.

Choices and healing see only the calibration text (quant/data/calibration.txt, or --calib);
quality is measured on a held-out text (--text) that nothing is tuned on, scored as
quant/eval.py scores everything: no BOS, non-overlapping windows of --ctx tokens.

With --edge each pruning level (chosen by importance, not healed) is also exported to an edge
artifact with the mobile recipe's schemes and benchmarked on the edge runtime: artifact size and
decode tok/s (`llama-edge bench --json`, tg128, medians over --edge-runs rounds with the
artifacts alternated, each a fresh process). The weights are rounded to nearest
(benchmarks/recipes/mobile-rtn.json): the size and the speed depend only on the shapes and the
schemes, not on how AWQ / GPTQ choose the integers, and rounding takes seconds where AWQ + GPTQ
take minutes per model. Methods and healing change neither, so every row of a level shares its
level's figures. Benchmark on a quiet machine.

Rows are appended to the JSON result as they finish, and a re-run skips rows already there
(delete the file to start over).

    nice -n 19 python benchmarks/prune_tradeoff.py --text /usr/share/common-licenses/GPL-3 \\
        --out benchmarks/results/prune_tradeoff_smollm2 [--heal-budget 90] [--edge]
    (re-run with --edge on an existing result to fill in only the edge columns)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from export.evaluate import read_text  # noqa: E402
from export.loaders import load_checkpoint  # noqa: E402
from export.model import LlamaModel  # noqa: E402
from export.pruning import METHODS, parse_prune, prune_checkpoint  # noqa: E402
from quant.eval import SpilledLogits, compare  # noqa: E402

LEVELS = ("ffn=0.1", "ffn=0.25", "ffn=0.4", "layers=2", "layers=4", "layers=8", "heads=1",
          "layers=2,ffn=0.25")
# Healed rows: every level for importance; both baselines at these levels, to see whether
# healing changes the ranking.
HEAL_ALL_METHODS = ("ffn=0.25", "layers=4")
COLUMNS = ("level", "method", "healed", "params_m", "ppl", "kld_mean", "kld_p99", "top1",
           "file_mb", "tg128_tok_s")


def _key(level: str, method: str, healed: bool, seed: int = 0) -> str:
    return f"{level}|{method}|{'healed' if healed else 'plain'}" + (f"|seed={seed}" if seed else "")


EDGE_RECIPE = REPO / "benchmarks" / "recipes" / "mobile-rtn.json"


def _edge_artifact(ck, level: str, work: Path) -> Path:
    """The level's model as an HF directory, exported with the mobile schemes (kept in `work`
    between runs)."""
    from export.writers import write_hf

    d = work / level.replace(",", "_").replace("=", "")
    art = d / "art" / "edge"
    if not (art / "manifest.json").is_file():
        write_hf(ck, d / "hf", dtype=torch.float32, force=True)
        subprocess.run([sys.executable, "-m", "export.cli", "export", str(d / "hf"), "-o",
                        str(d / "art"), "--recipe", str(EDGE_RECIPE), "--target", "edge",
                        "--force"], check=True, cwd=REPO)
    return art


def _bench(art: Path, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "edge.cli", "bench", "-m", str(art), "--json",
                          "--threads", str(threads), "--repeat", "1"], check=True, cwd=REPO,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def edge_columns(ck, levels: list[str], calib, work: Path, runs: int, threads: int) -> dict:
    """level -> {file_mb, tg128_tok_s (median), tg128_runs}; "none" is the unpruned model."""
    import statistics

    arts = {"none": _edge_artifact(ck, "none", work)}
    for level in levels:
        pk, _ = prune_checkpoint(ck, parse_prune(level, "importance"), calib)
        arts[level] = _edge_artifact(pk, level, work)
        print(f"edge artifact for {level}: {arts[level]}", flush=True)
    speeds: dict[str, list[float]] = {k: [] for k in arts}
    sizes = {}
    order = list(arts)
    for r in range(runs):
        for k in order[r % len(order):] + order[:r % len(order)]:
            b = _bench(arts[k], threads)
            speeds[k].append(b["tg128_tok_s"])
            sizes[k] = b["file_mb"]
            print(f"round {r} {k:20} {b['file_mb']:7.1f} MB  tg128 {b['tg128_tok_s']:.1f} tok/s",
                  flush=True)
    return {k: {"file_mb": sizes[k], "tg128_tok_s": round(statistics.median(v), 1),
                "tg128_runs": v} for k, v in speeds.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--text", required=True, type=Path, help="held-out text")
    ap.add_argument("--calib", type=Path, default=None)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--windows", type=int, default=6, help="held-out windows scored")
    ap.add_argument("--levels", default=";".join(LEVELS), help="';'-separated --prune specs")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--heal-steps", type=int, default=200)
    ap.add_argument("--heal-budget", type=float, default=90.0, help="seconds per healed model")
    ap.add_argument("--no-heal", action="store_true")
    ap.add_argument("--random-seeds", type=int, default=3,
                    help="unhealed random rows are measured with this many seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--edge", action="store_true", help="also export each level with the "
                    "mobile schemes and bench it on the edge runtime")
    ap.add_argument("--edge-runs", type=int, default=3)
    ap.add_argument("--edge-threads", type=int, default=2)
    ap.add_argument("--edge-work", type=Path, default=Path(tempfile.gettempdir()) /
                    "prune_tradeoff_edge", help="where the edge artifacts are kept")
    ap.add_argument("--out", type=Path, required=True, help="result path without extension")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ck = load_checkpoint(args.model)
    ids = ck.tokenizer.encode(read_text(args.text))[: args.windows * args.ctx]
    ref = LlamaModel.from_state_dict(ck.config, ck.tensors, max_seq_len=args.ctx)
    with torch.inference_mode():  # the unpruned model's logits, computed once
        ref_fn = SpilledLogits(lambda w: ref(w)[0], ids, args.ctx)
    del ref

    path = args.out.with_suffix(".json")
    result = json.loads(path.read_text()) if path.exists() else {}
    rows = {"unpruned" if r["level"] == "none" else
            _key(r["level"], r["method"], r["healed"], r.get("seed", 0)): r
            for r in result.get("rows", [])}
    result["meta"] = {
        "model": args.model, "text": str(args.text), "ctx": args.ctx, "tokens": len(ids),
        "calibration": str(args.calib or "quant/data/calibration.txt"), "threads": args.threads,
        "heal": {"steps": args.heal_steps, "budget_s": args.heal_budget, "seq_len": 128},
        "params_m_unpruned": round(ck.config.num_parameters() / 1e6, 2)}

    def save():
        result["rows"] = list(rows.values())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(result, args.out.with_suffix(".md"))
        plot(result, args.out.with_suffix(".png"))

    if "unpruned" not in rows:
        rows["unpruned"] = {"level": "none", "method": "-", "healed": False,
                            "params_m": result["meta"]["params_m_unpruned"],
                            **_score(ck, ids, args.ctx, ref_fn), "kld_mean": 0.0}
        save()
    methods = args.methods.split(",")
    levels = args.levels.split(";")
    plan = [(lv, m, False, 0) for lv in levels for m in methods]
    if not args.no_heal:
        plan += [(lv, m, True, 0) for lv in levels for m in methods
                 if m == "importance" or lv in HEAL_ALL_METHODS]
    if "random" in methods:
        plan += [(lv, "random", False, s) for lv in levels for s in range(1, args.random_seeds)]
    for level, method, healed, seed in plan:
        key = _key(level, method, healed, seed)
        if key in rows:
            continue
        t0 = time.perf_counter()
        spec = level + (f",seed={seed}" if seed else "")
        pk, rep = prune_checkpoint(ck, parse_prune(spec, method), args.calib,
                                   heal_steps=args.heal_steps if healed else 0,
                                   heal_budget=args.heal_budget if healed else None)
        row = {"level": level, "method": method, "healed": healed, "seed": seed,
               "params_m": round(rep.params_after / 1e6, 2), **_score(pk, ids, args.ctx, ref_fn),
               "removed_layers": rep.removed_layers, "ffn_sizes": sorted(set(rep.ffn_sizes)),
               "heal": rep.heal, "prune_s": round(rep.seconds, 1)}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows[key] = row
        print(f"{key:40} params {row['params_m']:6.1f} M  KLD {row['kld_mean']:.4f}  "
              f"PPL {row['ppl']:.2f}  ({row['seconds']:.0f} s)", flush=True)
        save()
    if args.edge:
        result["edge"] = edge_columns(ck, levels, args.calib, args.edge_work, args.edge_runs,
                                      args.edge_threads)
        result["meta"]["edge"] = {"recipe": str(EDGE_RECIPE.relative_to(REPO)),
                                  "threads": args.edge_threads, "runs": args.edge_runs}
    save()
    return 0


@torch.inference_mode()
def _score(ck, ids, ctx, ref_fn) -> dict:
    model = LlamaModel.from_state_dict(ck.config, ck.tensors, max_seq_len=ctx)
    r = compare(lambda w: model(w)[0], ref_fn, ids, ctx)
    return {"ppl": round(r.ppl, 3), "ref_ppl": round(r.ref_ppl, 3), "kld_mean": round(r.kld_mean, 4),
            "kld_p99": round(r.kld_p99, 3), "top1": round(r.top1_agreement, 4), "tokens": r.tokens}


def write_markdown(result: dict, path: Path) -> None:
    m = result["meta"]
    lines = [f"# Pruning trade-off: {m['model']}", "",
             f"Held-out text `{m['text']}` ({m['tokens']} tokens, windows of {m['ctx']}); "
             f"choices and healing on `{m['calibration']}`. KLD is the mean KL(unpruned || "
             f"pruned) per token. Healing: logit-KL distillation from the unpruned model, "
             f"{m['heal']['budget_s']:g} s budget (at most {m['heal']['steps']} steps of "
             f"{m['heal']['seq_len']} tokens, {m['threads']} thread). Random rows without "
             "healing are the mean over seeds (KLD range in brackets)." + _edge_note(result), "",
             "| level | method | healed | params (M) | PPL | mean KLD | p99 KLD | same top-1 "
             "| mobile MB | decode tok/s |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    order = {lv: i for i, lv in enumerate(("none", *LEVELS))}
    for r in sorted(merged_rows(result["rows"]), key=lambda r: (
            order.get(r["level"], 99), r["healed"],
            METHODS.index(r["method"]) if r["method"] in METHODS else -1)):
        e = result.get("edge", {}).get(r["level"], {})  # the same for every row of a level
        f = lambda k, fmt: ("" if e.get(k) is None else format(e[k], fmt))  # noqa: E731
        method, kld = r["method"], f"{r['kld_mean']:.3f}"
        if r.get("seeds", 1) > 1:
            method += f" ({r['seeds']} seeds)"
            kld += f" [{r['kld_min']:.2f}-{r['kld_max']:.2f}]"
        healed = f"{r['heal']['steps']} steps" if r.get("heal") else "no"
        lines.append(f"| {r['level']} | {method} | {healed} | "
                     f"{r['params_m']:.1f} | {r['ppl']:.2f} | {kld} | "
                     f"{r['kld_p99']:.2f} | {100 * r['top1']:.1f} % | {f('file_mb', '.1f')} | "
                     f"{f('tg128_tok_s', '.1f')} |")
    path.write_text("\n".join(lines) + "\n")


def _edge_note(result: dict) -> str:
    e = result["meta"].get("edge")
    if not e:
        return " Mobile MB / decode tok/s: filled by a run with --edge."
    return (f" Mobile MB / decode tok/s: the level's model (importance, not healed) as an edge "
            f"artifact with the mobile recipe's schemes (`{e['recipe']}`: rounded to nearest; "
            "size and speed do not depend on how the integers are chosen), tg128 on the edge "
            f"runtime with {e['threads']} threads, median of {e['runs']} rounds, artifacts "
            "alternated.")


def merged_rows(rows: list[dict]) -> list[dict]:
    """Rows of one level / method / healing state over several seeds merged into their mean
    (PPL as the geometric mean), with the KLD range."""
    import math

    groups: dict = {}
    for r in rows:
        groups.setdefault((r["level"], r["method"], r["healed"]), []).append(r)
    out = []
    for g in groups.values():
        if len(g) == 1:
            out.append(g[0])
            continue
        klds = [r["kld_mean"] for r in g]
        out.append({**g[0], "seeds": len(g), "kld_mean": sum(klds) / len(g),
                    "kld_min": min(klds), "kld_max": max(klds),
                    "ppl": math.exp(sum(math.log(r["ppl"]) for r in g) / len(g)),
                    "kld_p99": sum(r["kld_p99"] for r in g) / len(g),
                    "top1": sum(r["top1"] for r in g) / len(g)})
    return out


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib); no plot", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edge = result.get("edge")
    if edge:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    else:
        fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"importance": "tab:blue", "magnitude": "tab:red", "random": "tab:gray"}
    for method in METHODS:
        for healed in (False, True):
            sel = sorted((r for r in merged_rows(result["rows"])
                          if r["method"] == method and r["healed"] == healed),
                         key=lambda r: r["params_m"])
            if not sel:
                continue
            pts = [(r["params_m"], r["kld_mean"], r["level"]) for r in sel]
            if any(r.get("seeds", 1) > 1 for r in sel):
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], fmt="none",
                            ecolor=colors[method], alpha=0.6, capsize=3,
                            yerr=[[r["kld_mean"] - r.get("kld_min", r["kld_mean"]) for r in sel],
                                  [r.get("kld_max", r["kld_mean"]) - r["kld_mean"] for r in sel]])
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=colors[method],
                       marker="^" if healed else "o", s=45 if healed else 30,
                       label=f"{method}{' + healing' if healed else ''}")
            if method == "importance" and not healed:
                for x, y, lv in pts:
                    ax.annotate(lv, (x, y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("mean KLD to the unpruned model (log)")
    ax.set_title(f"Pruning {result['meta']['model']}: held-out {Path(result['meta']['text']).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if edge:  # what a level buys on the device: decode speed and size against quality
        for healed, marker in ((False, "o"), (True, "^")):
            sel = [r for r in merged_rows(result["rows"]) if r["method"] in ("importance", "-")
                   and r["healed"] == healed and r["level"] in edge and r["level"] != "none"]
            ax2.scatter([edge[r["level"]]["tg128_tok_s"] for r in sel],
                        [r["kld_mean"] for r in sel], marker=marker, color="tab:blue",
                        label=f"importance{' + healing' if healed else ''}")
            if not healed:
                for r in sel:
                    e = edge[r["level"]]
                    ax2.annotate(f"{r['level']} ({e['file_mb']:.0f} MB)",
                                 (e["tg128_tok_s"], r["kld_mean"]), fontsize=7,
                                 xytext=(3, 3), textcoords="offset points")
        if "none" in edge:
            ax2.axvline(edge["none"]["tg128_tok_s"], color="k", ls="--", lw=0.8,
                        label=f"unpruned ({edge['none']['file_mb']:.0f} MB)")
        ax2.set_yscale("log")
        ax2.set_xlabel("decode tok/s, edge runtime (mobile schemes)")
        ax2.set_ylabel("mean KLD to the unpruned model (log)")
        ax2.set_title("speed on the device vs quality")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
