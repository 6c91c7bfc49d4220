"""Speed and memory of edge artifacts side by side with llama.cpp and the torch reference, in
one run on one machine, reported as ratios.

Every measurement runs in a fresh process (honest load time and peak RSS); engines are
alternated round by round (the order rotates), and each figure is the median over rounds of
medians over repeats. The machine's read bandwidth is measured in the same run, before and
after each round, over ordinary and over huge pages; the higher of the two medians gives each
artifact's decode roofline (bandwidth / bytes read per generated token). An edge artifact's
weights are held as `llama-edge bench` holds them by default (--weights auto) unless
`--weights LABEL=mapped|resident` says otherwise.

    python benchmarks/edge_speed.py --name smollm2 --threads 2 --runs 3 \\
        --engine edge-8da4w=build/bench/smollm2-8da4w/edge \\
        --engine llama.cpp-Q4_0=/tmp/bench/smollm2-q4_0.gguf \\
        --engine torch=smollm2-135m-instruct \\
        --compare edge-8da4w:llama.cpp-Q4_0
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

KEYS = ("pp128_tok_s", "pp512_tok_s", "tg128_tok_s", "ttft64_s", "load_s", "peak_rss_mb")
HIGHER_IS_BETTER = {"pp128_tok_s", "pp512_tok_s", "tg128_tok_s"}


def kind_of(path: str) -> str:
    from edge.artifact import is_artifact

    if is_artifact(path):
        return "edge"
    if path.endswith(".gguf") and Path(path).is_file():
        return "llama.cpp"
    return "torch"


def measure(path: str, threads: int, repeat: int, ctx: int, weights: str | None = None) -> dict:
    kind = kind_of(path)
    if kind == "llama.cpp":
        cmd = [sys.executable, str(HERE / "llamacpp_bench.py"), path, "--threads", str(threads),
               "--repeat", str(repeat), "--ctx", str(ctx), "--json"]
    else:
        cmd = [sys.executable, "-m", "edge.cli", "bench", "-m", path, "--threads", str(threads),
               "--repeat", str(repeat), "--ctx", str(ctx), "--json"]
        if weights:
            cmd += ["--weights", weights]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def edge_bytes_per_token(path: str) -> int:
    """Bytes of weights a decode step reads: every matrix once, the embedding one row (or, when
    the output layer is tied to it, the whole embedding once as the output)."""
    from edge.artifact import load_artifact

    a = load_artifact(path, verify=False)
    total = 0
    seen = set()
    for name, p in a.weights.items():
        src = a.tied.get(name, name)
        if src in seen:
            continue
        seen.add(src)
        if src == "model.embed_tokens" and not a.tied:
            total += p.nbytes() // p.shape[0]
        else:
            total += p.nbytes()
    return total


def gguf_bytes_per_token(path: str) -> int:
    import gguf

    r = gguf.GGUFReader(path)
    sizes = {t.name: int(t.n_bytes) for t in r.tensors}
    total = sum(sizes.values())
    if "output.weight" in sizes and "token_embd.weight" in sizes:
        total -= sizes["token_embd.weight"]  # untied: the embedding is read one row at a time
    return total


def bandwidth(threads: int, huge_pages: bool) -> float:
    """Read bandwidth (GB/s) of `threads` threads streaming a 1 GiB buffer (of huge or ordinary
    pages), median of 5, in a separate process (its 1 GiB must not count in anyone's peak
    memory)."""
    code = ("from edge import _kernels; "
            f"print(_kernels.read_bandwidth(1 << 30, {threads}, 5, huge_pages={huge_pages}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       check=True)
    return float(r.stdout.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--engine", action="append", required=True, help="LABEL=PATH")
    ap.add_argument("--compare", action="append", default=[], help="OURS:PEER label pairs")
    ap.add_argument("--weights", action="append", default=[],
                    help="LABEL=mapped|resident: how that edge artifact's weights are held")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    engines = dict(e.split("=", 1) for e in args.engine)
    weights = dict(w.split("=", 1) for w in args.weights)

    def probe():
        got = {"pages": bandwidth(args.threads, False), "huge_pages": bandwidth(args.threads, True)}
        print(f"read bandwidth {got['pages']:.1f} GB/s (huge pages {got['huge_pages']:.1f})",
              flush=True)
        return got

    bw = [probe()]
    rows: dict[str, list[dict]] = {k: [] for k in engines}
    labels = list(engines)
    for r in range(args.runs):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for label in order:
            t0 = time.perf_counter()
            m = measure(engines[label], args.threads, args.repeat, args.ctx, weights.get(label))
            rows[label].append(m)
            print(f"run {r + 1}/{args.runs} {label:24} tg128 {m.get('tg128_tok_s')} "
                  f"pp512 {m.get('pp512_tok_s')} ({time.perf_counter() - t0:.0f} s)", flush=True)
        bw.append(probe())
    bw_kinds = {k: statistics.median(b[k] for b in bw) for k in ("pages", "huge_pages")}
    bw_gbs = max(bw_kinds.values())
    result = {"name": args.name, "threads": args.threads, "runs": args.runs,
              "repeat": args.repeat, "read_bandwidth_gb_s": round(bw_gbs, 2),
              "read_bandwidth_runs": {k: [round(b[k], 2) for b in bw] for k in bw_kinds},
              "engines": {}, "ratios": {}}
    for label, ms in rows.items():
        med = {k: round(statistics.median(m[k] for m in ms), 4) for k in KEYS if k in ms[0]}
        last = ms[-1]
        kind = kind_of(engines[label])
        info = {"path": engines[label], "kind": kind, **med, "file_mb": last.get("file_mb"),
                "weight_memory": last.get("weight_memory"),
                "threads": last.get("threads"), "isa": last.get("isa"), "cpu": last.get("cpu"),
                "cpu_features": last.get("cpu_features"), "all_runs": ms}
        if kind in ("edge", "llama.cpp"):
            bpt = (edge_bytes_per_token if kind == "edge" else gguf_bytes_per_token)(engines[label])
            roof = bw_gbs * 1e9 / bpt
            info.update(bytes_per_token_mb=round(bpt / 1e6, 2), roofline_tok_s=round(roof, 1),
                        decode_vs_roofline=round(med["tg128_tok_s"] / roof, 3))
        result["engines"][label] = info
    result["paired_ratios"] = {}
    for pair in args.compare:
        ours, peer = pair.split(":", 1)
        a, b = result["engines"][ours], result["engines"][peer]
        result["ratios"][pair] = {k: ratio(k, a[k], b[k]) for k in KEYS
                                  if k in a and k in b and a[k] and b[k]}
        # the same round's two measurements, taken minutes apart at most: the machine's drift
        # between rounds cancels
        per_round = {k: [ratio(k, x[k], y[k]) for x, y in zip(rows[ours], rows[peer])
                         if x.get(k) and y.get(k)] for k in KEYS}
        result["paired_ratios"][pair] = {k: round(statistics.median(v), 3)
                                         for k, v in per_round.items() if v}
    out = args.out or HERE / "results" / f"edge_speed_{args.name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def ratio(key: str, ours: float, peer: float) -> float:
    return round(ours / peer, 3) if key in HIGHER_IS_BETTER else round(peer / ours, 3)


def markdown(res: dict) -> str:
    cols = ["weight_memory", "pp128_tok_s", "pp512_tok_s", "tg128_tok_s", "ttft64_s", "load_s",
            "peak_rss_mb", "file_mb", "bytes_per_token_mb", "roofline_tok_s", "decode_vs_roofline"]
    runs = res.get("read_bandwidth_runs", {})
    lines = [f"### {res['name']}: {res['threads']} threads, median of {res['runs']} runs x "
             f"{res['repeat']} repeats; read bandwidth {res['read_bandwidth_gb_s']} GB/s "
             f"(the higher median of ordinary pages {runs.get('pages')} and huge pages "
             f"{runs.get('huge_pages')})",
             "", "| engine | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, e in res["engines"].items():
        lines.append(f"| {label} | " + " | ".join(str(e.get(c, "")) for c in cols) + " |")
    if res["ratios"]:
        lines += ["", "| ours : peer | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
        for pair, r in res["ratios"].items():
            lines.append(f"| {pair} | " + " | ".join(str(r.get(k, "")) for k in KEYS) + " |")
        if res.get("paired_ratios"):
            lines += ["", "| ours : peer, median of per-round ratios | " + " | ".join(KEYS)
                      + " |", "|---" * (len(KEYS) + 1) + "|"]
            for pair, r in res["paired_ratios"].items():
                lines.append(f"| {pair} | " + " | ".join(str(r.get(k, "")) for k in KEYS) + " |")
        lines.append("")
        lines.append("Ratios: ours / peer for speeds, peer / ours for times and memory (> 1 is "
                     "better for us); the first table divides the engines' medians, the second "
                     "takes the median of each round's ratio.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
