"""The size / quality / speed frontier: our edge artifacts at several sizes against llama.cpp's
quantization types made from the same weights, scored on the same held-out text and timed on
the same machine in one run.

llama.cpp's files come from llama.cpp's own tools (built from the sources llama-cpp-python
vendors; `--llama-bin` names the directory holding `llama-quantize` and `llama-imatrix`): the
checkpoint's GGUF is expanded to F16 once, an importance matrix is computed on our calibration
text (quant/data/calibration.txt, the text our AWQ / GPTQ calibrate on), and every type is
quantized from the F16 file twice, without and with that matrix. Scoring (mean KLD to the
unquantized model, same-top-token rate) is quant/eval's windows of --ctx tokens: ours through
the edge kernels, llama.cpp's through llama-cpp-python's logits. Speed is `llama-edge bench` /
llamacpp_bench.py in fresh processes, engines alternated round by round (edge_speed.py's
measure), medians over rounds. Writes benchmarks/results/frontier_NAME.{json,md,png}.

    python benchmarks/frontier.py --name smollm2 --text /usr/share/common-licenses/GPL-3 \\
        --recipes 8da4w,8da4w-e8,8da5w,8da6w,int8 --llama-bin /path/to/llama.cpp/build/bin \\
        --types Q4_0,Q4_K_S,Q4_K_M,Q5_K_M,Q6_K,IQ4_XS,Q8_0 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from edge_speed import edge_bytes_per_token, gguf_bytes_per_token, measure  # noqa: E402
from make_gguf import requantize  # noqa: E402
from quant_quality import RefCache, llama_logits, score  # noqa: E402

CALIB = REPO / "quant" / "data" / "calibration.txt"
# llama-imatrix's windows: the context our calibration and scoring use
IMATRIX_CTX = 512
SPEED_KEYS = ("tg128_tok_s", "pp512_tok_s")


def run(cmd: list, log: Path) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(map(str, cmd)) + "\n")
        f.flush()
        r = subprocess.run(list(map(str, cmd)), stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if r.returncode:
        raise SystemExit(f"{cmd[0]} failed (exit {r.returncode}); its output: {log}")


def build_ours(model: str, recipes: list[str], work: Path, log: Path) -> dict[str, Path]:
    out = {}
    for r in recipes:
        dst = work / f"edge-{r.replace(':', '-')}"
        if not (dst / "edge").is_dir():
            t0 = time.perf_counter()
            run([sys.executable, "-m", "export.cli", "export", model, "--recipe", r, "--target",
                 "edge", "-o", dst], log)
            print(f"exported {r} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        out[f"edge {r}"] = dst / "edge"
    return out


def build_llama(src_gguf: Path, types: list[str], bin_dir: Path | None, work: Path,
                log: Path, threads: int) -> dict[str, Path]:
    f16 = work / "f16.gguf"
    if not f16.exists():
        requantize(src_gguf, f16, "F16", threads)
    out = {}
    imatrix = None
    if bin_dir is not None:
        imatrix = work / "imatrix.dat"
        if not imatrix.exists():
            run([bin_dir / "llama-imatrix", "-m", f16, "-f", CALIB, "-o", imatrix, "-c",
                 IMATRIX_CTX, "-t", threads], log)
    for t in types:
        for imat in ([None, imatrix] if imatrix else [None]):
            label = f"llama.cpp {t}" + (" imatrix" if imat else "")
            dst = work / f"{t}{'-imat' if imat else ''}.gguf"
            if not dst.exists():
                if bin_dir is not None:
                    cmd = [bin_dir / "llama-quantize", "--allow-requantize"]
                    if imat:
                        cmd += ["--imatrix", imat]
                    run(cmd + [f16, dst, t, threads], log)
                else:
                    requantize(f16, dst, t, threads)
            out[label] = dst
    return out


def edge_logits(path: Path, ctx: int):
    from edge.engines.native import EdgeEngine

    sess = EdgeEngine(path, max_context=ctx).session()
    return sess, lambda w: torch.from_numpy(sess.logits_all(w.tolist()))


def quality(points: dict[str, Path], texts: list[str], model: str, ctx: int,
            threads: int, work: Path) -> dict[str, dict]:
    """Scores per point and text, each kept in `work` (keyed by the file's size and time, the
    text and ctx) so that a run adding points scores only those."""
    from export.evaluate import read_text
    from export.loaders import load_checkpoint
    from export.model import LlamaModel
    from quant.eval import windows

    ck = load_checkpoint(model)
    ref_model = LlamaModel.from_state_dict(ck.config, ck.tensors, max_seq_len=ctx)
    out: dict[str, dict] = {k: {} for k in points}
    cache = work / "quality.json"
    saved = json.loads(cache.read_text()) if cache.exists() else {}
    for text in texts:
        ref = None
        for label, path in points.items():
            st = (path / "weights.safetensors" if path.is_dir() else path).stat()
            key = f"{label}|{st.st_size}|{st.st_mtime_ns}|{text}|{ctx}"
            if key in saved:
                out[label][Path(text).name] = saved[key]
                continue
            if ref is None:
                ref = RefCache(ref_model, windows(ck.tokenizer.encode(read_text(text)), ctx))
            keep, fn = (llama_logits(path, ctx, threads) if label.startswith("llama.cpp")
                        else edge_logits(path, ctx))
            r = score(fn, ref)
            out[label][Path(text).name] = saved[key] = {k: round(v, 6) for k, v in r.items()}
            cache.write_text(json.dumps(saved, indent=1))
            print(f"{label:28} {Path(text).name:14} KLD {r['kld_mean']:.5f} "
                  f"top1 {100 * r['top1_agreement']:.2f}%", file=sys.stderr)
            del keep
    return out


def file_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6


def weight_mb(label: str, path: Path) -> float:
    """Megabytes of weight tensors (what the size budget is about: the GGUF's tokenizer and the
    artifact's tokenizer.json excluded alike)."""
    if label.startswith("llama.cpp"):
        import gguf

        return sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors) / 1e6
    from edge.artifact import load_artifact

    a = load_artifact(path, verify=False)  # a tied output layer is the embedding's bytes
    return sum(p.nbytes() for n, p in a.weights.items() if n not in a.tied) / 1e6


