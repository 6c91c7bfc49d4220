"""`llama-edge`: run, summarize and rewrite with any model the product can open.

Exit status 0 on success; a one-line error and status 1 on failure (traceback with --debug);
status 130 when interrupted. `--json` prints one JSON object with the text, token counts,
finish reason and timings.
"""

from __future__ import annotations

import json
import sys
import time

import click

from .artifact import WEIGHT_MEMORY
from .cliutil import report_errors
from .engines import ENGINES
from .errors import EdgeError, GenerationError
from .sampling import SamplingParams
from .serve import config as serve_config

_errors = report_errors(oom="out of memory; try a smaller --ctx or a smaller model")
ENGINE_HELP = ("auto: edge artifacts on the edge kernels, .gguf files in llama.cpp when "
               "llama-cpp-python is installed, other checkpoints on the torch reference; "
               "torch runs a .gguf (dequantized) on the torch reference.")


WEIGHTS_OPTION = click.option(
    "--weights", "weight_memory", type=click.Choice(WEIGHT_MEMORY), default="auto",
    show_default=True,
    help="Where an edge artifact's weights live: mapped (the file's pages, shared and "
         "evictable), resident (read into huge-page memory: faster decode, loaded once per "
         "process), auto (resident where the system offers transparent huge pages).")


SPECULATIVE_HELP = ("Speculative decoding: off, lookup (draft from n-grams of the prompt and the "
                    "text so far) or draft:MODEL (a smaller model of the same vocabulary, e.g. a "
                    "pruned export of this one). It changes the speed, not the text.")


def _gen_options(fn):
    opts = [
        click.option("-m", "--model", "model", required=True,
                     help="Model: an edge artifact directory (from llama-export), a .pte, an "
                          "ONNX export, a .gguf file (run in llama.cpp when llama-cpp-python is "
                          "installed), or a checkpoint (HF dir, Meta dir, .gguf, known model "
                          "name) run on the torch reference path."),
        click.option("--engine", type=click.Choice(ENGINES), default="auto",
                     show_default=True, help=ENGINE_HELP),
        click.option("--max-new-tokens", type=int, default=None,
                     help="Tokens to generate at most (default: 256 for run; the task's "
                          "default, per piece, for tasks)."),
        click.option("--temperature", type=float, default=None,
                     help="0 is greedy (default: the model's recommendation for run, 0 for "
                          "tasks)."),
        click.option("--top-p", type=float, default=None),
        click.option("--top-k", type=int, default=None, help="0 disables."),
        click.option("--repetition-penalty", type=float, default=None, help="1.0 disables."),
        click.option("--no-repeat-ngram", type=int, default=None,
                     help="Never repeat an n-gram of the generated text (0 disables)."),
        click.option("--seed", type=int, default=None),
        click.option("--stop", multiple=True, help="Stop string (repeatable)."),
        click.option("--ctx", type=int, default=None, help="Context length to allocate."),
        click.option("--threads", type=int, default=None,
                     help="Compute threads (default: the cores this process may use)."),
        click.option("--kv-cache", "kv", type=click.Choice(["f32", "int8"]), default="f32",
                     show_default=True, help="KV cache precision (edge artifacts)."),
        WEIGHTS_OPTION,
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


SAMPLING_FLAGS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
                  "no_repeat_ngram")


def _params(kw, defaults: dict) -> SamplingParams:
    """Flags given on the command line over `defaults` (the task's, or the model's)."""
    values = {k: v for k, v in defaults.items() if k in SAMPLING_FLAGS}
    values.update({k: kw[k] for k in SAMPLING_FLAGS if kw.get(k) is not None})
    return SamplingParams(**values, seed=kw["seed"], stop=tuple(kw["stop"])).validate()


def _open(kw):
    from .engines import open_model

    t0 = time.perf_counter()
    engine = open_model(kw["model"], max_context=kw["ctx"], threads=kw["threads"], kv=kw["kv"],
                        engine=kw["engine"], weight_memory=kw["weight_memory"])
    return engine, time.perf_counter() - t0


def _open_draft(kw):
    from .engines import open_model

    return lambda path: open_model(path, max_context=kw["ctx"], threads=kw["threads"],
                                   weight_memory=kw["weight_memory"])


def _status(prompt_tokens, prefill, generated, decode, reason, engine, extra="") -> None:
    click.echo(f"[{prompt_tokens} prompt tokens at {prefill:.1f} tok/s, {generated} generated "
               f"at {decode:.1f} tok/s, finish: {reason}, engine: {engine}{extra}]", err=True)


