"""Our xnnpack .pte against ExecuTorch's own `export_llama` recipe for the same model, in one run:
export wall time and peak RSS, file size, prefill / decode speed in ExecuTorch's C++ LLM runner
(TextLLMRunner, the runner Android's LlmModule wraps), and quality against the float model.

    python benchmarks/pte_compare.py --name smollm2 --checkpoint smollm2-135m-instruct \\
        --recipe mobile --runs 3
    python benchmarks/pte_compare.py --name llama3.2-1b --checkpoint preset:llama3.2-1b \\
        --recipe mobile --runs 3 --no-quality

ExecuTorch's program comes from `python -m executorch.examples.models.llama.export_llama` on a
Meta-format copy of the same weights with its XNNPACK recipe for 8-bit dynamic activations x
4-bit weights (`-kv --use_sdpa_with_kv_cache -X --xnnpack-extended-ops -d fp32 --qmode 8da4w
--group_size 32 -E 8,0`), the same prompt-chunk length and context. Each export and each speed
measurement runs in a fresh process (peak RSS from wait4), the two programs alternate round by
round, each round's figure is the median of --repeat generations in that process, and each
reported figure is the median over rounds. Speeds are the runner's own statistics:
prompt tokens / (prompt evaluated - inference start), (generated - 1) / (end - first token).
A second, finer measurement loads both programs in one process (executorch's Python runtime,
same delegate) and alternates their prompt and decode calls for --interleaved-rounds rounds:
the ratio of each round's pair is taken, so the host's slow and fast moments cancel.
Quality: mean KLD, same-top-token rate and perplexity against the float model over windows of
the held-out text (never used for calibration or tuning), one token per forward call.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"
MAX_SEQ_LEN = 128


def run_measured(cmd: list[str], log: Path, env=None) -> dict:
    """Run a command; its wall time and peak RSS (this child only)."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n" + "\n".join(tail))
    return {"seconds": round(dt, 1), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1)}


# Presets (random weights at a published shape) have no tokenizer, and the xnnpack target ships
# one: the benchmark writes the preset as the HF directory a user would export from, with
# SmolLM2's tokenizer standing in (its ids are a subset of every preset's vocabulary).
SHAPE_TOKENIZER = "smollm2-135m-instruct"


def shape_checkpoint(spec: str, work: Path) -> str:
    if not spec.startswith("preset:"):
        return spec
    dest = work / "checkpoint"
    if not (dest / "config.json").is_file():
        import torch

        from export.loaders import load_checkpoint
        from export.writers import write_hf

        ck = load_checkpoint(spec)
        tok = ck.tokenizer = load_checkpoint(SHAPE_TOKENIZER).tokenizer
        ck.config = dataclasses.replace(ck.config, bos_token_id=tok.bos_id,
                                        eos_token_ids=tuple(tok.eos_ids))
        write_hf(ck, dest, dtype=torch.bfloat16, force=True)
    return str(dest)


def export_ours(ck: str, recipe: str, out: Path, ctx: int) -> tuple[Path, dict]:
    cmd = [sys.executable, "-m", "export.cli", "export", ck, "-o", str(out), "--recipe", recipe,
           "--target", "xnnpack", "--max-context", str(ctx), "--force"]
    m = run_measured(cmd, out.parent / "ours_export.log")
    rep = json.loads((out / "export_report.json").read_text())
    m["stages"] = rep["stages"]
    # the export restarts its peak at each stage (its log shows each stage's own), so the
    # peak at exit that wait4 reports is only the last stage's: the whole export's is the
    # report's maximum over stages
    m["peak_rss_mb"] = max(m["peak_rss_mb"], rep.get("peak_rss_mb", 0.0))
    return out / "xnnpack" / "model.pte", m


