"""The generation loop, shared by every engine (edge kernels, .pte, .onnx, .gguf, torch).

An engine gives sessions; a session owns its KV cache (edge/engines/base.py). This module turns
that into streamed text with sampling, every EOS id, stop strings (caught even when split across
tokens, never emitted), a finish reason and timings. Text is streamed through `StreamDecoder`,
so a chunk never ends in the middle of a UTF-8 character.

Two ways to spend less per token, both leaving the tokens unchanged:
- speculation (edge/speculative.py): a drafter proposes the next few tokens; one forward pass
  over the last token and the draft gives the model's logits at every drafted position, and the
  sampler keeps the draft as long as it agrees with the model;
- a prefix cache (edge/prefix.py): the KV state of a prompt's fixed beginning (chat scaffolding,
  task instruction) is computed once and copied into later sessions.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import numpy as np

from .errors import GenerationError
from .sampling import Sampler, SamplingParams


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
    the iterator, which cancels the request and resets the session).

    drafter: a speculative drafter (edge/speculative.py) or None; used when the session computes
    a batch of positions in about the time of one (session.batch_logits). prefix: an
    edge.prefix.PrefixCache to start from, remembering the prompt's first `fixed` tokens."""

    def __init__(self, session, tokenizer, prompt_ids: Sequence[int], params: SamplingParams,
                 eos_ids: Sequence[int], drafter=None, prefix=None, fixed: int = 0):
        from .tokenizer import StreamDecoder

        self.session, self.tok = session, tokenizer
        self.prompt = [int(i) for i in prompt_ids]
        self.params = params.validate()
        self.eos = frozenset(int(i) for i in eos_ids)
        vocab = getattr(tokenizer, "vocab_size", None)
        for i in self.prompt:
            if not (0 <= i < (vocab or 1 << 31)):
                raise GenerationError(f"prompt token id {i} is outside the vocabulary")
        check_context(len(self.prompt), self.params.max_new_tokens, session.max_context)
        self.decoder = StreamDecoder(tokenizer)
        self.drafter, self.prefix, self.fixed = drafter, prefix, fixed
        self.result: GenerationResult | None = None

    def _prefill(self) -> tuple[np.ndarray, int]:
        """Logits after the prompt, and how many prompt tokens came from the prefix cache."""
        s = self.session
        if self.prefix is None:
            return s.prefill(self.prompt), 0
        reused = self.prefix.restore(s, self.prompt)
        logits = s.extend(self.prompt[reused:]) if reused else s.prefill(self.prompt)
        self.prefix.remember(s, self.prompt, self.fixed)
        return logits, reused

    def __iter__(self) -> Iterator[str]:
        from .speculative import SpecStats

        p, stops = self.params, self.params.stop
        n_prompt = len(self.prompt)
        sampler = Sampler(p, prompt_len=n_prompt, vocab=getattr(self.tok, "vocab_size", None))
        history = list(self.prompt)
        out_ids: list[int] = []
        text, emitted = "", 0  # text decoded so far; how much of it was yielded
        reason, t_dec, reused = "length", 0.0, 0
        stats = SpecStats()
        drafter = self.drafter if getattr(self.session, "batch_logits", False) else None
        self.session.reset()
        try:
            t0 = time.perf_counter()
            logits, reused = self._prefill()
            t_pre = time.perf_counter() - t0
            if drafter is not None:
                drafter.start(history)
            t1 = time.perf_counter()
            tok = sampler(logits, history)
            pending: list[int] = []  # tokens chosen after `tok`, already checked by the model
            while True:
                if tok in self.eos:
                    reason = "eos"
                    break
                out_ids.append(tok)
                history.append(tok)
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
                if pending:
                    tok = pending.pop(0)
                    continue
                room = min(p.max_new_tokens - len(out_ids),
                           self.session.max_context - self.session.pos - 1)
                draft = drafter.propose(history, room - 1) if drafter is not None else []
                if not draft:
                    tok = sampler(self.session.decode(tok), history)
                    continue
                # One pass over [tok, draft...]: row i holds the logits after draft[:i].
                base = self.session.pos
                rows = self.session.forward([tok] + draft)
                stats.steps += 1
                stats.drafted += len(draft)
                chosen, seen = [], list(history)
                for i, d in enumerate(draft):
                    t, ok = sampler.accept_draft(rows[i], seen, d)
                    chosen.append(t)
                    if not ok or t in self.eos:
                        break
                    seen.append(t)
                else:
                    chosen.append(sampler(rows[len(draft)], seen))
                kept = len(chosen) - 1  # accepted drafts; the last one is the model's own choice
                stats.accepted += kept
                if hasattr(drafter, "feedback"):
                    drafter.feedback(len(draft), kept)
                # keys / values of [tok] + the accepted drafts stay; the rest is never read
                self.session.rewind(base + 1 + kept)
                tok, pending = chosen[0], chosen[1:]
            t_dec = time.perf_counter() - t1
            if reason != "stop":
                text += self.decoder.flush()
            if len(text) > emitted:
                yield text[emitted:]
            extra = {"prefix_cached_tokens": reused}
            if drafter is not None:
                extra["speculative"] = {"mode": drafter.name, **stats.to_json()}
            self.result = GenerationResult(text, out_ids, n_prompt,
                                           len(out_ids) + (reason == "eos"), reason,
                                           t_pre, t_dec, extra)
        finally:
            if self.result is None:  # cancelled or failed: free the session for the next one
                self.session.reset()

    def run(self) -> GenerationResult:
        for _ in self:
            pass
        return self.result
