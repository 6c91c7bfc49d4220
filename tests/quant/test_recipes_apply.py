"""Recipes (rules, presets, round trips) and quantize(model, recipe) on a tiny Llama."""

from __future__ import annotations

import json

import pytest
import torch

from support.tiny import TINY, tiny_tied_model as tiny_model
from quant.algorithms.awq import search_scales
from quant.algorithms.gptq import gptq_quantize
from export.model import LlamaModel, random_state_dict
from quant.apply import QuantEmbedding, QuantLinear, materialize, quantize
from quant.eval import SpilledLogits, compare
from quant.recipes import QuantConfig, Recipe, RecipeError, Rule, load_recipe, presets
from quant.schemes import DynamicInt8Act, FP8Weight, IntWeight, QuantError
from export.quantize import LLAMA_AWQ_MAP as AWQ_MAP

# GPTQ must beat RTN's output error on correlated inputs by at least this factor.
GPTQ_MIN_GAIN = 1.3


def test_presets_exist_and_round_trip():
    assert {"none", "mobile", "int4-g128", "int8", "fp8"} <= set(presets())
    for p in presets():
        r = load_recipe(p)
        assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_mobile_is_metas_recipe():
    r = load_recipe("mobile")
    lin = r.config_for("model.layers.7.mlp.down_proj")
    assert lin.weight == IntWeight(4, 32, True, scale_dtype="bf16") and lin.act == DynamicInt8Act(False)
    assert r.config_for("model.embed_tokens").weight == IntWeight(8, None)
    assert r.config_for("lm_head").weight == IntWeight(8, None)


def test_first_match_wins_and_none_keeps_float():
    r = Recipe("t", (Rule("model.layers.0.*", None),
                     Rule("model.layers.*", QuantConfig(IntWeight(4, 32)))))
    assert r.config_for("model.layers.0.mlp.up_proj") is None
    assert r.config_for("model.layers.1.mlp.up_proj").weight.bits == 4
    assert r.config_for("lm_head") is None


def test_bad_recipes_are_named(tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe 'int3'"):
        load_recipe("int3")
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"rules": [{"pattern": "*", "config": {"weight": {"bits": 3}}}]}))
    with pytest.raises(RecipeError, match="rule 0"):
        load_recipe(str(f))
    f.write_text("{not json")
    with pytest.raises(RecipeError, match="r.json"):
        load_recipe(str(f))


@torch.inference_mode()
def test_quantize_replaces_modules_and_shares_tied_weights():
    m = tiny_model()
    rep = quantize(m, load_recipe("int8"))
    assert isinstance(m.model.embed_tokens, QuantEmbedding)
    assert isinstance(m.model.layers[1].mlp.down_proj, QuantLinear)
    assert m.lm_head.qt is m.model.embed_tokens.qt  # tied: quantized once
    assert rep.modules["lm_head"]["algorithm"] == "tied"
    tot = rep.totals()
    assert tot["bits_per_weight"] == pytest.approx(8.5)  # int8 + one fp16 scale per 32


@torch.inference_mode()
def test_quantized_model_is_close_and_deterministic():
    ids = torch.randint(0, 128, (1, 48), generator=torch.Generator().manual_seed(0))
    ref = tiny_model()
    outs = []
    for _ in range(2):
        m = tiny_model()
        quantize(m, load_recipe("mobile").with_algorithm("rtn"))
        outs.append(m(ids))
        qts = [mod.qt for mod in m.modules() if isinstance(mod, QuantLinear)]
    assert torch.equal(outs[0], outs[1])
    assert all(q.qdata.dtype == torch.int8 for q in qts)
    m8 = tiny_model()
    quantize(m8, load_recipe("int8"))
    r = compare(lambda w: m8(w)[0], lambda w: ref(w)[0], ids[0].tolist(), 16)
    assert r.top1_agreement > 0.95 and r.kld_mean < 0.005


