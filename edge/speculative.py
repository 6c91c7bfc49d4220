"""Speculative decoding: draft a few tokens cheaply, check them all in one forward pass of the
model (the prompt-chunk kernels), keep the longest prefix the model agrees with.

Drafters:
  lookup       prompt lookup: the continuation that followed the latest earlier occurrence of
               the last n tokens (n = LOOKUP_MAX_NGRAM down to LOOKUP_MIN_NGRAM) in the prompt and
               the text generated so far. Rewriting and summarizing copy long runs of their
               input, so the draft is often right, and it costs nothing to make.
  draft:MODEL  a smaller model of the same vocabulary (e.g. `llama-export prune` of the same
               checkpoint) decoding greedily ahead in its own session.

Acceptance keeps the model's own choice at every position: with greedy decoding a draft token
is kept when it is the model's argmax after the tokens before it; with sampling, a draft token
d is kept with probability p(d) under the (temperature / top-k / top-p / repetition-penalty)
distribution p the sampler would sample from, and when refused the token is drawn from p with d
removed, which samples exactly from p (the drafts are deterministic). So speculation changes the
speed, never what is generated, as far as the model's logits for a batch of tokens equal its
logits for the same tokens one at a time (tests/edge/test_speculative.py). On the edge kernels a
verification pass of up to STEP_MAX_TOKENS (edge/csrc/kernels/kernels.h) tokens gives every token
its decode logits bit for bit for float and weight-only artifacts, so greedy text with speculation
is plain greedy text token for token. Int8-activation artifacts quantize each token's activations
as decode does, but some of their batch products sum in another order: logits agree to float
rounding, and greedy tokens can differ only where the top two logits are that close.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import GenerationError

# Prompt lookup: the longest and shortest n-gram matched, and tokens drafted per step. Drafts of
# up to DRAFT_TOKENS - 1 tokens keep a verification pass (the token sampled last plus the draft)
# within DRAFT_TOKENS tokens.
LOOKUP_MAX_NGRAM = 4
LOOKUP_MIN_NGRAM = 2
DRAFT_TOKENS = 8
# Adaptive draft length of prompt lookup: a pass over more tokens costs more (each drafted token
# adds about a third of a decode step on SmolLM2 int8, 2 threads), so the draft grows by
# DRAFT_GROW after a fully accepted draft and falls back to one more than the tokens accepted
# after a rejection, between DRAFT_MIN and DRAFT_TOKENS - 1; it starts at DRAFT_START.
DRAFT_MIN = 1
DRAFT_START = 4
DRAFT_GROW = 2
MODES = ("off", "lookup", "draft:MODEL")


@dataclass
class SpecStats:
    """What speculation did in one generation."""

    steps: int = 0  # verification passes
    drafted: int = 0  # tokens proposed
    accepted: int = 0  # of them, kept

    def to_json(self) -> dict:
        rate = self.accepted / self.drafted if self.drafted else 0.0
        return {"verify_passes": self.steps, "drafted_tokens": self.drafted,
                "accepted_tokens": self.accepted, "acceptance_rate": round(rate, 4)}


class PromptLookup:
    """Drafts by n-gram lookup over the token history (prompt + generated so far)."""

    name = "lookup"

    def __init__(self, max_ngram: int = LOOKUP_MAX_NGRAM, min_ngram: int = LOOKUP_MIN_NGRAM,
                 max_draft: int = DRAFT_TOKENS - 1):
        if not 1 <= min_ngram <= max_ngram:
            raise GenerationError(f"prompt lookup: need 1 <= min n-gram ({min_ngram}) <= max "
                                  f"n-gram ({max_ngram})")
        self.max_ngram, self.min_ngram, self.max_draft = max_ngram, min_ngram, max_draft
        self._index: list[dict] = []  # per n: n-gram -> position after its latest occurrence
        self._seen = 0  # history positions indexed
        self.draft_len = min(DRAFT_START, max_draft)  # tokens the next draft may have

    def start(self, history: list[int]) -> None:
        """A new generation whose token history so far is `history` (the prompt)."""
        self._index = [dict() for _ in range(self.max_ngram + 1)]
        self._seen = 0
        self.draft_len = min(DRAFT_START, self.max_draft)
        self._extend(history)

    def feedback(self, drafted: int, accepted: int) -> None:
        """Of the last draft's `drafted` tokens, `accepted` were kept: adapt the length."""
        if accepted >= drafted:
            self.draft_len = min(self.max_draft, self.draft_len + DRAFT_GROW)
        else:
            self.draft_len = max(DRAFT_MIN, min(self.max_draft, accepted + 1))

    def _extend(self, history: list[int]) -> None:
        # index every n-gram that ends before the last token (its continuation is known)
        for end in range(max(self._seen, 1), len(history)):
            for n in range(self.min_ngram, self.max_ngram + 1):
                if end - n >= 0:
                    self._index[n][tuple(history[end - n:end])] = end
        self._seen = max(self._seen, len(history))

    def propose(self, history: list[int], limit: int) -> list[int]:
        """Up to min(limit, max_draft) tokens likely to follow `history`."""
        self._extend(history)
        k = min(limit, self.draft_len)
        if k <= 0:
            return []
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(history) < n:
                continue
            at = self._index[n].get(tuple(history[-n:]))
            if at is not None and at < len(history):
                return list(history[at:at + k])
        return []


