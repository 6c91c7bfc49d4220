"""The calibrated quantizers (AWQ scale and clip searches, GPTQ) give the recorded integers on a
fixed tiny Llama: every speedup of quant/ must leave these results unchanged.

Each preset that calibrates (and AWQ-only / GPTQ-only variants of 8da4w's layer rule) runs on a
random Llama with fixed seeds and fixed calibration ids; per quantized tensor the golden file
holds the sha256 of its integer values, of its scales (fp32 bytes) and zero points, and a few
scale values. The model is sized so GPTQ crosses its column blocks and AWQ's sample is
subsampled.

The digests hold on the machine that wrote them. Elsewhere the calibration activations differ in
their last bits (a CPU's matrix-multiply summation order: AVX2 and AVX-512 dispatch on one
machine already disagree), which moves a few roundings by one step and bf16 scales by one ulp;
so each tensor also carries a fingerprint that such noise barely moves while any change of
algorithm moves it far: the count of every integer level, a signed checksum of the integers and
of the scales against a fixed random sign pattern, and the sum of the scales. Where a digest
differs, the fingerprint must agree within the named tolerances below.

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
# Cross-machine tolerances, set from AVX2 vs AVX-512 dispatch on one machine (at most 0.07 % of
# a tensor's integers one step apart, scale sums 5e-5 apart), with headroom.
Q_FLIP_SHARE = 0.003  # integers that may differ by one step, as a share of the tensor
SCALE_SUM_RTOL = 5e-4  # relative difference of the sum of the scales
SCALE_CHECK_RTOL = 2e-3  # the scales' signed checksum, relative to the sum of |scales|


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


def _signs(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    return torch.randint(0, 2, (n,), generator=g, dtype=torch.int64) * 2 - 1


def fingerprint(q: torch.Tensor, scale: torch.Tensor) -> dict:
    q, sc = q.flatten().to(torch.int64), scale.flatten().double()
    levels, counts = torch.unique(q, return_counts=True)
    return {"n": q.numel(), "levels": dict(zip(map(str, levels.tolist()), counts.tolist())),
            "q_check": int((q * _signs(q.numel())).sum()),
            "scale_sum": float(sc.sum()), "scale_abs_sum": float(sc.abs().sum()),
            "scale_check": float((sc * _signs(sc.numel())).sum())}


def close(got: dict, want: dict) -> str | None:
    """Why fingerprint `got` is farther from `want` than last-bit noise moves it (None: close)."""
    if got["n"] != want["n"]:
        return f"{got['n']} integers, want {want['n']}"
    flips = Q_FLIP_SHARE * want["n"]
    keys = set(got["levels"]) | set(want["levels"])
    moved = sum(abs(got["levels"].get(k, 0) - want["levels"].get(k, 0)) for k in keys)
    if moved > 2 * flips:
        return f"{moved} integers changed level (at most {2 * flips:.0f} allowed)"
    if abs(got["q_check"] - want["q_check"]) > flips:
        return f"integer checksum {got['q_check']} vs {want['q_check']} (> {flips:.0f} apart)"
    if abs(got["scale_sum"] - want["scale_sum"]) > SCALE_SUM_RTOL * abs(want["scale_abs_sum"]):
        return f"scale sum {got['scale_sum']:.6g} vs {want['scale_sum']:.6g}"
    if abs(got["scale_check"] - want["scale_check"]) > SCALE_CHECK_RTOL * want["scale_abs_sum"]:
        return f"scale checksum {got['scale_check']:.6g} vs {want['scale_check']:.6g}"
    return None


def digests(recipe: Recipe) -> dict:
    torch.manual_seed(0)
    model = _model()
    rep = quantize(model, recipe, _calib(), model.model.layers, LLAMA_AWQ_MAP)
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, (QuantLinear, QuantEmbedding)):
            continue
        qt = m.qt
        q = qt.qdata.to(torch.int8) if qt.qdata.dtype != torch.uint8 else qt.qdata
        d = {"q": _sha(q), "scale": _sha(qt.scale.float()),
             "scale_first": [float(f"{v:.{SCALE_DIGITS}g}")
                             for v in qt.scale.flatten()[:SCALE_SAMPLES].tolist()],
             "fingerprint": fingerprint(q, qt.scale)}
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
    bad = []
    for t in want:
        g, w = got[t], want[t]
        if g.get("awq_alpha") != w.get("awq_alpha"):
            bad.append(f"{t}: AWQ alpha {g.get('awq_alpha')} (want {w.get('awq_alpha')})")
        elif (g["q"], g["scale"], g.get("zp")) != (w["q"], w["scale"], w.get("zp")):
            missing_zp = g.get("zp") is None and w.get("zp") is not None
            why = close(g["fingerprint"], w["fingerprint"]) or (
                "zero points missing" if missing_zp else None)
            if why:
                bad.append(f"{t}: {why}")
    assert not bad, f"{name}: {len(bad)} tensors differ from the golden results: {bad}"


def test_the_fingerprint_catches_a_change_of_algorithm():
    """Clipping searched over a different grid is a change of results: the fingerprint must not
    take it for last-bit noise (and one step on 0.1 % of the integers must pass)."""
    from quant.algorithms import awq

    want = digests(recipes()["8da4w-awq"])
    t = "model.layers.1.mlp.up_proj"
    base = want[t]["fingerprint"]
    noisy = dict(base, q_check=base["q_check"] + int(0.001 * base["n"]))
    assert close(noisy, base) is None and close(base, base) is None
    old = awq.CLIP_GRID
    try:
        awq.CLIP_GRID = 10
        changed = digests(recipes()["8da4w-awq"])
    finally:
        awq.CLIP_GRID = old
    assert close(changed[t]["fingerprint"], base) is not None


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
