"""One benchmark on a fleet of boards: merged records, a table and plots in benchmarks/results/.

    # the boards of a boards.toml (see README "Benchmarks on boards")
    python benchmarks/boards.py --boards boards.toml --name lab -m build/smol-int8/edge

    # without boards: this host and the aarch64 build under qemu-user on three CPU models
    # (scripts/setup_arm64.sh), as local boards; emulated speeds say nothing about real chips
    python benchmarks/boards.py --emulated --name smollm2-emulated -m build/smol-int8/edge

Writes boards_NAME.jsonl (every record), boards_NAME.md (llama-bench's table), the plots of
`llama-edge bench --plots` in boards_NAME/, and size_quality_speed_smollm2.png: the file size,
mean KLD on held-out text and decode speed of each edge recipe, from the results of
benchmarks/quant_quality.py-style runs already in benchmarks/results/ (edge_quality_smollm2.json,
edge_speed_smollm2.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(REPO))

EMULATED_CPUS = ("cortex-a53", "cortex-a76", "max")


def emulated_boards(out: Path) -> Path:
    """A boards.toml (written into out) of local boards: this host, and the aarch64 build on
    each CPU model."""
    arm = REPO / "build" / "arm64" / "bin" / "llama-edge"
    if not arm.exists():
        raise SystemExit(f"{arm} missing: run scripts/setup_arm64.sh first")
    work = REPO / "build" / "boards-work"  # the "boards'" copies of the artifacts
    text = (f'[defaults]\ntransport = "local"\nworkdir = "{work}"\n\n'
            f'[[board]]\nname = "host-x86"\ncommand = "{sys.executable} -m edge.cli"\n')
    for cpu in EMULATED_CPUS:
        text += (f'\n[[board]]\nname = "qemu-{cpu}"\ncommand = "{arm}"\n'
                 f'env = {{ QEMU_CPU = "{cpu}" }}\n')
    path = out / "boards.toml"
    path.write_text(text)
    return path


def size_quality_speed(png: Path) -> Path | None:
    """File size x mean KLD (held-out texts) x decode tokens/s of each edge recipe."""
    from edge.bench_plots import _pyplot

    try:
        quality = json.loads((RESULTS / "edge_quality_smollm2.json").read_text())
        speed = json.loads((RESULTS / "edge_speed_smollm2.json").read_text())
    except OSError:
        return None
    kld: dict[str, list[float]] = {}
    size: dict[str, float] = {}
    for row in quality.values():
        kld.setdefault(row["recipe"], []).append(row["kld_mean"])
        size[row["recipe"]] = row["file_mb"]
    tok_s = {k.removeprefix("edge-"): v["tg128_tok_s"] for k, v in speed["engines"].items()
             if v.get("kind") == "edge"}
    recipes = [r for r in kld if r in tok_s]
    if not recipes:
        return None
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    for r in recipes:
        k = statistics.mean(kld[r])
        a.scatter(size[r], k, s=40)
        a.annotate(f"{r}\n{tok_s[r]:.0f} tok/s", (size[r], k), fontsize=8,
                   xytext=(5, 5), textcoords="offset points")
        b.scatter(size[r], tok_s[r], s=40)
        b.annotate(r, (size[r], tok_s[r]), fontsize=8, xytext=(5, 5), textcoords="offset points")
    a.set(xlabel="file size (MB)", ylabel="mean KLD to the float model (held-out texts)",
          yscale="log", title="Size x quality (labels: decode speed)")
    b.set(xlabel="file size (MB)", ylabel="decode tokens/s (tg128, 2 threads)",
          title=f"Size x speed ({speed.get('name', '')}, this host)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--boards", type=Path, help="boards.toml")
    ap.add_argument("--emulated", action="store_true",
                    help="this host and qemu-user CPU models as the boards")
    ap.add_argument("--name", required=True)
    ap.add_argument("-m", "--model", action="append", required=True)
    ap.add_argument("-p", default="16,64")
    ap.add_argument("-n", default="8")
    ap.add_argument("-d", default="0,64")
    ap.add_argument("-r", type=int, default=3, help="rounds (models alternate in each)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=256)
    args = ap.parse_args()
    if bool(args.boards) == args.emulated:
        raise SystemExit("give --boards FILE or --emulated")

    from edge.bench import format_rows
    from edge.bench_plots import plot_records
    from edge.fleet import Spec, load_boards, run_fleet

    out = RESULTS / f"boards_{args.name}"
    out.mkdir(parents=True, exist_ok=True)
    boards = load_boards(emulated_boards(REPO / "build") if args.emulated else args.boards)
    ints = lambda s: tuple(int(x) for x in s.split(","))  # noqa: E731
    spec = Spec(n_prompt=ints(args.p), n_gen=ints(args.n), depths=ints(args.d), repeat=args.r,
                warmup=args.warmup, ctx=args.ctx)
    rows = run_fleet(boards, args.model, spec, say=lambda s: print(s, file=sys.stderr))
    for r in rows:  # paths as given, relative to the checkout where they are inside it
        p = Path(r["model_filename"]).resolve()
        r["model_filename"] = str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)
    (RESULTS / f"boards_{args.name}.jsonl").write_text(format_rows(rows, "jsonl"))
    (RESULTS / f"boards_{args.name}.md").write_text(format_rows(rows, "md"))
    for p in plot_records(rows, out):
        print(f"plot: {p}", file=sys.stderr)
    png = size_quality_speed(RESULTS / "size_quality_speed_smollm2.png")
    if png:
        print(f"plot: {png}", file=sys.stderr)
    print(format_rows(rows, "md"))


if __name__ == "__main__":
    main()
