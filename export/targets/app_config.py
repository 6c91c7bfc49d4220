"""What the Android app reads beside model.pte: one small JSON, `llama_edge_app.json`.

The app hands ExecuTorch's runner (`LlmModule`) one prompt *string*, and the runner's tokenizer
parses special-token strings out of it. So the app writes the chat scaffolding as the special
tokens' text, and needs as data what llama-edge's own chat code reads from the model's template
and tokenizer: the chat format, ChatML's default system text, the Llama 3.1+ system preamble and
its date rule, the BOS text, the end-of-generation tokens (as ids and as the text the runner
streams for them), every special-token string, generation defaults and the context length.

User text must never forge a turn. llama-edge tokenizes scaffolding and user text apart, which a
prompt string cannot do; instead every special-token string inside user text gets a zero-width
space after its first character (`neutralize`): the text stays readable and can no longer match
a special token. `app_prompt` is the definition of the app's prompt: the runtime's ids for the
neutralized messages, decoded with special tokens as text; re-tokenizing that string the way
the runner does gives the same ids (tests/android_demo check it against the runner's tokenizer
and the app's Kotlin builder against these strings).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from edge.chat import chatml_default_system, detect_chat_format, encode_chat, llama3_system_preamble

APP_CONFIG = "llama_edge_app.json"
APP_FORMAT, APP_VERSION = "llama-edge-app", 1
# U+200B ZERO WIDTH SPACE: invisible, and no special token contains it.
BREAK = "\u200b"
DATE_PLACEHOLDER = "{date}"
# The runner samples with a temperature only (no top-p / top-k / repetition penalty); greedy is
# what llama-edge's tasks use. The output cap is what `llama-edge run` uses.
GENERATION_DEFAULTS = {"temperature": 0.0, "max_new_tokens": 256}
# Python's "%d %b %Y" (the Llama 3.2 template's strftime_now format, C locale) in the pattern
# language of java.time's DateTimeFormatter, English month names.
DEVICE_DATE_PATTERN = "dd MMM yyyy"


def added_tokens(tokenizer) -> list[str]:
    """Every added token of the tokenizer.json the runner reads: its tokenizer extracts each of
    them from a prompt string, special or not."""
    return [t["content"] for t in json.loads(tokenizer.to_json()).get("added_tokens", [])]


def neutralize(text: str, specials) -> str:
    """`text` with a zero-width space after the first character of every special-token string in
    it (longest match first at each position, left to right)."""
    names = sorted({s for s in specials if s}, key=len, reverse=True)
    if not names:
        return text
    pattern = re.compile("|".join(re.escape(s) for s in names))
    return pattern.sub(lambda m: m[0][0] + BREAK + m[0][1:], text)


def _preamble(template: str | None) -> tuple[str | None, str | None]:
    """(preamble text with DATE_PLACEHOLDER, fixed date or None for the device's date)."""
    shaped = llama3_system_preamble(template, DATE_PLACEHOLDER)
    if shaped is None:
        return None, None
    if "strftime_now" in template:
        return shaped, None
    head, tail = shaped.split(DATE_PLACEHOLDER)
    full = llama3_system_preamble(template)  # the template's own default date
    return shaped, full[len(head):len(full) - len(tail)]


def app_config(tokenizer, model_eos_ids, max_context: int, chat_template: str | None = None,
               name: str = "llama") -> dict:
    """The app's JSON for a program exported with this tokenizer. `chat_template` overrides the
    tokenizer's own, as `Tokenizer.save` does for tokenizer_config.json."""
    template = chat_template if chat_template is not None else tokenizer.chat_template
    fmt = detect_chat_format(tokenizer)  # what the sidecar llama_edge.json records
    # the set the program's get_eos_ids method holds (export/targets/xnnpack.py runner_metadata)
    eos = sorted(set(model_eos_ids) | set(tokenizer.eos_ids))
    bos = tokenizer.bos_id
    preamble, date = _preamble(template) if fmt == "llama3" else (None, None)
    return {
        "format": APP_FORMAT,
        "version": APP_VERSION,
        "name": name,
        "program": "model.pte",
        "tokenizer": "tokenizer.json",
        "chat_format": fmt,
        "chatml_default_system": chatml_default_system(template) if fmt == "chatml" else None,
        "llama3_preamble": preamble,
        "llama3_preamble_date": date,
        "device_date_pattern": DEVICE_DATE_PATTERN,
        "bos": tokenizer.decode([bos]) if bos is not None else None,
        "add_bos": bool(tokenizer.add_bos),
        "end_of_generation": [{"id": i, "text": tokenizer.decode([i])} for i in eos],
        "special_tokens": added_tokens(tokenizer),
        "generation": dict(GENERATION_DEFAULTS),
        "max_context": int(max_context),
    }


def write_app_config(dest: Path, tokenizer, model_config, max_context: int,
                     chat_template: str | None = None) -> Path:
    """Write dest/llama_edge_app.json (temporary name, then rename)."""
    cfg = app_config(tokenizer, model_config.eos_token_ids, max_context, chat_template,
                     model_config.name or "llama")
    path = Path(dest) / APP_CONFIG
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def app_prompt(tokenizer, config: dict, messages: list[dict],
               date_string: str | None = None) -> tuple[str, list[int]]:
    """(prompt string, token ids) of a conversation as the app sends it: contents neutralized,
    then llama-edge's chat ids decoded with special tokens as text. `date_string` is the device's
    date for a Llama 3.1+ preamble that follows today's date."""
    specials = config["special_tokens"]
    msgs = [{"role": m["role"], "content": neutralize(m["content"], specials)} for m in messages]
    ids = encode_chat(tokenizer, msgs, config["chat_format"],
                      date_string=config.get("llama3_preamble_date") or date_string)
    return tokenizer.decode(ids), ids