def export_executorch(ck: str, work: Path, ctx: int, name: str) -> tuple[Path, dict]:
    """Meta-format weights (not timed: the same for both), then export_llama (timed)."""
    import torch

    from export.loaders import load_checkpoint
    from export.writers import write_meta

    c = load_checkpoint(ck)
    meta_dir = work / "meta"
    if not (meta_dir / "params.json").is_file():
        write_meta(c, meta_dir, dtype=torch.bfloat16 if c.dtype == torch.bfloat16 else
                   torch.float32, force=True)
        if c.config.tie_word_embeddings:  # export_llama's model wants the output layer spelled out
            f = meta_dir / "consolidated.00.pth"
            sd = torch.load(f, weights_only=True)
            sd["output.weight"] = sd["tok_embeddings.weight"]
            torch.save(sd, f)
            del sd
    # ExecuTorch's ModelArgs spells the RoPE scaling factor rope_scale_factor (an int)
    pf = meta_dir / "params.json"
    params = json.loads(pf.read_text())
    if "rope_scaling_factor" in params:
        params["rope_scale_factor"] = int(params.pop("rope_scaling_factor"))
        pf.write_text(json.dumps(params, indent=2) + "\n")
    eos = sorted(set(c.config.eos_token_ids) | set(c.tokenizer.eos_ids if c.tokenizer else ()))
    bos = c.config.bos_token_id if c.config.bos_token_id is not None else 0
    out = work / "executorch"
    out.mkdir(parents=True, exist_ok=True)
    model = "smollm2" if "smollm2" in name else "llama3_2"
    cmd = [sys.executable, "-m", "executorch.examples.models.llama.export_llama",
           "--model", model, "--checkpoint", str(meta_dir / "consolidated.00.pth"),
           "--params", str(meta_dir / "params.json"), "-kv", "--use_sdpa_with_kv_cache",
           "-X", "--xnnpack-extended-ops", "-d", "fp32", "-qmode", "8da4w", "--group_size",
           "32", "-E", "8,0", "--max_seq_length", str(MAX_SEQ_LEN), "--max_context_length",
           str(ctx), "--metadata", json.dumps({"get_bos_id": bos, "get_eos_ids": eos}),
           "--output_name", str(out / "model.pte")]
    m = run_measured(cmd, work / "executorch_export.log")
    (work / "executorch_export.json").write_text(json.dumps(m) + "\n")
    pte = out / "model.pte"
    if c.tokenizer is not None:  # the runner and our engine read the tokenizer beside it
        c.tokenizer.save(out)
    return pte, m


# --------------------------------------------------------------------------- speed (child)
def runner_child(pte: str, tokenizer: str, prompt_file: str, gen: int, repeat: int) -> None:
    # The Python binding's process needs ExecuTorch's LLM custom ops and quantized kernels
    # registered (an app links them into its runtime library).
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    prompt = Path(prompt_file).read_text()
    t0 = time.perf_counter()
    runner = TextLLMRunner(pte, tokenizer)
    load_s = time.perf_counter() - t0
    stats = []
    cfg = GenerationConfig(max_new_tokens=gen, temperature=0.0, echo=False)
    # No token callback: a random-weight model's pieces are not always valid UTF-8, which the
    # binding would have to decode for one.
    runner.generate(prompt, GenerationConfig(max_new_tokens=4, temperature=0.0, echo=False))
    pps, tgs = [], []
    for _ in range(repeat):  # a 120-token prompt takes ~0.15 s: one run is at the noise's mercy
        runner.reset()
        runner.generate(prompt, cfg, stats_callback=stats.append)
        s = stats[-1]
        pps.append(s.num_prompt_tokens / max(1e-9, (s.prompt_eval_end_ms -
                                                    s.inference_start_ms) / 1e3))
        tgs.append((s.num_generated_tokens - 1) / max(1e-9, (s.inference_end_ms -
                                                             s.first_token_ms) / 1e3))
    from edge.bench import peak_rss_mb  # this image's own (ru_maxrss includes the parent's)

    print(json.dumps({"prompt_tokens": s.num_prompt_tokens, "generated": s.num_generated_tokens,
                      "prefill_tok_s": statistics.median(pps), "decode_tok_s":
                      statistics.median(tgs), "prefill_runs": pps, "decode_runs": tgs,
                      "load_s": load_s, "peak_rss_mb": peak_rss_mb()}))


