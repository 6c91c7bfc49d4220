"""The one torch Llama definition every target starts from.

Llama 3.x / SmolLM2: RMSNorm, GQA attention with RoPE (llama3 scaling), SwiGLU MLP, tied or
separate output layer, and a preallocated KV cache. Parameter names follow the Hugging Face
layout (`model.layers.N.self_attn.q_proj.weight`, Q/K rows in rotate-half order), which is the
canonical in-memory form of every loader.

Call convention of the reference: `forward(tokens, input_pos)` with tokens (B, T) int64 and
input_pos the absolute position of tokens[:, 0]; returns logits (B, T, vocab).

Targets do not redefine the model: they take a copy of its module tree (`remodel`, no weight
copies) with their own leaves swapped in: each attention's `core` (the reference's cached SDPA,
ExecuTorch's cache and SDPA operators in export/targets/xnnpack.py, the static chunk program's
cache inputs in export/model/static.py), the linears and embedding in the form a delegate
consumes, and fused norms where a graph quantizer needs them; a small program module then gives
the call convention of its runtime.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from edge.config import LlamaConfig, rope_inv_freq


def rope_tables(cfg: LlamaConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin tables (n, head_dim) float32 in rotate-half layout, always on the CPU (even
    while the module itself is being built on the meta device)."""
    inv = torch.from_numpy(rope_inv_freq(cfg))
    ang = torch.outer(torch.arange(n, dtype=torch.float64, device="cpu"), inv)
    ang = torch.cat((ang, ang), dim=-1)
    return ang.cos().float(), ang.sin().float()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        # One operator (aten.rms_norm) instead of its steps: what a graph quantizer should see
        # as a unit (static programs set it; the arithmetic is the same in fp32).
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class KVCache(nn.Module):
    """Preallocated cache; written in place, never grown."""

    def __init__(self, batch: int, n_kv_heads: int, max_seq: int, head_dim: int, dtype):
        super().__init__()
        shape = (batch, n_kv_heads, max_seq, head_dim)  # (B, n_kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor):
        t = k.shape[2]
        self.k[:, :, pos:pos + t] = k
        self.v[:, :, pos:pos + t] = v
        return self.k[:, :, :pos + t], self.v[:, :, :pos + t]


@dataclass
class Step:
    """What every layer of one forward call shares. The attention core of each target reads
    the parts it needs: the reference its mask, a static chunk program its cache inputs (and it
    collects the chunk's new keys and values)."""

    pos: object  # absolute position of the first token (int, or a traced integer)
    cos: torch.Tensor  # (1, T, 1, head_dim) rotary rows of the T positions
    sin: torch.Tensor
    mask: torch.Tensor | None = None  # reference: (T, kv_len) bool; static: additive
    caches: tuple | None = None  # static program: past keys of every layer, then values
    new_k: list = field(default_factory=list)  # static program: (1, n_kv, T, head_dim) each
    new_v: list = field(default_factory=list)
    layer: int = 0  # index of the layer running


class CachedAttention(nn.Module):
    """The reference's attention core: an optional preallocated KV cache and PyTorch's SDPA."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gqa = cfg.num_kv_heads != cfg.num_heads
        self.cache: KVCache | None = None

    def forward(self, q, k, v, step: Step):
        b, t = q.shape[:2]
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, heads, T, head_dim)
        if self.cache is not None:
            k, v = self.cache.update(step.pos, k.to(self.cache.k.dtype), v.to(self.cache.v.dtype))
            k, v = k.to(q.dtype), v.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=step.mask, enable_gqa=self.gqa)
        return y.transpose(1, 2).reshape(b, t, -1)


class Attention(nn.Module):
    """Projections and rotary embedding; what happens between them and the output projection
    (cache, kernel, chunk program) is the swappable `core`."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, cfg.q_dim, bias=False)
        self.k_proj = nn.Linear(h, cfg.kv_dim, bias=False)
        self.v_proj = nn.Linear(h, cfg.kv_dim, bias=False)
        self.o_proj = nn.Linear(cfg.q_dim, h, bias=False)
        self.core = CachedAttention(cfg)

    def forward(self, x, step: Step):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim)
        q = q * step.cos + rotate_half(q) * step.sin
        k = k * step.cos + rotate_half(k) * step.sin
        return self.o_proj(self.core(q, k, v, step))  # core: (B, T, heads * head_dim)


