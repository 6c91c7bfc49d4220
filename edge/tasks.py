"""Summarize and rewrite: task prompts (edge/data/tasks.json) on top of the model's chat format,
for documents of any length up to --max-input.

A document that does not fit the context with the task's prompt and output is split into pieces
on paragraph boundaries (then sentences, then words, for a paragraph that is itself too long).
`summarize` summarizes each piece, then summarizes the summaries (summarize_merge), again in
pieces if they do not fit, until one summary remains; `rewrite` rewrites each piece and joins
them in order. Nothing is dropped: the result lists every piece with its tokens and timings.

Input is capped in bytes before tokenizing and in tokens after (--max-input), checked for
emptiness; every prompt is checked against the context.
"""

from __future__ import annotations

from pathlib import Path

from .errors import GenerationError

TASKS_FILE = Path(__file__).resolve().parent / "data" / "tasks.json"
TASKS_FORMAT, TASKS_VERSION = "llama-edge-tasks", 1


def load_task_spec(path: Path = TASKS_FILE) -> dict:
    """The task prompts, styles, input limits and decoding defaults: one data file that the
    runtime, the server and the Android app (as an asset) all read."""
    import json

    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GenerationError(f"{path}: cannot read the task prompts ({e}); reinstall "
                              "llama-edge") from None
    if spec.get("format") != TASKS_FORMAT or spec.get("version") != TASKS_VERSION:
        raise GenerationError(f"{path}: not a {TASKS_FORMAT} v{TASKS_VERSION} file")
    return spec


_SPEC = load_task_spec()
# Read at most this much text (a guard before tokenizing), and take at most this many tokens
# of it (--max-input, the work a request may cause).
MAX_TASK_INPUT_BYTES = _SPEC["limits"]["max_input_bytes"]
MAX_INPUT_TOKENS = _SPEC["limits"]["max_input_tokens"]
MAX_STYLE_CHARS = _SPEC["limits"]["max_style_chars"]
SUMMARY_PROMPT = _SPEC["tasks"]["summarize"]["prompt"]
REWRITE_PROMPT = _SPEC["tasks"]["rewrite"]["prompt"]
MERGE_PROMPT = _SPEC["tasks"]["summarize_merge"]["prompt"]
TASKS = ("summarize", "rewrite")
# Named styles get a more specific instruction; any other style word is used as given.
STYLES = _SPEC["tasks"]["rewrite"]["styles"]


def task_defaults(task: str) -> dict:
    """Decoding defaults of a task (max_new_tokens, temperature, top_p, top_k,
    repetition_penalty, no_repeat_ngram)."""
    return dict(_SPEC["tasks"][task]["defaults"])


def piece_tokens(task: str) -> int:
    """Document tokens per piece at most (the small models write better from shorter input)."""
    return int(_SPEC["tasks"][task]["piece_tokens"])


def read_input(path) -> str:
    """Read a task's input file ('-' for stdin) with the size cap applied first."""
    import sys

    if str(path) == "-":
        data = sys.stdin.buffer.read(MAX_TASK_INPUT_BYTES + 1)
        name = "<stdin>"
    else:
        p = Path(path)
        if not p.is_file():
            raise GenerationError(f"{p}: input file not found")
        with open(p, "rb") as f:
            data = f.read(MAX_TASK_INPUT_BYTES + 1)
        name = str(p)
    if len(data) > MAX_TASK_INPUT_BYTES:
        raise GenerationError(f"{name}: input is larger than {MAX_TASK_INPUT_BYTES} bytes; "
                              "split it into parts")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GenerationError(f"{name}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise GenerationError(f"{name}: input is empty")
    return text.strip()


def summarize_messages(text: str) -> list[dict]:
    return [{"role": "user", "content": SUMMARY_PROMPT.format(text=text)}]


def merge_messages(text: str) -> list[dict]:
    return [{"role": "user", "content": MERGE_PROMPT.format(text=text)}]


def check_style(style) -> str:
    style = (style or "").strip()
    if not style or len(style) > MAX_STYLE_CHARS:
        raise GenerationError("parameter --style: give a short style such as "
                              f"{', '.join(STYLES)} (got {style!r})")
    return style


def rewrite_messages(text: str, style: str) -> list[dict]:
    style = check_style(style)
    return [{"role": "user",
             "content": REWRITE_PROMPT.format(style=STYLES.get(style.lower(), style),
                                              text=text)}]
