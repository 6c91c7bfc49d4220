"""Static chunk programs: a fixed-shape form of the model for NPU compilers, and the one runner
that drives any such program the way a device runtime does.

The program (StaticProgram, lowered by the qnn / mediatek targets; the onnx-qdq target builds
the same contract as an ONNX graph) processes one chunk of T tokens with the KV cache held
outside the graph:

    inputs   tokens (1, T) int64, positions (T,) int64, mask (1, T, P + T) float32 (0 or the
             mask value), caches: per layer P past keys, then per layer P past values, each
             (1, n_kv, P, head_dim)
    outputs  logits (1, T, vocab), per layer new keys, then per layer new values
             (1, n_kv, T, head_dim)

with every shape fixed. The runner (ChunkRunner) keeps the cache, writes a chunk's new keys and
values at its positions, and builds the mask: past slots below the chunk's start, plus the
causal triangle of the chunk. A text runs as ceil(n / T) chunks; the last one is padded and its
padding rows discarded.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import EdgeError

from .llama import RMSNorm, Step, remodel, rope_tables, run_layers


class StaticAttention(nn.Module):
    """Attention over the chunk's past keys / values given as inputs (Step.caches), with the
    chunk's own appended; the chunk's new keys and values are collected on the Step."""

    def __init__(self, cfg):
        super().__init__()
        self.n_layers, self.n_heads = cfg.num_layers, cfg.num_heads
        self.n_kv, self.head_dim = cfg.num_kv_heads, cfg.head_dim

    def forward(self, q, k, v, step: Step):
        t, nkv, hd = q.shape[1], self.n_kv, self.head_dim
        g = self.n_heads // nkv
        q = q.transpose(1, 2) * (hd ** -0.5)  # (1, heads, T, head_dim)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (1, n_kv, T, head_dim)
        step.new_k.append(k)
        step.new_v.append(v)
        keys = torch.cat([step.caches[step.layer], k], dim=2)  # (1, n_kv, P + T, head_dim)
        vals = torch.cat([step.caches[self.n_layers + step.layer], v], dim=2)
        # Query rows grouped by KV head: (1, n_kv, g * T, P + T) scores, the mask per group.
        s = q.reshape(1, nkv, g * t, hd) @ keys.transpose(2, 3) + step.mask
        y = torch.softmax(s, dim=-1) @ vals  # (1, n_kv, g * T, head_dim)
        return y.reshape(1, self.n_heads, t, hd).transpose(1, 2).reshape(1, t, self.n_heads * hd)


class StaticProgram(nn.Module):
    """A LlamaModel's weights in a fixed-shape chunk program (see the module docstring).

    Submodules keep the LlamaModel's names (`model.layers.N.self_attn.q_proj`, `lm_head`), so
    recipe patterns and the vendor quantizers' module predicates match them. fused_norm writes
    RMSNorm as one operator (quantized as a whole, only its output rounded): rounding each step
    of the spelled-out form to 16 bits breaks on the residual stream's outliers, where mean(x^2)
    spans so wide a range that small rows round to zero."""

    def __init__(self, llama, chunk: int, context: int, fused_norm: bool = True):
        super().__init__()
        cfg = llama.config
        if not 0 < chunk < context <= cfg.max_position_embeddings:
            raise EdgeError(f"static program: need 0 < chunk ({chunk}) < context ({context}) "
                            f"<= the model's {cfg.max_position_embeddings} positions")
        self.config, self.chunk, self.context = cfg, chunk, context

        def swap(name, m):
            if name.endswith("self_attn.core"):
                return StaticAttention(cfg)
            if isinstance(m, RMSNorm) and fused_norm:
                fused = copy.copy(m)  # the same weight; the original stays unfused
                fused.fused = True
                return fused
            return None

        program = remodel(llama, swap)
        self.model, self.lm_head = program.model, program.lm_head
        cos, sin = rope_tables(cfg, context)
        self.register_buffer("rope_cos", cos)  # (context, head_dim)
        self.register_buffer("rope_sin", sin)

    def forward(self, tokens, positions, mask, caches):
        cfg, t = self.config, self.chunk
        cos = F.embedding(positions, self.rope_cos).view(1, t, 1, cfg.head_dim)
        sin = F.embedding(positions, self.rope_sin).view(1, t, 1, cfg.head_dim)
        # the mask repeated for each query head of a KV group: (1, 1, g * T, P + T)
        g = cfg.num_heads // cfg.num_kv_heads
        step = Step(0, cos, sin, torch.cat([mask] * g, dim=1).unsqueeze(1), caches)
        x = run_layers(self.model.layers, self.model.embed_tokens(tokens), step)
        logits = self.lm_head(self.model.norm(x))
        return (logits, *step.new_k, *step.new_v)


def example_inputs(cfg, chunk: int, context: int) -> tuple:
    cache = (1, cfg.num_kv_heads, context - chunk, cfg.head_dim)
    caches = tuple(torch.zeros(cache) for _ in range(2 * cfg.num_layers))
    return (torch.zeros(1, chunk, dtype=torch.long), torch.arange(chunk),
            torch.zeros(1, chunk, context), caches)


# call(tokens (1, T) int64, positions (T,) int64, mask (T, P + T) float32, past keys, past
# values (per layer, (1, n_kv, P, head_dim) float32)) -> (logits (T, vocab), new keys, new
# values (per layer, (1, n_kv, T, head_dim)), extra outputs)
ChunkCall = Callable[..., tuple]


class ChunkRunner:
    """Drives a static chunk program as a device runtime would: keeps the KV cache (P past
    positions), pads short chunks, builds the additive mask. Up to P + T tokens: the last chunk
    need not be stored."""

    def __init__(self, call: ChunkCall, cfg, chunk: int, past: int, mask_value: float):
        self.call, self.cfg, self.chunk, self.past = call, cfg, chunk, past
        self.mask_value = mask_value
        self.limit = past + chunk
        self.reset()

    def reset(self) -> None:
        c = self.cfg
        shape = (1, c.num_kv_heads, self.past, c.head_dim)  # (1, n_kv, P, head_dim)
        self.keys = [np.zeros(shape, np.float32) for _ in range(c.num_layers)]
        self.values = [np.zeros(shape, np.float32) for _ in range(c.num_layers)]
        self.pos = 0

    def mask(self, p: int) -> np.ndarray:
        """(T, P + T) additive mask of a chunk starting at position p."""
        t, past = self.chunk, self.past
        m = np.full((t, past + t), self.mask_value, np.float32)
        m[:, :p] = 0.0  # cached positions
        m[:, past:] = np.where(np.tril(np.ones((t, t), bool)), 0.0, self.mask_value)
        return m

    def run(self, ids) -> tuple[np.ndarray, list]:
        """Up to T tokens at self.pos: (logits (n, vocab), extra outputs)."""
        t, p, n = self.chunk, self.pos, len(ids)
        if not 0 < n <= t or p + n > self.limit:
            raise EdgeError(f"{p + n} tokens do not fit the static program's context of "
                            f"{self.limit}")
        tokens = np.zeros((1, t), np.int64)
        tokens[0, :n] = ids
        logits, new_k, new_v, extra = self.call(tokens, np.arange(p, p + t, dtype=np.int64),
                                                self.mask(p), self.keys, self.values)
        if p + n <= self.past:  # a later chunk may read these positions
            for i in range(self.cfg.num_layers):
                self.keys[i][:, :, p:p + n] = new_k[i][:, :, :n]
                self.values[i][:, :, p:p + n] = new_v[i][:, :, :n]
        self.pos += n
        return np.asarray(logits)[:n], extra

    def logits_all(self, ids) -> np.ndarray:
        """(n, vocab) logits of every position of `ids`, from an empty cache."""
        self.reset()
        ids = [int(i) for i in ids]
        if len(ids) > self.limit:
            raise EdgeError(f"{len(ids)} tokens exceed the static program's context of "
                            f"{self.limit}")
        return np.concatenate([self.run(ids[i:i + self.chunk])[0]
                               for i in range(0, len(ids), self.chunk)])


def torch_chunk_call(program, cfg, context: int) -> ChunkCall:
    """A ChunkCall over a torch StaticProgram (or its exported / quantized graph module)."""
    n = cfg.num_layers

    @torch.no_grad()
    def call(tokens, positions, mask, keys, values):
        pos = torch.from_numpy(positions).clamp(max=context - 1)  # padding rows: any position
        res = program(torch.from_numpy(tokens), pos, torch.from_numpy(mask)[None],
                      tuple(torch.from_numpy(x) for x in (*keys, *values)))
        return (res[0][0].float().numpy(), [r.numpy() for r in res[1:1 + n]],
                [r.numpy() for r in res[1 + n:1 + 2 * n]], [])

    return call
