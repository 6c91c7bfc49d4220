"""`--recipe auto:SIZE` for the edge runtime: per-unit widths from 4 to 8 bits chosen within the
budget, every linear (the output layer included) with the runtime's 8-bit block activations,
and an artifact the runtime runs with the same logits as the quantized reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from export.pipeline import ExportConfig, run_export, verify
from quant.auto import default_candidates, embedding_candidates

TARGET_BPW = 5.5
BLOCK_ACT = "int8_dyn_g32_sym"


@pytest.fixture()
def short_eval(tmp_path, monkeypatch):
    f = tmp_path / "eval.txt"
    f.write_text(verify.QUALITY_TEXT.read_text(encoding="utf-8")[:1100], encoding="utf-8")
    monkeypatch.setattr(verify, "QUALITY_TEXT", f)
    monkeypatch.setenv("LLAMA_EDGE_CACHE", "off")


def test_auto_size_for_the_edge_runtime(tiny_ckpt, tmp_path, short_eval):
    from edge.artifact import load_artifact
    from edge.engines.native import EdgeEngine

    out = tmp_path / "o"
    st = run_export(ExportConfig(checkpoint=str(tiny_ckpt), out=out, recipe=f"auto:{TARGET_BPW}",
                                 targets=("edge",)), log=lambda *_: None)
    auto = st.report["quantization"]["auto"]
    from quant.schemes import DynamicInt8Act

    block = DynamicInt8Act(symmetric=True, group_size=32)
    names = {c.name for c in default_candidates(block) + embedding_candidates()}
    assert set(auto["choice"].values()) <= names
    assert auto["bpw"] <= TARGET_BPW
    manifest = json.loads((out / "edge" / "manifest.json").read_text())
    tensors = manifest["tensors"]
    linears = [n for n, e in tensors.items() if n.endswith("_proj") or n == "lm_head"]
    assert linears and all(tensors[n]["act"] == BLOCK_ACT for n in linears), tensors
    assert tensors["model.embed_tokens"]["act"] is None
    # the report names each tensor's scheme, as the artifact stores it
    art = load_artifact(out / "edge")
    for n in linears:
        unit = n.rsplit(".", 1)[0] + ".*" if "." in n else n
        if unit in auto["choice"]:
            assert auto["choice"][unit].endswith(tensors[n]["scheme"]), n
    assert {p.kind for p in art.weights.values()} <= {"q4", "q5", "q6", "q8", "f32"}
    schemes = st.report["quantization"]["schemes"]
    assert all(schemes[n] == "8da" + tensors[n]["scheme"] for n in linears), schemes
    sess = EdgeEngine(out / "edge").session()
    logits = sess.prefill([1, 5, 9, 17])
    assert np.isfinite(logits).all()