@torch.inference_mode()
def test_calibrated_algorithms_run_and_need_calibration():
    calib = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1))
    for alg in ("gptq", "awq", "awq+gptq"):
        m = tiny_model()
        r = load_recipe("int4-g32").with_algorithm(alg)
        with pytest.raises(QuantError, match="calibration"):
            quantize(tiny_model(), r)
        rep = quantize(m, r, calib, blocks=m.model.layers, awq_map=AWQ_MAP)
        assert rep.modules["model.layers.0.mlp.up_proj"]["algorithm"] == alg
        assert torch.isfinite(m(calib[:1])).all()


@torch.inference_mode()
@pytest.mark.parametrize("inputs", ["float", "quantized"])
def test_calibration_inputs_float_or_quantized(inputs):
    """calibration.inputs "float": every block is calibrated on the float model's activations,
    so how block 0 is quantized leaves block 1's integers unchanged; "quantized": block 1 sees
    block 0's quantized outputs, and they change with it."""
    calib = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1))

    def block1(bits0: int) -> torch.Tensor:
        rule = {"weight": {"type": "int", "bits": 4, "group_size": 32, "symmetric": True},
                "algorithm": "awq+gptq"}
        first = {**rule, "weight": {**rule["weight"], "bits": bits0}}
        r = Recipe.from_dict({"name": "t", "rules": [
            {"pattern": "model.layers.0.*", "config": first},
            {"pattern": "model.layers.*", "config": rule}],
            "calibration": {"windows": 4, "seq_len": 32, "inputs": inputs}})
        assert r.to_dict()["calibration"]["inputs"] == inputs
        m = tiny_model()
        quantize(m, r, calib, blocks=m.model.layers, awq_map=AWQ_MAP)
        return torch.cat([lin.qt.qdata.flatten() for lin in m.model.layers[1].modules()
                          if isinstance(lin, QuantLinear)])

    same = torch.equal(block1(4), block1(8))
    assert same == (inputs == "float")


def test_calibration_inputs_must_be_named():
    with pytest.raises(RecipeError, match="calibration.inputs must be one of float, quantized"):
        Recipe.from_dict({"rules": [], "calibration": {"inputs": "fp32"}})
    assert Recipe.from_dict({"rules": []}).calib_inputs == "float"


def test_gptq_beats_rtn_on_correlated_inputs():
    g = torch.Generator().manual_seed(0)
    n, o, t = 128, 64, 2048
    x = torch.randn(t, n, generator=g) @ (torch.randn(n, n, generator=g) * 0.3 + torch.eye(n))
    w = torch.randn(o, n, generator=g)
    h = x.double().t() @ x.double()
    for s in (IntWeight(4, 32), IntWeight(8, None), FP8Weight(None)):
        e_rtn = float(((x @ (s.quantize_tensor(w).dequantize() - w).t()) ** 2).mean())
        e_gptq = float(((x @ (gptq_quantize(w, h, s).dequantize() - w).t()) ** 2).mean())
        assert e_gptq * GPTQ_MIN_GAIN < e_rtn, s.name


# GPTQ's inverse factor in float32 against the same computation in float64, relative to its
# largest entry (measured 3e-7 on SmolLM2's and the 1B shape's Hessians; the random Hessian
# here is better conditioned).
INVERSE_FACTOR_RTOL = 2e-6


@pytest.mark.parametrize("split", [None, 48])
def test_inverse_factor_matches_float64(monkeypatch, split):
    """U^T U = H'^-1 with U upper triangular, by LAPACK's triangular solve (split None) and by
    halves down to blocks of at most `split` (uneven halves at 301 wide)."""
    from quant.algorithms import gptq

    if split is not None:
        monkeypatch.setattr(gptq, "TRI_INV_SPLIT", split)
    g = torch.Generator().manual_seed(4)
    n = 301
    x = torch.randn(4 * n, n, generator=g) @ (torch.randn(n, n, generator=g) * 0.2 +
                                              torch.eye(n))
    h = x.t() @ x
    u = gptq.inverse_cholesky(h)
    hd = h.double()
    hd.diagonal().mul_(1 + gptq.SHRINK)
    hd.diagonal().add_(gptq.DAMP * hd.diagonal().median())
    u64 = torch.linalg.cholesky(torch.linalg.inv(hd), upper=True)
    assert torch.equal(u, u.triu())
    assert float((u.double() - u64).abs().max() / u64.abs().max()) < INVERSE_FACTOR_RTOL