def interleaved_child(ours: str, theirs: str, prompt_file: str, rounds: int, gen: int) -> None:
    """Both programs loaded in one process (executorch's runtime, the XNNPACK delegate the
    runner uses), their prompt and decode calls alternated round by round: what the host's
    slow and fast moments do to one, they do to the other within milliseconds."""
    from edge.engines.executorch import ExecuTorchEngine

    engines = {"ours": ExecuTorchEngine(ours, verify=False),
               "executorch": ExecuTorchEngine(theirs, verify=False)}
    ids = engines["ours"].tokenizer.encode(Path(prompt_file).read_text())
    sessions = {k: e.session() for k, e in engines.items()}
    out = {k: {"prefill_s": [], "decode_s": []} for k in engines}
    order = list(engines)
    for r in range(rounds + 1):  # round 0 warms both up and is not counted
        for k in order[r % 2:] + order[:r % 2]:
            s = sessions[k]
            s.reset()
            t0 = time.perf_counter()
            s.prefill(ids)
            t1 = time.perf_counter()
            for i in range(gen):
                s.decode(ids[i % len(ids)])
            t2 = time.perf_counter()
            if r:
                out[k]["prefill_s"].append(t1 - t0)
                out[k]["decode_s"].append((t2 - t1) / gen)
    print(json.dumps({"prompt_tokens": len(ids), "gen": gen, "rounds": rounds, "runs": out}))


