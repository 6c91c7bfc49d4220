"""Export wall time and peak memory, stage by stage, ours against the peers that make the same
kind of artifact, in one run.

    python benchmarks/export_speed.py --name smollm2 --checkpoint smollm2-135m-instruct
    python benchmarks/export_speed.py --name llama3.2-1b --checkpoint preset:llama3.2-1b \\
        --cases xnnpack-mobile --mobile-recipe benchmarks/recipes/mobile-rtn.json

Cases (each a fresh `llama-export export` process; wall time and peak RSS from wait4, stage
times and each stage's peak from the export report):
  edge-8da4w       --recipe 8da4w --target edge (AWQ + GPTQ), without the quantization cache
  xnnpack-mobile   --recipe mobile --target xnnpack, without the cache
  xnnpack-cached   the same export with the cache warm (an earlier export of the same weights,
                   recipe and calibration text stored it): lowering, verification and quality
  edge-int4-rtn    4-bit weight-only, groups of 32, round to nearest (benchmarks/recipes/
                   int4-rtn.json): what onnxruntime-genai's builder does for int4
Peers:
  executorch       ExecuTorch's export_llama, 8da4w group 32 with its XNNPACK recipe (as in
                   benchmarks/pte_compare.py): against xnnpack-mobile
  ortgenai         onnxruntime-genai's model builder, `-p int4 -e cpu` from the HF directory
                   (needs `pip install onnx-ir`): against edge-int4-rtn
A peer that cannot run here is reported with the reason, not left out. Presets (random weights
at a published shape) are written first as the HF directory a user would export from; that
and the Meta-format copy export_llama reads are not timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from edge.atomic import remove  # noqa: E402

CASES = ("edge-8da4w", "xnnpack-mobile", "xnnpack-cached", "edge-int4-rtn")
PEERS = ("executorch", "ortgenai")
CTX = 512
STAGES = ("load", "quantize", "reference", "lower", "verify", "quality")


def measured(cmd: list[str], log: Path, env=None) -> dict:
    """Run cmd; wall seconds and this child's peak RSS; the log's tail when it fails."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _, status, ru = os.wait4(p.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    res = {"seconds": round(time.perf_counter() - t0, 1),
           "peak_rss_mb": round(ru.ru_maxrss / 1024, 1)}
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        res["error"] = f"exit {code}: " + " | ".join(tail)
    return res


def ours(ck: str, out: Path, recipe: str, target: str, cache: Path | None) -> dict:
    cmd = [sys.executable, "-m", "export.cli", "export", ck, "-o", str(out), "--recipe", recipe,
           "--target", target, "--max-context", str(CTX), "--force"]
    env = dict(os.environ)
    if cache is None:
        cmd.append("--no-cache")
    else:
        env["LLAMA_EDGE_CACHE"] = str(cache)
    m = measured(cmd, out.parent / f"{out.name}.log", env)
    rep_file = out / "export_report.json"
    if "error" not in m and rep_file.is_file():
        rep = json.loads(rep_file.read_text())
        stages = {}
        for s in rep["stages"]:
            key = "lower" if s["stage"].startswith("lower") else s["stage"]
            stages[key] = stages.get(key, 0.0) + s["seconds"]
        m["stages"] = {k: round(v, 1) for k, v in stages.items()}
        # each stage restarts its peak (the report holds each stage's own): the export's peak
        # is the largest of them, not the last stage's that wait4 sees
        m["peak_rss_mb"] = max(m["peak_rss_mb"], rep.get("peak_rss_mb", 0.0))
        m["cache"] = rep.get("quantization", {}).get("cache")
        m["bytes"] = sum(a["bytes"] for a in rep.get("artifacts", {}).values())
    return m


def ortgenai(hf_dir: Path, out: Path) -> dict:
    missing = [m for m in ("onnxruntime_genai", "onnx_ir") if importlib.util.find_spec(m) is None]
    if missing:
        return {"error": f"not installed: {', '.join(missing)} (pip install onnx-ir)"}
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(hf_dir), "-i",
           str(hf_dir), "-o", str(out), "-p", "int4", "-e", "cpu", "-c", str(out / "cache")]
    m = measured(cmd, out.parent / "ortgenai.log")
    if "error" not in m:
        m["bytes"] = sum(f.stat().st_size for f in out.iterdir()
                         if f.is_file() and f.name.startswith("model.onnx"))
    return m


def executorch(ck: str, work: Path) -> dict:
    from pte_compare import export_executorch

    try:
        pte, m = export_executorch(ck, work, CTX, work.name)
    except SystemExit as e:  # its export failed: the message names the command and the log
        return {"error": str(e).splitlines()[0][:300]}
    m["bytes"] = pte.stat().st_size
    return m