def test_gptq_act_order_static_groups():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1024, 64, generator=g) * torch.linspace(0.1, 5, 64)
    w = torch.randn(16, 64, generator=g)
    h = x.double().t() @ x.double()
    qa = gptq_quantize(w, h, IntWeight(4, 32), act_order=True)
    e = lambda q: float(((x @ (q.dequantize() - w).t()) ** 2).mean())  # noqa: E731
    assert e(qa) < e(IntWeight(4, 32).quantize_tensor(w))


def test_awq_search_never_worse_than_no_scaling():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(512, 64, generator=g) * torch.cat([torch.full((4,), 30.0), torch.ones(60)])
    w = torch.randn(32, 64, generator=g)
    s, alpha, e0, e1 = search_scales([w], x, lambda v: IntWeight(4, 32).quantize_tensor(
        v).dequantize())
    assert e1 <= e0 and s.shape == (64,) and bool((s > 0).all())


def test_awq_grid_search_finds_the_minimum_of_single_minimum_curves_in_10_steps():
    from quant.algorithms.awq import GRID, _grid_search

    for best in range(GRID + 1):
        for shape in (lambda i: (i - best) ** 2, lambda i: abs(i - best) ** 0.5,
                      lambda i: abs(i - best) * (3 if i < best else 1)):
            calls = []
            found = _grid_search(lambda i: calls.append(i) or shape(i))
            assert found == best and len(calls) == len(set(calls)) <= 10, (best, calls)
    flat = [5.0] * (GRID + 1)  # ties: the smallest index, as a full scan's first minimum
    assert _grid_search(lambda i: flat[i]) == 0
    assert _grid_search(lambda i: flat[i], coarse=1) == 0
    jagged = [3.0, 1.0, 3.0] + [2.0] * (GRID - 2)  # coarse=1 is the full scan
    assert _grid_search(lambda i: jagged[i], coarse=1) == 1


def test_awq_search_coarse_to_fine_equals_full_scan_on_smooth_errors():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(512, 64, generator=g) * torch.cat([torch.full((4,), 20.0), torch.ones(60)])
    ws = [torch.randn(32, 64, generator=g), torch.randn(16, 64, generator=g)]
    fq = lambda v: IntWeight(4, 32).quantize_tensor(v).dequantize()  # noqa: E731
    full = search_scales(ws, x, fq, coarse=1)
    fast = search_scales(ws, x, fq)
    assert fast[1] == full[1] and torch.equal(fast[0], full[0]) and fast[3] == full[3]


@torch.inference_mode()
def test_eval_identity_has_zero_kld_and_matches_manual_ppl():
    m = tiny_model()
    ids = torch.randint(0, 128, (100,), generator=torch.Generator().manual_seed(4)).tolist()
    r = compare(lambda w: m(w)[0], None, ids, 32)
    assert r.kld_mean == 0 and r.top1_agreement == 1.0
    assert r.tokens == 3 * 31 and r.windows == 3  # partial trailing window dropped
    lp = torch.cat([torch.log_softmax(m(torch.tensor([ids[i:i + 32]]))[0, :-1], -1)
                    .gather(1, torch.tensor(ids[i + 1:i + 32])[:, None]) for i in (0, 32, 64)])
    assert r.ppl == pytest.approx(float(torch.exp(-lp.mean())), rel=1e-5)


@torch.inference_mode()
def test_spilled_reference_gives_the_same_scores(tmp_path):
    """The quality stage scores against reference logits read back from a temporary file: the
    same numbers as scoring against the live reference, and nothing left on disk."""
    ref, m = tiny_model(seed=0), tiny_model(seed=1)
    ids = torch.randint(0, 128, (100,), generator=torch.Generator().manual_seed(5)).tolist()
    direct = compare(lambda w: m(w)[0], lambda w: ref(w)[0], ids, 32)
    with SpilledLogits(lambda w: ref(w)[0], ids, 32, dir=str(tmp_path)) as spilled:
        w1 = torch.tensor([ids[32:64]])
        assert torch.equal(spilled(w1), ref(w1)[0])
        with pytest.raises(KeyError, match="not one of the windows"):
            spilled(torch.tensor([ids[1:33]]))
        assert compare(lambda w: m(w)[0], spilled, ids, 32) == direct
    assert direct.kld_mean > 0.01  # two different models: the comparison measures something
    assert list(tmp_path.iterdir()) == []