def interleaved(ptes: dict[str, Path], prompt_file: Path, rounds: int, gen: int) -> dict:
    cmd = [sys.executable, __file__, "--interleaved-child", str(ptes["ours"]),
           str(ptes["executorch"]), str(prompt_file), str(rounds), str(gen)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"interleaved measurement failed:\n{r.stderr[-2000:]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    runs, n = d["runs"], d["prompt_tokens"]
    med = {k: {"prefill_tok_s": round(n / statistics.median(v["prefill_s"]), 2),
               "decode_tok_s": round(1 / statistics.median(v["decode_s"]), 2)}
           for k, v in runs.items()}
    o, e = runs["ours"], runs["executorch"]
    d["speed"] = med
    d["paired"] = {"prefill": round(statistics.median(
                       b / a for a, b in zip(o["prefill_s"], e["prefill_s"])), 3),
                   "decode": round(statistics.median(
                       b / a for a, b in zip(o["decode_s"], e["decode_s"])), 3)}
    return d


def measure_speed(pte: Path, prompt_file: Path, gen: int, repeat: int) -> dict:
    cmd = [sys.executable, __file__, "--runner-child", str(pte), str(pte.parent / "tokenizer.json"),
           str(prompt_file), str(gen), str(repeat)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"runner failed on {pte}:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- quality
def quality(ptes: dict[str, Path], ck: str, text: str, ctx: int, max_tokens: int) -> dict:
    import torch

    from edge.engines.executorch import ExecuTorchEngine
    from export.evaluate import read_text
    from export.loaders import load_checkpoint
    from export.model import LlamaModel
    from quant.eval import compare

    c = load_checkpoint(ck)
    ids = c.tokenizer.encode(read_text(Path(text)))[:max_tokens]
    ref = LlamaModel.from_state_dict(c.config, c.tensors, torch.float32, max_seq_len=ctx)
    out = {}
    with torch.inference_mode():
        for name, pte in ptes.items():
            sess = ExecuTorchEngine(pte, max_context=ctx).session()
            run = lambda w: torch.from_numpy(sess.logits_all(w[0].tolist()))  # noqa: E731
            out[name] = compare(run, lambda w: ref(w)[0], ids, ctx).to_json()
    return out


def prompt_text(ck: str, n: int, work: Path) -> Path:
    """About n tokens of the held-out text (plain continuation, no chat template)."""
    from export.evaluate import read_text
    from export.loaders import load_checkpoint

    tok = load_checkpoint(ck).tokenizer
    ids = tok.encode(read_text(Path(DEFAULT_TEXT)))[:n]
    f = work / f"prompt{n}.txt"
    f.write_text(tok.decode(ids))
    return f


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--runner-child":
        runner_child(*sys.argv[2:5], int(sys.argv[5]), int(sys.argv[6]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--interleaved-child":
        interleaved_child(*sys.argv[2:5], int(sys.argv[5]), int(sys.argv[6]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--recipe", default="mobile")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pte_compare"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=MAX_SEQ_LEN)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5, help="generations per process (median)")
    ap.add_argument("--interleaved-rounds", type=int, default=30,
                    help="rounds of the in-process alternated measurement (0: skip)")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--quality-tokens", type=int, default=1024)
    ap.add_argument("--reuse", action="store_true", help="keep existing exports (no export "
                    "measurements)")
    args = ap.parse_args()
    work = args.work / args.name
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"name": args.name, "checkpoint": args.checkpoint, "recipe": args.recipe,
                 "repeat": args.repeat,
                 "ctx": args.ctx, "max_seq_len": MAX_SEQ_LEN, "exports": {}}
    ck = shape_checkpoint(args.checkpoint, work)
    ours_pte = work / "ours" / "xnnpack" / "model.pte"
    et_pte = work / "executorch" / "model.pte"
    if not args.reuse or not ours_pte.is_file():
        _, res["exports"]["ours"] = export_ours(ck, args.recipe, work / "ours",
                                                args.ctx)
    elif (work / "ours" / "export_report.json").is_file():  # the export's own stage log
        rep = json.loads((work / "ours" / "export_report.json").read_text())
        res["exports"]["ours"] = {
            "seconds": round(sum(x["seconds"] for x in rep["stages"]), 1),
            "peak_rss_mb": rep.get("peak_rss_mb", max(x["peak_rss_mb"] for x in rep["stages"])),
            "stages": rep["stages"], "from": "export_report.json"}
    if not args.reuse or not et_pte.is_file():
        _, res["exports"]["executorch"] = export_executorch(ck, work, args.ctx,
                                                            args.name)
    elif (work / "executorch_export.json").is_file():  # that export's own measurement
        res["exports"]["executorch"] = json.loads((work / "executorch_export.json").read_text())
    ptes = {"ours": ours_pte, "executorch": et_pte}
    res["file_mb"] = {k: round(p.stat().st_size / 1e6, 2) for k, p in ptes.items()}
    prompt = prompt_text(ck, args.prompt_tokens, work)
    rounds: dict[str, list[dict]] = {k: [] for k in ptes}
    order = list(ptes)
    for r in range(args.runs):
        for k in order[r % 2:] + order[:r % 2]:
            m = measure_speed(ptes[k], prompt, args.gen, args.repeat)
            rounds[k].append(m)
            print(f"round {r} {k}: pp {m['prefill_tok_s']:.1f} tg {m['decode_tok_s']:.1f}",
                  flush=True)
    res["rounds"] = rounds
    if args.interleaved_rounds:
        res["interleaved"] = interleaved(ptes, prompt, args.interleaved_rounds, 32)
        print(f"interleaved: {res['interleaved']['speed']} paired "
              f"{res['interleaved']['paired']}", flush=True)
    res["speed"] = {k: {f: round(statistics.median(x[f] for x in v), 2) for f in
                        ("prefill_tok_s", "decode_tok_s", "load_s", "peak_rss_mb")}
                    | {"prompt_tokens": v[0]["prompt_tokens"],
                       # the fastest generation of all: the speed with the least interference
                       # from other tenants of a shared host
                       "best_prefill_tok_s": round(max(max(x["prefill_runs"]) for x in v), 2),
                       "best_decode_tok_s": round(max(max(x["decode_runs"]) for x in v), 2)}
                    for k, v in rounds.items()}
    if not args.no_quality:
        res["quality"] = quality(ptes, ck, DEFAULT_TEXT, 256, args.quality_tokens)
        res["quality_text"] = DEFAULT_TEXT
    o, e = res["speed"]["ours"], res["speed"]["executorch"]
    res["ratios"] = {"prefill": round(o["prefill_tok_s"] / e["prefill_tok_s"], 3),
                     "decode": round(o["decode_tok_s"] / e["decode_tok_s"], 3),
                     "best_prefill": round(o["best_prefill_tok_s"] / e["best_prefill_tok_s"], 3),
                     "best_decode": round(o["best_decode_tok_s"] / e["best_decode_tok_s"], 3),
                     # each round runs both programs back to back: the median of their ratios
                     # cancels the host's slower and faster periods
                     "paired_prefill": round(statistics.median(
                         a["prefill_tok_s"] / b["prefill_tok_s"]
                         for a, b in zip(rounds["ours"], rounds["executorch"])), 3),
                     "paired_decode": round(statistics.median(
                         a["decode_tok_s"] / b["decode_tok_s"]
                         for a, b in zip(rounds["ours"], rounds["executorch"])), 3),
                     "file_size": round(res["file_mb"]["ours"] / res["file_mb"]["executorch"], 3)}
    dest = HERE / "results" / f"pte_compare_{args.name}"  # names may hold dots (llama3.2-1b)
    Path(f"{dest}.json").write_text(json.dumps(res, indent=2) + "\n")
    Path(f"{dest}.md").write_text(markdown(res))
    print(markdown(res))


def markdown(res: dict) -> str:
    lines = [f"# {res['name']}: our .pte vs ExecuTorch's export_llama (recipe {res['recipe']}, "
             f"context {res['ctx']}, prompt chunk {res['max_seq_len']})", "",
             "| program | file MB | prefill tok/s | decode tok/s | load s | runner RSS MB |"
             " export s | export peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for k in ("ours", "executorch"):
        s, ex = res["speed"][k], res["exports"].get(k, {})
        lines.append(f"| {k} | {res['file_mb'][k]} | {s['prefill_tok_s']} | {s['decode_tok_s']} | "
                     f"{s['load_s']:.2f} | {s['peak_rss_mb']:.0f} | {ex.get('seconds', '-')} | "
                     f"{ex.get('peak_rss_mb', '-')} |")
    r = res["ratios"]
    lines += ["", f"ours / executorch: prefill {r['prefill']}x, decode {r['decode']}x, file size "
              f"{r['file_size']}x (prompt {res['speed']['ours']['prompt_tokens']} tokens; medians "
              f"of {len(res['rounds']['ours'])} rounds, each a fresh process taking the median of "
              f"{res.get('repeat', 1)} generations, programs alternated)"]
    if "paired_prefill" in r:
        lines += ["", f"Paired (median over rounds of ours / executorch, run back to back): "
                  f"prefill {r['paired_prefill']}x, decode {r['paired_decode']}x. Fastest "
                  f"generation of each: prefill {r['best_prefill']}x, decode {r['best_decode']}x."]
    if "interleaved" in res:
        d = res["interleaved"]
        s_o, s_e = d["speed"]["ours"], d["speed"]["executorch"]
        lines += ["", f"Both programs in one process (executorch's Python runtime), prompt "
                  f"({d['prompt_tokens']} tokens) and {d['gen']} decode steps alternated over "
                  f"{d['rounds']} rounds: prefill {s_o['prefill_tok_s']} vs "
                  f"{s_e['prefill_tok_s']} tok/s, decode {s_o['decode_tok_s']} vs "
                  f"{s_e['decode_tok_s']} tok/s; paired (median of per-round ratios) prefill "
                  f"{d['paired']['prefill']}x, decode {d['paired']['decode']}x."]
    if "quality" in res:
        lines += ["", f"Quality vs the float model on {res['quality_text']}:", "",
                  "| program | mean KLD | top-1 agreement | PPL | float PPL |", "|---|---|---|---|---|"]
        for k, q in res["quality"].items():
            lines.append(f"| {k} | {q['kld_mean']:.4f} | {q['top1_agreement']:.3f} | "
                         f"{q['ppl']:.2f} | {q['ref_ppl']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
