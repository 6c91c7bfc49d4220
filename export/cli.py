"""`llama-export`: turn a checkpoint into artifacts, and look inside models.

Exit status 0 on success, 1 with a one-line error on failure (traceback with --debug).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edge.cliutil import report_errors

_errors = report_errors(interrupted="interrupted; the previous output (if any) is "
                        "untouched", oom="out of memory while exporting")


def _csv(ctx, param, value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _prune_options(fn):
    opts = [
        click.option("--prune", default=None, metavar="SPEC",
                     help="Structured pruning before quantization, comma-separated: layers=N "
                     "(decoder blocks), ffn=FRACTION (FFN channels, 0..1), heads=N (KV groups "
                     "with their query heads), vocab=FILE (keep the tokens FILE uses); "
                     "ffn-per-layer (per-layer FFN widths by one global ranking), multiple=N "
                     "(FFN widths kept at multiples of N, default 128), seed=S (random method)."),
        click.option("--prune-method", type=click.Choice(["importance", "magnitude", "random"]),
                     default="importance", show_default=True,
                     help="How to choose what to remove: importance (measured on --calib text), "
                     "magnitude (weight norms) or random (seeded)."),
        click.option("--heal-steps", type=int, default=0, show_default=True,
                     help="After pruning, distil from the unpruned model for up to N steps of "
                     "128 calibration tokens (logit KL)."),
        click.option("--heal-budget", type=float, default=None, metavar="SECONDS",
                     help="Stop healing after this many seconds."),
        click.option("--threads", type=int, default=None,
                     help="Torch threads for this command (default: torch's)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _check_heal(prune, heal_steps, heal_budget, threads):
    from edge.errors import EdgeError

    if heal_steps < 0 or (heal_budget is not None and heal_budget <= 0):
        raise EdgeError("--heal-steps must be >= 0 and --heal-budget > 0")
    if (heal_steps or heal_budget is not None) and not prune:
        raise EdgeError("--heal-steps / --heal-budget heal a pruned model; give --prune too")
    if heal_budget is not None and not heal_steps:
        raise EdgeError("--heal-budget limits healing; give --heal-steps N as well")
    if threads is not None:
        if threads < 1:
            raise EdgeError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llama-edge")
def main():
    """llama-export: load, quantize and lower Llama checkpoints for on-device use."""
    from edge.nativelog import quiet_import_loggers

    quiet_import_loggers()


@main.command("export")
@click.argument("checkpoint")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Output directory (written atomically).")
@click.option("--recipe", default="none", show_default=True,
              help="Quantization recipe: none, mobile (8da4w g32, int8 embedding/output), "
              "int4-g32, int4-g128, int8, fp8, 8da4w, auto[:BITS|:SIZEMB], or a recipe .json.")
@click.option("--target", "targets", default="edge", show_default=True, callback=_csv,
              help="Comma-separated targets: edge (the llama-edge runtime's bundle), xnnpack "
              "(xnnpack/model.pte + tokenizer.json for ExecuTorch's LLM runner on Arm CPUs: "
              "float, or --recipe mobile), hf (a "
              "normalized Hugging Face checkpoint, unquantized only), gguf (model.gguf for "
              "llama.cpp: Q8_0 / Q4_0 from symmetric int8 / int4 weights in groups of 32k, "
              "F32 / F16 / BF16 otherwise), onnx (onnx/model.onnx + external data for "
              "onnxruntime and onnxruntime-genai: MatMulNBits int4 / int8 weights, "
              "GroupQueryAttention KV cache), onnx-qdq (static-shape QDQ graphs for "
              "onnxruntime's QNN execution provider, uint16 activations calibrated on --calib "
              "text; needs a recipe), qnn / mediatek (Qualcomm HTP / MediaTek APU: static "
              "chunk program quantized by the vendor's quantizer to 16-bit activations x 4-bit "
              "weights, 8-bit output layer, calibrated on --calib text and scored by "
              "simulation; compiled when the vendor SDK is installed, otherwise the export "
              "ends with an error naming it).")
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto",
              show_default=True, help="Dtype of unquantized weights (auto keeps the source "
              "precision).")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Calibration text for GPTQ/AWQ recipes (default: the packaged text).")
@click.option("--max-context", type=int, default=None,
              help="Longest context the edge artifact supports (default: min(model, 4096)); "
              "for qnn / mediatek the static program's context (default: min(model, 512)).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--allow-pickle", is_flag=True, help="Accept pytorch_model.bin pickles (loaded "
              "with weights_only=True).")
@click.option("--skip-memory-check", is_flag=True, help="Run even when the estimated peak "
              "memory exceeds what is available.")
@click.option("--no-cache", is_flag=True, help="Quantize without the quantization cache "
              "(neither read nor written). The cache is keyed by the weights, recipe and "
              "calibration text; it lives in $LLAMA_EDGE_CACHE (or ~/.cache/llama-edge/quant), "
              "at most $LLAMA_EDGE_CACHE_MB megabytes (default 4096).")
@_prune_options
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
@_errors
def export_cmd(checkpoint, out, recipe, targets, dtype, calib, max_context, force, allow_pickle,
               skip_memory_check, no_cache, prune, prune_method, heal_steps, heal_budget, threads,
               as_json):
    """Export CHECKPOINT (HF dir, Meta dir, .gguf, known model name, or preset:NAME)."""
    from edge.memory import bound_heap_retention

    from .pipeline import ExportConfig, run_export

    _check_heal(prune, heal_steps, heal_budget, threads)
    bound_heap_retention()  # process-wide: this command's process only
    cfg = ExportConfig(checkpoint=checkpoint, out=out, recipe=recipe, targets=targets,
                       dtype=dtype, force=force, allow_pickle=allow_pickle, calib=calib,
                       max_context=max_context, prune=prune, prune_method=prune_method,
                       heal_steps=heal_steps, heal_budget=heal_budget,
                       memory_check=not skip_memory_check, cache=not no_cache)
    st = run_export(cfg, log=lambda s: click.echo(s, err=True))
    if as_json:
        click.echo(json.dumps(st.report, indent=2))
    else:
        for name, info in st.report.get("artifacts", {}).items():
            line = f"{name:8} {out / info['path']}  {info['bytes'] / 1e6:8.1f} MB"
            if "dtype" in info:
                line += f"  {info['dtype']}"
            if "top1_agreement" in info:
                line += (f"  top-1 agreement {info['top1_agreement']:.1%}  max |dlogit| "
                         f"{info['max_abs_logit_diff']:.2e}")
            click.echo(line)
        click.echo(f"report: {out / 'export_report.json'}")


@main.command("prune")
@click.argument("checkpoint")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Output HF checkpoint directory (written atomically).")
@_prune_options
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Calibration text for importance and healing (default: the packaged text).")
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto",
              show_default=True, help="Dtype of the written weights (auto keeps the source "
              "precision).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--allow-pickle", is_flag=True, help="Accept pytorch_model.bin pickles.")
@click.option("--json", "as_json", is_flag=True, help="Print the pruning report as JSON.")
@_errors
def prune_cmd(checkpoint, out, prune, prune_method, heal_steps, heal_budget, threads, calib,
              dtype, force, allow_pickle, as_json):
    """Prune CHECKPOINT into a smaller standard Llama, written as an HF directory that every
    command accepts (e.g. llama-export export OUT --recipe mobile)."""
    from edge.errors import EdgeError

    from edge.atomic import atomic_dir

    from .loaders import load_checkpoint
    from .pruning import check_spec, describe, parse_prune, prune_checkpoint
    from .targets.common import dtype_for
    from .writers import write_hf_into

    if not prune:
        raise EdgeError("give what to remove with --prune (e.g. --prune layers=2,ffn=0.25)")
    _check_heal(prune, heal_steps, heal_budget, threads)
    spec = parse_prune(prune, prune_method)
    if spec.empty:
        raise EdgeError(f"--prune {prune!r} removes nothing")
    inputs = (checkpoint,) if Path(checkpoint).exists() else ()
    with atomic_dir(out, force, inputs=inputs) as tmp:  # a bad output path fails before work
        ck = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
        check_spec(spec, ck.config)
        pruned, rep = prune_checkpoint(ck, spec, calib, heal_steps=heal_steps,
                                       heal_budget=heal_budget,
                                       log=lambda s: click.echo(s, err=True))
        write_hf_into(pruned, tmp, dtype_for(pruned, dtype))
        report = {"source": str(ck.path), "out": str(out), **rep.to_json()}
        (tmp / "prune_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"{out}: {describe(rep)}")


@main.command("eval")
@click.argument("model")
@click.option("--text", "text", required=True, type=click.Path(path_type=Path),
              help="UTF-8 text to score (tokenized without BOS).")
@click.option("--recipe", default=None, help="Quantize MODEL in memory with this recipe "
              "(preset name or .json file) before scoring.")
@click.option("--reference", default=None, help="Reference checkpoint (default: MODEL "
              "unquantized).")
@click.option("--ctx", type=int, default=512, show_default=True, help="Window length.")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Calibration text for GPTQ/AWQ recipes (default: the packaged text).")
@click.option("--json", "as_json", is_flag=True)
@_errors
def eval_cmd(model, text, recipe, reference, ctx, calib, as_json):
    """Perplexity, mean KL divergence and same-top-token rate of MODEL against a reference.

    MODEL is a checkpoint (optionally quantized in memory with --recipe) or an edge artifact,
    run by the edge kernels and scored against --reference CHECKPOINT."""
    from tqdm import tqdm

    from .evaluate import evaluate

    bar = tqdm(desc="scoring", unit="window", file=sys.stderr, disable=None)

    def progress(i, n):
        bar.total = n
        bar.update(i - bar.n)

    try:
        r = evaluate(model, text, recipe, reference, ctx, calib, progress)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    rows = [("perplexity", f"{r['ppl']:.4f}"), ("reference perplexity", f"{r['ref_ppl']:.4f}"),
            ("mean KLD", f"{r['kld_mean']:.5f}"), ("99th pct KLD", f"{r['kld_p99']:.5f}"),
            ("same top token", f"{100 * r['top1_agreement']:.2f} %"),
            ("tokens scored", f"{r['tokens']} ({r['windows']} windows of {r['ctx']})")]
    q = r.get("quantization")
    if q:
        rows.append(("bits per weight", f"{q['bits_per_weight']}"))
        rows += [(f"bytes {k}", f"{v / 1e6:.2f} MB") for k, v in q["bytes_by_scheme"].items()]
    w = max(len(a) for a, _ in rows)
    for a, b in rows:
        click.echo(f"{a:<{w}}  {b}")


@main.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True)
@_errors
def inspect(model, as_json):
    """Describe MODEL: format, config, parameters, dtypes, tokenizer and chat format."""
    from edge.chat import detect_chat_format

    from .loaders import load_checkpoint

    ck = load_checkpoint(model)
    cfg = ck.config
    dtypes = {}
    for t in ck.tensors.values():
        dtypes[str(t.dtype).removeprefix("torch.")] = dtypes.get(
            str(t.dtype).removeprefix("torch."), 0) + 1
    info = {
        "path": str(ck.path), "format": ck.format, "name": cfg.name,
        "parameters": cfg.num_parameters(), "bytes_in_memory": ck.nbytes(),
        "dtypes": dtypes, "config": cfg.to_hf_dict(), "notes": ck.notes,
    }
    if ck.tokenizer is not None:
        tok = ck.tokenizer
        info["tokenizer"] = {"vocab_size": tok.vocab_size, "bos_id": tok.bos_id,
                             "eos_ids": list(tok.eos_ids),
                             "chat_format": detect_chat_format(tok)}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{info['path']}  ({ck.format})")
    click.echo(f"  name            {cfg.name}")
    click.echo(f"  parameters      {info['parameters'] / 1e6:.1f} M "
               f"({info['bytes_in_memory'] / 1e6:.1f} MB in memory, {dtypes})")
    click.echo(f"  layers          {cfg.num_layers}, hidden {cfg.hidden_size}, FFN "
               f"{cfg.intermediate_size}, heads {cfg.num_heads} (KV {cfg.num_kv_heads}) x "
               f"{cfg.head_dim}")
    rs = (f", llama3 scaling x{cfg.rope_scaling.factor:g}" if cfg.rope_scaling else "")
    click.echo(f"  rope            theta {cfg.rope_theta:g}{rs}; max positions "
               f"{cfg.max_position_embeddings}")
    click.echo(f"  vocab           {cfg.vocab_size}, tied embeddings: "
               f"{cfg.tie_word_embeddings}")
    if "tokenizer" in info:
        t = info["tokenizer"]
        click.echo(f"  tokenizer       {t['vocab_size']} tokens, bos {t['bos_id']}, eos "
                   f"{t['eos_ids']}, chat format {t['chat_format']}")
    for n in ck.notes:
        click.echo(f"  note            {n}")


if __name__ == "__main__":
    main()
