"""The generation loop, shared by every engine (torch reference, edge kernels, .pte, .onnx).

An engine gives sessions; a session owns its KV cache and offers `prefill(ids) -> logits` of
the last position and `decode(id) -> logits`. This module turns that into streamed text with
sampling, every EOS id, stop strings (caught even when split across tokens, never emitted), a
finish reason and timings. Text is streamed through `StreamDecoder`, so a chunk never ends in
the middle of a UTF-8 character.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np

from .errors import GenerationError
from .sampling import Sampler, SamplingParams


class Session(Protocol):
    max_context: int

    def prefill(self, ids: Sequence[int]) -> np.ndarray: ...  # (vocab,) logits, last position

    def decode(self, token: int) -> np.ndarray: ...  # (vocab,) logits

    def reset(self) -> None: ...


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str  # "eos" | "stop" | "length"
    prefill_s: float
    decode_s: float
    extra: dict = field(default_factory=dict)

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        # the first token comes from the prefill logits; decode steps = generated - 1
        steps = max(self.generated_tokens - 1, 0)
        return steps / self.decode_s if self.decode_s > 0 and steps else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d.update(self.extra)
        d["prefill_tok_s"] = round(self.prefill_tok_s, 2)
        d["decode_tok_s"] = round(self.decode_tok_s, 2)
        d["ttft_s"] = round(self.prefill_s, 4)
        return d


def check_context(prompt_tokens: int, max_new_tokens: int, max_context: int) -> None:
    if prompt_tokens == 0:
        raise GenerationError("the prompt is empty after tokenization")
    if prompt_tokens + max_new_tokens > max_context:
        raise GenerationError(
            f"prompt ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens}) = "
            f"{prompt_tokens + max_new_tokens} exceeds the context of {max_context} tokens; "
            "shorten the input or lower --max-new-tokens")


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class Generation:
    """Iterate for text chunks; `result` is set once iteration ends (or the consumer closes
    the iterator, which cancels the request and resets the session)."""

    def __init__(self, session: Session, tokenizer, prompt_ids: Sequence[int],
                 params: SamplingParams, eos_ids: Sequence[int]):
        from .tokenizer import StreamDecoder

        self.session, self.tok = session, tokenizer
        self.prompt = list(prompt_ids)
        self.params = params.validate()
        self.eos = frozenset(int(i) for i in eos_ids)
        vocab = getattr(tokenizer, "vocab_size", None)
        for i in self.prompt:
            if not (0 <= i < (vocab or 1 << 31)):
                raise GenerationError(f"prompt token id {i} is outside the vocabulary")
        check_context(len(self.prompt), self.params.max_new_tokens, session.max_context)
        self.decoder = StreamDecoder(tokenizer)
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        p, stops = self.params, self.params.stop
        sampler = Sampler(p)
        history = np.zeros(len(self.prompt) + p.max_new_tokens, dtype=np.int64)
        history[:len(self.prompt)] = self.prompt
        n_hist = len(self.prompt)
        out_ids: list[int] = []
        text, emitted = "", 0  # text decoded so far; how much of it was yielded
        reason, t_dec = "length", 0.0
        self.session.reset()
        try:
            t0 = time.perf_counter()
            logits = self.session.prefill(self.prompt)
            t_pre = time.perf_counter() - t0
            t1 = time.perf_counter()
            while True:
                tok = sampler(logits, history[:n_hist])
                if tok in self.eos:
                    reason = "eos"
                    break
                out_ids.append(tok)
                history[n_hist] = tok
                n_hist += 1
                text += self.decoder.push(tok)
                if stops:
                    lo = max(0, emitted - max(map(len, stops)))
                    hits = [i for i in (text.find(s, lo) for s in stops) if i >= 0]
                    if hits:
                        text, reason = text[:min(hits)], "stop"
                        break
                    safe = len(text) - _held_back(text, stops)
                else:
                    safe = len(text)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
                if len(out_ids) >= p.max_new_tokens:
                    break
                logits = self.session.decode(tok)
            t_dec = time.perf_counter() - t1
            if reason != "stop":
                text += self.decoder.flush()
            if len(text) > emitted:
                yield text[emitted:]
            self.result = GenerationResult(text, out_ids, len(self.prompt),
                                           len(out_ids) + (reason == "eos"), reason,
                                           t_pre, t_dec)
        finally:
            if self.result is None:  # cancelled or failed: free the session for the next one
                self.session.reset()

    def run(self) -> GenerationResult:
        for _ in self:
            pass
        return self.result
