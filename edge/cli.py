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


def _gen_options(fn):
    opts = [
        click.option("-m", "--model", "model", required=True,
                     help="Model: an edge artifact directory (from llama-export), a .gguf file "
                          "(run in llama.cpp when llama-cpp-python is installed), or a "
                          "checkpoint (HF dir, Meta dir, .gguf, known model name) run on the "
                          "torch reference path."),
        click.option("--engine", type=click.Choice(ENGINES), default="auto",
                     show_default=True, help=ENGINE_HELP),
        click.option("--max-new-tokens", type=int, default=None,
                     help="Tokens to generate at most (default: 256 for run, task-specific "
                          "otherwise)."),
        click.option("--temperature", type=float, default=0.0, show_default=True,
                     help="0 is greedy."),
        click.option("--top-p", type=float, default=1.0, show_default=True),
        click.option("--top-k", type=int, default=0, show_default=True, help="0 disables."),
        click.option("--repetition-penalty", type=float, default=None,
                     help="1.0 disables (default: 1.0 for run, 1.1 for tasks)."),
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


def _params(kw, default_new: int, default_rep: float) -> SamplingParams:
    rep = kw["repetition_penalty"]
    return SamplingParams(
        max_new_tokens=kw["max_new_tokens"] if kw["max_new_tokens"] is not None else default_new,
        temperature=kw["temperature"], top_p=kw["top_p"], top_k=kw["top_k"],
        repetition_penalty=rep if rep is not None else default_rep, seed=kw["seed"],
        stop=tuple(kw["stop"])).validate()


def _generate(kw, messages: list[dict] | None, raw_text: str | None, default_new: int,
              default_rep: float, task: str):
    from .chat import detect_chat_format, encode_chat
    from .engines import open_model
    from .generate import Generation

    params = _params(kw, default_new, default_rep)  # validate before the slow load
    t0 = time.perf_counter()
    engine = open_model(kw["model"], max_context=kw["ctx"], threads=kw["threads"], kv=kw["kv"],
                        engine=kw["engine"], weight_memory=kw["weight_memory"])
    load_s = time.perf_counter() - t0
    tok = engine.tokenizer
    if tok is None:
        raise EdgeError(f"{kw['model']}: has no tokenizer, so it cannot generate text")
    if messages is not None:
        fmt = getattr(engine, "chat_format", None) or detect_chat_format(tok)
        ids = encode_chat(tok, messages, fmt)
    else:
        fmt = "raw"
        ids = ([tok.bos_id] if tok.bos_id is not None and getattr(tok, "add_bos", False)
               else []) + tok.encode(raw_text)
    gen = Generation(engine.session(), tok, ids, params, engine.eos_ids)
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
                 model=str(kw["model"]), threads=getattr(engine, "threads", None),
                 isa=getattr(engine, "isa", None))
        click.echo(json.dumps(d, ensure_ascii=False))
    else:
        click.echo("")
        click.echo(f"[{r.prompt_tokens} prompt tokens at {r.prefill_tok_s:.1f} tok/s, "
                   f"{r.generated_tokens} generated at {r.decode_tok_s:.1f} tok/s, "
                   f"finish: {r.finish_reason}, engine: {engine.name}]", err=True)
    return r


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
@_errors
def run(prompt, raw, system, **kw):
    """Generate a reply to a prompt (one user turn in the model's chat format)."""
    if prompt is None:
        if sys.stdin.isatty():
            raise GenerationError("give --prompt TEXT or pipe the prompt on stdin")
        prompt = sys.stdin.read(1 << 20)
    if not prompt.strip():
        raise GenerationError("the prompt is empty")
    if raw:
        _generate(kw, None, prompt, 256, 1.0, "run")
    else:
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        _generate(kw, msgs, None, 256, 1.0, "run")


@main.command()
@_gen_options
@click.argument("file")
@_errors
def summarize(file, **kw):
    """Summarize a UTF-8 text FILE ('-' for stdin)."""
    from .tasks import read_input, summarize_messages, task_defaults

    d = task_defaults("summarize")
    _generate(kw, summarize_messages(read_input(file)), None, d["max_new_tokens"],
              d["repetition_penalty"], "summarize")


@main.command()
@_gen_options
@click.argument("file")
@click.option("--style", required=True, help="formal, casual, concise, simple, bullet, or "
              "any short description.")
@_errors
def rewrite(file, style, **kw):
    """Rewrite a UTF-8 text FILE ('-' for stdin) in another style."""
    from .tasks import read_input, rewrite_messages, task_defaults

    d = task_defaults("rewrite")
    _generate(kw, rewrite_messages(read_input(file), style), None, d["max_new_tokens"],
              d["repetition_penalty"], "rewrite")


@main.command()
@click.option("-m", "--model", "model", required=True, help="Edge artifact or checkpoint.")
@click.option("--threads", type=int, default=None, help="Compute threads (default: all cores).")
@click.option("--ctx", type=int, default=None, help="Context to allocate (default: 2048 or the "
              "artifact's maximum, whichever is smaller).")
@click.option("--repeat", type=int, default=3, show_default=True, help="Runs per figure "
              "(median reported).")
@click.option("--kv-cache", "kv", type=click.Choice(["f32", "int8"]), default="f32",
              show_default=True)
@click.option("--no-verify", is_flag=True, help="Skip the artifact's file digests at load.")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
              help=ENGINE_HELP)
@WEIGHTS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_errors
def bench(model, threads, ctx, repeat, kv, no_verify, engine, weight_memory, as_json):
    """Prompt and decode speed, time to first token, load time and peak memory of MODEL."""
    from .bench import run_bench

    if repeat < 1:
        raise EdgeError("--repeat must be at least 1")
    r = run_bench(model, threads=threads, ctx=ctx, repeat=repeat, kv=kv, verify=not no_verify,
                  engine=engine, weight_memory=weight_memory)
    if as_json:
        click.echo(json.dumps(r))
        return
    for key in ("engine", "isa", "threads", "weight_memory", "pp128_tok_s", "pp512_tok_s",
                "tg128_tok_s", "ttft64_s", "load_s", "peak_rss_mb", "file_mb", "cpu"):
        if r.get(key) is not None:
            click.echo(f"{key:14} {r[key]}")


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
         "producer": a.manifest.get("producer"), "recipe": a.manifest.get("recipe"),
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