def _generate(kw, messages: list[dict] | None, raw_text: str | None, task: str):
    from .chat import detect_chat_format, encode_chat
    from .generate import Generation
    from .speculative import make_drafter

    _params(kw, {"max_new_tokens": 256})  # validate the flags before the slow load
    engine, load_s = _open(kw)
    params = _params(kw, {"max_new_tokens": 256, **engine.generation})
    drafter = make_drafter(kw["speculative"], _open_draft(kw))
    tok = engine.tokenizer
    if tok is None:
        raise EdgeError(f"{kw['model']}: has no tokenizer, so it cannot generate text")
    if messages is not None:
        fmt = engine.chat_format or detect_chat_format(tok)
        ids = encode_chat(tok, messages, fmt)
    else:
        fmt = "raw"
        ids = ([tok.bos_id] if tok.bos_id is not None and getattr(tok, "add_bos", False)
               else []) + tok.encode(raw_text)
    gen = Generation(engine.session(), tok, ids, params, engine.eos_ids, drafter=drafter)
    stream = not kw["as_json"]
    for piece in gen:
        if stream:
            click.echo(piece, nl=False)
            sys.stdout.flush()
    r = gen.result
    if kw["as_json"]:
        d = r.to_json()
        d.pop("token_ids")
        d.update(task=task, engine=engine.name, chat_format=fmt, load_s=round(load_s, 3),
                 model=str(kw["model"]), threads=engine.threads, isa=engine.isa)
        click.echo(json.dumps(d, ensure_ascii=False))
    else:
        click.echo("")
        _status(r.prompt_tokens, r.prefill_tok_s, r.generated_tokens, r.decode_tok_s,
                r.finish_reason, engine.name)
    return r


