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

from .cliutil import report_errors
from .errors import EdgeError, GenerationError
from .sampling import SamplingParams

_errors = report_errors(oom="out of memory; try a smaller --ctx or a smaller model")


def _gen_options(fn):
    opts = [
        click.option("-m", "--model", "model", required=True,
                     help="Model: HF dir, Meta dir, .gguf, or a known model name."),
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
        click.option("--threads", type=int, default=None),
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
    engine = open_model(kw["model"], max_context=kw["ctx"], threads=kw["threads"])
    load_s = time.perf_counter() - t0
    tok = engine.tokenizer
    if tok is None:
        raise EdgeError(f"{kw['model']}: has no tokenizer, so it cannot generate text")
    if messages is not None:
        fmt = detect_chat_format(tok)
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
                 model=str(kw["model"]))
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
    from .tasks import read_input, summarize_messages

    _generate(kw, summarize_messages(read_input(file)), None, 160, 1.1, "summarize")


@main.command()
@_gen_options
@click.argument("file")
@click.option("--style", required=True, help="formal, casual, concise, simple, bullet, or "
              "any short description.")
@_errors
def rewrite(file, style, **kw):
    """Rewrite a UTF-8 text FILE ('-' for stdin) in another style."""
    from .tasks import read_input, rewrite_messages

    _generate(kw, rewrite_messages(read_input(file), style), None, 320, 1.1, "rewrite")


if __name__ == "__main__":
    main()
