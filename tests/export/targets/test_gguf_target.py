"""The gguf target: Q8_0 / Q4_0 packing bit-exact against the canonical quantized values (read
back with our own parser), metadata and tokenizer round trips, refused schemes, corrupt files
in the runtime, and the real model in llama.cpp against our torch reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edge.errors import EdgeError
from edge.gguf_io import parse_gguf, tensor_bytes
from export.loaders import load_checkpoint
from export.loaders.gguf_loader import hf_name
from export.loaders.layout import interleaved_to_half
from export.targets.gguf import (BLOCK_Q4_0, BLOCK_Q8_0, pack_q4_0, pack_q8_0, unpack_q4_0,
                               unpack_q8_0, write_gguf)
from quant.apply import QuantEmbedding, QuantLinear
from support.generation import CHAT_PROMPTS, chat_ids, greedy
from support.tiny import (CFG, TEMPLATE, TOKENS, quantized, recipe,
                          tiny_model, tiny_tokenizer)

try:
    import llama_cpp  # noqa: F401

    HAVE_LLAMA_CPP = True
except ImportError:
    HAVE_LLAMA_CPP = False


def needs_llama_cpp(test):
    """llama.cpp interop: needs llama-cpp-python (the bench extra, which CI does not install:
    it compiles llama.cpp)."""
    test = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed "
                              "(pip install 'llama-edge[bench]')")(test)
    return pytest.mark.optional("llama-cpp-python (bench extra)")(test)

# Logits of an all-F32 GGUF in llama.cpp against our fp32 model: two implementations of the same
# fp32 math (the export pipeline's VERIFY_LOGIT_ATOL_EXACT).
F32_LOGIT_ATOL = 1e-3
GREEDY_TOKENS = 48

# ------------------------------------------------------------------------------ block packing
def test_block_layouts_match_gguf_package():
    """Our packing against the gguf package's own dequantizer (llama.cpp's block layouts)."""
    import gguf

    assert BLOCK_Q8_0.itemsize == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][1]
    assert BLOCK_Q4_0.itemsize == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_0][1]
    rng = np.random.default_rng(0)
    rows, n = 5, 96
    d = rng.uniform(1e-3, 1.0, (rows, n // 32)).astype(np.float16)
    for bits, pack, unpack, qt in ((8, pack_q8_0, unpack_q8_0, "Q8_0"),
                                   (4, pack_q4_0, unpack_q4_0, "Q4_0")):
        lo, hi = (-128, 127) if bits == 8 else (-8, 7)
        q = rng.integers(lo, hi + 1, (rows, n)).astype(np.int8)
        q[0, :32] = lo  # both ends of the range
        q[1, :32] = hi
        raw = pack(q, d)
        got_q, got_d = unpack(raw, rows, n)
        np.testing.assert_array_equal(got_q, q)
        np.testing.assert_array_equal(got_d.view(np.uint16), d.view(np.uint16))
        deq = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qt]).reshape(rows, n)
        want = q.astype(np.float32) * np.repeat(d.astype(np.float32), 32, axis=1)
        np.testing.assert_array_equal(deq, want)


# ------------------------------------------------------------------------------ tiny model
def _read_back(path) -> dict:
    """{hf name: (type name, q (out, in) int8 in HF row order, d (out, in/32) fp16)}."""
    meta, tensors, _ = parse_gguf(path)
    heads = {"q_proj": meta["llama.attention.head_count"],
             "k_proj": meta["llama.attention.head_count_kv"]}
    out = {}
    for t in tensors:
        name = hf_name(t.name)
        if name is None or t.type_name not in ("Q8_0", "Q4_0"):
            continue
        n, rows = t.shape
        unpack = unpack_q8_0 if t.type_name == "Q8_0" else unpack_q4_0
        q, d = unpack(tensor_bytes(path, t), rows, n)
        kind = name.split(".")[-2]
        if kind in heads:  # back from llama.cpp's interleaved rotary order
            q = interleaved_to_half(torch.from_numpy(q), heads[kind]).numpy()
            d = interleaved_to_half(torch.from_numpy(d), heads[kind]).numpy()
        out[name] = (t.type_name, q, d)
    return out


@pytest.mark.parametrize("weight,gguf_type", [
    ({"bits": 8, "group_size": 32, "symmetric": True}, "Q8_0"),
    ({"bits": 4, "group_size": 32, "symmetric": True}, "Q4_0"),
    ({"bits": 4, "group_size": 64, "symmetric": True}, "Q4_0"),  # scales repeated per block
    ({"bits": 8, "group_size": None, "symmetric": True}, "Q8_0"),  # per channel
])
def test_quantized_values_reach_the_file_unchanged(tmp_path, weight, gguf_type):
    m = quantized(recipe(weight, {"symmetric": True, "group_size": 32}))
    write_gguf(m, tiny_tokenizer(), tmp_path / "m.gguf", torch.float32)
    back = _read_back(tmp_path / "m.gguf")
    mods = {n: mod for n, mod in m.named_modules() if isinstance(mod, (QuantLinear,
                                                                       QuantEmbedding))}
    assert len(back) == len(mods) == 2 * 7 + 2
    for n, mod in mods.items():
        kind, q, d = back[n + ".weight"]
        qt = mod.qt
        assert kind == gguf_type
        np.testing.assert_array_equal(q, qt.qdata.numpy(), err_msg=n)
        rep = qt.group_size // 32
        want_d = np.repeat(qt.scale.numpy().astype(np.float16), rep, axis=1)
        np.testing.assert_array_equal(d.view(np.uint16), want_d.view(np.uint16), err_msg=n)
    # and through the checkpoint loader: the dequantized weights are the reference's weights
    ck = load_checkpoint(tmp_path / "m.gguf")
    for n, mod in mods.items():
        assert torch.equal(ck.tensors[n + ".weight"], mod.weight), n


def test_metadata_round_trip(tmp_path):
    tok = tiny_tokenizer()
    m = tiny_model()
    write_gguf(m, tok, tmp_path / "m.gguf", torch.float32, recipe="none")
    meta, tensors, version = parse_gguf(tmp_path / "m.gguf")
    assert version == 3 and meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.ggml.tokens"][:len(TOKENS)] == TOKENS
    assert len(meta["tokenizer.ggml.tokens"]) == CFG.vocab_size  # padded to the embedding
    assert meta["tokenizer.ggml.token_type"][259:262] == [3, 3, 3]
    assert meta["tokenizer.ggml.merges"] == ["Ġ t", "h e", "Ġt he"]
    assert meta["tokenizer.ggml.bos_token_id"] == 261
    assert meta["tokenizer.ggml.eos_token_id"] == 260
    assert meta["tokenizer.chat_template"] == TEMPLATE
    assert meta["llama.rope.scaling.original_context_length"] == 64
    assert {t.type_name for t in tensors} == {"F32"}
    assert "rope_freqs.weight" in {t.name for t in tensors}
    assert "output.weight" in {t.name for t in tensors}  # untied head stored
    ck = load_checkpoint(tmp_path / "m.gguf")
    want = CFG.replace(rms_norm_eps=float(np.float32(CFG.rms_norm_eps)))  # GGUF stores f32
    assert ck.config.replace(eos_token_ids=CFG.eos_token_ids) == want
    text = "the theory: <|im_end|> stays text"
    assert ck.tokenizer.encode(text) == tok.encode(text)
    assert ck.tokenizer.bos_id == tok.bos_id and ck.tokenizer.eos_ids[0] == 260
    assert ck.tokenizer.chat_template == TEMPLATE
    for k, v in ck.tensors.items():  # f32 weights: exact, Q/K back in HF order
        assert torch.equal(v, m.get_submodule(k.removesuffix(".weight")).weight), k


def test_tied_embedding_is_stored_once(tmp_path):
    cfg = CFG.replace(tie_word_embeddings=True)
    m = quantized(recipe({"bits": 8, "group_size": 32, "symmetric": True}), cfg)
    write_gguf(m, tiny_tokenizer(), tmp_path / "m.gguf", torch.float32)
    _, tensors, _ = parse_gguf(tmp_path / "m.gguf")
    assert "output.weight" not in {t.name for t in tensors}
    assert load_checkpoint(tmp_path / "m.gguf").config.tie_word_embeddings


@pytest.mark.parametrize("weight,pattern,message", [
    ({"bits": 4, "group_size": 32, "symmetric": False}, "model.layers.*", "asymmetric"),
    ({"bits": 4, "group_size": 16, "symmetric": True}, "model.layers.*", "groups of 16"),
    ({"type": "fp8", "group_size": None}, "model.layers.*", "FP8"),
])
def test_unsupported_schemes_are_refused(tmp_path, weight, pattern, message):
    m = quantized(recipe(weight, pattern=pattern))
    with pytest.raises(EdgeError) as e:
        write_gguf(m, tiny_tokenizer(), tmp_path / "m.gguf", torch.float32)
    msg = str(e.value)
    assert "model.layers.0.self_attn.q_proj" in msg and message in msg
    assert "--recipe int8" in msg and "\n" not in msg
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("name,message", [("fp8", "FP8"), ("int4-g128", None),
                                          ("mobile", None), ("8da4w", None), ("int8", None)])
def test_export_checks_the_recipe_before_any_work(tmp_path, name, message):
    from export.pipeline import ExportConfig, build_stages

    cfg = ExportConfig(checkpoint="x", out=tmp_path / "o", recipe=name, targets=("gguf",))
    if message is None:
        assert "lower:gguf" in [n for n, _ in build_stages(cfg)[1]]
        return
    with pytest.raises(EdgeError, match=message) as e:
        build_stages(cfg)
    assert "rule '*'" in str(e.value) and "--recipe int8" in str(e.value)


def test_failed_write_keeps_previous_file(tmp_path):
    from export.targets.gguf import GGUFVocab, PlannedTensor, gguf_plan, write_llama_gguf

    dst = tmp_path / "m.gguf"
    write_gguf(tiny_model(), tiny_tokenizer(), dst, torch.float32)
    before = dst.read_bytes()
    plan, _ = gguf_plan(tiny_model(seed=1), torch.float32)

    def fail():
        raise OSError("No space left on device")

    plan.append(PlannedTensor("blk.9.extra.weight", (32,), "F32", fail))  # written last
    with pytest.raises(OSError):
        write_llama_gguf(dst, CFG, GGUFVocab.from_tokenizer(tiny_tokenizer()), plan, "ALL_F32")
    assert dst.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no temp file left


# ------------------------------------------------------------------------------ runtime side
@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    m = quantized(recipe({"bits": 8, "group_size": 32, "symmetric": True}))
    write_gguf(m, tiny_tokenizer(), path, torch.float32)
    return path


@pytest.mark.parametrize("cut", [0, 3, 10, 24, 200, 2000, -1000, -1])
def test_truncated_gguf_gives_one_line_error(tiny_gguf, tmp_path, cut):
    from edge.engines.llamacpp import validate_gguf

    data = tiny_gguf.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[:cut % len(data)])
    with pytest.raises(EdgeError) as e:
        validate_gguf(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_corrupt_gguf_in_the_cli(tiny_gguf, tmp_path):
    from click.testing import CliRunner

    from edge.cli import main

    data = bytearray(tiny_gguf.read_bytes())
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[: len(data) // 2])  # the data section is cut short
    engines = ["auto", "llamacpp"] if HAVE_LLAMA_CPP else ["torch"]
    for engine in engines:
        r = CliRunner().invoke(main, ["run", "-m", str(bad), "--prompt", "hi", "--engine",
                                      engine], catch_exceptions=False)
        assert r.exit_code == 1
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and "runs past the end" in lines[0] and str(bad) in lines[0]
    data[:4] = b"GGUX"  # no longer GGUF: llamacpp refuses, auto falls through to the loader
    bad.write_bytes(data)
    r = CliRunner().invoke(main, ["run", "-m", str(bad), "--prompt", "hi"],
                           catch_exceptions=False)
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1


@needs_llama_cpp
@torch.inference_mode()
def test_f32_gguf_logits_in_llama_cpp(tmp_path):
    from edge.engines.llamacpp import LlamaCppEngine

    m = tiny_model()
    write_gguf(m, tiny_tokenizer(), tmp_path / "m.gguf", torch.float32)
    ids = torch.randint(0, 262, (1, 100), generator=torch.Generator().manual_seed(0))
    sess = LlamaCppEngine(tmp_path / "m.gguf", max_context=128, threads=1,
                          exact=True).session()
    got = torch.from_numpy(sess.logits_all(ids[0].tolist()))
    diff = float((got - m(ids)[0]).abs().max())
    assert diff < F32_LOGIT_ATOL


@needs_llama_cpp
def test_engine_selection(tiny_gguf):
    from edge.engines import open_model

    assert open_model(str(tiny_gguf), threads=1).name == "llama.cpp"
    assert open_model(str(tiny_gguf), threads=1, engine="torch").name == "torch"
    with pytest.raises(EdgeError, match="edge artifact directory"):
        open_model(str(tiny_gguf), engine="edge")


# ------------------------------------------------------------------------------ real model
# llama.cpp multiplies Q8_0 / Q4_0 weights with activations it rounds to Q8_0 blocks (the
# vec_dot type of both), while the weight-only reference keeps fp32 activations. On SmolLM2
# (a few activations hundreds of times the median) that rounding alone moves logits by up to
# ~1.8 (measured: the same int8 values stored as F32 give 7e-5, as Q8_0 1.85), so greedy text
# matches the reference exactly only for all-F32 files; quantized files are held to
# teacher-forced top-1 agreement and KLD along the reference's own greedy continuation.
# Measured on 4 prompts x 48 tokens: int8 top-1 0.977-0.989, KLD 0.0039-0.0048; 8da4w (whose
# reference rounds activations to blocks of 32 as llama.cpp does) top-1 0.980-1.0, KLD
# 0.0020-0.0026, greedy text equal for 48 tokens on 3 of the 4 prompts.
MIN_TOP1 = {"int8": 0.95, "8da4w": 0.95}
MAX_KLD = {"int8": 0.015, "8da4w": 0.015}
@pytest.fixture(scope="module")
def smollm2_exports(smollm2_gguf, tmp_path_factory):
    """SmolLM2 exported to gguf unquantized (F32), with int8 (Q8_0) and with 8da4w (Q4_0),
    each with the in-memory model it was lowered from (8da4w: the preset's AWQ + GPTQ values;
    with round to nearest instead, llama.cpp's top-1 agreement on the probe text is 88 %)."""
    from export.pipeline import ExportConfig, run_export

    out = {}
    for r in ("none", "int8", "8da4w"):
        dest = tmp_path_factory.mktemp("smol") / r
        out[r] = run_export(ExportConfig(checkpoint=str(smollm2_gguf), out=dest, recipe=r,
                                         targets=("gguf",), keep_model=True),
                            log=lambda s: None)
    return out


def _engines(st):
    from edge.engines.llamacpp import LlamaCppEngine
    from export.targets.common import float_model
    from export.model.reference import TorchEngine

    model = st.model if st.model is not None else float_model(st.checkpoint, 256)
    lc = LlamaCppEngine(st.artifacts["gguf"], max_context=256, threads=1, exact=True)
    return lc, TorchEngine(st.checkpoint, max_context=256, threads=1, model=model), model


@pytest.mark.slow
@needs_llama_cpp
def test_smollm2_f32_gguf_greedy_in_llama_cpp_equals_torch(smollm2_exports):
    st = smollm2_exports["none"]
    rep = st.report["artifacts"]["gguf"]
    assert rep["runtime"] == "llama.cpp" and rep["exact"] and rep["tensor_types"] == {"F32": 272}
    assert rep["max_abs_logit_diff"] < F32_LOGIT_ATOL and rep["top1_agreement"] == 1.0
    lc, ref, _ = _engines(st)
    for text in CHAT_PROMPTS:
        ids = chat_ids(lc.tokenizer, text)
        assert ids == chat_ids(st.checkpoint.tokenizer, text)  # our tokenizer from the file
        got = greedy(lc.session(), ids, GREEDY_TOKENS)
        assert got == greedy(ref.session(), ids, GREEDY_TOKENS), lc.tokenizer.decode(got)


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("recipe_name", ["int8", "8da4w"])
def test_smollm2_quantized_gguf_in_llama_cpp(smollm2_exports, recipe_name):
    st = smollm2_exports[recipe_name]
    rep = st.report["artifacts"]["gguf"]
    kind = "Q8_0" if recipe_name == "int8" else "Q4_0"
    assert rep["runtime"] == "llama.cpp" and kind in rep["tensor_types"]
    assert rep["top1_agreement"] >= MIN_TOP1[recipe_name]
    json.dumps(st.report)
    # every quantized value and scale of the reference is in the file
    back = _read_back(st.artifacts["gguf"])
    mods = {n: m for n, m in st.model.named_modules()
            if isinstance(m, (QuantLinear, QuantEmbedding)) and n + ".weight" in back}
    assert len(mods) == st.checkpoint.config.num_layers * 7 + 1  # + the tied embedding
    for n, m in mods.items():
        kind_n, q, d = back[n + ".weight"]
        np.testing.assert_array_equal(q, m.qt.qdata.numpy(), err_msg=n)
        want = np.repeat(m.qt.scale.numpy().astype(np.float16), m.qt.group_size // 32, axis=1)
        np.testing.assert_array_equal(d.view(np.uint16), want.view(np.uint16), err_msg=n)
    # llama.cpp along the reference's own greedy continuation
    lc, ref, model = _engines(st)
    for text in CHAT_PROMPTS:
        ids = chat_ids(lc.tokenizer, text)
        seq = ids + greedy(ref.session(), ids, GREEDY_TOKENS)
        got = torch.from_numpy(lc.session().logits_all(seq)).double()
        with torch.inference_mode():
            want = model(torch.tensor([seq]))[0].double()
        top1 = float((got.argmax(-1) == want.argmax(-1)).double().mean())
        p, q = torch.log_softmax(want, -1), torch.log_softmax(got, -1)
        kld = float((p.exp() * (p - q)).sum(-1).mean())
        assert top1 >= MIN_TOP1[recipe_name] and kld <= MAX_KLD[recipe_name], (top1, kld)
