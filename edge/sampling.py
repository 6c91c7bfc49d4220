"""Next-token selection from one row of logits: greedy, temperature, top-k, top-p, a repetition
penalty and a ban on repeating n-grams of the generated text, with a seeded generator so the
same seed gives the same tokens; and the same choice made about a drafted token (speculative
decoding: edge/speculative.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import GenerationError

# Beyond this many new tokens a request is a mistake, not a plan (the largest supported
# context is 131072 positions).
MAX_NEW_TOKENS_LIMIT = 131072


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 -> greedy
    top_k: int = 0  # 0 -> off
    top_p: float = 1.0  # 1 -> off
    repetition_penalty: float = 1.0  # 1 -> off; over the prompt and the generated tokens
    no_repeat_ngram: int = 0  # 0 -> off; else no n-gram of this length twice in the output
    seed: int | None = None
    stop: tuple[str, ...] = field(default=())

    def validate(self) -> "SamplingParams":
        def bad(name, msg):
            raise GenerationError(f"parameter {name}: {msg}")

        n = self.max_new_tokens
        if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= MAX_NEW_TOKENS_LIMIT:
            bad("max_new_tokens", f"must be an integer in 1..{MAX_NEW_TOKENS_LIMIT}, got {n!r}")
        t = self.temperature
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            bad("temperature", f"must be a finite number >= 0, got {t!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", f"must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        p = self.top_p
        if not isinstance(p, (int, float)) or not (0 < p <= 1):
            bad("top_p", f"must be in (0, 1], got {p!r}")
        r = self.repetition_penalty
        if not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            bad("repetition_penalty", f"must be a finite number > 0, got {r!r}")
        g = self.no_repeat_ngram
        if not isinstance(g, int) or isinstance(g, bool) or not (g == 0 or 2 <= g <= 64):
            bad("no_repeat_ngram", f"must be 0 (off) or an integer in 2..64, got {g!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            bad("seed", f"must be a non-negative integer, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "stop strings must be non-empty strings")
        return self


# Sampling defaults an artifact carries (the model publisher's recommendation), in our terms.
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "no_repeat_ngram",
                 "max_new_tokens")
GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


def sampling_defaults(hf: dict) -> dict:
    """Our sampling defaults from a Hugging Face generation config (generation_config.json):
    greedy unless it sets do_sample, as transformers' generate does; then its temperature,
    top_p and top_k with transformers' own defaults (1.0, 1.0, 50) where it gives none."""
    out = dict(GREEDY)
    if hf.get("do_sample") is True:
        out.update(temperature=float(hf.get("temperature", 1.0)),
                   top_p=float(hf.get("top_p", 1.0)), top_k=int(hf.get("top_k", 50)))
    if "repetition_penalty" in hf:
        out["repetition_penalty"] = float(hf["repetition_penalty"])
    return checked_sampling_defaults(out)


def checked_sampling_defaults(d) -> dict:
    """A stored set of sampling defaults, checked as SamplingParams checks a request."""
    if not isinstance(d, dict):
        raise GenerationError("must be an object of sampling defaults")
    unknown = sorted(set(d) - set(SAMPLING_KEYS))
    if unknown:
        raise GenerationError(f"unknown sampling default(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(SAMPLING_KEYS)}")
    merged = {**GREEDY, **d}
    SamplingParams(**merged).validate()
    return merged


class NgramBan:
    """Tokens that would repeat an n-gram of the generated text (history[start:]), kept as an
    index of (n-1)-gram -> next tokens, extended as the generated text grows."""

    def __init__(self, n: int, start: int):
        self.n, self.start = n, start
        self.next: dict[tuple, set] = {}
        self.indexed = 0  # generated tokens covered

    def banned(self, history) -> list[int]:
        gen = history[self.start:]
        n = self.n
        for end in range(max(self.indexed, n), len(gen) + 1):
            self.next.setdefault(tuple(int(t) for t in gen[end - n:end - 1]), set()).add(
                int(gen[end - 1]))
        self.indexed = len(gen)
        if len(gen) < n - 1:
            return []
        return sorted(self.next.get(tuple(int(t) for t in gen[len(gen) - n + 1:]), ()))


class Sampler:
    def __init__(self, params: SamplingParams, prompt_len: int = 0, vocab: int | None = None):
        """prompt_len: where the generated text starts in the histories passed to calls (the
        n-gram ban looks at the generated text only, so copying the input stays free). vocab:
        the tokenizer's size when the model has more output rows (padding rows that no text maps
        to are never chosen)."""
        self.p = params.validate()
        self.vocab = vocab
        self.rng = np.random.Generator(np.random.PCG64(params.seed if params.seed is not None
                                                       else np.random.SeedSequence().entropy))
        self.ban = NgramBan(params.no_repeat_ngram, prompt_len) if params.no_repeat_ngram else None

    def _scores(self, logits: np.ndarray, history) -> np.ndarray:
        """The logits after the repetition penalty and the n-gram ban (a copy when changed)."""
        x = np.asarray(logits, dtype=np.float32)
        if self.vocab is not None and self.vocab < x.size:
            x = x[:self.vocab]
        if not np.isfinite(x).all():
            raise GenerationError("the model produced NaN/Inf logits; this request was stopped "
                                  "(the model or its quantization may be broken)")
        p = self.p
        if p.repetition_penalty != 1.0 and history is not None and len(history):
            x = x.copy()
            seen = np.unique(np.asarray(history))
            v = x[seen]
            x[seen] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if self.ban is not None and history is not None:
            banned = self.ban.banned(history)
            if banned:
                x = x.copy() if np.shares_memory(x, logits) else x
                x[banned] = -np.inf
        return x

    def _distribution(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, probabilities) the sampler draws from, after temperature, top-k, top-p."""
        p = self.p
        x = x.astype(np.float64) / p.temperature
        idx = np.arange(x.size)
        if p.top_k and p.top_k < x.size:
            idx = np.argpartition(-x, p.top_k - 1)[:p.top_k]
            x = x[idx]
        order = np.argsort(-x, kind="stable")
        x = x[order]
        probs = np.exp(x - x[0])
        probs /= probs.sum()
        if p.top_p < 1.0:
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            probs = probs[:keep] / probs[:keep].sum()
            order = order[:keep]
        return idx[order], probs

    def __call__(self, logits: np.ndarray, history: np.ndarray | None = None) -> int:
        """logits: (vocab,) float; history: ids seen so far (for the repetition controls)."""
        x = self._scores(logits, history)
        if self.p.temperature == 0:
            return int(np.argmax(x))
        ids, probs = self._distribution(x)
        return int(ids[int(self.rng.choice(probs.size, p=probs))])

    def accept_draft(self, logits: np.ndarray, history, draft: int) -> tuple[int, bool]:
        """The token to keep where `draft` was proposed: (draft, True) when it stands, else
        (the sampler's own token, False). Greedy: the draft stands when it is the argmax.
        Sampling: it stands with probability p(draft), and a refused draft is replaced by a draw
        from p without it, so the kept token follows p exactly (the draft is deterministic)."""
        x = self._scores(logits, history)
        if self.p.temperature == 0:
            t = int(np.argmax(x))
            return t, t == draft
        ids, probs = self._distribution(x)
        hit = np.nonzero(ids == draft)[0]
        pd = float(probs[hit[0]]) if hit.size else 0.0
        if pd > 0 and self.rng.random() < pd:
            return draft, True
        if hit.size:
            probs = probs.copy()
            probs[hit[0]] = 0.0
            probs /= probs.sum()
        return int(ids[int(self.rng.choice(probs.size, p=probs))]), False
