"""What every engine and session offers, how engines are registered, and the one place where
thread counts and context lengths are resolved.

An engine is one loaded model; a session is one conversation over it, owning its KV cache
(allocated once when the session is made). Several sessions may share an engine from several
threads. Engines register an `EngineSpec`: the runtime's own are listed in
`edge/engines/__init__.py`; the toolchain adds the torch reference through the
`llama_edge.engines` entry-point group (declared in pyproject.toml), so `edge` never imports
`export`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import EdgeError

# Context allocated when the caller does not ask for one (the model may allow more).
DEFAULT_CONTEXT = 2048
# More compute threads than this is a mistake, not a plan.
MAX_THREADS = 256
KV_KINDS = ("f32", "int8")


@runtime_checkable
class Session(Protocol):
    """One conversation: its KV cache and position."""

    max_context: int
    pos: int  # tokens in the cache
    kv_bytes: int | None  # bytes of the KV cache this session holds (None: held by the runtime)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """(vocab,) logits after `ids`, starting from an empty cache."""

    def decode(self, token: int) -> np.ndarray:
        """(vocab,) logits after one more token."""

    def reset(self) -> None:
        """Forget the conversation (the cache stays allocated)."""

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), vocab) logits of every position of `ids`, from an empty cache."""


@runtime_checkable
class Engine(Protocol):
    """One loaded model, shared by its sessions."""

    name: str  # the registry name: "edge", "executorch", ...
    config: object  # at least vocab_size, max_position_embeddings, name
    tokenizer: object  # edge.tokenizer.Tokenizer (None if the model has none)
    chat_format: str | None  # "llama3" | "chatml" | "raw" when the model says; None: detect
    max_context: int  # positions a session may hold
    threads: int  # compute threads
    isa: str | None  # instruction set of the kernels (edge engine), None elsewhere
    weight_memory: str | None  # "mapped" | "resident" (edge engine), None elsewhere
    generation: dict  # sampling defaults the model ships (edge.sampling.SAMPLING_KEYS)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every token id that ends a generation."""

    def session(self, max_context: int | None = None) -> Session:
        """A new session with its own KV cache of max_context (default: the engine's)."""


@dataclass(frozen=True)
class EngineOptions:
    """What a caller may ask of any engine; each engine refuses what it cannot do."""

    max_context: int | None = None  # None: the engine's default (resolve_context)
    threads: int | None = None  # None: the cores this process may use (resolve_threads)
    kv: str = "f32"  # KV cache precision
    verify: bool = True  # check the model file's digests at load
    weight_memory: str = "auto"  # edge artifacts: auto | mapped | resident


@dataclass(frozen=True)
class EngineSpec:
    """An engine in the registry.

    detect(path): whether `path` is a model this engine runs (by its files, never its name).
    available(): whether the engine's libraries are installed (auto selection skips it if not).
    open(path, options): the loaded Engine.
    locate(name): the file a model name stands for (e.g. a packaged model), or None.
    """

    name: str
    describe: str  # what it runs, for --help and errors ("a .pte file (from ... xnnpack)")
    detect: Callable[[str], bool]
    open: Callable[[str, EngineOptions], Engine]
    available: Callable[[], bool] = lambda: True
    priority: int = 50  # auto selection tries lower numbers first
    locate: Callable[[str], str | None] = lambda name: None


def resolve_threads(threads: int | None) -> int:
    """Compute threads: None -> the cores this process may run on; otherwise 1..MAX_THREADS."""
    if threads is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or \
            not 1 <= threads <= MAX_THREADS:
        raise EdgeError(f"threads must be an integer between 1 and {MAX_THREADS}, got "
                        f"{threads!r}")
    return threads


def resolve_context(requested: int | None, limit: int, default: int = DEFAULT_CONTEXT) -> int:
    """Positions to allocate: None -> min(limit, default); otherwise 1..limit."""
    if requested is None:
        return max(1, min(limit, default))
    if isinstance(requested, bool) or not isinstance(requested, int) or \
            not 1 <= requested <= limit:
        raise EdgeError(f"context {requested!r} is outside 1..{limit} (the model's maximum "
                        "context)")
    return requested


def check_kv(kv: str, engine: str, keeps: str = "an f32 cache") -> None:
    """Engines other than the edge kernels keep their own KV cache form."""
    if kv not in KV_KINDS:
        raise EdgeError(f"KV cache kind {kv!r}: choose one of {', '.join(KV_KINDS)}")
    if kv != "f32":
        raise EdgeError(f"--kv-cache {kv} needs an edge artifact; the {engine} engine keeps "
                        f"{keeps}")
