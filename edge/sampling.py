"""Next-token selection from one row of logits: greedy, temperature, top-k, top-p and a
repetition penalty, with a seeded generator so the same seed gives the same tokens."""

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
    repetition_penalty: float = 1.0  # 1 -> off
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
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            bad("seed", f"must be a non-negative integer, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "stop strings must be non-empty strings")
        return self


# Sampling defaults an artifact carries (the model publisher's recommendation), in our terms.
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")
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


class Sampler:
    def __init__(self, params: SamplingParams):
        self.p = params.validate()
        self.rng = np.random.Generator(np.random.PCG64(params.seed if params.seed is not None
                                                       else np.random.SeedSequence().entropy))

    def __call__(self, logits: np.ndarray, history: np.ndarray | None = None) -> int:
        """logits: (vocab,) float; history: ids seen so far (for the repetition penalty)."""
        x = np.asarray(logits, dtype=np.float32)
        if not np.isfinite(x).all():
            raise GenerationError("the model produced NaN/Inf logits; this request was stopped "
                                  "(the model or its quantization may be broken)")
        p = self.p
        if p.repetition_penalty != 1.0 and history is not None and len(history):
            x = x.copy()
            seen = np.unique(history)
            v = x[seen]
            x[seen] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if p.temperature == 0:
            return int(np.argmax(x))
        x = x.astype(np.float64) / p.temperature
        idx = None
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
        choice = order[int(self.rng.choice(probs.size, p=probs))]
        return int(idx[choice] if idx is not None else choice)
