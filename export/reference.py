"""The torch reference engine: runs a checkpoint (or an in-memory quantized model) through
export/model.py in fp32, behind the same session interface as every other engine."""

from __future__ import annotations

import threading

import numpy as np
import torch

from .loaders.common import Checkpoint
from .model import LlamaModel

# The reference allocates its cache per session; a longer context than this is rarely useful
# on the reference path and costs memory (1B: 32 KiB per position in fp32).
DEFAULT_MAX_CONTEXT = 4096


class TorchSession:
    """One conversation: its own KV cache, installed into the shared model under a lock, so
    several sessions can share one loaded model from several threads."""

    def __init__(self, engine: "TorchEngine", max_context: int):
        from .model import KVCache

        cfg = engine.config
        self.engine, self.max_context, self.pos = engine, max_context, 0
        self.caches = [KVCache(1, cfg.num_kv_heads, max_context, cfg.head_dim, torch.float32)
                       for _ in range(cfg.num_layers)]

    def reset(self) -> None:
        self.pos = 0

    @torch.inference_mode()
    def _run(self, ids) -> np.ndarray:
        m = self.engine.model
        with self.engine.lock:
            for layer, cache in zip(m.model.layers, self.caches):
                layer.self_attn.cache = cache
            m.cache_len = self.max_context
            x = torch.tensor([list(ids)], dtype=torch.long)
            logits = m(x, self.pos)[0, -1].float().numpy().copy()
        self.pos += len(ids)
        return logits

    def prefill(self, ids) -> np.ndarray:
        self.pos = 0
        return self._run(ids)

    def decode(self, token: int) -> np.ndarray:
        return self._run([token])


class TorchEngine:
    name = "torch"

    def __init__(self, ck: Checkpoint, max_context: int | None = None, threads: int | None = None,
                 model: LlamaModel | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.checkpoint, self.config, self.tokenizer = ck, ck.config, ck.tokenizer
        n = min(max_context or DEFAULT_MAX_CONTEXT, ck.config.max_position_embeddings)
        if model is not None:  # a quantized model decodes token by token: float weights cached
            from quant.apply import materialize

            materialize(model)
        self.model = model or LlamaModel.from_state_dict(ck.config, ck.tensors, torch.float32,
                                                         max_seq_len=n)
        self.max_context = n
        self.threads = torch.get_num_threads()
        self.lock = threading.Lock()

    def session(self) -> TorchSession:
        return TorchSession(self, self.max_context)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        ids = tuple(self.config.eos_token_ids)
        if self.tokenizer is not None:
            ids = tuple(dict.fromkeys(ids + tuple(self.tokenizer.eos_ids)))
        return ids