def _task_options(fn):
    opts = [
        click.option("--speculative", default="lookup", show_default=True, metavar="MODE",
                     help=SPECULATIVE_HELP),
        click.option("--max-input", type=int, default=None, metavar="TOKENS",
                     help="Refuse inputs of more tokens than this (default: "
                          "edge/data/tasks.json's max_input_tokens)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _run_task(kw, task: str, files: tuple, style: str | None = None):
    """Each FILE in turn through one loaded model (the prompt's fixed part is computed once)."""
    from tqdm import tqdm

    from .tasks import MAX_INPUT_TOKENS, check_style, read_input, task_defaults
    from .taskrun import TaskRunner

    if not files:
        raise GenerationError("give at least one input FILE ('-' for stdin)")
    if style is not None:
        style = check_style(style)
    params = _params(kw, task_defaults(task))  # flags over the task's defaults, checked early
    texts = [read_input(f) for f in files]  # every file readable before the slow load
    engine, load_s = _open(kw)
    runner = TaskRunner(engine, kw["speculative"], _open_draft(kw))
    stream = not kw["as_json"]
    results = []
    for name, text in zip(files, texts):
        bar = tqdm(desc=f"{task} {name}", unit="piece", file=sys.stderr, leave=False,
                   disable=None)

        def progress(done, total, label, bar=bar):
            bar.set_description(f"{label} {name}")
            bar.total = total
            bar.n = done
            bar.refresh()

        def on_text(chunk):  # the final output as it is generated (see TaskRunner.run)
            if stream:
                click.echo(chunk, nl=False)
                sys.stdout.flush()

        try:
            r = runner.run(task, text, params, style,
                           kw["max_input"] if kw["max_input"] is not None else MAX_INPUT_TOKENS,
                           progress, on_text)
        finally:
            bar.close()
        results.append(r)
        if kw["as_json"]:
            d = r.to_json()
            d.update(file=str(name), engine=engine.name, load_s=round(load_s, 3),
                     model=str(kw["model"]), threads=engine.threads, isa=engine.isa,
                     speculative_mode=kw["speculative"])
            click.echo(json.dumps(d, ensure_ascii=False))
            continue
        click.echo("")
        d = r.to_json()
        spec = d["speculative"]
        extra = (f", {d['n_pieces']} pieces" if d["n_pieces"] > 1 else "") + (
            f", {d['prefix_cached_tokens']} prompt tokens from the prefix cache"
            if d["prefix_cached_tokens"] else "") + (
            f", speculation kept {spec['accepted_tokens']}/{spec['drafted_tokens']} drafted"
            if spec["drafted_tokens"] else "")
        _status(d["prompt_tokens"], d["prefill_tok_s"], d["generated_tokens"],
                d["decode_tok_s"], d["finish_reason"], engine.name, extra)
    return results


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llama-edge")
def main():
    """llama-edge: run small Llama models locally for summarizing and rewriting text."""


@main.command()
@_gen_options
@click.option("--prompt", default=None, help="Prompt text (default: read stdin).")
@click.option("--raw", is_flag=True, help="Send the prompt as plain text, without the chat "
              "format.")
@click.option("--system", default=None, help="System message (chat format only).")
@click.option("--speculative", default="off", show_default=True, metavar="MODE",
              help=SPECULATIVE_HELP)
@_errors
def run(prompt, raw, system, **kw):
    """Generate a reply to a prompt (one user turn in the model's chat format). Sampling
    options not given take the model's recommended values (greedy when it has none)."""
    if prompt is None:
        if sys.stdin.isatty():
            raise GenerationError("give --prompt TEXT or pipe the prompt on stdin")
        prompt = sys.stdin.read(1 << 20)
    if not prompt.strip():
        raise GenerationError("the prompt is empty")
    if raw:
        _generate(kw, None, prompt, "run")
    else:
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        _generate(kw, msgs, None, "run")


@main.command()
@_gen_options
@_task_options
@click.argument("files", nargs=-1, metavar="FILE...")
@_errors
def summarize(files, **kw):
    """Summarize UTF-8 text FILEs ('-' for stdin), each as long as --max-input allows: longer
    than the context, a document is summarized in pieces, then their summaries."""
    _run_task(kw, "summarize", files)


@main.command()
@_gen_options
@_task_options
@click.argument("files", nargs=-1, metavar="FILE...")
@click.option("--style", required=True, help="formal, casual, concise, simple, bullet, or "
              "any short description.")
@_errors
def rewrite(files, style, **kw):
    """Rewrite UTF-8 text FILEs ('-' for stdin) in another style, piece by piece when longer
    than the context."""
    _run_task(kw, "rewrite", files, style)


def _int_list(ctx, param, value) -> tuple[int, ...]:
    """'128,512' (or the option given several times) -> (128, 512)."""
    out = []
    for v in value:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit():
                raise click.BadParameter(f"{part!r} is not a whole number >= 0")
            out.append(int(part))
    return tuple(dict.fromkeys(out))


@main.command()
@click.option("-m", "--model", "models", required=True, multiple=True,
              help="Edge artifact or checkpoint (repeatable: every model is measured).")
@click.option("--boards", "boards_file", type=click.Path(dir_okay=False), default=None,
              help="A boards.toml: push the models to every board listed, run the same tests on "
              "all of them in parallel (models alternating, one round per --repeat) and print "
              "one merged table; a board that fails gives failure rows.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), default=None,
              help="Also draw the records as PNG plots in this folder (tokens/s vs depth, "
              "prompt time vs prompt length, boards side by side).")
@click.option("--threads", "-t", type=int, default=None,
              help="Compute threads (default: the CPUs this process may use).")
@click.option("--ctx", type=int, default=None, help="Context to allocate (default: 2048 or the "
              "artifact's maximum, whichever is smaller).")
@click.option("-p", "--n-prompt", "n_prompt", multiple=True, callback=_int_list,
              default=("128,512",), show_default=True, help="Prompt lengths (pp tests), comma "
              "separated; 0 for none.")
@click.option("-n", "--n-gen", "n_gen", multiple=True, callback=_int_list, default=("128",),
              show_default=True, help="Decode steps (tg tests), comma separated; 0 for none.")
@click.option("-d", "--n-depth", "depths", multiple=True, callback=_int_list, default=("0",),
              show_default=True, help="Tokens already in the cache before each test (a depth "
              "sweep: -d 0,256,1024).")
@click.option("--repeat", "-r", type=int, default=3, show_default=True,
              help="Timed runs per test.")
@click.option("--warmup", type=int, default=1, show_default=True,
              help="Untimed runs before each test's timed ones.")
@click.option("--delay", type=float, default=0.0, show_default=True,
              help="Seconds of pause between runs (lets a board cool down).")
@click.option("--cpu-mask", "-C", default=None, help="Hex mask of the CPUs to run on (0x3: CPUs "
              "0 and 1; pick the big or the LITTLE cores of a big.LITTLE board); the default "
              "thread count follows it.")
@click.option("--board", default=None, help="Name recorded in the rows (default: host name).")
@click.option("--kv-cache", "kv", type=click.Choice(["f32", "int8"]), default="f32",
              show_default=True)
@click.option("--no-verify", is_flag=True, help="Skip the artifact's file digests at load.")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
              help=ENGINE_HELP)
@WEIGHTS_OPTION
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "md", "csv", "json", "jsonl",
                                                          "pytorch"]), default="text",
              show_default=True, help="text: a summary; md / csv / json / jsonl: one record per "
              "test with llama-bench's field names; pytorch: PyTorch benchmark database records.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: the summary and "
              "its records under 'rows'.")