class DraftModel:
    """Drafts with a smaller model decoding greedily in its own session, kept in step with the
    tokens the target model accepts."""

    def __init__(self, engine, max_draft: int = DRAFT_TOKENS - 1):
        self.engine, self.max_draft = engine, max_draft
        self.name = f"draft:{getattr(engine, 'path', engine.name)}"
        self.session = None
        self._fed: list[int] = []  # tokens whose keys / values are in the draft session
        self._next: np.ndarray | None = None  # draft logits after self._fed

    def start(self, history: list[int]) -> None:
        self.session = self.session or self.engine.session()
        if len(history) + 2 * DRAFT_TOKENS > self.session.max_context:
            raise GenerationError(f"the draft model's context ({self.session.max_context}) "
                                  f"cannot hold the prompt of {len(history)} tokens")
        self._next = self.session.prefill(history).copy()
        self._fed = list(history)

    def propose(self, history: list[int], limit: int) -> list[int]:
        k = min(limit, self.max_draft)
        if k <= 0 or len(history) + k + 1 > self.session.max_context:
            return []
        # bring the draft session to `history`: rewind to the common prefix, feed the rest
        common = 0
        for a, b in zip(self._fed, history):
            if a != b:
                break
            common += 1
        if common < len(self._fed):
            self.session.rewind(common)
            self._fed = self._fed[:common]
            self._next = None
        for t in history[len(self._fed):]:
            self._next = self.session.decode(t).copy()
            self._fed.append(t)
        if self._next is None:  # rewound to a prefix: recompute its last logits
            self.session.rewind(common - 1)
            self._next = self.session.decode(history[common - 1]).copy()
        out, logits = [], self._next
        for _ in range(k):
            t = int(np.argmax(logits))
            out.append(t)
            logits = self.session.decode(t)
        self.session.rewind(len(self._fed))  # the drafts are not history until accepted
        return out


@dataclass
class Acceptance:
    """Tokens a verification pass keeps: the accepted draft prefix and the model's own next
    token after it (the correction, or the token after a fully accepted draft)."""

    tokens: list[int] = field(default_factory=list)
    accepted: int = 0


def make_drafter(mode: str, open_model=None):
    """'off' -> None, 'lookup' -> PromptLookup, 'draft:PATH' -> DraftModel over PATH."""
    if mode in (None, "off"):
        return None
    if mode == "lookup":
        return PromptLookup()
    if mode.startswith("draft:") and len(mode) > len("draft:"):
        if open_model is None:
            raise GenerationError("--speculative draft:MODEL needs a model to open")
        return DraftModel(open_model(mode[len("draft:"):]))
    raise GenerationError(f"--speculative {mode!r}: choose off, lookup or draft:MODEL (a smaller "
                          "model with the same vocabulary)")