def speeds(points: dict[str, Path], rounds: int, threads: int, ctx: int) -> dict[str, dict]:
    """Medians per point; a file made with an importance matrix has the same types and bytes as
    the one made without, so it takes that one's figures."""
    labels = [k for k in points if not k.endswith(" imatrix")]
    samples: dict[str, dict[str, list]] = {k: {s: [] for s in SPEED_KEYS} for k in labels}
    for rnd in range(rounds):
        order = labels[rnd % len(labels):] + labels[:rnd % len(labels)]
        for label in order:
            m = measure(str(points[label]), threads, 1, ctx)
            for s in SPEED_KEYS:
                samples[label][s].append(m[s])
        print(f"speed round {rnd + 1}/{rounds} done", file=sys.stderr)
    med = {k: {s: round(statistics.median(v), 2) for s, v in d.items()} for k, d in
           samples.items()}
    return {k: med[k.removesuffix(" imatrix")] for k in points}


def dominated(rows: dict[str, dict], key: str) -> dict[str, list[str]]:
    """For each llama.cpp point, our points whose files are no larger and that are better on
    `key` (KLD: lower; speed: higher)."""
    out = {}
    for lbl, r in rows.items():
        if not lbl.startswith("llama.cpp"):
            continue
        better = []
        for o, q in rows.items():
            if o.startswith("llama.cpp") or q["file_mb"] > r["file_mb"]:
                continue
            if key == "kld" and q["kld"] < r["kld"] or key != "kld" and q[key] > r[key]:
                better.append(o)
        out[lbl] = better
    return out


