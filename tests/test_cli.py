"""The two CLIs as users drive them: export, inspect, run, summarize, rewrite; JSON keys that
scripts rely on; one-line errors; the runtime without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.cli import main as edge_main
from export.cli import main as export_main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "edge" / "data" / "sample.txt"
RUN_KEYS = {"text", "prompt_tokens", "generated_tokens", "finish_reason", "prefill_tok_s",
            "decode_tok_s"}
# Words of the sample text; an on-topic summary or rewrite uses several of them.
SAMPLE_TOPIC_WORDS = ("harwick", "railway", "path", "cycl", "walk", "council", "million",
                      "bridge", "farmer", "school", "line", "town")
MIN_TOPIC_WORDS = 3
INT8_MAX_KLD = 0.02
INT8_MIN_TOP1 = 0.9


def _invoke(cli, args):
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def exported(smollm2_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "smol"
    code, output = _invoke(export_main, ["export", str(smollm2_gguf), "-o", str(out),
                                          "--target", "edge,hf"])
    assert code == 0, output
    return out


@pytest.mark.slow
def test_export_writes_verified_hf_checkpoint(exported):
    rep = json.loads((exported / "export_report.json").read_text())
    hf = rep["artifacts"]["hf"]
    assert hf["dtype"] == "float32" and hf["exact"]
    assert hf["top1_agreement"] == 1.0 and hf["max_abs_logit_diff"] < 1e-4
    assert [s["stage"] for s in rep["stages"]] == ["load", "lower:edge", "lower:hf", "verify",
                                                   "quality", "report"]
    q = hf["quality"]
    assert q["kld_mean"] < 1e-6 and q["top1_agreement"] == 1.0 and q["tokens"] > 0
    assert (exported / "hf" / "tokenizer.json").exists()
    # the unquantized edge artifact (f32, the GGUF's dequantized weights) on the edge kernels
    edge = rep["artifacts"]["edge"]
    assert edge["dtype"] == "f32" and edge["exact"] and edge["max_abs_logit_diff"] < 1e-3
    assert edge["quality"]["kld_mean"] < 1e-5 and edge["quality"]["top1_agreement"] > 0.999


@pytest.mark.slow
def test_export_refuses_existing_output(exported, smollm2_gguf):
    code, out = _invoke(export_main, ["export", str(smollm2_gguf), "-o", str(exported)])
    assert code == 1 and "--force" in out and "Traceback" not in out


@pytest.mark.slow
def test_inspect_json(smollm2_gguf):
    code, out = _invoke(export_main, ["inspect", str(smollm2_gguf), "--json"])
    assert code == 0
    info = json.loads(out)
    assert info["format"] == "gguf" and info["config"]["num_hidden_layers"] == 30
    assert info["tokenizer"]["chat_format"] == "chatml"


@pytest.mark.slow
def test_run_json_keys(exported):
    code, out = _invoke(edge_main, ["run", "-m", str(exported / "edge"), "--prompt",
                                    "What is the capital of France?", "--json",
                                    "--max-new-tokens", "24"])
    assert code == 0, out
    d = json.loads(out.strip().splitlines()[-1])
    assert RUN_KEYS <= set(d)
    assert "paris" in d["text"].lower()
    assert d["finish_reason"] in ("eos", "length") and d["engine"] == "edge"


BENCH_KEYS = {"pp128_tok_s", "pp512_tok_s", "tg128_tok_s", "ttft64_s", "load_s", "peak_rss_mb",
              "file_mb", "threads", "engine"}


@pytest.mark.slow
def test_bench_and_info_json(exported):
    art = str(exported / "edge")
    code, out = _invoke(edge_main, ["bench", "-m", art, "--repeat", "1", "--threads", "1",
                                    "--json"])
    assert code == 0, out
    d = json.loads(out.strip().splitlines()[-1])
    assert BENCH_KEYS <= set(d) and d["engine"] == "edge" and d["threads"] == 1
    assert all(d[k] > 0 for k in ("pp128_tok_s", "pp512_tok_s", "tg128_tok_s", "ttft64_s"))
    assert d["file_mb"] > 500  # f32 weights
    code, out = _invoke(edge_main, ["info", art, "--json"])
    assert code == 0, out
    info = json.loads(out)
    assert info["recipe"] == "none" and info["chat_format"] == "chatml" and info["verified"]


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [["summarize"], ["rewrite", "--style", "simple"]])
def test_tasks_are_on_topic(exported, cmd):
    code, out = _invoke(edge_main, [cmd[0], "-m", str(exported / "edge"), str(SAMPLE), "--json",
                                    *cmd[1:]])
    assert code == 0, out
    d = json.loads(out.strip().splitlines()[-1])
    text = d["text"].lower()
    hits = [w for w in SAMPLE_TOPIC_WORDS if w in text]
    assert len(hits) >= MIN_TOPIC_WORDS, text
    assert d["generated_tokens"] > 10


@pytest.mark.slow
def test_eval_json_keys_and_quantized_quality(smollm2_gguf):
    text = REPO / "quant" / "data" / "eval.txt"
    code, out = _invoke(export_main, ["eval", str(smollm2_gguf), "--text", str(text),
                                      "--recipe", "int8", "--ctx", "128", "--json"])
    assert code == 0, out
    d = json.loads(out[out.index("{"):])
    assert {"ppl", "ref_ppl", "kld_mean", "top1_agreement", "tokens", "ctx"} <= set(d)
    assert d["ctx"] == 128 and d["tokens"] == d["windows"] * 127
    # int8 g32 on the real model: near-lossless (measured ~0.002 KLD, ~97% same top token)
    assert 0 < d["kld_mean"] < INT8_MAX_KLD and d["top1_agreement"] > INT8_MIN_TOP1
    assert d["quantization"]["bits_per_weight"] == pytest.approx(8.5, abs=0.01)  # g32


@pytest.mark.parametrize("args, fragment", [
    (["run", "-m", "/nonexistent/model", "--prompt", "hi"], "does not exist"),
    (["run", "-m", "x", "--prompt", "hi", "--temperature", "-1"], "temperature"),
    (["run", "-m", "x", "--prompt", "hi", "--top-p", "0"], "top_p"),
    (["run", "-m", "x", "--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens"),
    (["summarize", "-m", "x", "/nonexistent.txt"], "not found"),
])
def test_errors_are_one_line(args, fragment):
    code, out = _invoke(edge_main, args)
    assert code == 1
    assert fragment in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


def test_empty_input_file(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("  \n\t ")
    code, out = _invoke(edge_main, ["summarize", "-m", "x", str(f)])
    assert code == 1 and "empty" in out


def _python_without_torch(code: str, *args: str):
    """Run code in a fresh interpreter where `import torch` fails as if not installed."""
    blocker = ("import sys, importlib.abc\n"
               "class _Block(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path, target=None):\n"
               "        if name.split('.')[0] in ('torch', 'transformers', 'executorch'):\n"
               "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
               "sys.meta_path.insert(0, _Block())\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", blocker + code, *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


def test_runtime_imports_without_torch():
    r = _python_without_torch(
        "import edge.cli, edge.tokenizer, edge.chat, edge.generate, edge.sampling, "
        "edge.tasks, edge.config\n"
        "assert 'torch' not in sys.modules\nprint('ok')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_running_a_checkpoint_without_torch_names_the_extra(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    r = _python_without_torch("from edge.cli import main; main()", "run", "-m",
                              str(tmp_path), "--prompt", "hi")
    assert r.returncode == 1
    assert "llama-edge[export]" in r.stderr and "Traceback" not in r.stderr
