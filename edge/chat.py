"""Chat prompts as token ids, without executing chat templates.

Three formats are built in: 'llama3' (header/eot scaffolding), 'chatml' (im_start/im_end) and
'raw' (message text only). A model's Jinja template is only *read*, never rendered: we detect the
format from it and pull out the literal bits that change the rendering (ChatML's default system
prompt, Llama 3.1+'s "Cutting Knowledge Date" system preamble) with regular expressions.

Scaffolding tokens are emitted as ids. The text between two scaffolding tokens (a role name plus
message content) is tokenized as one piece with `Tokenizer.encode`, which never turns special-token
strings into special ids, so user text cannot forge a turn. Tokenizing exactly the text a template
would put between those special tokens is also what makes our ids equal to a template's.
"""

from __future__ import annotations

import datetime
import re

from edge.errors import GenerationError, TokenizerError

FORMATS = ("llama3", "chatml", "raw")
ROLES = ("system", "user", "assistant")

LLAMA3_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")

# A literal default system turn inside a ChatML template, written with a real newline or with a
# Jinja "\n" escape after the role. No unescaped quote or brace inside: that would be an expression.
_CHATML_DEFAULT_SYSTEM = re.compile(
    r"<\|im_start\|>system(?:\n|\\n)((?:[^'\"{}\\]|\\.)*?)<\|im_end\|>", re.S
)
# Llama 3.1 / 3.2 templates open every conversation with this system preamble.
_LLAMA3_KNOWLEDGE = re.compile(r"Cutting Knowledge Date: ([A-Za-z]+ \d{4})")
_LLAMA3_DEFAULT_DATE = re.compile(r"date_string\s*=\s*[\"']([^\"']+)[\"']")
_JINJA_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "'": "'", '"': '"', "\\": "\\"}


def _has_all(tokenizer, names) -> bool:
    return all(tokenizer.id_of(n) is not None for n in names)


def detect_chat_format(tokenizer) -> str:
    """'llama3', 'chatml' or 'raw', from the template text or else the special tokens present."""
    template = tokenizer.chat_template or ""
    if "<|start_header_id|>" in template and _has_all(tokenizer, LLAMA3_TOKENS):
        return "llama3"
    if "<|im_start|>" in template and _has_all(tokenizer, CHATML_TOKENS):
        return "chatml"
    if _has_all(tokenizer, LLAMA3_TOKENS):
        return "llama3"
    if _has_all(tokenizer, CHATML_TOKENS):
        return "chatml"
    return "raw"


def _unescape_jinja(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _JINJA_ESCAPES.get(m.group(1), m.group(0)), text, flags=re.S)


def chatml_default_system(template: str | None) -> str | None:
    """The system text a ChatML template injects when the conversation has none (or None)."""
    if not template:
        return None
    m = _CHATML_DEFAULT_SYSTEM.search(template)
    return _unescape_jinja(m.group(1)) if m else None


def llama3_system_preamble(template: str | None, date_string: str | None = None) -> str | None:
    """The text Llama 3.1+ templates put before the system message (or None for plain Llama 3).

    The date is `date_string` if given, else today's (templates calling strftime_now), else the
    template's own default date.
    """
    if not template or "Today Date:" not in template:
        return None
    m = _LLAMA3_KNOWLEDGE.search(template)
    if m is None:
        return None
    if date_string is None:
        if "strftime_now" in template:
            date_string = datetime.datetime.now().strftime("%d %b %Y")
        else:
            d = _LLAMA3_DEFAULT_DATE.search(template)
            date_string = d.group(1) if d else "26 Jul 2024"
    return f"Cutting Knowledge Date: {m.group(1)}\nToday Date: {date_string}\n\n"


def _validate(messages) -> list[tuple[str, str]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise GenerationError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise GenerationError(f"messages[{i}] must be a dict with 'role' and 'content', "
                                  f"not {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise GenerationError(f"messages[{i}]['role'] is {role!r}; use one of: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise GenerationError(
                f"messages[{i}]['content'] must be a str, not {type(content).__name__}"
            )
        out.append((role, content))
    return out


def _special(tokenizer, name: str, fmt: str) -> int:
    tid = tokenizer.id_of(name)
    if tid is None:
        raise TokenizerError(
            f"{tokenizer.source}: chat format '{fmt}' needs the special token {name!r}, which this "
            f"tokenizer lacks; use chat format '{detect_chat_format(tokenizer)}' for this model"
        )
    return tid


class _Builder:
    """Collects special ids and text runs; each text run between two specials is encoded once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._text: list[str] = []

    def special(self, tid: int) -> None:
        self._flush()
        self.ids.append(tid)

    def text(self, s: str) -> None:
        self._text.append(s)

    def _flush(self) -> None:
        if self._text:
            joined = "".join(self._text)
            self._text = []
            if joined:
                self.ids.extend(self.tokenizer.encode(joined))

    def done(self) -> list[int]:
        self._flush()
        return self.ids


def encode_chat(
    tokenizer,
    messages: list[dict],
    fmt: str,
    add_generation_prompt: bool = True,
    *,
    date_string: str | None = None,
) -> list[int]:
    """Token ids of a conversation in chat format `fmt` (see FORMATS).

    'llama3' and 'chatml' follow the model's template where it adds text of its own (default
    system prompt, date preamble); 'raw' is the message contents concatenated, after a BOS when
    the tokenizer adds one. `date_string` overrides the date of a Llama 3.1+ preamble.
    """
    if fmt not in FORMATS:
        raise GenerationError(f"unknown chat format {fmt!r}; use one of: {', '.join(FORMATS)}")
    turns = _validate(messages)
    b = _Builder(tokenizer)
    if fmt == "raw":
        if tokenizer.add_bos and tokenizer.bos_id is not None:
            b.special(tokenizer.bos_id)
        for _, content in turns:
            b.text(content)
        return b.done()

    if fmt == "chatml":
        start, end = (_special(tokenizer, n, fmt) for n in CHATML_TOKENS)
        default_system = chatml_default_system(tokenizer.chat_template)
        if default_system is not None and turns[0][0] != "system":
            turns = [("system", default_system), *turns]
        for role, content in turns:
            b.special(start)
            b.text(f"{role}\n{content}")
            b.special(end)
            b.text("\n")
        if add_generation_prompt:
            b.special(start)
            b.text("assistant\n")
        return b.done()

    header, header_end, eot = (_special(tokenizer, n, fmt) for n in LLAMA3_TOKENS)
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else _special(tokenizer, "<|begin_of_text|>", fmt)

    def turn(role: str, content: str) -> None:
        b.special(header)
        b.text(role)
        b.special(header_end)
        b.text("\n\n" + content)
        b.special(eot)

    b.special(bos)
    preamble = llama3_system_preamble(tokenizer.chat_template, date_string)
    if preamble is not None:
        # 3.1+ templates always open with a system turn: preamble + the first system message.
        system = ""
        if turns[0][0] == "system":
            system, turns = turns[0][1].strip(), turns[1:]
        turn("system", preamble + system)
    for role, content in turns:
        turn(role, content.strip())  # every Llama 3 template trims message content
    if add_generation_prompt:
        b.special(header)
        b.text("assistant")
        b.special(header_end)
        b.text("\n\n")
    return b.done()
