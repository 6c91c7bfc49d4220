"""The whole runtime on aarch64: the package cross-built by scripts/setup_arm64.sh, run by an
arm64 Python under qemu-user on three CPU models (Cortex-A53: NEON only; Cortex-A76: dot
product; max: dot product, i8mm, SVE), end to end on SmolLM2 artifacts.

- A weight-only (int8) artifact decodes the same greedy tokens as on this x86 host.
- An 8da4w artifact (int8 activations) stays within the model's own rounding spread of its
  torch reference, the bound the x86 kernels are held to (tests/edge/test_runtime.py).
- `llama-edge run` (the same text as on x86), `bench` and `summarize` work there; bench
  identifies the emulated CPU from the auxiliary vector (under qemu-user /proc/cpuinfo describes
  the host).

Emulated kernels are slow (a few tokens per second at best): prompts are short and only a few
tokens are generated. Nothing here measures speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support.generation import chat_ids, greedy
from support.spread import ACT_KLD_FACTOR, ACT_KLD_FLOOR, ACT_TOP1_SIGMAS, kld_top1, reference_spread

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "tests" / "support" / "arm_probe.py"
RUN_TIMEOUT = 600
# emulated CPU -> the kernel set the dispatcher must choose on it
CPUS = {"cortex-a53": "neon", "cortex-a76": "neon-dotprod", "max": "neon-dotprod"}
GREEDY_TOKENS = 3
PROMPT = "The old railway line"
# 8da4w: teacher-forced over a chat prompt and this many tokens of the reference's own greedy
# continuation (over the prompt alone the perturbed reference does not move: no spread to
# compare with; with 8 or more generated tokens it does, as over test_runtime's 48)
CHAT_PROMPT = "Summarize: the council voted to turn the old railway into a cycle path."
CONTINUATION = 16
DOCUMENT = "The council voted to turn the old railway into a cycle path costing 2.4 million pounds."
# what qemu-user's CPU models must show in the auxiliary vector (bench's cpu_features)
FEATURES = {"cortex-a53": ({"asimd"}, {"asimddp", "sve"}),
            "cortex-a76": ({"asimd", "asimddp"}, {"sve"}),
            "max": ({"asimd", "asimddp", "i8mm", "sve"}, set())}
# 8-bit dynamic activations (blocks of 32) x 4-bit g32 weights, round to nearest: the 8da4w
# arithmetic without minutes of calibration
RECIPE_8DA4W = {"name": "8da4w-rtn", "rules": [
    {"pattern": "model.embed_tokens", "config": {
        "weight": {"type": "int", "bits": 4, "group_size": 32, "symmetric": True}}},
    {"pattern": "*", "config": {
        "weight": {"type": "int", "bits": 4, "group_size": 32, "symmetric": True},
        "act": {"symmetric": True, "group_size": 32}}}]}


@pytest.fixture(scope="module")
def edge_8da4w(smollm2_ck, tmp_path_factory):
    """(artifact, torch reference model) of SmolLM2 quantized 8da4w."""
    import torch

    from edge.artifact import write_artifact
    from edge.chat import detect_chat_format
    from export.quantize import quantized_model
    from export.targets.edge import edge_weights
    from quant.recipes import Recipe

    out = tmp_path_factory.mktemp("arm64") / "8da4w"
    model, _ = quantized_model(smollm2_ck, Recipe.from_dict(RECIPE_8DA4W, "8da4w-rtn"),
                               max_seq_len=512)
    weights, norms = edge_weights(model, torch.float32)
    write_artifact(out, smollm2_ck.config, weights, norms, smollm2_ck.tokenizer,
                   detect_chat_format(smollm2_ck.tokenizer), 512)
    return out, model


@pytest.fixture(scope="module")
def spread_ids(edge_8da4w, smollm2_ck):
    """The chat prompt and the reference's greedy continuation, and the reference's logits of
    them with and without a rounding-sized perturbation."""
    from export.model.reference import TorchEngine

    _, model = edge_8da4w
    ids = list(chat_ids(smollm2_ck.tokenizer, CHAT_PROMPT))
    ids += greedy(TorchEngine(smollm2_ck, max_context=512, model=model).session(), ids,
                  CONTINUATION)
    return ids, reference_spread(model, ids)


def _run(cmd: list[str], cpu: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGE_ISA", "QEMU_CPU")}
    if cpu:
        env["QEMU_CPU"] = cpu
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env,
                       cwd="/")
    assert r.returncode == 0, f"{' '.join(cmd)} (QEMU_CPU={cpu}) failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _probe(python: list[str], artifact, mode: str, arg: str, prompt: str,
           cpu: str | None = None) -> dict:
    return json.loads(_run([*python, str(PROBE), str(artifact), mode, arg, prompt], cpu)
                      .strip().splitlines()[-1])


def _cli_json(cmd: list[str], cpu: str | None = None) -> dict:
    return json.loads(_run(cmd, cpu).strip().splitlines()[-1])


@pytest.fixture(scope="module")
def host_greedy(smollm2_edge_int8) -> dict:
    return _probe([sys.executable], smollm2_edge_int8, "greedy", str(GREEDY_TOKENS), PROMPT)


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_weight_only_greedy_tokens_equal_x86(arm64, smollm2_edge_int8, host_greedy, cpu):
    got = _probe([str(arm64 / "python")], smollm2_edge_int8, "greedy", str(GREEDY_TOKENS),
                 PROMPT, cpu)
    assert got["isa"] == CPUS[cpu]
    has, lacks = FEATURES[cpu]
    assert got["cpu"]["emulated"] and got["cpu"]["isa_source"] == "auxv"
    assert has <= set(got["cpu"]["cpu_features"]) and not lacks & set(got["cpu"]["cpu_features"])
    assert got["ids"] == host_greedy["ids"]  # the aarch64 tokenizers wheel encodes alike
    assert got["tokens"] == host_greedy["tokens"], (cpu, got, host_greedy)
    assert len(set(got["tokens"])) > 1


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_8da4w_within_the_models_own_spread(arm64, edge_8da4w, spread_ids, tmp_path, cpu):
    artifact, model = edge_8da4w
    ids, (ref, perturbed) = spread_ids
    out = tmp_path / "logits.npy"
    got = _probe([str(arm64 / "python")], artifact, "logits", str(out),
                 "ids:" + ",".join(map(str, ids)), cpu)
    assert got["isa"] == CPUS[cpu]
    logits = np.load(out)
    assert logits.shape == (len(ids), model.config.vocab_size)
    kld, top1 = kld_top1(ref, logits)
    kld_ref, top1_ref = kld_top1(ref, perturbed)
    assert kld_ref > 0  # the yardstick is not degenerate
    margin = ACT_TOP1_SIGMAS * np.sqrt(top1_ref * (1 - top1_ref) / len(ids))
    assert kld <= ACT_KLD_FACTOR * kld_ref + ACT_KLD_FLOOR, (cpu, kld, kld_ref)
    assert top1 >= top1_ref - margin, (cpu, top1, top1_ref, margin)


def test_cli_run_equals_x86(arm64, smollm2_edge_int8):
    cmd = ["run", "-m", str(smollm2_edge_int8), "--raw", "--prompt", PROMPT,
           "--max-new-tokens", str(GREEDY_TOKENS), "--temperature", "0", "--json"]
    host = _cli_json([str(Path(sys.executable).parent / "llama-edge"), *cmd])
    arm = _cli_json([str(arm64 / "llama-edge"), *cmd], "cortex-a53")
    assert arm["isa"] == "neon" and host["isa"] != "neon"
    assert arm["text"] == host["text"] and arm["generated_tokens"] == GREEDY_TOKENS


def test_cli_summarize(arm64, edge_8da4w, tmp_path):
    """On the 8da4w artifact (its integer kernels are the fast ones under emulation): the task
    builds the same prompt as on x86 and generates; its text is held to nothing more, int8
    activations may round differently on another instruction set (see the spread test)."""
    doc = tmp_path / "doc.txt"
    doc.write_text(DOCUMENT)
    cmd = ["summarize", "-m", str(edge_8da4w[0]), str(doc), "--max-new-tokens", "2", "--json"]
    host = _cli_json([str(Path(sys.executable).parent / "llama-edge"), *cmd])
    arm = _cli_json([str(arm64 / "llama-edge"), *cmd], "max")
    assert arm["isa"] == "neon-dotprod" and arm["n_pieces"] == 1
    assert (arm["input_tokens"], arm["prompt_tokens"]) == (host["input_tokens"],
                                                           host["prompt_tokens"])
    assert arm["generated_tokens"] == 2 and arm["text"].strip()


def test_cli_bench_identifies_the_emulated_cpu(arm64, edge_8da4w):
    cpu = "cortex-a76"
    out = _run([str(arm64 / "llama-edge"), "bench", "-m", str(edge_8da4w[0]), "-p", "4",
                "-n", "2", "-r", "1", "--warmup", "0", "--ctx", "24", "-o", "jsonl",
                "--board", f"qemu-{cpu}"], cpu)
    recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["n_prompt"], r["n_gen"]) for r in recs] == [(4, 0), (0, 2)]
    has, lacks = FEATURES[cpu]
    for r in recs:
        assert r["status"] == "ok" and r["avg_ts"] > 0
        assert r["emulated"] is True and r["board"] == f"qemu-{cpu}"
        assert r["isa"] == CPUS[cpu]
        assert "x86" not in r["cpu_info"].lower() and "aarch64" in r["cpu_info"]
        assert has <= set(r["cpu_features"]) and not lacks & set(r["cpu_features"])