def plot(rows: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5.2))
    for lbl, r in rows.items():
        ours = not lbl.startswith("llama.cpp")
        style = dict(marker="o" if ours else ("s" if "imatrix" in lbl else "^"),
                     color="tab:blue" if ours else ("tab:red" if "imatrix" in lbl else "tab:orange"))
        a1.scatter(r["file_mb"], r["kld"], **style)
        a1.annotate(lbl.replace("llama.cpp ", ""), (r["file_mb"], r["kld"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
        if "tg128_tok_s" in r:
            a2.scatter(r["file_mb"], r["tg128_tok_s"], **style)
            a2.annotate(lbl.replace("llama.cpp ", ""), (r["file_mb"], r["tg128_tok_s"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    if not any("tg128_tok_s" in r for r in rows.values()):
        a2.text(0.5, 0.5, "not measured in this run (--rounds 0)", ha="center", va="center",
                transform=a2.transAxes)
    a1.set_yscale("log")
    a1.set_xlabel("file (MB)")
    a1.set_ylabel("mean KLD to the unquantized model (log)")
    a2.set_xlabel("file (MB)")
    a2.set_ylabel("decode tokens / s (tg128)")
    a1.set_title("size vs quality (blue: edge; orange: llama.cpp; red: llama.cpp + imatrix)",
                 fontsize=9)
    a2.set_title("size vs decode speed", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(res: dict) -> str:
    texts = res["texts"]
    head = ["point", "weights MB", "file MB"] + [f"KLD {t}" for t in texts] + \
        [f"same top {t}" for t in texts] + ["KLD mean", "tg128 tok/s", "pp512 tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lbl, r in sorted(res["rows"].items(), key=lambda kv: kv[1]["file_mb"]):
        cells = [lbl, f"{r['weight_mb']:.1f}", f"{r['file_mb']:.1f}"]
        cells += [f"{r['quality'][t]['kld_mean']:.4f}" for t in texts]
        cells += [f"{100 * r['quality'][t]['top1_agreement']:.1f} %" for t in texts]
        cells += [f"{r['kld']:.4f}", str(r.get("tg128_tok_s", "-")), str(r.get("pp512_tok_s", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("edge points with a llama.cpp point no larger and with lower mean KLD:")
    for lbl, peers in res["beaten"].items():
        lines.append(f"- {lbl}: {', '.join(peers) if peers else 'none'}")
    lines.append("")
    for key, what in (("kld", "lower mean KLD"), ("tg128_tok_s", "faster decode")):
        lines.append(f"llama.cpp points with an edge point no larger and with {what}:")
        for lbl, ours in res["dominated"][key].items():
            lines.append(f"- {lbl}: {', '.join(ours) if ours else 'none'}")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--text", action="append", required=True, help="held-out text (repeatable)")
    ap.add_argument("--recipes", default="8da4w,8da4w-e8,8da5w,8da6w,int8")
    ap.add_argument("--types", default="Q4_0,Q4_K_S,Q4_K_M,Q5_K_M,Q6_K,IQ4_XS,Q8_0")
    ap.add_argument("--llama-bin", type=Path, default=None,
                    help="directory with llama-quantize and llama-imatrix (without it: no "
                         "importance-matrix points, files made through llama-cpp-python)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/frontier"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="alternated speed rounds (0: none)")
    ap.add_argument("--bench-ctx", type=int, default=1024)
    a = ap.parse_args()
    from export.loaders import resolve_model

    torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / "tools.log"
    points = build_ours(a.model, [r for r in a.recipes.split(",") if r], a.work, log)
    points.update(build_llama(resolve_model(a.model), [t for t in a.types.split(",") if t],
                              a.llama_bin, a.work, log, a.threads))
    q = quality(points, a.text, a.model, a.ctx, a.threads, a.work)
    sp = speeds(points, a.rounds, a.threads, a.bench_ctx) if a.rounds else {}
    texts = [Path(t).name for t in a.text]
    rows = {}
    for lbl, path in points.items():
        bpt = (gguf_bytes_per_token(str(path)) if lbl.startswith("llama.cpp")
               else edge_bytes_per_token(str(path)))
        rows[lbl] = {"path": str(path), "weight_mb": round(weight_mb(lbl, path), 2),
                     "file_mb": round(file_mb(path), 2), "bytes_per_token": bpt,
                     "quality": q[lbl],
                     "kld": round(statistics.mean(q[lbl][t]["kld_mean"] for t in texts), 6),
                     **sp.get(lbl, {})}
    res = {"model": a.model, "texts": texts, "ctx": a.ctx, "threads": a.threads,
           "rounds": a.rounds, "llama_bin": str(a.llama_bin) if a.llama_bin else None,
           "rows": rows}
    res["dominated"] = {"kld": dominated(rows, "kld")}
    res["beaten"] = {o: [lbl for lbl, r in rows.items() if lbl.startswith("llama.cpp")
                         and r["file_mb"] <= q["file_mb"] and r["kld"] < q["kld"]]
                     for o, q in rows.items() if not o.startswith("llama.cpp")}
    if sp:
        res["dominated"]["tg128_tok_s"] = dominated(rows, "tg128_tok_s")
    else:
        res["dominated"]["tg128_tok_s"] = {}
    out = REPO / "benchmarks" / "results" / f"frontier_{a.name}"
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res) + "\n")
    plot(rows, out.with_suffix(".png"), f"{a.model}, ctx {a.ctx}, {a.threads} threads")
    print(markdown(res))


if __name__ == "__main__":
    main()