class MLP(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.ffn_size(layer))

    def forward(self, x, step: Step):
        x = x + self.self_attn(self.input_layernorm(x), step)
        return x + self.mlp(self.post_attention_layernorm(x))


def run_layers(layers, x: torch.Tensor, step: Step) -> torch.Tensor:
    """The decoder layers over hidden states x (B, T, hidden), before the final norm."""
    for i, layer in enumerate(layers):
        step.layer = i
        x = layer(x, step)
    return x


class Body(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig, max_seq_len: int | None = None):
        super().__init__()
        self.config = cfg
        self.max_seq_len = min(max_seq_len or cfg.max_position_embeddings,
                               cfg.max_position_embeddings)
        self.model = Body(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(cfg, self.max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq, head_dim)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.cache_len = 0

    # ------------------------------------------------------------------ cache
    def setup_cache(self, batch: int = 1, max_seq_len: int | None = None, dtype=torch.float32):
        """Preallocate the KV cache: (B, n_kv_heads, max_seq, head_dim) per layer."""
        n = min(max_seq_len or self.max_seq_len, self.max_seq_len)
        cfg = self.config
        self.use_caches([KVCache(batch, cfg.num_kv_heads, n, cfg.head_dim, dtype)
                         for _ in self.model.layers], n)

    def use_caches(self, caches: list | None, length: int = 0):
        """Install one KVCache per layer (None: run without a cache)."""
        for i, layer in enumerate(self.model.layers):
            layer.self_attn.core.cache = None if caches is None else caches[i]
        self.cache_len = length if caches is not None else 0

    def clear_cache(self):
        self.use_caches(None)

    # ------------------------------------------------------------------ forward
    def forward(self, tokens: torch.Tensor, input_pos: int = 0) -> torch.Tensor:
        return self.lm_head(self.hidden_states(tokens, input_pos))

    def hidden_states(self, tokens: torch.Tensor, input_pos: int = 0) -> torch.Tensor:
        """Final-normed hidden states (B, T, hidden)."""
        x, step = self._embedded(tokens, input_pos)
        return self.model.norm(run_layers(self.model.layers, x, step))

    def logits_by_layer(self, batches: list[torch.Tensor], progress=None):
        """forward(tokens) of each (B, T) tensor of `batches` from position 0 without a cache,
        bit for bit, yielded in order; the decoder layers run one at a time over all of them,
        with their float weights upcast once (held_fp32) instead of once per batch. progress(f)
        is called with the fraction of the work done so far after each layer and each batch's
        logits."""
        if self.cache_len:
            raise ValueError("logits_by_layer runs without a KV cache")
        started = [self._embedded(t, 0) for t in batches]
        xs = [x for x, _ in started]
        units = len(self.model.layers) + 1  # per batch: every layer, then the output layer
        for i, layer in enumerate(self.model.layers):
            with held_fp32(layer):
                for j, (_, step) in enumerate(started):
                    step.layer = i
                    xs[j] = layer(xs[j], step)
            if progress:
                progress((i + 1) / units)
        del started
        for j in range(len(xs)):
            x, xs[j] = xs[j], None
            yield self.lm_head(self.model.norm(x))
            if progress:
                progress((units - 1 + (j + 1) / len(batches)) / units)

    def _embedded(self, tokens: torch.Tensor, input_pos: int):
        """The embedded tokens and the Step every layer of their forward call shares."""
        b, t = tokens.shape
        pos = int(input_pos)
        cached = self.cache_len > 0
        limit = self.cache_len if cached else self.max_seq_len
        if pos + t > limit:
            raise ValueError(f"positions {pos}..{pos + t} exceed the context of {limit}")
        x = self.model.embed_tokens(tokens)
        cos = self.rope_cos[pos:pos + t].to(x.dtype).view(1, t, 1, -1)
        sin = self.rope_sin[pos:pos + t].to(x.dtype).view(1, t, 1, -1)
        # Query i (absolute pos+i) may attend keys 0..pos+i.
        kv_len = pos + t if cached else t
        q_abs = torch.arange(pos, pos + t).unsqueeze(1)
        k_abs = torch.arange(kv_len).unsqueeze(0) + (0 if cached else pos)
        mask = k_abs <= q_abs  # (t, kv_len) bool
        return x, Step(pos, cos, sin, mask)

    # ------------------------------------------------------------------ weights
    @classmethod
    def from_state_dict(cls, cfg: LlamaConfig, tensors: dict, dtype=torch.float32,
                        max_seq_len: int | None = None) -> "LlamaModel":
        """Build on the meta device and assign the given tensors (no second copy when the
        dtype already matches; dtype None keeps every tensor as it is)."""
        with torch.device("meta"):
            model = cls(cfg, max_seq_len)
        sd = {k: (v if dtype is None or v.dtype == dtype else v.to(dtype))
              for k, v in tensors.items()}
        if cfg.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
        missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
        if missing or unexpected:
            raise ValueError(f"state dict mismatch: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}")
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        return model.eval()


def remodel(module: nn.Module, swap, name: str = "") -> nn.Module:
    """A copy of a module tree for one target: `swap(name, module)` returns a replacement for a
    submodule (or None to keep it, recursing into its children). Containers are copied, never
    their parameters or buffers, so the copy costs no weight memory and the original is left as
    it was (other targets and the verification still use it)."""
    new = swap(name, module)
    if new is not None:
        return new
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {k: None if m is None else remodel(m, swap, f"{name}.{k}" if name else k)
                      for k, m in module._modules.items()}
    return clone


# Output rows per matmul of a reference held in bf16 / fp16: the fp32 copy of a 128k-row output
# layer never exists whole.
UPCAST_CHUNK_ROWS = 8192


class Fp32Linear(nn.Module):
    """A linear computing in fp32 from a weight kept in the checkpoint's precision (shared, not
    copied), upcast UPCAST_CHUNK_ROWS rows at a time: the numbers of an fp32 copy. Inside
    held_fp32 the upcast copy is made once and kept (the same numbers)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.held: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from quant.apply import linear_by_rows

        w = self.weight if self.held is None else self.held
        return linear_by_rows(x.float(), lambda r: (w if r is None else w[r]).float(),
                              w.shape[0], UPCAST_CHUNK_ROWS)


@contextlib.contextmanager
def held_fp32(module: nn.Module):
    """The Fp32Linear modules of `module` keep their upcast weights while inside (for running
    many inputs through one layer)."""
    lins = [m for m in module.modules() if isinstance(m, Fp32Linear)]
    for m in lins:
        m.held = m.weight.float()
    try:
        yield
    finally:
        for m in lins:
            m.held = None


class Fp32Embedding(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float()


def reference_model(cfg: LlamaConfig, tensors: dict, max_seq_len: int | None = None) -> LlamaModel:
    """The fp32 reference of a checkpoint for scoring and checking, without an fp32 copy of
    its weights: bf16 / fp16 linears and embedding are shared and upcast as they run (a 1B
    model's reference costs no memory beyond its checkpoint)."""
    model = LlamaModel.from_state_dict(cfg, tensors, None, max_seq_len=max_seq_len)
    for name, m in list(model.named_modules()):
        if type(m) in (nn.Linear, nn.Embedding) and m.weight.dtype != torch.float32:
            parent, _, leaf = name.rpartition(".")
            wrap = Fp32Linear if type(m) is nn.Linear else Fp32Embedding
            setattr(model.get_submodule(parent) if parent else model, leaf, wrap(m.weight))
    return model


def random_state_dict(cfg: LlamaConfig, seed: int = 0, dtype=torch.bfloat16) -> dict:
    """Random weights at a config's exact shapes (for speed / memory / export-limit work).

    Scaled like a trained model's (std ~ 1/sqrt(fan_in), norms at 1) so activations stay in a
    realistic range through all layers.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in cfg.expected_shapes().items():
        if len(shape) == 1:
            out[name] = torch.ones(shape, dtype=dtype)
        else:
            std = 0.02 if "embed" in name or "lm_head" in name else shape[1] ** -0.5
            out[name] = (torch.randn(shape, generator=g) * std).to(dtype)
    return out