def _bf16_source(seed=0):
    sd = {k: v.float() for k, v in random_state_dict(TINY, seed, torch.float32).items()}
    sd["model.embed_tokens.weight"] *= 20
    return {k: v.to(torch.bfloat16) for k, v in sd.items()}


@torch.inference_mode()
def test_quantizing_a_bf16_model_reads_but_never_writes_it():
    """The recipe path shares the checkpoint's bf16 tensors (no fp32 copy of the model); AWQ
    rescales weights in place, so each block works on its own fp32 copy: the source is left
    bit-identical and the integers equal those chosen from an fp32 copy of the same weights."""
    src = _bf16_source()
    before = {k: v.clone() for k, v in src.items()}
    calib = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1))
    r = load_recipe("8da4w").with_algorithm("awq+gptq")
    shared = LlamaModel.from_state_dict(TINY, src, None, max_seq_len=64)
    copied = LlamaModel.from_state_dict(TINY, {k: v.float() for k, v in src.items()},
                                        max_seq_len=64)
    for m in (shared, copied):
        quantize(m, r, calib, blocks=m.model.layers, awq_map=AWQ_MAP)
    assert all(torch.equal(src[k], before[k]) for k in src)
    qa = {n: m.qt for n, m in shared.named_modules() if hasattr(m, "qt")}
    qb = {n: m.qt for n, m in copied.named_modules() if hasattr(m, "qt")}
    assert qa.keys() == qb.keys() and len(qa) == 2 * 7 + 2  # 7 linears a layer, emb, head
    for n in qa:
        assert torch.equal(qa[n].qdata, qb[n].qdata) and torch.equal(qa[n].scale, qb[n].scale), n
    assert torch.equal(shared(calib[:1]), copied(calib[:1]))


@torch.inference_mode()
def test_lazy_chunked_forward_equals_materialized(monkeypatch):
    """Quantized modules hold only integers; forward dequantizes in row chunks (forced tiny
    here), the embedding only the rows it looks up; materialize() caches the same floats."""
    import quant.apply as qa

    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(2))
    m = tiny_model()
    quantize(m, load_recipe("mobile").with_algorithm("rtn"))
    assert not any(isinstance(b, torch.Tensor) and b.numel() > 64 for b in m.buffers()
                   if b is not m.rope_cos and b is not m.rope_sin)
    whole = m(ids)
    monkeypatch.setattr(qa, "DEQUANT_CHUNK_ROWS", 7)
    chunked = m(ids)
    materialize(m)
    assert m.lm_head.cached is m.model.embed_tokens.cached  # tied: one float table
    cached = m(ids)
    assert torch.allclose(chunked, whole, atol=1e-5) and torch.allclose(cached, whole, atol=1e-5)
    materialize(m, on=False)
    assert m.lm_head.cached is None


@pytest.mark.parametrize("scheme", [IntWeight(4, 32), IntWeight(8, None), IntWeight(4, 32, False),
                                    FP8Weight(None), IntWeight(4, 32, scale_dtype="bf16")])
def test_round_to_nearest_in_row_chunks_is_exact(monkeypatch, scheme):
    import quant.apply as qa

    w = torch.randn(50, 64, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    cfg = QuantConfig(scheme)
    whole = qa._rtn(cfg, w, "w")
    monkeypatch.setattr(qa, "DEQUANT_CHUNK_ROWS", 16)
    parts = qa._rtn(cfg, w, "w")
    assert torch.equal(whole.qdata.view(torch.uint8), parts.qdata.view(torch.uint8))
    assert torch.equal(whole.scale, parts.scale)
    assert (whole.zero_point is None) == (parts.zero_point is None)
    if whole.zero_point is not None:
        assert torch.equal(whole.zero_point, parts.zero_point)
    rows = torch.tensor([[3, 49], [0, 17]])
    assert torch.equal(whole.dequantize(rows), whole.dequantize()[rows])