@_errors
def bench(models, boards_file, plots_dir, threads, ctx, n_prompt, n_gen, depths, repeat, warmup,
          delay, cpu_mask, board, kv, no_verify, engine, weight_memory, fmt, as_json):
    """Prompt and decode speed (at depths), time to first token, load time and peak memory of
    MODEL, as llama-bench records; on this machine or on every board of a boards.toml."""
    from .bench import format_rows, run_bench

    if repeat < 1:
        raise EdgeError("--repeat must be at least 1")
    if warmup < 0 or delay < 0:
        raise EdgeError("--warmup and --delay must be >= 0")
    if not any(n_prompt) and not any(n_gen):
        raise EdgeError("nothing to measure: give -p or -n a length above 0")
    if boards_file:
        from .fleet import Spec, load_boards, run_fleet

        for name, given in (("--threads", threads), ("--cpu-mask", cpu_mask), ("--board", board)):
            if given is not None:
                raise EdgeError(f"{name} is set per board in {boards_file} with --boards")
        if engine != "auto" or weight_memory != "auto":
            raise EdgeError("--engine and --weights do not apply with --boards: boards run edge "
                            "artifacts on the edge kernels")
        boards = load_boards(boards_file)
        spec = Spec(n_prompt=n_prompt, n_gen=n_gen, depths=depths, repeat=repeat, warmup=warmup,
                    delay=delay, ctx=ctx, kv=kv, verify=not no_verify)
        rows = run_fleet(boards, list(models), spec, say=lambda m: click.echo(m, err=True))
        _bench_plots(rows, plots_dir)
        if as_json:
            click.echo(json.dumps({"rows": rows}))
        else:
            click.echo(format_rows(rows, "md" if fmt == "text" else fmt), nl=False)
        return
    results = [run_bench(m, threads=threads, ctx=ctx, repeat=repeat, kv=kv, verify=not no_verify,
                         engine=engine, weight_memory=weight_memory, n_prompt=n_prompt,
                         n_gen=n_gen, depths=depths, warmup=warmup, delay=delay,
                         cpu_mask=cpu_mask, board=board) for m in models]
    rows = [row for r in results for row in r["rows"]]
    _bench_plots(rows, plots_dir)
    if as_json:
        for r in results:
            click.echo(json.dumps(r))
        return
    if fmt != "text":
        click.echo(format_rows(rows, fmt), nl=False)
        return
    for r in results:
        _bench_summary(r, named=len(results) > 1)


