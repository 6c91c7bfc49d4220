"""Benchmark records drawn as PNG plots (matplotlib, installed with the `boards` extra):

    depth.png   decode tokens/s against the tokens already in the cache (one line per board
                and model)
    prompt.png  time to process a prompt (the first token's wait) against the prompt's length
    boards.png  every test at depth 0, boards side by side (bars: mean tokens/s, whiskers: the
                standard deviation over samples)

Only records with status "ok" are drawn; a plot with nothing to draw is not written."""

from __future__ import annotations

from pathlib import Path

from .errors import EdgeError

WIDE = 20.0


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EdgeError("plots need matplotlib: pip install 'llama-edge[boards]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _label(r: dict) -> str:
    return f"{r['board']} · {r.get('recipe') or r['model_type']}"


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    tmp.replace(path)
    return path


def _log_if_wide(ax, values) -> None:
    """A log scale when the values span more than WIDE times (emulated and real boards side by
    side), so the slow ones stay readable."""
    pos = [v for v in values if v > 0]
    if pos and max(pos) / min(pos) > WIDE:
        ax.set_yscale("log")


def _lines(plt, series: dict[str, dict[int, float]], xlabel: str, ylabel: str, title: str,
           path: Path) -> Path:
    """One line per label through its (x, y) points."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for lab, pts in series.items():
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", label=lab)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    _log_if_wide(ax, [y for pts in series.values() for y in pts.values()])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_records(rows: list[dict], out_dir) -> list[Path]:
    """The plots the records allow, written into out_dir; their paths."""
    plt = _pyplot()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeError(f"{out}: cannot create the plot folder ({e.strerror or e})") from None
    ok = [r for r in rows if r.get("status") == "ok"]
    written = []

    series: dict[str, dict[int, dict[int, float]]] = {}  # label -> n_gen -> depth -> t/s
    for r in ok:
        if r["n_gen"]:
            series.setdefault(_label(r), {}).setdefault(r["n_gen"], {})[r["n_depth"]] = r["avg_ts"]
    lines = [(lab, g, pts) for lab, by_gen in series.items() for g, pts in by_gen.items()
             if len(pts) > 1]
    if lines:
        written.append(_lines(plt, {f"{lab} (tg{g})": pts for lab, g, pts in lines},
                              "tokens in the cache (depth)", "decode tokens/s",
                              "Decode speed against context depth", out / "depth.png"))

    prompt: dict[str, dict[int, float]] = {}
    for r in ok:
        if r["n_prompt"] and r["n_depth"] == 0:
            prompt.setdefault(_label(r), {})[r["n_prompt"]] = r["avg_ns"] / 1e9
    if any(len(v) > 1 for v in prompt.values()):
        written.append(_lines(plt, prompt, "prompt tokens", "seconds to process the prompt",
                              "Time to first token against prompt length", out / "prompt.png"))

    flat = [r for r in ok if r["n_depth"] == 0]
    labels = list(dict.fromkeys(_label(r) for r in flat))
    tests = list(dict.fromkeys((r["n_prompt"], r["n_gen"]) for r in flat))
    if flat:
        fig, axes = plt.subplots(1, len(tests), figsize=(3.2 * len(tests) + 1.5, 4.2),
                                 squeeze=False)
        for ax, (p, g) in zip(axes[0], tests):
            vals = {_label(r): r for r in flat if (r["n_prompt"], r["n_gen"]) == (p, g)}
            ys = [vals[lab]["avg_ts"] if lab in vals else 0.0 for lab in labels]
            err = [vals[lab]["stddev_ts"] if lab in vals else 0.0 for lab in labels]
            ax.bar(range(len(labels)), ys, yerr=err, capsize=3, color="tab:blue")
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
            ax.set(title=f"pp{p}" if p else f"tg{g}", ylabel="tokens/s")
            _log_if_wide(ax, ys)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle("Boards side by side")
        fig.tight_layout()
        written.append(_save(fig, out / "boards.png"))
        plt.close(fig)
    return written
