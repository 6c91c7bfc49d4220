"""Summarize and rewrite: task prompts on top of the model's chat format.

Input is capped in bytes before tokenizing, checked for emptiness, and must fit the context
with the requested output; nothing is silently truncated.
"""

from __future__ import annotations

from pathlib import Path

from .errors import GenerationError

# Summaries and rewrites of more than ~100 kB of text do not fit any supported context;
# refuse before spending time tokenizing it.
MAX_TASK_INPUT_BYTES = 512 * 1024

SUMMARY_PROMPT = (
    "Summarize the following text in two or three sentences. Keep the key facts and numbers "
    "and do not add anything that is not in the text.\n\n{text}"
)
REWRITE_PROMPT = (
    "Rewrite the following text in a {style} style. Keep its meaning and facts; change only "
    "the wording. Reply with the rewritten text only.\n\n{text}"
)
# Named styles get a more specific instruction; any other style word is used as given.
STYLES = {
    "formal": "formal, professional",
    "casual": "casual, friendly",
    "concise": "concise (about half as long)",
    "simple": "simple, plain-language (short sentences, everyday words)",
    "bullet": "bullet-point",
}


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


def rewrite_messages(text: str, style: str) -> list[dict]:
    style = style.strip()
    if not style or len(style) > 80:
        raise GenerationError("parameter --style: give a short style such as "
                              f"{', '.join(STYLES)} (got {style!r})")
    return [{"role": "user",
             "content": REWRITE_PROMPT.format(style=STYLES.get(style.lower(), style),
                                              text=text)}]