def hf_checkpoint(ck: str, work: Path) -> Path:
    """An HF directory of the checkpoint (what the ORT builder reads); not timed."""
    import torch

    from export.loaders import load_checkpoint
    from export.writers import write_hf

    if Path(ck).is_dir() and (Path(ck) / "config.json").is_file():
        return Path(ck)
    dest = work / "hf"
    if not (dest / "config.json").is_file():
        write_hf(load_checkpoint(ck), dest, dtype=torch.float32, force=True)
    return dest


def markdown(res: dict) -> str:
    lines = [f"# Export speed: {res['name']} ({res['checkpoint']})", "",
             f"{res['machine']}, {res['threads']} threads, `python benchmarks/export_speed.py "
             f"{' '.join(res['argv'])}`; one fresh process per row.", "",
             "| export | wall s | peak RSS MB | " + " | ".join(f"{s} s" for s in STAGES) +
             " | MB written | note |",
             "|---|---:|---:|" + "---:|" * len(STAGES) + "---:|---|"]
    for name, m in res["rows"].items():
        st = m.get("stages", {})
        note = m.get("error", "")
        if m.get("cache"):
            note = note or ("cache hit" if m["cache"].get("hit") else "")
        lines.append(f"| {name} | {m.get('seconds', '')} | {m.get('peak_rss_mb', '')} | " +
                     " | ".join(str(st.get(s, "")) for s in STAGES) +
                     f" | {round(m['bytes'] / 1e6, 1) if m.get('bytes') else ''} | {note} |")
    for a, b in res.get("pairs", []):
        ra, rb = res["rows"].get(a, {}), res["rows"].get(b, {})
        if "error" not in ra and "error" not in rb and ra.get("seconds") and rb.get("seconds"):
            lines.append("")
            lines.append(f"{a} / {b}: wall {ra['seconds'] / rb['seconds']:.2f}x, peak RSS "
                         f"{ra['peak_rss_mb'] / rb['peak_rss_mb']:.2f}x")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--peers", default=",".join(PEERS), help="comma list, or 'none'")
    ap.add_argument("--mobile-recipe", default="mobile",
                    help="recipe of the xnnpack cases (mobile-rtn for random-weight shapes)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "export_speed")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args()
    cases = [c for c in a.cases.split(",") if c]
    peers = [] if a.peers == "none" else [p for p in a.peers.split(",") if p]
    bad = [c for c in cases if c not in CASES] + [p for p in peers if p not in PEERS]
    if bad:
        ap.error(f"unknown case / peer {', '.join(bad)}; cases: {', '.join(CASES)}; peers: "
                 f"{', '.join(PEERS)}")
    from pte_compare import shape_checkpoint

    work = a.work / a.name
    work.mkdir(parents=True, exist_ok=True)
    ck = shape_checkpoint(a.checkpoint, work)
    cache = work / "quant-cache"
    rows: dict[str, dict] = {}
    pairs = []
    for c in cases:
        if c == "edge-8da4w":
            rows["ours edge 8da4w"] = ours(ck, work / "edge-8da4w", "8da4w", "edge", None)
        elif c == "xnnpack-mobile":
            rows["ours xnnpack mobile"] = ours(ck, work / "xnnpack", a.mobile_recipe, "xnnpack",
                                               None)
            if "executorch" in peers:
                rows["executorch export_llama 8da4w"] = executorch(ck, work)
                pairs.append(("ours xnnpack mobile", "executorch export_llama 8da4w"))
        elif c == "xnnpack-cached":
            # a fresh cache, filled by an edge export of the same recipe (not reported): an
            # entry left by an earlier run may be keyed to other quantizer code
            remove(cache)
            ours(ck, work / "xnnpack-fill", a.mobile_recipe, "edge", cache)
            row = ours(ck, work / "xnnpack-cached", a.mobile_recipe, "xnnpack", cache)
            if "error" not in row and not (row.get("cache") or {}).get("hit"):
                row["error"] = "the quantization cache filled just before was not hit"
            rows["ours xnnpack mobile, cache warm"] = row
        elif c == "edge-int4-rtn":
            rows["ours edge int4 RTN"] = ours(ck, work / "edge-int4", str(
                HERE / "recipes" / "int4-rtn.json"), "edge", None)
            if "ortgenai" in peers:
                rows["onnxruntime-genai builder int4"] = ortgenai(hf_checkpoint(ck, work),
                                                                   work / "ortgenai")
                pairs.append(("ours edge int4 RTN", "onnxruntime-genai builder int4"))
        print(json.dumps({k: v for k, v in rows.items()}, indent=1), flush=True)
    res = {"name": a.name, "checkpoint": a.checkpoint, "argv": sys.argv[1:],
           "machine": platform.processor() or platform.machine(),
           "threads": os.cpu_count(), "rows": rows, "pairs": pairs}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"export_speed_{a.name}.json").write_text(json.dumps(res, indent=1) + "\n")
    (a.out / f"export_speed_{a.name}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
