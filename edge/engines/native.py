"""The edge engine: an artifact's memory-mapped weights handed to the compiled kernels, and
sessions that each own a preallocated KV cache.

Per token, Python makes one call into C++ (the whole forward pass, GIL released) and samples
from the returned logits; nothing is allocated per token. Several sessions may share one engine
from several threads: forward passes take turns on the engine's thread pool.
"""

from __future__ import annotations

import numpy as np

from ..artifact import ACT_INT8, ACT_INT8_BLOCKS, Artifact, load_artifact
from ..config import rope_inv_freq
from ..errors import EdgeError, GenerationError
from ..packing import view
from .base import KV_KINDS, resolve_context, resolve_threads

# Prompt tokens run per forward call (bounds the activation workspace).
PREFILL_CHUNK = 128


def _kernels():
    try:
        from .. import _kernels
    except ImportError as e:
        raise EdgeError(f"the compiled kernels (edge._kernels) are not installed ({e}); "
                        "reinstall llama-edge with: pip install .") from None
    return _kernels


def rope_tables(config, n: int) -> tuple[np.ndarray, np.ndarray]:
    """cos / sin (n, head_dim / 2) float32, computed in float64 like the reference."""
    ang = np.outer(np.arange(n, dtype=np.float64), rope_inv_freq(config))
    return np.ascontiguousarray(np.cos(ang), np.float32), np.ascontiguousarray(np.sin(ang), np.float32)


class EdgeSession:
    """One conversation: its own KV cache (allocated once) and logits buffer."""

    batch_logits = True  # a forward pass over a few tokens costs about one decode step

    def __init__(self, engine: "EdgeEngine", max_context: int, kv: str):
        self.engine, self.max_context, self.pos = engine, max_context, 0
        self._s = engine._k.Session(engine._model, max_context, kv)
        self._logits = np.zeros(engine.config.vocab_size, dtype=np.float32)
        self._token = np.zeros(1, dtype=np.int32)  # decode's input, reused every step

    @property
    def kv_bytes(self) -> int:
        return self._s.kv_bytes

    def reset(self) -> None:
        self.pos = 0

    def _run(self, ids) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        if self.pos + len(ids) > self.max_context:
            raise GenerationError(f"{self.pos + len(ids)} tokens exceed the session's context of "
                                  f"{self.max_context}")
        self.engine._model.forward(self._s, ids, self.pos, self._logits, False)
        self.pos += len(ids)
        return self._logits  # valid until the next call on this session

    def prefill(self, ids) -> np.ndarray:
        self.pos = 0
        return self._run(ids)

    def decode(self, token: int) -> np.ndarray:
        self._token[0] = token
        return self._run(self._token)

    def extend(self, ids) -> np.ndarray:
        """(vocab,) logits after `ids`, continuing at self.pos."""
        return self._run(ids)

    def forward(self, ids) -> np.ndarray:
        """(len(ids), vocab) logits of every position of `ids`, continuing at self.pos (one
        forward pass: how speculation checks a draft)."""
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        if self.pos + len(ids) > self.max_context:
            raise GenerationError(f"{self.pos + len(ids)} tokens exceed the session's context of "
                                  f"{self.max_context}")
        out = np.empty((len(ids), self.engine.config.vocab_size), dtype=np.float32)
        self.engine._model.forward(self._s, ids, self.pos, out, True)
        self.pos += len(ids)
        return out

    def logits_all(self, ids) -> np.ndarray:
        """(len(ids), vocab) logits of every position, from position 0 (evaluation)."""
        self.pos = 0
        return self.forward(ids)

    def rewind(self, pos: int) -> None:
        """Keep the first `pos` positions of the cache (later ones are overwritten, never
        read)."""
        if not 0 <= pos <= self.pos:
            raise GenerationError(f"cannot rewind a session at position {self.pos} to {pos}")
        self.pos = pos

    def snapshot(self, n: int) -> "EdgeSession":
        """The cache of positions [0, n) in a session of its own (a prefix cache entry)."""
        if not 0 < n <= self.pos:
            raise GenerationError(f"cannot keep {n} positions of a session at position "
                                  f"{self.pos}")
        keep = EdgeSession(self.engine, n, self.engine.kv)
        keep._s.copy_from(self._s, n)
        keep.pos = n
        return keep

    def restore(self, snap: "EdgeSession") -> None:
        """Start from a snapshot's positions (this session's later positions are dropped)."""
        if snap.pos > self.max_context:
            raise GenerationError(f"a cached prefix of {snap.pos} tokens does not fit the "
                                  f"session's context of {self.max_context}")
        self._s.copy_from(snap._s, snap.pos)
        self.pos = snap.pos


