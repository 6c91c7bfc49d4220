"""The calibrated quantizers (AWQ scale and clip searches, GPTQ) give exactly the recorded
integers on a fixed tiny Llama: every speedup of quant/ must leave these digests unchanged.

Each preset that calibrates (and AWQ-only / GPTQ-only variants of 8da4w's layer rule) runs on a
random Llama with fixed seeds and fixed calibration ids; per quantized tensor the golden file
holds the sha256 of its integer values, of its scales (fp32 bytes) and zero points, and a few
scale values. The model is sized so GPTQ crosses its column blocks and AWQ's sample is
subsampled.

Regenerate (only after an intended change of results, stating why in the commit):
    .venv/bin/python tests/quant/test_calibrated_golden.py --write
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.config import LlamaConfig  # noqa: E402
from export.model import LlamaModel, random_state_dict  # noqa: E402
from export.quantize import LLAMA_AWQ_MAP  # noqa: E402
from quant.apply import QuantEmbedding, QuantLinear, quantize  # noqa: E402
from quant.recipes import Recipe, load_recipe  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "calibrated_golden.json"
# hidden 128 / FFN 384: GPTQ's 128-column blocks are crossed (3 blocks in down_proj), int4-g128
# applies, and q/k/v have different widths (GQA).
CFG = LlamaConfig(vocab_size=272, hidden_size=128, intermediate_size=384, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=32, max_position_embeddings=256,
                  rope_theta=10000.0, tie_word_embeddings=False)
CALIB_WINDOWS, CALIB_LEN = 24, 96
PRESETS = ("8da4w", "8da4w-e8", "mobile", "mobile-compact", "int4-g32", "int4-g128")
# Scale values recorded per tensor (first ones in row-major order), rounded to this many
# significant digits: a readable witness next to the digests.
SCALE_SAMPLES = 3
SCALE_DIGITS = 6


def _variant(algorithm: str) -> Recipe:
    base = load_recipe("8da4w").to_dict()
    for rule in base["rules"]:
        if rule["pattern"] == "model.layers.*":
            rule["config"]["algorithm"] = algorithm
    base["name"] = f"8da4w-{algorithm}"
    return Recipe.from_dict(base)


def recipes() -> dict[str, Recipe]:
    out = {p: load_recipe(p) for p in PRESETS}
    for algo in ("awq", "gptq"):
        out[f"8da4w-{algo}"] = _variant(algo)
    return out


def _model() -> LlamaModel:
    sd = {k: v.float() for k, v in random_state_dict(CFG, 3, torch.float32).items()}
    sd["model.embed_tokens.weight"] *= 20  # activations at a realistic scale for a small model
    # a few "massive" input channels, as real small LLMs have, so AWQ's search has work to do
    sd["model.embed_tokens.weight"][:, :3] *= 8
    return LlamaModel.from_state_dict(CFG, sd, max_seq_len=CALIB_LEN)


def _calib() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.randint(0, CFG.vocab_size, (CALIB_WINDOWS, CALIB_LEN), generator=g)


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().cpu().numpy().tobytes()).hexdigest()[:24]


def digests(recipe: Recipe) -> dict:
    torch.manual_seed(0)
    model = _model()
    rep = quantize(model, recipe, _calib(), model.model.layers, LLAMA_AWQ_MAP)
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, (QuantLinear, QuantEmbedding)):
            continue
        qt = m.qt
        d = {"q": _sha(qt.qdata.to(torch.int8) if qt.qdata.dtype != torch.uint8 else qt.qdata),
             "scale": _sha(qt.scale.float()),
             "scale_first": [float(f"{v:.{SCALE_DIGITS}g}")
                             for v in qt.scale.flatten()[:SCALE_SAMPLES].tolist()]}
        if qt.zero_point is not None:
            d["zp"] = _sha(qt.zero_point)
        alpha = rep.modules.get(name, {}).get("awq_alpha")
        if alpha is not None:
            d["awq_alpha"] = alpha
        out[name] = d
    return out


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", list(recipes()))
def test_calibrated_integers_match_golden(name):
    want = _golden()[name]
    got = digests(recipes()[name])
    assert set(got) == set(want), f"{name}: quantized modules differ"
    bad = [t for t in want if got[t] != want[t]]
    assert not bad, f"{name}: {len(bad)} tensors differ from the golden digests, first " \
                    f"{bad[0]}: got {got[bad[0]]}, want {want[bad[0]]}"


def test_golden_covers_every_calibrating_preset():
    calibrating = {p for p in PRESETS
                   if any(r.config and r.config.algorithm != "rtn"
                          for r in load_recipe(p).rules)}
    assert calibrating == set(PRESETS)
    assert set(_golden()) == set(recipes())


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: test_calibrated_golden.py --write   (rewrites " f"{GOLDEN})")
    GOLDEN.write_text(json.dumps({n: digests(r) for n, r in recipes().items()}, indent=1,
                                 sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
