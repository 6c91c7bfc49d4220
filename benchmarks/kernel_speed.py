"""Decode products of each integer weight kind, alone: bytes of weights read per second.

For a model shape (its matrices in the order a decode step reads them: every layer's q, k, v,
o, gate, up, down, then the output layer), each kind's weights are laid out with random bytes
(speed does not depend on the values; every byte pattern is a valid q4 / q5 / q6 / q8 value),
and one token's per-block int8 activations meet all of them in turn through the runtime's own
kernels and thread split (`_kernels.decode_products_seconds`). Kinds are alternated round by
round; each figure is the median over rounds of the median over repeats. Bytes are the weights'
values and scales, what a step streams from memory. Writes benchmarks/results/kernel_speed.{json,md}.

    python benchmarks/kernel_speed.py --shapes smollm2,llama3.2-1b --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge import _kernels as K  # noqa: E402
from edge.config import PRESETS  # noqa: E402
from edge.packing import KINDS, Packed, low_bit_row_bytes, view  # noqa: E402

SHAPE_PRESETS = {"smollm2": "smollm2-135m", "llama3.2-1b": "llama3.2-1b",
                 "llama3.2-3b": "llama3.2-3b"}
# kind -> (bits, group): the groups of the presets that use them (8da4w, 8da5w, 8da6w, int8)
KIND_GROUPS = {"q4": (4, 32), "q5": (5, 32), "q6": (6, 64), "q8": (8, 32)}
SCALE = np.float16(0.01)


def matrices(preset: str) -> list[tuple[int, int]]:
    """(out, in) of the matrices a decode step multiplies, in order."""
    shapes = PRESETS[preset].expected_shapes()
    out = []
    for key, shape in shapes.items():
        if len(shape) == 2 and key.startswith("model.layers."):
            out.append(tuple(shape))
    vocab_hidden = shapes.get("lm_head.weight", shapes["model.embed_tokens.weight"])
    out.append(tuple(vocab_hidden))
    return out


def random_weight(rng, kind: str, n: int, k: int) -> Packed:
    bits, g = KIND_GROUPS[kind]
    row_bytes = k if kind == "q8" else low_bit_row_bytes(bits, k)
    data = rng.integers(0, 256, (n, row_bytes), dtype=np.uint8)
    if kind == "q8":
        data = data.view(np.int8)
    return Packed(kind, (n, k), g, data, np.full((n, k // g), SCALE, np.float16))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="smollm2,llama3.2-1b")
    ap.add_argument("--kinds", default="q4,q5,q6,q8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--isa", default="auto", help="kernel set (default: the best this CPU runs)")
    ap.add_argument("--name", default="kernel_speed")
    a = ap.parse_args()
    kinds = a.kinds.split(",")
    for k in kinds:
        if k not in KIND_GROUPS or k not in KINDS:
            raise SystemExit(f"--kinds: {k!r} is not one of {', '.join(KIND_GROUPS)}")
    res = {"isa": K.best_isa() if a.isa == "auto" else a.isa, "threads": a.threads, "rounds": a.rounds,
           "repeats": a.repeats, "shapes": {}}
    rng = np.random.default_rng(0)
    for shape in a.shapes.split(","):
        mats = matrices(SHAPE_PRESETS[shape])
        packed = {kd: [random_weight(rng, kd, n, k) for n, k in mats] for kd in kinds}
        views = {kd: [view(p, K) for p in ps] for kd, ps in packed.items()}
        nbytes = {kd: sum(p.nbytes() for p in ps) for kd, ps in packed.items()}
        secs: dict[str, list[float]] = {kd: [] for kd in kinds}
        for rnd in range(a.rounds):
            order = kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]
            for kd in order:
                secs[kd].append(K.decode_products_seconds(views[kd], a.threads, a.repeats, a.isa))
        rows = {}
        for kd in kinds:
            s = statistics.median(secs[kd])
            rows[kd] = {"bits": KIND_GROUPS[kd][0], "group": KIND_GROUPS[kd][1],
                        "mbytes": round(nbytes[kd] / 1e6, 2), "ms_per_pass": round(s * 1e3, 3),
                        "gb_per_s": round(nbytes[kd] / s / 1e9, 3)}
        base = rows.get("q4")
        for kd, r in rows.items():
            if base:
                r["vs_q4_bytes_per_s"] = round(r["gb_per_s"] / base["gb_per_s"], 3)
        res["shapes"][shape] = {"matrices": len(mats), "rows": rows}
        print(f"{shape}: " + ", ".join(f"{kd} {r['gb_per_s']} GB/s ({r['ms_per_pass']} ms)"
                                       for kd, r in rows.items()), file=sys.stderr)
        del packed, views
    out = REPO / "benchmarks" / "results" / a.name
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"Decode products alone, {res['isa']}, {a.threads} threads, median of {a.rounds} "
             f"alternated rounds x {a.repeats} repeats.", "",
             "| shape | kind | weights MB | ms per pass | GB/s | bytes/s vs q4 |",
             "|---|---|---|---|---|---|"]
    for shape, d in res["shapes"].items():
        for kd, r in d["rows"].items():
            lines.append(f"| {shape} | {kd} g{r['group']} | {r['mbytes']} | {r['ms_per_pass']} | "
                         f"{r['gb_per_s']} | {r.get('vs_q4_bytes_per_s', '-')} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
