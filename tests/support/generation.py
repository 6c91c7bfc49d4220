"""Greedy decoding and chat prompts for the end-to-end tests of every engine."""

from __future__ import annotations

import numpy as np

CHAT_PROMPTS = [
    "Rewrite in a formal tone: hey, the meeting got moved to thursday, can u make it?",
    "Summarize: The library opens at nine in the morning and closes at six. On Saturdays it "
    "closes early, at one, and it is closed on Sundays and public holidays."]


def greedy(session, ids, n) -> list[int]:
    """n greedy tokens after `ids` (no stop at end-of-generation ids)."""
    logits = session.prefill(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = session.decode(out[-1])
    return out


def chat_ids(tok, text) -> list[int]:
    """One user turn in the tokenizer's own chat format, with the generation prompt."""
    from edge.chat import detect_chat_format, encode_chat

    return encode_chat(tok, [{"role": "user", "content": text}], detect_chat_format(tok))