@main.command("bundle")
@click.option("-m", "--model", "model", required=True, help="Edge artifact directory.")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="The bench bundle to write (e.g. smollm2-int8.lebench).")
@_errors
def bundle_cmd(model, out):
    """Write MODEL as a bench bundle: one file that llama-edge-bench, the standalone bench
    program for boards without Python, maps and runs (for lab tools that copy files
    themselves; `bench --boards` makes bundles on its own)."""
    from .bench_bundle import write_bundle

    path = write_bundle(model, out)
    click.echo(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


def _bench_plots(rows, plots_dir) -> None:
    if plots_dir:
        from .bench_plots import plot_records

        for path in plot_records(rows, plots_dir):
            click.echo(f"plot: {path}", err=True)


def _bench_summary(r: dict, named: bool) -> None:
    if named:
        click.echo(f"{'model':14} {r['model']}")
    keys = ["engine", "isa", "threads", "weight_memory"] + sorted(
        k for k in r if k.endswith("_tok_s")) + ["ttft64_s", "load_s", "peak_rss_mb", "file_mb",
                                                  "cpu"]
    for key in keys:
        if r.get(key) is not None:
            click.echo(f"{key:14} {r[key]}")
    for row in r["rows"]:
        if row["status"] != "ok":
            click.echo(f"{'failed':14} n_prompt={row['n_prompt']} n_gen={row['n_gen']} "
                       f"n_depth={row['n_depth']}: {row['error']}")


@main.command()
@click.option("-m", "--model", "model", required=True,
              help="Edge artifact directory (from llama-export --target edge).")
@click.option("--host", default=serve_config.DEFAULT_HOST, show_default=True,
              help="Address to listen on (loopback by default; use --api-key beyond it).")
@click.option("--port", type=int, default=serve_config.DEFAULT_PORT, show_default=True,
              help="0 picks a free port.")
@click.option("--parallel", type=int, default=serve_config.DEFAULT_PARALLEL, show_default=True,
              help="Sessions generating at once, each with its KV cache (allocated at start).")
@click.option("--queue", type=int, default=serve_config.DEFAULT_QUEUE, show_default=True,
              help="Requests that may wait for a session; beyond that: 429 with Retry-After.")
@click.option("--ctx", type=int, default=None,
              help="Context of each session (default: 2048 or the artifact's maximum).")
@click.option("--api-key", envvar="LLAMA_EDGE_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' (also from $LLAMA_EDGE_API_KEY).")
@click.option("--threads", type=int, default=None,
              help="Compute threads (default: the cores this process may use).")
@WEIGHTS_OPTION
@click.option("--kv-cache", "kv", type=click.Choice(["f32", "int8"]), default="f32",
              show_default=True, help="KV cache precision.")
@click.option("--max-body", type=int, default=serve_config.DEFAULT_MAX_BODY, show_default=True,
              help="Largest request body in bytes (413 beyond).")
@click.option("--max-messages", type=int, default=serve_config.DEFAULT_MAX_MESSAGES,
              show_default=True,
              help="Most messages in one chat request.")
@click.option("--max-tokens", type=int, default=None,
              help="Largest max_tokens a request may ask for (default: the context).")
@click.option("--max-input", type=int, default=serve_config.MAX_INPUT_TOKENS, show_default=True,
              help="Largest task document in tokens (summarize / rewrite; 400 beyond).")
@click.option("--timeout", type=float, default=serve_config.DEFAULT_TIMEOUT, show_default=True,
              help="Seconds a request may take, queue wait included (then 503 while waiting, "
                   "504 while generating).")
@click.option("--alias", "model_id", default=None,
              help="Model id clients send and /v1/models lists (default: the artifact "
                   "directory's name, or its parent's when it is named 'edge').")
@click.option("--no-verify", is_flag=True, help="Skip the artifact's file digests at load.")
@_errors
def serve(no_verify, **kw):
    """Serve MODEL over HTTP with OpenAI's API (chat completions, completions, models), the
    summarize / rewrite tasks, /health and /metrics. Needs: pip install 'llama-edge[serve]'."""
    from .serve.server import serve as run_server

    run_server(serve_config.ServeConfig(verify=not no_verify, **kw))


@main.command()
@click.argument("artifact")
@click.option("--no-verify", is_flag=True, help="Skip the file digests.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_errors
def info(artifact, no_verify, as_json):
    """Describe an edge ARTIFACT: model, quantization per tensor kind, size, tokenizer, limits."""
    from .artifact import load_artifact

    a = load_artifact(artifact, verify=not no_verify, weight_memory="mapped")
    c = a.config
    kinds: dict[str, int] = {}
    for name, e in a.manifest["tensors"].items():
        if "tied_to" in e:
            continue
        key = f"{e.get('scheme')}" + (" + int8 activations" if e.get("act") else "")
        kinds[key] = kinds.get(key, 0) + 1
    from . import _kernels

    d = {"path": str(a.path), "format_version": a.manifest["format_version"],
         "producer": a.manifest.get("producer"), "recipe": a.recipe_name,
         "model": {"layers": c.num_layers, "hidden": c.hidden_size, "heads": c.num_heads,
                   "kv_heads": c.num_kv_heads, "vocab": c.vocab_size,
                   "parameters": c.num_parameters(), "tied_embeddings": c.tie_word_embeddings},
         "schemes": kinds, "tied": a.tied, "file_mb": round(a.file_bytes / 1e6, 2),
         "max_context": a.max_context, "chat_format": a.chat_format,
         "eos_token_ids": list(a.eos_ids), "generation": a.generation,
         "verified": not no_verify, "kernels": _kernels.best_isa()}
    if as_json:
        click.echo(json.dumps(d))
        return
    for k, v in d.items():
        click.echo(f"{k:14} {v}")


if __name__ == "__main__":
    main()
