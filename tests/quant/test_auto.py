"""`auto`: the allocation honours the budget and spends bits where they save the most KLD."""

from __future__ import annotations

import pytest
import torch

from quant.auto import Unit, allocate, auto_recipe, units_of
from quant.recipes import QuantConfig, RecipeError
from quant.schemes import IntWeight

from support.tiny import tiny_tied_model as tiny_model

LOW, HIGH = QuantConfig(IntWeight(4, 32)), QuantConfig(IntWeight(8, None))


def test_allocate_prefers_the_sensitive_unit():
    units = [Unit("a", ["a"], 64 * 64), Unit("b", ["b"], 64 * 64)]
    shapes = {"a": [(64, 64)], "b": [(64, 64)]}
    cands = {"a": [LOW, HIGH], "b": [LOW, HIGH]}
    table = {("a", LOW): 0.5, ("a", HIGH): 0.01, ("b", LOW): 0.05, ("b", HIGH): 0.01}
    per_low = 64 * 64 * 4 + 64 * 2 * 16
    per_high = 64 * 64 * 8 + 64 * 16
    choice, used = allocate(units, shapes, cands, table, per_low + per_high)
    assert choice == {"a": 1, "b": 0} and used == per_low + per_high
    choice, _ = allocate(units, shapes, cands, table, 2 * per_low)
    assert choice == {"a": 0, "b": 0}
    with pytest.raises(RecipeError, match="budget"):
        allocate(units, shapes, cands, table, per_low)


def test_units_group_blocks_and_tie_embedding():
    names = {u.name for u in units_of(tiny_model())}
    assert "embedding" in names and "model.layers.1.mlp.*" in names
    assert "lm_head" not in names  # tied to the embedding


@torch.no_grad()
def test_auto_recipe_meets_target():
    m = tiny_model()
    calib = torch.randint(0, 128, (1, 32), generator=torch.Generator().manual_seed(0))
    recipe, rep = auto_recipe(m, calib, 5.5)
    assert rep["bpw"] <= 5.5
    assert recipe.config_for("model.layers.0.mlp.up_proj") is not None
    assert recipe.config_for("model.embed_tokens") is not None


@torch.no_grad()
def test_auto_quantize_assembles_a_model_within_budget():
    from quant.apply import QuantLinear
    from quant.auto import auto_quantize

    from export.quantize import LLAMA_AWQ_MAP as AWQ_MAP

    def factory():
        m = tiny_model()
        return m, m.model.layers

    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, 128, (2, 32), generator=g)
    model, rep, qrep = auto_quantize(factory, calib[:1], calib, 6.0, AWQ_MAP)
    assert rep["bpw"] <= 6.0
    lin = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(lin) == 2 * 7 + 1  # every block linear and the tied output layer
    assert torch.isfinite(model(calib[:1])).all()
    assert set(rep["choice"]) == {u.name for u in units_of(tiny_model())}
