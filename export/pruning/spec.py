"""What a pruning request asks for (`--prune SPEC`), parsed and checked before any work."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from edge.config import LlamaConfig
from edge.errors import EdgeError

METHODS = ("importance", "magnitude", "random")
# Kept FFN widths are multiples of this so every quantization group size in the recipes
# (32 and 128 along down_proj's input) divides them.
DEFAULT_FFN_MULTIPLE = 128
# Calibration for importance: windows x tokens (SmolLM2: ~10 s for one pass on one core).
CALIB_WINDOWS = 8
CALIB_SEQ_LEN = 256
_KEYS = ("layers", "ffn", "heads", "vocab", "ffn-per-layer", "multiple", "seed")


class PruneError(EdgeError):
    """A pruning request that cannot be carried out (bad spec, too much removed, no data)."""


@dataclass(frozen=True)
class PruneSpec:
    layers: int = 0  # decoder blocks to remove
    ffn: float = 0.0  # fraction of FFN channels to remove, 0 <= ffn < 1
    heads: int = 0  # KV groups to remove from every layer (with their query heads)
    vocab: Path | None = None  # corpus whose tokens are kept
    ffn_per_layer: bool = False  # per-layer widths by one global ranking
    multiple: int = DEFAULT_FFN_MULTIPLE  # kept FFN widths are multiples of this
    method: str = "importance"
    seed: int = 0  # random method

    @property
    def empty(self) -> bool:
        return not (self.layers or self.ffn or self.heads or self.vocab)

    def to_json(self) -> dict:
        d = {"layers": self.layers, "ffn": self.ffn, "heads": self.heads,
             "vocab": str(self.vocab) if self.vocab else None, "ffn_per_layer": self.ffn_per_layer,
             "multiple": self.multiple, "method": self.method}
        if self.method == "random":
            d["seed"] = self.seed
        return d


def parse_prune(text: str | None, method: str = "importance") -> PruneSpec:
    """'layers=2,ffn=0.25,heads=1,vocab=FILE[,ffn-per-layer][,multiple=N][,seed=S]'."""
    if method not in METHODS:
        raise PruneError(f"--prune-method {method!r} is unknown; use one of: {', '.join(METHODS)}")
    kw: dict = {"method": method}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        key, eq, val = (s.strip() for s in part.partition("="))
        if key not in _KEYS:
            raise PruneError(f"--prune: unknown key {key!r}; use layers=N, ffn=FRACTION, heads=N, "
                             "vocab=FILE, ffn-per-layer, multiple=N, seed=S")
        if key == "ffn-per-layer":
            if eq:
                raise PruneError("--prune: ffn-per-layer takes no value")
            kw["ffn_per_layer"] = True
            continue
        if not eq or not val:
            raise PruneError(f"--prune: {key} needs a value ({key}=...)")
        try:
            if key == "ffn":
                kw["ffn"] = float(val)
            elif key == "vocab":
                kw["vocab"] = Path(val)
            else:
                kw[{"layers": "layers", "heads": "heads", "multiple": "multiple",
                    "seed": "seed"}[key]] = int(val)
        except ValueError:
            kind = "a number" if key == "ffn" else "an integer"
            raise PruneError(f"--prune: {key}={val!r} is not {kind}") from None
    spec = PruneSpec(**kw)
    if not 0.0 <= spec.ffn < 1.0 or not math.isfinite(spec.ffn):
        raise PruneError(f"--prune: ffn={spec.ffn:g} is out of range; give the fraction of FFN "
                         "channels to remove, 0 <= ffn < 1 (e.g. ffn=0.25)")
    if spec.layers < 0 or spec.heads < 0:
        raise PruneError("--prune: layers and heads count what to remove and must be >= 0")
    if spec.multiple < 1:
        raise PruneError(f"--prune: multiple={spec.multiple} must be >= 1")
    if spec.ffn_per_layer and not spec.ffn:
        raise PruneError("--prune: ffn-per-layer needs ffn=FRACTION")
    if spec.vocab is not None:
        if not spec.vocab.is_file():
            raise PruneError(f"--prune: vocab corpus {spec.vocab} not found")
        if spec.vocab.stat().st_size == 0:
            raise PruneError(f"--prune: vocab corpus {spec.vocab} is empty")
    return spec


def check_spec(spec: PruneSpec, cfg: LlamaConfig) -> None:
    """Refuse a request the model cannot take, before any work."""
    if spec.layers >= cfg.num_layers:
        raise PruneError(f"--prune: layers={spec.layers} would leave no decoder block (the model "
                         f"has {cfg.num_layers}); remove at most {cfg.num_layers - 1}")
    if spec.heads:
        if spec.heads >= cfg.num_kv_heads:
            raise PruneError(f"--prune: heads={spec.heads} KV groups would leave none (the model "
                             f"has {cfg.num_kv_heads} KV heads, each serving "
                             f"{cfg.num_heads // cfg.num_kv_heads} query heads); remove at most "
                             f"{cfg.num_kv_heads - 1}")
    if spec.ffn:
        for i in range(cfg.num_layers):
            f = cfg.ffn_size(i)
            if f % spec.multiple:
                raise PruneError(f"--prune: layer {i}'s FFN width {f} is not a multiple of "
                                 f"{spec.multiple}; pass multiple=N with an N that divides it")
        sizes = [cfg.ffn_size(i) for i in range(cfg.num_layers)]
        if spec.ffn_per_layer:
            units = [round(spec.ffn * sum(sizes) / spec.multiple)]
            if units[0] > sum(sizes) // spec.multiple - len(sizes):
                raise PruneError(f"--prune: ffn={spec.ffn:g} cannot leave every layer a block "
                                 f"of {spec.multiple} channels; ask for less")
        else:
            units = [round(spec.ffn * f / spec.multiple) for f in sizes]
            if any(u * spec.multiple >= f for u, f in zip(units, sizes)):
                raise PruneError(f"--prune: ffn={spec.ffn:g} leaves a layer without FFN "
                                 f"channels at blocks of {spec.multiple}; ask for less")
        if min(units) == 0:
            raise PruneError(f"--prune: ffn={spec.ffn:g} removes less than one block of "
                             f"{spec.multiple} channels per layer; ask for more or lower "
                             "multiple=N")
