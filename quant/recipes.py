"""Recipes: an ordered list of (module pattern -> scheme config) rules, first match wins.

Module names are the model's (`model.embed_tokens`, `model.layers.3.self_attn.q_proj`,
`lm_head`); patterns are shell-style globs. A rule's config of None keeps the module in float.
Configs are frozen dataclasses that round-trip through plain dicts, so presets are small JSON
files in quant/recipes/ and users can write their own.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import EdgeError

from .schemes import DynamicInt8Act, FP8Weight, IntWeight, KVCacheInt8

PRESET_DIR = Path(__file__).parent / "recipes"
ALGORITHMS = ("rtn", "gptq", "awq", "awq+gptq")


class RecipeError(EdgeError):
    pass


@dataclass(frozen=True)
class QuantConfig:
    """How one module is quantized: weight scheme, optional dynamic activation quantization
    (8da4w / 8da8w), and the algorithm that picks the weight values."""

    weight: IntWeight | FP8Weight
    act: DynamicInt8Act | None = None
    algorithm: str = "rtn"

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise RecipeError(f"unknown algorithm {self.algorithm!r}; known: "
                              f"{', '.join(ALGORITHMS)}")

    @property
    def name(self) -> str:
        a = "8da" if self.act is not None else ""
        return f"{a}{self.weight.name}"

    def to_dict(self) -> dict:
        w = dataclasses.asdict(self.weight)
        w["type"] = "fp8" if isinstance(self.weight, FP8Weight) else "int"
        d = {"weight": w, "algorithm": self.algorithm}
        if self.act is not None:
            d["act"] = dataclasses.asdict(self.act)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "recipe") -> "QuantConfig":
        try:
            w = dict(d["weight"])
            kind = w.pop("type", "int")
            weight = {"int": IntWeight, "fp8": FP8Weight}[kind](**w)
            act = DynamicInt8Act(**d["act"]) if d.get("act") is not None else None
            return cls(weight, act, d.get("algorithm", "rtn"))
        except (KeyError, TypeError, ValueError) as e:
            raise RecipeError(f"{where}: invalid scheme config {d!r} ({e})") from None


@dataclass(frozen=True)
class Rule:
    pattern: str
    config: QuantConfig | None


CALIB_INPUTS = ("float", "quantized")


@dataclass(frozen=True)
class Recipe:
    name: str
    rules: tuple[Rule, ...] = ()
    kv_cache: KVCacheInt8 | None = None
    description: str = ""
    # calibration for algorithms that need it: number of windows and their length in tokens
    calib_windows: int = 16
    calib_seq_len: int = 512
    # what each block's statistics are gathered on: "float", the unquantized model's activations
    # (one forward per block and window); "quantized", the outputs of the blocks quantized
    # before it (a second forward per block, through the quantized block)
    calib_inputs: str = "float"
    extra: dict = field(default_factory=dict, compare=False)

    def config_for(self, module: str) -> QuantConfig | None:
        for r in self.rules:
            if fnmatch.fnmatchcase(module, r.pattern):
                return r.config
        return None

    def needs_calibration(self) -> bool:
        return any(r.config is not None and r.config.algorithm != "rtn" for r in self.rules)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description,
                "rules": [{"pattern": r.pattern,
                           "config": r.config.to_dict() if r.config else None}
                          for r in self.rules],
                "kv_cache": "int8" if self.kv_cache else None,
                "calibration": {"windows": self.calib_windows, "seq_len": self.calib_seq_len,
                                "inputs": self.calib_inputs}}

    @classmethod
    def from_dict(cls, d: dict, where: str = "recipe") -> "Recipe":
        if not isinstance(d, dict) or not isinstance(d.get("rules", []), list):
            raise RecipeError(f"{where}: a recipe is an object with a 'rules' list")
        rules = []
        for i, r in enumerate(d.get("rules", [])):
            if not isinstance(r, dict) or "pattern" not in r:
                raise RecipeError(f"{where}: rule {i} needs a 'pattern'")
            cfg = r.get("config")
            rules.append(Rule(str(r["pattern"]), None if cfg is None else
                              QuantConfig.from_dict(cfg, f"{where}: rule {i}")))
        kv = d.get("kv_cache")
        if kv not in (None, "int8"):
            raise RecipeError(f"{where}: kv_cache must be null or \"int8\", got {kv!r}")
        cal = d.get("calibration") or {}
        inputs = cal.get("inputs", "float")
        if inputs not in CALIB_INPUTS:
            raise RecipeError(f"{where}: calibration.inputs must be one of "
                              f"{', '.join(CALIB_INPUTS)}, got {inputs!r}")
        return cls(name=str(d.get("name", where)), rules=tuple(rules),
                   kv_cache=KVCacheInt8() if kv == "int8" else None,
                   description=str(d.get("description", "")),
                   calib_windows=int(cal.get("windows", 16)),
                   calib_seq_len=int(cal.get("seq_len", 512)), calib_inputs=inputs)

    def with_algorithm(self, algorithm: str) -> "Recipe":
        """The same recipe with every quantized rule using `algorithm`."""
        rules = tuple(Rule(r.pattern, None if r.config is None else
                           dataclasses.replace(r.config, algorithm=algorithm))
                      for r in self.rules)
        return dataclasses.replace(self, rules=rules, name=f"{self.name}+{algorithm}")


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_recipe(name_or_path: str) -> Recipe:
    """A preset name (none, mobile, int4-g128, int8, fp8, ...) or a JSON file."""
    p = Path(name_or_path)
    if p.suffix == ".json" and p.is_file():
        src = p
    elif (PRESET_DIR / f"{name_or_path}.json").is_file():
        src = PRESET_DIR / f"{name_or_path}.json"
    else:
        raise RecipeError(f"unknown recipe {name_or_path!r}; presets: {', '.join(presets())}, "
                          "auto, or a path to a recipe .json file")
    try:
        d = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RecipeError(f"{src}: cannot read recipe ({e})") from None
    return Recipe.from_dict(d, str(src))