class EdgeEngine:
    name = "edge"

    def __init__(self, artifact: Artifact | str, max_context: int | None = None,
                 threads: int | None = None, kv: str = "f32", isa: str = "auto",
                 verify: bool = True, weight_memory: str = "auto"):
        k = _kernels()
        art = artifact if isinstance(artifact, Artifact) else load_artifact(
            artifact, verify, weight_memory)
        if kv not in KV_KINDS:
            raise EdgeError(f"KV cache kind {kv!r}: choose one of {', '.join(KV_KINDS)}")
        n_threads = resolve_threads(threads)
        self.artifact, self.config, self.tokenizer = art, art.config, art.tokenizer
        self.chat_format, self.kv = art.chat_format, kv
        self.weight_memory = art.weight_memory
        self.generation = art.generation
        self.max_context = resolve_context(max_context, art.max_context)
        c = self.config
        self._k = k
        try:
            m = k.Model(hidden=c.hidden_size, layers=c.num_layers, heads=c.num_heads,
                        kv_heads=c.num_kv_heads, head_dim=c.head_dim, vocab=c.vocab_size,
                        eps=c.rms_norm_eps, max_ctx=self.max_context, threads=n_threads,
                        isa=isa, chunk=PREFILL_CHUNK)
            w, act = art.weights, art.acts
            m.set_embedding(view(w["model.embed_tokens"], k))
            codes = {None: k.ACT_NONE, ACT_INT8: k.ACT_TOKEN, ACT_INT8_BLOCKS: k.ACT_BLOCKS}
            m.set_output(view(w["lm_head"], k), codes[act["lm_head"]])
            m.set_final_norm(w["model.norm"].data)
            self._cos, self._sin = rope_tables(c, self.max_context)
            m.set_rope(self._cos, self._sin)
            for i in range(c.num_layers):
                p = f"model.layers.{i}."
                lin = {}
                for short, full in (("q_proj", "self_attn.q_proj"), ("k_proj", "self_attn.k_proj"),
                                    ("v_proj", "self_attn.v_proj"), ("o_proj", "self_attn.o_proj"),
                                    ("gate_proj", "mlp.gate_proj"), ("up_proj", "mlp.up_proj"),
                                    ("down_proj", "mlp.down_proj")):
                    lin[short] = (view(w[p + full], k), codes[act[p + full]])
                m.set_layer(i, w[p + "input_layernorm"].data, w[p + "post_attention_layernorm"].data,
                            lin)
            m.finalize()
        except (ValueError, RuntimeError) as e:
            raise EdgeError(f"{art.path}: the kernels refused the artifact: {e}") from None
        self._model = m

    @property
    def isa(self) -> str:
        return self._model.isa

    @property
    def threads(self) -> int:
        return self._model.threads

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self.artifact.eos_ids + tuple(self.tokenizer.eos_ids)))

    def session(self, max_context: int | None = None) -> EdgeSession:
        n = resolve_context(max_context, self.max_context, self.max_context)
        return EdgeSession(self, n, self.kv)

    def info(self) -> dict:
        a = self.artifact
        return {"path": str(a.path), "format_version": a.manifest["format_version"],
                "producer": a.manifest.get("producer"), "recipe": a.recipe_name,
                "file_mb": round(a.file_bytes / 1e6, 2), "max_context": a.max_context,
                "chat_format": a.chat_format, "isa": self.isa, "threads": self.threads,
                "kv_cache": self.kv}
