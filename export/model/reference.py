"""The torch reference engine: runs a checkpoint (or an in-memory quantized model) through
export/model.py in fp32, behind the same engine / session interface as every other engine
(edge/engines/base.py). The toolchain registers it with the runtime through the
`llama_edge.engines` entry point (ENGINE below), so the runtime never imports torch itself."""

from __future__ import annotations

import threading

import numpy as np
import torch

from edge.engines.base import EngineSpec, resolve_context, resolve_threads

from ..loaders.common import Checkpoint
from .llama import KVCache, LlamaModel

# The reference allocates its cache per session; a longer context than this is rarely useful
# on the reference path and costs memory (1B: 32 KiB per position in fp32).
DEFAULT_MAX_CONTEXT = 4096


class TorchSession:
    """One conversation: its own KV cache, installed into the shared model under a lock, so
    several sessions can share one loaded model from several threads."""

    batch_logits = True

    def __init__(self, engine: "TorchEngine", max_context: int):
        cfg = engine.config
        self.engine, self.max_context, self.pos = engine, max_context, 0
        self.caches = [KVCache(1, cfg.num_kv_heads, max_context, cfg.head_dim, torch.float32)
                       for _ in range(cfg.num_layers)]
        self.kv_bytes = sum(c.k.nbytes + c.v.nbytes for c in self.caches)

    def reset(self) -> None:
        self.pos = 0

    @torch.inference_mode()
    def _run(self, ids, every_position: bool = False) -> np.ndarray:
        m = self.engine.model
        with self.engine.lock:
            m.use_caches(self.caches, self.max_context)
            x = torch.tensor([list(ids)], dtype=torch.long)
            out = m(x, self.pos)[0]  # (len(ids), vocab)
            logits = (out if every_position else out[-1]).float().numpy().copy()
        self.pos += len(ids)
        return logits

    def prefill(self, ids) -> np.ndarray:
        self.pos = 0
        return self._run(ids)

    def decode(self, token: int) -> np.ndarray:
        return self._run([token])

    def logits_all(self, ids) -> np.ndarray:
        """(len(ids), vocab) logits of every position, from an empty cache."""
        self.pos = 0
        return self._run(ids, every_position=True)

    def forward(self, ids) -> np.ndarray:
        """(len(ids), vocab) logits of every position of `ids`, continuing at self.pos."""
        return self._run(ids, every_position=True)

    def extend(self, ids) -> np.ndarray:
        return self._run(ids)

    def rewind(self, pos: int) -> None:
        if not 0 <= pos <= self.pos:
            raise ValueError(f"cannot rewind a session at position {self.pos} to {pos}")
        self.pos = pos

    def snapshot(self, n: int) -> "TorchSession":
        keep = TorchSession(self.engine, n)
        for src, dst in zip(self.caches, keep.caches):
            dst.k.copy_(src.k[:, :, :n])
            dst.v.copy_(src.v[:, :, :n])
        keep.pos = n
        return keep

    def restore(self, snap: "TorchSession") -> None:
        n = snap.pos
        for src, dst in zip(snap.caches, self.caches):
            dst.k[:, :, :n] = src.k
            dst.v[:, :, :n] = src.v
        self.pos = n


class TorchEngine:
    name = "torch"
    chat_format = None  # detected from the tokenizer
    isa = weight_memory = None

    def __init__(self, ck: Checkpoint, max_context: int | None = None, threads: int | None = None,
                 model: LlamaModel | None = None):
        torch.set_num_threads(resolve_threads(threads))
        from edge.sampling import sampling_defaults

        self.checkpoint, self.config, self.tokenizer = ck, ck.config, ck.tokenizer
        self.generation = sampling_defaults(ck.generation)
        n = resolve_context(max_context, ck.config.max_position_embeddings, DEFAULT_MAX_CONTEXT)
        if model is not None:  # a quantized model decodes token by token: float weights cached
            from quant.apply import materialize

            materialize(model)
        self.model = model or LlamaModel.from_state_dict(ck.config, ck.tensors, torch.float32,
                                                         max_seq_len=n)
        self.max_context = n
        self.threads = torch.get_num_threads()
        self.lock = threading.Lock()

    def session(self, max_context: int | None = None) -> TorchSession:
        return TorchSession(self, resolve_context(max_context, self.max_context,
                                                  self.max_context))

    @property
    def eos_ids(self) -> tuple[int, ...]:
        ids = tuple(self.config.eos_token_ids)
        if self.tokenizer is not None:
            ids = tuple(dict.fromkeys(ids + tuple(self.tokenizer.eos_ids)))
        return ids


def _open(path: str, options) -> TorchEngine:
    from edge.errors import EdgeError

    from ..loaders import load_checkpoint

    if options.kv != "f32":
        raise EdgeError("--kv-cache int8 needs an edge artifact; the torch reference keeps an "
                        "fp32 cache")
    return TorchEngine(load_checkpoint(path), max_context=options.max_context,
                       threads=options.threads)


def _locate(name: str) -> str | None:
    from ..loaders import resolve_model

    return str(resolve_model(name))


# The entry point `torch` of the `llama_edge.engines` group (pyproject.toml).
ENGINE = EngineSpec("torch", "a checkpoint (HF directory, Meta directory, .gguf file, or a "
                    "known model name)", lambda path: True, _open, priority=100,
                    locate=_locate)
