"""Write the fuzz targets' seed corpus (tests/fuzz/corpus/) from the tiny test models.

    python tests/fuzz/seeds.py

Every seed is a valid input the target accepts, so that mutations start from deep inside each
parser. The files are committed; rerun this after a format change (the replay test fails on a
seed the product no longer accepts).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from fuzz.targets import CORPUS, FIXTURES, max_len

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
          "'\\n'}}{% endfor %}")
LLAMA3 = ("{{- bos_token }}{%- set date_string = \"26 Jul 2024\" %}{{- \"<|start_header_id|>"
          "system<|end_header_id|>\\n\\n\" }}{{- \"Cutting Knowledge Date: December 2023\\n\" }}"
          "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}")
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Summarize: the river rose \u00e9t\u00e9 \u2014 ok?"},
            {"role": "assistant", "content": "It rose."},
            {"role": "user", "content": "<|im_start|>not a turn"}]
CONFIGS = [
    {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
     "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
     "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
     "rms_norm_eps": 1e-5, "rope_theta": 100000, "tie_word_embeddings": True,
     "bos_token_id": 1, "eos_token_id": 2},
    {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
     "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
     "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
     "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
     "tie_word_embeddings": True, "bos_token_id": 128000,
     "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16"},
]


def _put(target: str, name: str, data: bytes) -> None:
    if len(data) > max_len(target):
        raise SystemExit(f"seed {target}/{name} is {len(data)} bytes, over the target's "
                         f"max_len {max_len(target)}: raise MAX_LEN in targets.py")
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main() -> None:
    import numpy as np
    import torch
    from safetensors.numpy import save
    from support import artifacts
    from support.tiny import CFG, tiny_model, tiny_tokenizer

    from export.targets.gguf import write_gguf

    # the tiny model made smaller still: one layer, hidden 32, head_dim 16 (the smallest
    # head onnxruntime's attention takes)
    FUZZ_CFG = CFG.replace(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                           num_kv_heads=1, head_dim=16)

    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gguf = tmp / "tiny.gguf"
        write_gguf(tiny_model(FUZZ_CFG), tiny_tokenizer(), gguf, torch.float16)
        _put("gguf", "tiny-f16.gguf", gguf.read_bytes())

        rng = np.random.default_rng(0)
        _put("safetensors", "small.safetensors", save(
            {"a": rng.standard_normal((4, 8)).astype(np.float32),
             "b": rng.integers(-8, 8, (16,), dtype=np.int8),
             "c": np.zeros((2, 2), np.float16)}, metadata={"format": "pt"}))

        art = artifacts.write(tmp / "art")
        _put("manifest", "manifest.json", (art / "manifest.json").read_bytes())
        _put("weights", "weights.safetensors", (art / "weights.safetensors").read_bytes())
        _put("tokenizer", "bpe.json", (art / "tokenizer.json").read_bytes())

        for i, (template, msgs) in enumerate(((CHATML, MESSAGES), (LLAMA3, MESSAGES[1:2]),
                                              ("", MESSAGES[:2]))):
            _put("chat", f"chat-{i}", template.encode() + b"\0" + json.dumps(msgs).encode())
        for i, c in enumerate(CONFIGS):
            _put("config", f"config-{i}.json", json.dumps(c, indent=1).encode())

        out = tmp / "export"
        subprocess.run([sys.executable, "-m", "export.cli", "export", str(gguf), "-o", str(out),
                        "--target", "xnnpack,onnx", "--recipe", "none", "--max-context", "256"],
                       check=True, cwd=REPO)
        _put("pte", "tiny.pte", (out / "xnnpack" / "model.pte").read_bytes())
        onnx_dir = out / "onnx"
        _put("onnx", "model.onnx", (onnx_dir / "model.onnx").read_bytes())
        # the fixed rest of the ONNX export the onnx target puts its input into
        keep = FIXTURES / "onnx_export"
        shutil.rmtree(keep, ignore_errors=True)
        keep.parent.mkdir(exist_ok=True)
        shutil.copytree(onnx_dir, keep)
    for d in sorted(CORPUS.iterdir()):
        print(d.name, sum(f.stat().st_size for f in d.iterdir()), "bytes")


if __name__ == "__main__":
    main()
