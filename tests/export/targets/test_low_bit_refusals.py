"""5- and 6-bit weights (the 8da5w / 8da6w presets) run on the edge target only: every other
target refuses them before any work, in one line that names the rule and the bits."""

from __future__ import annotations

import pytest

from edge.errors import EdgeError
from export.pipeline import ExportConfig, build_stages


@pytest.mark.parametrize("recipe,bits", [("8da5w", 5), ("8da6w", 6)])
@pytest.mark.parametrize("target,says", [
    ("gguf", "no GGUF type holding the same bytes"),
    ("onnx", "4- and 8-bit weights only"),
    ("xnnpack", "-bit weights (int"),
    ("qnn", "4- or 8-bit weights only"),
    ("mediatek", "4- or 8-bit weights only"),
])
def test_other_targets_refuse_low_bit_weights_before_any_work(tmp_path, recipe, bits, target,
                                                              says):
    cfg = ExportConfig(checkpoint="missing", out=tmp_path / "o", recipe=recipe,
                       targets=(target,))
    with pytest.raises(EdgeError) as e:
        build_stages(cfg)
    msg = str(e.value)
    assert says in msg and f"int{bits}_" in msg and "\n" not in msg, msg
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("recipe", ["8da5w", "8da6w"])
def test_edge_target_takes_low_bit_presets(tmp_path, recipe):
    cfg = ExportConfig(checkpoint="missing", out=tmp_path / "o", recipe=recipe, targets=("edge",))
    assert "lower:edge" in [n for n, _ in build_stages(cfg)[1]]


@pytest.mark.parametrize("targets,widths", [(("edge",), (4, 5, 6, 8)),
                                            (("gguf",), (4, 8)), (("edge", "onnx"), (4, 8))])
def test_auto_chooses_low_bit_widths_only_for_the_edge_runtime(tmp_path, targets, widths):
    cfg = ExportConfig(checkpoint="missing", out=tmp_path / "o", recipe="auto:100MB",
                       targets=targets)
    st, _ = build_stages(cfg)
    assert st.recipe.auto_widths == widths


def test_auto_candidates_keep_to_the_widths_given():
    from quant.auto import default_candidates, embedding_candidates

    assert {c.weight.bits for c in default_candidates()} == {4, 5, 6, 8}
    assert {c.weight.bits for c in embedding_candidates()} == {4, 5, 6, 8}
