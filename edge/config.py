"""The Llama model configuration shared by the toolchain and the runtime.

One frozen dataclass covers Llama 3.x (GQA, llama3 rope scaling, tied embeddings) and the
SmolLM2 family. `LlamaConfig.validate()` checks internal consistency; checkpoint loaders
compare it against tensor shapes before anything large is allocated. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError

ROPE_TYPES = ("default", "llama3")
# Optional config.json fields and their JSON types, checked before use so that a wrong type is
# reported by field name.
_HF_FIELD_TYPES = {"rms_norm_eps": (int, float), "rope_theta": (int, float),
                   "max_position_embeddings": int, "bos_token_id": int,
                   "eos_token_id": (int, list), "rope_scaling": dict, "rope_parameters": dict,
                   "layer_intermediate_sizes": list, "architectures": list, "model_type": str,
                   "hidden_act": str, "num_key_value_heads": int, "head_dim": int}
# List fields and the type of their entries.
_HF_LIST_ITEMS = {"architectures": str, "eos_token_id": int, "layer_intermediate_sizes": int}


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1+ frequency-dependent RoPE scaling ("llama3" rope_type)."""

    factor: float = 32.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # Per-layer FFN widths for models pruned non-uniformly; None means every layer uses
    # intermediate_size.
    layer_intermediate_sizes: tuple[int, ...] | None = None
    name: str = field(default="llama", compare=False)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    # ------------------------------------------------------------------ checks
    def validate(self, source: str = "config") -> LlamaConfig:
        def bad(fld, msg):
            raise ConfigError(f"{source}: field '{fld}' {msg}")

        for fld in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                    "num_heads", "num_kv_heads", "head_dim", "max_position_embeddings"):
            v = getattr(self, fld)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                bad(fld, f"must be a positive integer, got {v!r}")
            if v > 1 << 24:
                bad(fld, f"is implausibly large ({v}); the file is probably corrupt")
        if self.num_heads % self.num_kv_heads:
            bad("num_key_value_heads", f"({self.num_kv_heads}) must divide num_attention_heads "
                f"({self.num_heads})")
        if self.head_dim % 2:
            bad("head_dim", f"must be even for rotary embeddings, got {self.head_dim}")
        if not (self.rms_norm_eps > 0 and math.isfinite(self.rms_norm_eps)):
            bad("rms_norm_eps", f"must be a positive finite number, got {self.rms_norm_eps!r}")
        if not (self.rope_theta > 0 and math.isfinite(self.rope_theta)):
            bad("rope_theta", f"must be a positive finite number, got {self.rope_theta!r}")
        rs = self.rope_scaling
        if rs is not None:
            if not (rs.factor >= 1 and rs.high_freq_factor > rs.low_freq_factor > 0
                    and rs.original_max_position_embeddings > 0):
                bad("rope_scaling", f"has inconsistent llama3 parameters: {rs}")
        for fld, ids in (("bos_token_id", [self.bos_token_id] if self.bos_token_id is not None
                          else []), ("eos_token_id", list(self.eos_token_ids))):
            for i in ids:
                if not 0 <= i < self.vocab_size:
                    bad(fld, f"= {i} is outside the vocabulary (size {self.vocab_size})")
        if self.layer_intermediate_sizes is not None:
            if len(self.layer_intermediate_sizes) != self.num_layers:
                bad("layer_intermediate_sizes", f"has {len(self.layer_intermediate_sizes)} "
                    f"entries for {self.num_layers} layers")
            if any(int(s) <= 0 for s in self.layer_intermediate_sizes):
                bad("layer_intermediate_sizes", "entries must be positive")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def ffn_size(self, layer: int) -> int:
        if self.layer_intermediate_sizes is not None:
            return int(self.layer_intermediate_sizes[layer])
        return self.intermediate_size

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the canonical (HF-named) state dict with its shape (out, in)."""
        h, shapes = self.hidden_size, {}
        shapes["model.embed_tokens.weight"] = (self.vocab_size, h)
        for i in range(self.num_layers):
            p, f = f"model.layers.{i}.", self.ffn_size(i)
            shapes[p + "input_layernorm.weight"] = (h,)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
            shapes[p + "self_attn.q_proj.weight"] = (self.q_dim, h)
            shapes[p + "self_attn.k_proj.weight"] = (self.kv_dim, h)
            shapes[p + "self_attn.v_proj.weight"] = (self.kv_dim, h)
            shapes[p + "self_attn.o_proj.weight"] = (h, self.q_dim)
            shapes[p + "mlp.gate_proj.weight"] = (f, h)
            shapes[p + "mlp.up_proj.weight"] = (f, h)
            shapes[p + "mlp.down_proj.weight"] = (h, f)
        shapes["model.norm.weight"] = (h,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        return shapes

    def num_parameters(self) -> int:
        return sum(math.prod(s) for s in self.expected_shapes().values())

    def replace(self, **kw) -> LlamaConfig:
        return dataclasses.replace(self, **kw)

    # ------------------------------------------------------------------ HF form
    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> LlamaConfig:
        """Parse a Hugging Face `config.json` (older rope_theta/rope_scaling keys or newer
        rope_parameters)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        for key, types in _HF_FIELD_TYPES.items():
            v = d.get(key)
            if v is not None and (not isinstance(v, types) or isinstance(v, bool)):
                raise ConfigError(f"{source}: field '{key}' has the wrong type "
                                  f"({type(v).__name__} {v!r:.60})")
        for key, typ in _HF_LIST_ITEMS.items():
            v = d.get(key)
            if isinstance(v, list) and not all(isinstance(x, typ) and not isinstance(x, bool)
                                               for x in v):
                raise ConfigError(f"{source}: field '{key}' must be a list of "
                                  f"{typ.__name__}, got {v!r:.60}")
        arch = d.get("architectures") or []
        mtype = d.get("model_type")
        if mtype not in (None, "llama") or (arch and "LlamaForCausalLM" not in arch):
            raise ConfigError(
                f"{source}: model_type={mtype!r}, architectures={arch!r} is not a Llama-family "
                "model; supported: model_type 'llama' (Llama 3.x, SmolLM2 and other "
                "LlamaForCausalLM checkpoints)")

        def need(key):
            if key not in d:
                raise ConfigError(f"{source}: missing required field '{key}'")
            v = d[key]
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"{source}: field '{key}' must be an integer, got {v!r}")
            return v

        hidden, heads = need("hidden_size"), need("num_attention_heads")
        kv_heads = d.get("num_key_value_heads", heads)
        head_dim = d.get("head_dim")
        if head_dim is None:
            if heads <= 0 or hidden % heads:
                raise ConfigError(f"{source}: num_attention_heads ({heads}) must divide "
                                  f"hidden_size ({hidden}) when head_dim is not given")
            head_dim = hidden // heads
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ConfigError(f"{source}: attention_bias / mlp_bias are not supported "
                              "(Llama 3.x and SmolLM2 have no biases)")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{source}: hidden_act={act!r} is not supported (only 'silu')")

        rope = d.get("rope_parameters")
        if isinstance(rope, dict) and "full_attention" in rope:  # per-layer-type form
            rope = rope["full_attention"]
        if rope is None:
            rope = dict(d.get("rope_scaling") or {})
            rope.setdefault("rope_theta", d.get("rope_theta", 10000.0))
        if not isinstance(rope, dict):
            raise ConfigError(f"{source}: rope_parameters / rope_scaling must be an object")
        rtype = rope.get("rope_type", rope.get("type", "default")) or "default"
        if not isinstance(rtype, str) or rtype not in ROPE_TYPES:
            raise ConfigError(f"{source}: rope type {rtype!r} is not supported; supported: "
                              f"{', '.join(ROPE_TYPES)}")
        scaling = None
        if rtype == "llama3":
            try:
                scaling = RopeScaling(
                    factor=float(rope["factor"]),
                    low_freq_factor=float(rope["low_freq_factor"]),
                    high_freq_factor=float(rope["high_freq_factor"]),
                    original_max_position_embeddings=int(
                        rope["original_max_position_embeddings"]))
            except KeyError as e:
                raise ConfigError(f"{source}: llama3 rope scaling is missing {e.args[0]!r}"
                                  ) from None
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(f"{source}: llama3 rope scaling values must be numbers, got "
                                  f"{rope!r:.100}") from None
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        if not isinstance(theta, (int, float)) or isinstance(theta, bool):
            raise ConfigError(f"{source}: field 'rope_theta' must be a number, got {theta!r:.60}")
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        lis = d.get("layer_intermediate_sizes")
        cfg = cls(
            vocab_size=need("vocab_size"), hidden_size=hidden,
            intermediate_size=need("intermediate_size"), num_layers=need("num_hidden_layers"),
            num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            rope_theta=float(theta),
            rope_scaling=scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 8192)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=d.get("bos_token_id"), eos_token_ids=eos_ids,
            layer_intermediate_sizes=tuple(lis) if lis else None,
            name=str(d.get("_name_or_path", "llama")) or "llama",
        )
        return cfg.validate(source)

    def to_hf_dict(self) -> dict:
        d = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings, "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16",
            "_name_or_path": self.name,
        }
        if self.rope_scaling is not None:
            d["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
        if self.bos_token_id is not None:
            d["bos_token_id"] = self.bos_token_id
        if self.eos_token_ids:
            d["eos_token_id"] = (list(self.eos_token_ids) if len(self.eos_token_ids) > 1
                                 else self.eos_token_ids[0])
        if self.layer_intermediate_sizes is not None:
            d["layer_intermediate_sizes"] = list(self.layer_intermediate_sizes)
        return d


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
    """Inverse RoPE frequencies (head_dim/2,) float64, with llama3 scaling applied.

    llama3 scaling keeps high frequencies (short wavelengths) as they are, divides low
    frequencies by `factor`, and interpolates smoothly in between.
    """
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    rs = cfg.rope_scaling
    if rs is None:
        return inv
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    wavelen = 2 * math.pi / inv
    smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor)
    scaled = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
    mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return np.where(mid, (1 - smooth) * inv / rs.factor + smooth * inv, scaled)


# Published shapes (DESIGN.md); used with random weights for speed / memory / export limits.
_LLAMA32 = dict(vocab_size=128256, intermediate_size=8192, num_kv_heads=8, rms_norm_eps=1e-5,
                rope_theta=500000.0, rope_scaling=RopeScaling(),
                max_position_embeddings=131072, tie_word_embeddings=True,
                bos_token_id=128000, eos_token_ids=(128001, 128008, 128009))
PRESETS: dict[str, LlamaConfig] = {
    "llama3.2-1b": LlamaConfig(hidden_size=2048, num_layers=16, num_heads=32, head_dim=64,
                               name="llama3.2-1b", **_LLAMA32),
    "llama3.2-3b": LlamaConfig(hidden_size=3072, num_layers=28, num_heads=24, head_dim=128,
                               name="llama3.2-3b", **_LLAMA32),
    "smollm2-135m": LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                                rms_norm_eps=1e-5, rope_theta=100000.0,
                                max_position_embeddings=8192, tie_word_embeddings=True,
                                bos_token_id=1, eos_token_ids=(2,), name="smollm2-135m"),
}
