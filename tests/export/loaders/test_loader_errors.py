"""Bad checkpoints of every class in RELIABILITY.md "Checkpoint loading": each test crafts one
broken file from a tiny valid random Llama and checks that `load_checkpoint` raises
CheckpointError (never another exception, never a crash) naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.config import LlamaConfig
from edge.errors import CheckpointError
from export.loaders import load_checkpoint
from export.loaders.common import Checkpoint
from export.loaders.safetensors_io import write_safetensors
from export.model import random_state_dict
from export.writers import write_hf, write_meta

gguf = pytest.importorskip("gguf")

CFG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=True)
EMB = "model.embed_tokens.weight"
Q0 = "model.layers.0.self_attn.q_proj.weight"


# ---------------------------------------------------------------------------------- helpers
def tensors_for(cfg=CFG, seed=0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    return random_state_dict(cfg, seed, dtype=dtype)


def expect_error(path, *fragments, file=None, exc=CheckpointError, **kw) -> str:
    """load_checkpoint(path) must raise CheckpointError naming `file` (default: path) and
    containing every fragment; returns the message."""
    kw.setdefault("load_tokenizer", False)
    with pytest.raises(exc) as ei:
        load_checkpoint(path, **kw)
    msg = str(ei.value)
    assert str(file if file is not None else path) in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    assert "\n" not in msg.strip(), msg  # one line for the CLI
    return msg


def hf_dir(root: Path, tensors=None, config: dict | None = None, cfg=CFG, **cfg_over) -> Path:
    """config.json + model.safetensors (written directly so any tensor set can be stored)."""
    root.mkdir(parents=True, exist_ok=True)
    d = cfg.to_hf_dict() if config is None else config
    d.update(cfg_over)
    (root / "config.json").write_text(json.dumps(d))
    if tensors is None:
        tensors = tensors_for(cfg)
    if tensors is not False:
        write_safetensors(root / "model.safetensors", tensors)
    return root


def edit_config(root: Path, drop=(), **changes) -> Path:
    p = root / "config.json"
    d = json.loads(p.read_text())
    for k in drop:
        d.pop(k, None)
    d.update(changes)
    p.write_text(json.dumps(d))
    return p


def st_raw(header, data: bytes = b"", hlen: int | None = None) -> bytes:
    """A safetensors file from a header (dict, or raw bytes) and a data section."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if hlen is None else hlen) + h + data


def raw_dir(root: Path, blob: bytes, name="model.safetensors") -> Path:
    """A valid config.json next to a hand-made safetensors file."""
    hf_dir(root, tensors=False)
    (root / name).write_bytes(blob)
    return root


@pytest.fixture(scope="module")
def st_valid(tmp_path_factory) -> bytes:
    """The bytes of a valid model.safetensors (bf16, tied) written by write_hf."""
    out = tmp_path_factory.mktemp("valid") / "hf"
    write_hf(Checkpoint(Path("random"), "random", CFG, tensors_for(CFG, dtype=torch.bfloat16)),
             out)
    return (out / "model.safetensors").read_bytes()


def st_header_len(blob: bytes) -> int:
    return 8 + struct.unpack("<Q", blob[:8])[0]


# GGUF ----------------------------------------------------------------------------------
_GGUF_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf: str) -> str:
    top = {EMB: "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{_GGUF_LAYER[rest.removesuffix('.weight')]}.weight"


def gguf_tokens(n: int) -> tuple[list[str], list[str]]:
    """A byte-level BPE vocabulary of n tokens: single letters and a few merges."""
    singles = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("ABCDEFGHIJ")
    merges = [f"{a} {b}" for a, b in zip("abcdefghij", "bcdefghijk")]
    toks = singles + [m.replace(" ", "") for m in merges]
    toks += [f"<|special_{i}|>" for i in range(n - len(toks))]
    return toks[:n], merges


def write_gguf(path: Path, cfg=CFG, tensors=None, *, arch="llama", skip=(), extra=None,
               tokenizer: int | None = None, np_dtype=np.float32, raw_tensors=None) -> Path:
    """A valid small llama GGUF via gguf.GGUFWriter (F32 or F16 tensors)."""
    if tensors is None:
        tensors = tensors_for(cfg)
    w = gguf.GGUFWriter(str(path), arch)
    ints = {"llama.context_length": 256, "llama.embedding_length": cfg.hidden_size,
            "llama.block_count": cfg.num_layers,
            "llama.feed_forward_length": cfg.intermediate_size,
            "llama.attention.head_count": cfg.num_heads,
            "llama.attention.head_count_kv": cfg.num_kv_heads,
            "llama.vocab_size": cfg.vocab_size}
    skip = set(skip) | set(extra or {})
    for k, v in ints.items():
        if k not in skip:
            w.add_uint32(k, v)
    for k, v in (("llama.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps),
                 ("llama.rope.freq_base", cfg.rope_theta)):
        if k not in skip:
            w.add_float32(k, v)
    w.add_string("general.name", "tiny")
    if tokenizer is not None:
        toks, merges = gguf_tokens(tokenizer)
        w.add_tokenizer_model("gpt2")
        w.add_token_list(toks)
        w.add_token_merges(merges)
        w.add_bos_token_id(len(toks) - 2)
        w.add_eos_token_id(len(toks) - 1)
    for k, (kind, v) in (extra or {}).items():
        getattr(w, f"add_{kind}")(k, v)
    for name, arr in (raw_tensors or {}).items():
        w.add_tensor(name, arr)
    for name, t in tensors.items():
        w.add_tensor(gguf_name(name), t.float().numpy().astype(np_dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_tensor_info(blob: bytes, name: str) -> dict:
    """Byte offsets of one tensor-info record (found by its length-prefixed name)."""
    key = name.encode()
    pos = blob.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    nd = struct.unpack_from("<I", blob, pos)[0]
    dims = pos + 4
    typ = dims + 8 * nd
    return {"ndim": pos, "dims": dims, "type": typ, "offset": typ + 4, "n": nd,
            "end": typ + 12}


def gguf_kv_value(blob: bytes, key: str) -> int:
    """Offset of the value of a scalar key (after its length, name and type id)."""
    k = key.encode()
    return blob.index(struct.pack("<Q", len(k)) + k) + 8 + len(k) + 4


def patch(blob: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


@pytest.fixture(scope="module")
def gguf_valid(tmp_path_factory) -> bytes:
    p = write_gguf(tmp_path_factory.mktemp("gguf") / "valid.gguf", np_dtype=np.float16)
    return p.read_bytes()


def put(tmp_path: Path, blob: bytes, name="model.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(blob)
    return p


# ------------------------------------------------------------------------ the baselines load
def test_valid_fixtures_load(tmp_path, st_valid, gguf_valid):
    ck = load_checkpoint(raw_dir(tmp_path / "hf", st_valid), load_tokenizer=False)
    assert ck.format == "hf" and "lm_head.weight" not in ck.tensors
    ck = load_checkpoint(put(tmp_path, gguf_valid), load_tokenizer=False)
    assert ck.format == "gguf" and ck.config.num_layers == 2
    write_meta(Checkpoint(Path("random"), "random", CFG, tensors_for()), tmp_path / "meta")
    assert load_checkpoint(tmp_path / "meta", load_tokenizer=False).format == "meta"


# ------------------------------------------------------------------------------ safetensors
@pytest.mark.parametrize("size", [0, 5])
def test_safetensors_tiny_file(tmp_path, size):
    root = raw_dir(tmp_path / "hf", b"\x01" * size)
    expect_error(root, f"file is {size} bytes", "too small", file=root / "model.safetensors")


@pytest.mark.parametrize("hlen, what", [(10_000, "past the end"),
                                        (2 ** 63, "absurdly large"),
                                        (2 ** 64 - 1, "absurdly large")])
def test_safetensors_header_length(tmp_path, hlen, what):
    root = raw_dir(tmp_path / "hf", st_raw({}, hlen=hlen))
    expect_error(root, f"header length {hlen}", what, file=root / "model.safetensors")


@pytest.mark.parametrize("header, frag", [
    (b"{not json at all}", "not valid JSON"),
    (b"\xff\xfe{\"a\": 1}", "not valid JSON"),  # not UTF-8
    (b"[" * 50_000 + b"]" * 50_000, "safetensors header"),  # nesting deep enough to recurse
    (b"[1, 2, 3]", "not a JSON object"),
    (b"\"text\"", "not a JSON object"),
])
def test_safetensors_header_not_json_object(tmp_path, header, frag):
    root = raw_dir(tmp_path / "hf", st_raw(header))
    expect_error(root, frag, file=root / "model.safetensors")


def _entry(dtype="F32", shape=(2,), offs=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offs)}


def test_safetensors_duplicate_tensor_names(tmp_path):
    a = json.dumps(_entry(offs=(0, 8)))
    b = json.dumps(_entry(offs=(8, 16)))
    header = f'{{"{EMB}": {a}, "{EMB}": {b}}}'.encode()
    root = raw_dir(tmp_path / "hf", st_raw(header, bytes(16)))
    expect_error(root, "duplicate key", EMB, file=root / "model.safetensors")


@pytest.mark.parametrize("entries, size, frags", [
    ({"a": _entry(offs=(0, 8)), "b": _entry(offs=(4, 12))}, 12, ["tensor 'b'", "overlaps"]),
    ({"a": _entry(offs=(0, 8)), "b": _entry(offs=(16, 24))}, 24, ["tensor 'b'", "gap"]),
    ({"a": _entry(offs=(8, 0))}, 8, ["tensor 'a'", "run backwards"]),
    ({"a": _entry(offs=(-8, 0))}, 8, ["tensor 'a'", "run backwards"]),
    ({"a": _entry(offs=(0, 8))}, 4, ["ends at byte", "truncated"]),
    ({"a": _entry(offs=(0, 8))}, 20, ["ends at byte", "trailing garbage"]),
    ({"a": _entry(shape=(3,), offs=(0, 8))}, 8, ["tensor 'a'", "needs 12 bytes", "cover 8"]),
    ({"a": _entry(dtype="BF16", shape=(2, 2), offs=(0, 16))}, 16, ["needs 8 bytes"]),
    ({"a": _entry(shape=(2 ** 40, 2 ** 40), offs=(0, 8))}, 8, ["tensor 'a'", "needs"]),
    ({"a": _entry(shape=(2 ** 31, 2 ** 31), offs=(0, 2 ** 64))}, 8, ["tensor 'a'"]),
    ({"a": _entry(shape=(2 ** 62,), offs=(0, 2 ** 64))}, 8, ["tensor 'a'", "truncated"]),
    ({"a": _entry(shape=(-2,), offs=(0, 8))}, 8, ["tensor 'a'", "bad shape"]),
    ({"a": _entry(shape=(1,) * 9, offs=(0, 4))}, 4, ["tensor 'a'", "bad shape"]),
    ({"a": _entry(offs=(0,))}, 8, ["tensor 'a'", "bad data_offsets"]),
    ({"a": _entry(offs=(0, 8.0))}, 8, ["tensor 'a'", "bad data_offsets"]),
    ({"a": _entry(dtype="F4"), }, 8, ["tensor 'a'", "unknown dtype 'F4'"]),
    ({"a": _entry(dtype=["F32"])}, 8, ["tensor 'a'", "unknown dtype"]),
    ({"a": _entry(dtype=None)}, 8, ["tensor 'a'", "unknown dtype"]),
    ({"a": [1, 2]}, 8, ["tensor 'a'", "malformed"]),
    ({"a": {**_entry(), "extra": 1}}, 8, ["tensor 'a'", "malformed"]),
])
def test_safetensors_bad_entries(tmp_path, entries, size, frags):
    root = raw_dir(tmp_path / "hf", st_raw(entries, bytes(size)))
    expect_error(root, *frags, file=root / "model.safetensors")


def test_safetensors_truncated_at_many_offsets(tmp_path, st_valid):
    hl = st_header_len(st_valid)
    cuts = [1, 7, 8, 9, hl // 2, hl - 1, hl, hl + 1, hl + 100, len(st_valid) // 2,
            len(st_valid) - 2, len(st_valid) - 1]
    for i, n in enumerate(cuts):
        root = raw_dir(tmp_path / f"hf{i}", st_valid[:n])
        expect_error(root, file=root / "model.safetensors")


def test_safetensors_trailing_garbage(tmp_path, st_valid):
    root = raw_dir(tmp_path / "hf", st_valid + b"garbage")
    expect_error(root, "trailing garbage", file=root / "model.safetensors")


def test_safetensors_misaligned_data(tmp_path):
    """A header length that leaves F32 data at an odd offset: copy, don't crash."""
    t = tensors_for()
    names = sorted(t)
    header, data, pos = {}, b"", 0
    for n in names:
        raw = t[n].contiguous().numpy().tobytes()
        header[n] = _entry("F32", t[n].shape, (pos, pos + len(raw)))
        data, pos = data + raw, pos + len(raw)
    h = json.dumps(header).encode() + b" "  # 8 + len(h) odd
    if (8 + len(h)) % 2 == 0:
        h += b" "
    root = raw_dir(tmp_path / "hf", st_raw(h, data))
    ck = load_checkpoint(root, load_tokenizer=False)
    assert torch.equal(ck.tensors[Q0], t[Q0])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_safetensors_non_finite_weight(tmp_path, value):
    t = tensors_for()
    t["model.layers.1.mlp.down_proj.weight"][3, 5] = value
    root = hf_dir(tmp_path / "hf", t)
    expect_error(root, "model.layers.1.mlp.down_proj.weight", "NaN/Inf",
                 file=root / "model.safetensors")


def test_safetensors_shape_disagrees_with_config(tmp_path):
    t = tensors_for()
    t[Q0] = t[Q0][:16]
    root = hf_dir(tmp_path / "hf", t)
    expect_error(root, Q0, "[16, 32]", "[32, 32]")


def test_safetensors_scalar_embedding(tmp_path):
    t = tensors_for()
    t[EMB] = torch.tensor(1.0)
    root = hf_dir(tmp_path / "hf", t)
    expect_error(root, EMB)


# --------------------------------------------------------------------------------- sharded
def sharded_dir(root: Path, seed=0) -> tuple[Path, dict]:
    ck = Checkpoint(Path("random"), "random", CFG, tensors_for(seed=seed))
    write_hf(ck, root, dtype=torch.float32, max_shard_bytes=20_000)
    index = json.loads((root / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    return root, index


def write_index(root: Path, index) -> Path:
    p = root / "model.safetensors.index.json"
    p.write_text(json.dumps(index))
    return p


def test_sharded_valid_loads(tmp_path):
    root, _ = sharded_dir(tmp_path / "hf")
    assert len(load_checkpoint(root, load_tokenizer=False).tensors) == 20


def test_sharded_missing_shard(tmp_path):
    root, index = sharded_dir(tmp_path / "hf")
    shard = index["weight_map"][EMB]
    (root / shard).unlink()
    expect_error(root, f"shard '{shard}'", "not a file",
                 file=root / "model.safetensors.index.json")


@pytest.mark.parametrize("shard", ["../model.safetensors", "/etc/passwd", "", "sub/x.st"])
def test_sharded_index_names_bad_path(tmp_path, shard):
    root, index = sharded_dir(tmp_path / "hf")
    index["weight_map"][EMB] = shard
    p = write_index(root, index)
    expect_error(root, "not a file", file=p)


def test_sharded_wrong_shard(tmp_path):
    root, index = sharded_dir(tmp_path / "hf")
    wm = index["weight_map"]
    other = next(s for s in sorted(set(wm.values())) if s != wm[EMB])
    right, wm[EMB] = wm[EMB], other
    p = write_index(root, index)
    expect_error(root, EMB, f"to '{other}'", f"is in '{right}'", file=p)


def test_sharded_tensor_twice(tmp_path):
    root, index = sharded_dir(tmp_path / "hf")
    wm = index["weight_map"]
    shards = sorted(set(wm.values()))
    # Add the embedding to a second shard as well.
    other = next(s for s in shards if s != wm[EMB])
    from safetensors.torch import load_file

    extra = load_file(str(root / other))
    extra[EMB] = tensors_for()[EMB]
    write_safetensors(root / other, extra)
    expect_error(root, EMB, "also in shard", file=root)


def test_sharded_tensor_not_in_index(tmp_path):
    root, index = sharded_dir(tmp_path / "hf")
    del index["weight_map"]["model.norm.weight"]
    p = write_index(root, index)
    expect_error(root, "does not list tensor 'model.norm.weight'", file=p)


def test_sharded_index_tensor_in_no_shard(tmp_path):
    root, index = sharded_dir(tmp_path / "hf")
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = index["weight_map"][EMB]
    p = write_index(root, index)
    expect_error(root, "model.layers.9.mlp.up_proj.weight", "in no shard", file=p)


@pytest.mark.parametrize("text, frag", [("{oops", "not valid JSON"),
                                        ("[1, 2]", "weight_map"),
                                        ('{"weight_map": {"a": 3}}', "weight_map"),
                                        ('{"metadata": {}}', "weight_map")])
def test_sharded_index_malformed(tmp_path, text, frag):
    root, _ = sharded_dir(tmp_path / "hf")
    p = root / "model.safetensors.index.json"
    p.write_text(text)
    expect_error(root, frag, file=p)


def test_two_safetensors_without_index(tmp_path):
    root, _ = sharded_dir(tmp_path / "hf")
    (root / "model.safetensors.index.json").unlink()
    expect_error(root, "safetensors files but no model.safetensors.index.json")


def test_no_weights_at_all(tmp_path):
    root = hf_dir(tmp_path / "hf", tensors=False)
    expect_error(root, "no *.safetensors weights found")


# -------------------------------------------------------------------------- tied embeddings
def test_tied_with_different_lm_head(tmp_path):
    t = tensors_for()
    t["lm_head.weight"] = t[EMB] * 2
    root = hf_dir(tmp_path / "hf", t)
    expect_error(root, "tie_word_embeddings=true", "'lm_head.weight' differs")


def test_tied_with_identical_lm_head_is_dropped(tmp_path):
    t = tensors_for()
    t["lm_head.weight"] = t[EMB].clone()
    ck = load_checkpoint(hf_dir(tmp_path / "hf", t), load_tokenizer=False)
    assert "lm_head.weight" not in ck.tensors and ck.config.tie_word_embeddings


def test_tied_with_wrong_shape_lm_head(tmp_path):
    t = tensors_for()
    t["lm_head.weight"] = t[EMB][:32].clone()
    root = hf_dir(tmp_path / "hf", t)
    expect_error(root, "'lm_head.weight' has shape [32, 32]")


def test_untied_with_lm_head_missing(tmp_path):
    root = hf_dir(tmp_path / "hf", tensors_for(), tie_word_embeddings=False)
    expect_error(root, "'lm_head.weight' is missing", "tie_word_embeddings")


def test_untied_with_lm_head_present_loads(tmp_path):
    cfg = CFG.replace(tie_word_embeddings=False)
    ck = load_checkpoint(hf_dir(tmp_path / "hf", tensors_for(cfg), cfg=cfg),
                         load_tokenizer=False)
    assert "lm_head.weight" in ck.tensors


# ------------------------------------------------------------------- config.json vs tensors
@pytest.mark.parametrize("changes, drop, frags", [
    ({"num_attention_heads": 5}, ["head_dim"], ["num_attention_heads (5) must divide "
                                                "hidden_size (32)"]),
    ({"num_attention_heads": 6}, [], [Q0, "config implies [48, 32]"]),
    ({"num_key_value_heads": 3}, [], ["num_key_value_heads", "(3) must divide"]),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, [], ["rope type 'yarn'",
                                                                  "llama3"]),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0}}, [], ["original_max_position_embeddings"]),
    ({"rope_scaling": "yarn"}, [], ["rope_scaling"]),
    ({"rope_scaling": {"rope_type": "llama3", "factor": "big", "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
     [], ["big"]),
    ({"vocab_size": 128}, [], ["vocab_size=128", "64 rows"]),
    ({"num_hidden_layers": 3}, [], ["'model.layers.2.", "is missing"]),
    ({"num_hidden_layers": 1}, [], ["unexpected tensor 'model.layers.1.", "1 layers"]),
    ({}, ["hidden_size"], ["missing required field 'hidden_size'"]),
    ({}, ["num_hidden_layers"], ["missing required field 'num_hidden_layers'"]),
    ({"hidden_size": "32"}, [], ["field 'hidden_size' must be an integer"]),
    ({"intermediate_size": 64.0}, [], ["field 'intermediate_size' must be an integer"]),
    ({"rms_norm_eps": "tiny"}, [], ["tiny"]),
    ({"max_position_embeddings": [1]}, [], ["config.json"]),
    ({"head_dim": 0}, [], ["head_dim"]),
    ({"num_key_value_heads": "2"}, [], ["num_key_value_heads"]),
    ({"bos_token_id": 64}, [], ["bos_token_id", "outside the vocabulary"]),
    ({"eos_token_id": [1, 99]}, [], ["eos_token_id", "99"]),
    ({"eos_token_id": "</s>"}, [], ["</s>"]),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, [],
     ["'mistral'", "not a Llama-family", "supported"]),
    ({"architectures": ["GPT2LMHeadModel"]}, [], ["GPT2LMHeadModel"]),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, [],
     ["quantization_config", "already-quantized"]),
    ({"hidden_act": "gelu"}, [], ["hidden_act='gelu'"]),
    ({"attention_bias": True}, [], ["attention_bias"]),
    ({"layer_intermediate_sizes": 64}, [], ["layer_intermediate_sizes"]),
])
def test_config_disagrees(tmp_path, changes, drop, frags):
    root = hf_dir(tmp_path / "hf")
    edit_config(root, drop=drop, **changes)
    expect_error(root, *frags, file=root)


@pytest.mark.parametrize("text, frag", [("", "not valid JSON"), ("{'single': 1}", "not valid "
                                        "JSON"), ("[1, 2]", "JSON object"),
                                        ('{"vocab_size": 1, "vocab_size": 2}', "duplicate"),
                                        ("[" * 100_000, "config.json")])
def test_config_not_json(tmp_path, text, frag):
    root = hf_dir(tmp_path / "hf")
    (root / "config.json").write_text(text)
    expect_error(root, frag, file=root / "config.json")


def test_config_not_utf8(tmp_path):
    root = hf_dir(tmp_path / "hf")
    (root / "config.json").write_bytes(b"{\"a\": \"\xff\xfe\"}")
    expect_error(root, "not valid JSON", file=root / "config.json")


def test_int8_weight_refused(tmp_path):
    t = tensors_for()
    t[Q0] = torch.zeros(t[Q0].shape, dtype=torch.int8)
    root = hf_dir(tmp_path / "hf", t)
    expect_error(root, Q0, "dtype I8", "F32/F16/BF16")


def test_quantized_extra_tensor_refused(tmp_path):
    t = tensors_for()
    t["model.layers.0.self_attn.q_proj.weight_scale"] = torch.ones(32)
    root = hf_dir(tmp_path / "hf", t)
    expect_error(root, "weight_scale", "already-quantized")


def test_generation_config_eos_outside_vocab(tmp_path):
    root = hf_dir(tmp_path / "hf")
    (root / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 640]}))
    expect_error(root, "eos_token_id 640", "outside the vocabulary",
                 file=root / "generation_config.json")


def test_generation_config_not_json(tmp_path):
    root = hf_dir(tmp_path / "hf")
    (root / "generation_config.json").write_text("{")
    expect_error(root, "not valid JSON", file=root / "generation_config.json")


# --------------------------------------------------------------------- tokenizer vs model
def _hf_tokenizer_json(n: int) -> str:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, n)}}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


@pytest.fixture()
def tokenizer_available():
    """The tokenizer must build from the fixture JSON (a failure here fails the test)."""
    from edge.tokenizer import Tokenizer

    Tokenizer.from_hf_json(_hf_tokenizer_json(8))


def test_hf_tokenizer_matches_loads(tmp_path, tokenizer_available):
    root = hf_dir(tmp_path / "hf")
    (root / "tokenizer.json").write_text(_hf_tokenizer_json(64))
    ck = load_checkpoint(root)
    assert ck.tokenizer.vocab_size == 64


def test_hf_tokenizer_larger_than_embedding(tmp_path, tokenizer_available):
    root = hf_dir(tmp_path / "hf")
    (root / "tokenizer.json").write_text(_hf_tokenizer_json(100))
    expect_error(root, "tokenizer has 100 tokens", "64 rows", load_tokenizer=True)


def test_hf_tokenizer_missing(tmp_path, tokenizer_available):
    root = hf_dir(tmp_path / "hf")
    expect_error(root, "tokenizer.json is missing", load_tokenizer=True)


def test_hf_tokenizer_corrupt(tmp_path, tokenizer_available):
    """A broken tokenizer file is a TokenizerError (edge/errors.py: "a tokenizer file is
    missing, malformed or does not match the model"), still one line naming the file."""
    from edge.errors import TokenizerError

    root = hf_dir(tmp_path / "hf")
    (root / "tokenizer.json").write_text('{"model": 3}')
    expect_error(root, "tokenizer.json cannot be loaded", load_tokenizer=True,
                 exc=(CheckpointError, TokenizerError))


# ------------------------------------------------------------------------ pickles (HF .bin)
class _Evil:
    """Unpickling this runs a shell command (if anything unpickles it unsafely)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pytorch_bin_refused_without_allow_pickle(tmp_path):
    root = hf_dir(tmp_path / "hf", tensors=False)
    torch.save(tensors_for(), root / "pytorch_model.bin")
    expect_error(root, "pytorch_model", "--allow-pickle")


def test_pytorch_bin_loads_with_allow_pickle(tmp_path):
    root = hf_dir(tmp_path / "hf", tensors=False)
    torch.save(tensors_for(), root / "pytorch_model.bin")
    ck = load_checkpoint(root, allow_pickle=True, load_tokenizer=False)
    assert len(ck.tensors) == 20


@pytest.mark.parametrize("how", ["torch.save", "raw-pickle", "in-dict"])
def test_pytorch_bin_malicious_pickle(tmp_path, how):
    marker = tmp_path / "MARKER"
    root = hf_dir(tmp_path / "hf", tensors=False)
    p = root / "pytorch_model.bin"
    if how == "torch.save":
        torch.save(_Evil(marker), p)
    elif how == "in-dict":
        torch.save({**tensors_for(), "x": _Evil(marker)}, p)
    else:
        p.write_bytes(pickle.dumps(_Evil(marker)))
    expect_error(root, "weights_only=True", file=p, allow_pickle=True)
    assert not marker.exists(), "the pickle ran code"


@pytest.mark.parametrize("obj, frag", [
    ([1, 2, 3], "state dict"),
    ({"model.norm.weight": 3}, "model.norm.weight"),
    ({1: torch.ones(2)}, "1"),
])
def test_pytorch_bin_not_a_state_dict(tmp_path, obj, frag):
    root = hf_dir(tmp_path / "hf", tensors=False)
    torch.save(obj, root / "pytorch_model.bin")
    expect_error(root, frag, file=root / "pytorch_model.bin", allow_pickle=True)


def test_pytorch_bin_truncated(tmp_path):
    root = hf_dir(tmp_path / "hf", tensors=False)
    p = root / "pytorch_model.bin"
    torch.save(tensors_for(), p)
    p.write_bytes(p.read_bytes()[:1000])
    expect_error(root, file=p, allow_pickle=True)


# -------------------------------------------------------------------------------------- Meta
@pytest.fixture()
def meta_dir(tmp_path) -> Path:
    return write_meta(Checkpoint(Path("random"), "random", CFG, tensors_for()),
                      tmp_path / "meta")


def test_meta_malicious_pickle(meta_dir, tmp_path):
    marker = tmp_path / "MARKER"
    pth = meta_dir / "consolidated.00.pth"
    torch.save({"tok_embeddings.weight": _Evil(marker)}, pth)
    expect_error(meta_dir, "weights_only=True", file=pth)
    assert not marker.exists(), "the pickle ran code"


def test_meta_raw_malicious_pickle(meta_dir, tmp_path):
    marker = tmp_path / "MARKER"
    pth = meta_dir / "consolidated.00.pth"
    pth.write_bytes(pickle.dumps(_Evil(marker)))
    expect_error(meta_dir, file=pth)
    assert not marker.exists(), "the pickle ran code"


def test_meta_params_missing(meta_dir):
    (meta_dir / "params.json").unlink()
    expect_error(meta_dir, "params.json is missing")


@pytest.mark.parametrize("text, frag", [("{", "not valid JSON"), ("[1]", "params.json"),
                                        ('"x"', "params.json"), ("[" * 100_000, "params.json")])
def test_meta_params_not_json(meta_dir, text, frag):
    (meta_dir / "params.json").write_text(text)
    expect_error(meta_dir, frag, file=meta_dir / "params.json")


@pytest.mark.parametrize("drop, changes, frags", [
    (["dim"], {}, ["missing required field 'dim'"]),
    (["n_layers"], {}, ["missing required field 'n_layers'"]),
    ([], {"dim": "thirty-two"}, ["wrong type"]),
    ([], {"n_heads": 5}, ["n_heads (5) must divide dim (32)"]),
    ([], {"n_kv_heads": 3}, ["(3) must divide"]),
    ([], {"n_layers": 3}, ["'model.layers.2.", "is missing"]),
    ([], {"vocab_size": 128}, ["model.embed_tokens.weight", "[64, 32]", "[128, 32]"]),
    ([], {"multiple_of": None}, ["wrong type"]),
])
def test_meta_params_bad_fields(meta_dir, drop, changes, frags):
    p = meta_dir / "params.json"
    d = json.loads(p.read_text())
    for k in drop:
        d.pop(k)
    d.update(changes)
    p.write_text(json.dumps(d))
    expect_error(meta_dir, *frags)


def test_meta_truncated_pth(meta_dir):
    pth = meta_dir / "consolidated.00.pth"
    data = pth.read_bytes()
    for n in (0, 10, len(data) // 2, len(data) - 30):
        pth.write_bytes(data[:n])
        expect_error(meta_dir, file=pth)


def _edit_pth(meta_dir: Path, fn):
    pth = meta_dir / "consolidated.00.pth"
    sd = torch.load(pth, weights_only=True)
    torch.save(fn(sd), pth)
    return pth


def test_meta_tensor_missing(meta_dir):
    _edit_pth(meta_dir, lambda sd: {k: v for k, v in sd.items()
                                    if k != "layers.1.attention.wk.weight"})
    expect_error(meta_dir, "model.layers.1.self_attn.k_proj.weight", "missing")


def test_meta_unexpected_tensor(meta_dir):
    _edit_pth(meta_dir, lambda sd: {**sd, "layers.0.attention.bias": torch.ones(2)})
    expect_error(meta_dir, "unexpected tensor 'layers.0.attention.bias'")


def test_meta_nan(meta_dir):
    def poison(sd):
        sd["layers.0.feed_forward.w2.weight"][0, 0] = float("nan")
        return sd
    _edit_pth(meta_dir, poison)
    expect_error(meta_dir, "model.layers.0.mlp.down_proj.weight", "NaN/Inf")


@pytest.mark.parametrize("obj, frag", [
    ([torch.ones(2)], "state dict"),
    ({"tok_embeddings.weight": 3}, "tok_embeddings.weight"),
    ({"model": {"tok_embeddings.weight": torch.ones(2, 2)}}, "'model'"),
    ({7: torch.ones(2)}, "7"),
])
def test_meta_not_a_state_dict(meta_dir, obj, frag):
    pth = meta_dir / "consolidated.00.pth"
    torch.save(obj, pth)
    expect_error(meta_dir, frag, file=pth)


def test_meta_scalar_embedding(meta_dir):
    _edit_pth(meta_dir, lambda sd: {**sd, "tok_embeddings.weight": torch.tensor(1.0)})
    expect_error(meta_dir, "model.embed_tokens.weight", "has shape []")


def test_meta_shards_disagree(meta_dir):
    pth = meta_dir / "consolidated.00.pth"
    sd = torch.load(pth, weights_only=True)
    sd.pop("norm.weight")
    torch.save(sd, meta_dir / "consolidated.01.pth")
    expect_error(meta_dir, "different tensor names", file=meta_dir / "consolidated.01.pth")


def test_meta_shard_shapes_do_not_fit(meta_dir):
    sd = torch.load(meta_dir / "consolidated.00.pth", weights_only=True)
    sd["layers.0.attention.wq.weight"] = sd["layers.0.attention.wq.weight"][:, :16]
    torch.save(sd, meta_dir / "consolidated.01.pth")
    expect_error(meta_dir, "layers.0.attention.wq.weight", "cannot be joined")


@pytest.mark.parametrize("content, frag", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 99\n",
     "Git LFS pointer"),
    (b"<html><body>403 Forbidden</body></html>", "HTML"),
])
def test_meta_pth_is_not_a_pickle(meta_dir, content, frag):
    pth = meta_dir / "consolidated.00.pth"
    pth.write_bytes(content)
    expect_error(meta_dir, frag, file=pth)


def test_meta_no_pth(meta_dir):
    (meta_dir / "consolidated.00.pth").unlink()
    expect_error(meta_dir, "no consolidated.*.pth")


# -------------------------------------------------------------------------------------- GGUF
@pytest.mark.parametrize("offset, fmt, value, frags", [
    (0, "4s", b"GGUG", ["looks like not a known model format"]),
    (4, "<I", 1, ["GGUF version 1 is not supported"]),
    (4, "<I", 99, ["version 99"]),
    (4, "<I", 0x03000000, ["big-endian"]),
    (8, "<q", -1, ["tensor count -1"]),
    (8, "<q", 2 ** 40, ["tensor count"]),
    (8, "<q", 2 ** 63 - 1, ["tensor count"]),
    (16, "<q", -5, ["key/value count -5"]),
    (16, "<q", 2 ** 40, ["key/value count"]),
    (16, "<q", 60_000, ["GGUF header at byte"]),
    (24, "<Q", 2 ** 64 - 1, ["key needs"]),
    (24, "<Q", 10 ** 6, ["key needs 1000000 bytes"]),
])
def test_gguf_header_fields(tmp_path, gguf_valid, offset, fmt, value, frags):
    p = put(tmp_path, patch(gguf_valid, offset, fmt, value))
    expect_error(p, *frags)


def test_gguf_bad_magic_in_directory(tmp_path, gguf_valid):
    d = tmp_path / "d"
    d.mkdir()
    p = put(d, patch(gguf_valid, 0, "4s", b"GGUG"))
    expect_error(d, "bad magic b'GGUG'", file=p)


def test_gguf_string_value_longer_than_file(tmp_path, gguf_valid):
    off = gguf_kv_value(gguf_valid, "general.name")  # u64 length of the string value
    p = put(tmp_path, patch(gguf_valid, off, "<Q", len(gguf_valid)))
    expect_error(p, "value of 'general.name'", "truncated or corrupt")


def test_gguf_string_not_utf8(tmp_path, gguf_valid):
    b = gguf_valid.replace(b"tiny", b"\xff\xfe\xfd\xfc", 1)
    expect_error(put(tmp_path, b), "general.name", "UTF-8")


def test_gguf_unknown_value_type(tmp_path, gguf_valid):
    off = gguf_kv_value(gguf_valid, "general.name") - 4
    p = put(tmp_path, patch(gguf_valid, off, "<I", 77))
    expect_error(p, "'general.name'", "unknown value type 77")


def test_gguf_array_too_long(tmp_path):
    p = write_gguf(tmp_path / "m.gguf", tokenizer=64)
    b = p.read_bytes()
    off = gguf_kv_value(b, "tokenizer.ggml.tokens")  # array: u32 type, u64 count
    p.write_bytes(patch(b, off + 4, "<Q", 2 ** 60))
    expect_error(p, "tokenizer.ggml.tokens")


def test_gguf_duplicate_key(tmp_path):
    extra = {"llama.test_aa": ("uint32", 1), "llama.test_ab": ("uint32", 2)}
    b = write_gguf(tmp_path / "m.gguf", extra=extra).read_bytes()
    p = put(tmp_path, b.replace(b"llama.test_ab", b"llama.test_aa"))
    expect_error(p, "duplicate key 'llama.test_aa'")


def test_gguf_duplicate_tensor(tmp_path, gguf_valid):
    b = gguf_valid.replace(b"blk.1.attn_q.weight", b"blk.0.attn_q.weight")
    expect_error(put(tmp_path, b), "duplicate tensor 'blk.0.attn_q.weight'")


@pytest.mark.parametrize("align, frag", [(0, "alignment=0"), (3, "alignment=3"),
                                         (48, "alignment=48"),
                                         (2 ** 31, "not aligned to 2147483648")])
def test_gguf_bad_alignment(tmp_path, align, frag):
    b = write_gguf(tmp_path / "m.gguf", extra={"general.alignment": ("uint32", 32)}).read_bytes()
    p = put(tmp_path, patch(b, gguf_kv_value(b, "general.alignment"), "<I", align))
    expect_error(p, frag)


def test_gguf_alignment_wrong_type(tmp_path):
    p = write_gguf(tmp_path / "m.gguf", extra={"general.alignment": ("string", "32")})
    expect_error(p, "general.alignment='32'")


@pytest.mark.parametrize("field, value, frags", [
    ("dims", 0, ["token_embd.weight", "dims [0, 64]"]),
    ("dims", 2 ** 63, ["token_embd.weight", "past the end"]),
    ("dims", 2 ** 64 - 1, ["token_embd.weight"]),
    ("ndim", 0, ["token_embd.weight", "0 dimensions"]),
    ("ndim", 9, ["token_embd.weight", "9 dimensions"]),
    ("ndim", 2 ** 32 - 1, ["token_embd.weight", "dimensions"]),
    ("type", 99, ["token_embd.weight", "unknown type id 99"]),
    ("type", 4, ["token_embd.weight", "unknown type id 4"]),
    ("offset", 1, ["token_embd.weight", "not aligned to 32"]),
    ("offset", 2 ** 62, ["token_embd.weight", "past the end"]),
    ("offset", 2 ** 64 - 32, ["token_embd.weight", "past the end"]),
])
def test_gguf_tensor_info(tmp_path, gguf_valid, field, value, frags):
    info = gguf_tensor_info(gguf_valid, "token_embd.weight")
    fmt = "<Q" if field in ("dims", "offset") else "<I"
    p = put(tmp_path, patch(gguf_valid, info[field], fmt, value))
    expect_error(p, *frags)


def test_gguf_overflowing_dims(tmp_path, gguf_valid):
    info = gguf_tensor_info(gguf_valid, "token_embd.weight")
    b = patch(gguf_valid, info["dims"], "<Q", 2 ** 32)
    b = patch(b, info["dims"] + 8, "<Q", 2 ** 32)
    expect_error(put(tmp_path, b), "token_embd.weight")


def test_gguf_overlapping_tensors(tmp_path, gguf_valid):
    a = gguf_tensor_info(gguf_valid, "blk.0.attn_q.weight")
    b = gguf_tensor_info(gguf_valid, "blk.0.attn_k.weight")
    off_a = struct.unpack_from("<Q", gguf_valid, a["offset"])[0]
    p = put(tmp_path, patch(gguf_valid, b["offset"], "<Q", off_a))
    expect_error(p, "overlap")


def test_gguf_truncated_data(tmp_path, gguf_valid):
    for cut in (1, 100, len(gguf_valid) // 2):
        p = put(tmp_path, gguf_valid[:-cut], name=f"cut{cut}.gguf")
        expect_error(p, "runs past the end", "too short")


def test_gguf_truncated_header(tmp_path, gguf_valid):
    for cut in (0, 3, 8, 23, 24, 30, 200, 500):
        p = put(tmp_path, gguf_valid[:cut], name=f"cut{cut}.gguf")
        expect_error(p)


def test_gguf_non_llama_architecture(tmp_path):
    p = write_gguf(tmp_path / "m.gguf", arch="qwen2")
    expect_error(p, "general.architecture='qwen2'", "only 'llama'")


@pytest.mark.parametrize("key", ["llama.block_count", "llama.embedding_length",
                                 "llama.attention.head_count", "llama.feed_forward_length"])
def test_gguf_missing_metadata(tmp_path, key):
    p = write_gguf(tmp_path / "m.gguf", skip=(key,))
    expect_error(p, f"'{key}' is missing")


@pytest.mark.parametrize("key, kind, value, frag", [
    ("llama.rope.freq_base", "string", "fast", "llama.rope.freq_base"),
    ("llama.context_length", "string", "long", "llama.context_length"),
    ("llama.attention.head_count_kv", "array", [2, 2], "llama.attention.head_count_kv"),
    ("llama.attention.key_length", "string", "8", "llama.attention.key_length"),
    ("tokenizer.ggml.bos_token_id", "string", "<s>", "bos_token_id"),
    ("llama.attention.layer_norm_rms_epsilon", "string", "x",
     "llama.attention.layer_norm_rms_epsilon"),
])
def test_gguf_metadata_wrong_type(tmp_path, key, kind, value, frag):
    p = write_gguf(tmp_path / "m.gguf", extra={key: (kind, value)})
    expect_error(p, frag)


@pytest.mark.parametrize("type_id", [24, 26, 16])  # I8, I32, IQ2_XXS
def test_gguf_rope_freqs_odd_type(tmp_path, type_id):
    """rope_freqs.weight is dequantized to read llama3 scaling: its type is not trusted."""
    b = write_gguf(tmp_path / "m.gguf", raw_tensors={
        "rope_freqs.weight": np.ones(256, dtype=np.float32)}).read_bytes()
    p = put(tmp_path, patch(b, gguf_tensor_info(b, "rope_freqs.weight")["type"], "<I", type_id),
            name="odd.gguf")
    expect_error(p, "rope_freqs.weight")


def test_gguf_kv_heads_not_dividing(tmp_path):
    p = write_gguf(tmp_path / "m.gguf", extra={"llama.attention.head_count_kv": ("uint32", 3)})
    expect_error(p, "num_key_value_heads", "must divide")


def test_gguf_embedding_one_dimensional(tmp_path):
    t = tensors_for()
    t[EMB] = t[EMB].reshape(-1)
    p = write_gguf(tmp_path / "m.gguf", tensors=t, skip=("llama.vocab_size",))
    expect_error(p, "token_embd.weight")


def test_gguf_missing_tensor(tmp_path):
    t = tensors_for()
    del t["model.layers.1.mlp.up_proj.weight"]
    expect_error(write_gguf(tmp_path / "m.gguf", tensors=t),
                 "'model.layers.1.mlp.up_proj.weight' is missing")


def test_gguf_nan(tmp_path):
    t = tensors_for()
    t["model.layers.0.self_attn.v_proj.weight"][1, 1] = float("inf")
    expect_error(write_gguf(tmp_path / "m.gguf", tensors=t), "blk.0.attn_v.weight", "NaN/Inf")


def test_gguf_unsupported_tensor_type(tmp_path, gguf_valid):
    info = gguf_tensor_info(gguf_valid, "output_norm.weight")
    # I8: one byte per element; the F16 bytes are still in range.
    p = put(tmp_path, patch(gguf_valid, info["type"], "<I", 24))
    expect_error(p, "output_norm.weight", "type I8")


@pytest.mark.parametrize("type_name", ["Q8_K", "I8", "IQ2_XXS"])
def test_gguf_type_without_dequantizer(tmp_path, type_name):
    """Types the gguf package cannot dequantize (or we do not accept) are refused by name."""
    cfg = LlamaConfig(vocab_size=8, hidden_size=256, intermediate_size=32, num_layers=1,
                      num_heads=4, num_kv_heads=2, head_dim=64)
    b = write_gguf(tmp_path / "m.gguf", cfg=cfg, tensors=tensors_for(cfg)).read_bytes()
    qt = gguf.GGMLQuantizationType[type_name]
    p = put(tmp_path, patch(b, gguf_tensor_info(b, "blk.0.attn_q.weight")["type"], "<I", qt),
            name="q.gguf")
    expect_error(p, "blk.0.attn_q.weight", f"type {type_name}")


@pytest.mark.parametrize("key", ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"])
def test_gguf_special_token_outside_vocab(tmp_path, key):
    p = write_gguf(tmp_path / "m.gguf", extra={key: ("uint32", 64)})
    expect_error(p, key.rsplit(".", 1)[1], "= 64 is outside the vocabulary")


@pytest.fixture()
def gguf_tokenizer_available():
    from edge.tokenizer import Tokenizer

    assert hasattr(Tokenizer, "from_gguf_fields")


def test_gguf_with_tokenizer_loads(tmp_path, gguf_tokenizer_available):
    ck = load_checkpoint(write_gguf(tmp_path / "m.gguf", tokenizer=64))
    assert ck.tokenizer.vocab_size == 64 and ck.config.bos_token_id == 62


@pytest.mark.parametrize("field", ["bos", "eos"])
def test_gguf_special_token_outside_tokenizer(tmp_path, gguf_tokenizer_available, field):
    p = write_gguf(tmp_path / "m.gguf", tokenizer=64)
    b = p.read_bytes()
    p.write_bytes(patch(b, gguf_kv_value(b, f"tokenizer.ggml.{field}_token_id"), "<I", 1000))
    expect_error(p, f"{field}_token_id", "1000", "outside the vocabulary", load_tokenizer=True)


def test_gguf_tokenizer_larger_than_embedding(tmp_path, gguf_tokenizer_available):
    # 64 tokens but an embedding of 48 rows (and no llama.vocab_size to compare with).
    cfg = CFG.replace(vocab_size=48)
    p = write_gguf(tmp_path / "m.gguf", cfg=cfg, tensors=tensors_for(cfg), tokenizer=64,
                   skip=("llama.vocab_size",))
    b = p.read_bytes()
    for field in ("bos", "eos"):  # keep the special ids inside the embedding
        b = patch(b, gguf_kv_value(b, f"tokenizer.ggml.{field}_token_id"), "<I", 1)
    p.write_bytes(b)
    expect_error(p, "64 tokens", "48 rows", load_tokenizer=True)


# --------------------------------------------------------------------------- format detection
@pytest.mark.parametrize("name, content, frag", [
    ("model.gguf", b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML"),
    ("model.gguf", b"  <html><head><title>Error</title></head></html>", "HTML"),
    ("model.gguf", b'{"error": "rate limited"}', "JSON"),
    ("model.gguf", b"version https://git-lfs.github.com/spec/v1\noid sha256:"
                   + b"0" * 64 + b"\nsize 123456\n", "Git LFS pointer"),
    ("model.gguf", b"", "not a known model format"),
    ("model.gguf", os.urandom(100), "not a known model format"),
    ("consolidated.00.pth", b"PK\x03\x04" + bytes(60), "zip/pickle"),
])
def test_detect_wrong_content(tmp_path, name, content, frag):
    p = put(tmp_path, content, name=name)
    expect_error(p, "looks like", frag, "expected a GGUF file")


def test_detect_bare_safetensors(tmp_path, st_valid):
    p = put(tmp_path, st_valid, name="model.safetensors")
    expect_error(p, "bare safetensors")


def test_detect_nonexistent(tmp_path):
    expect_error(tmp_path / "nope.gguf", "does not exist")


def test_detect_empty_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "README.md").write_text("hi")
    expect_error(tmp_path / "d", "neither config.json", "params.json")


@pytest.mark.parametrize("content, frag", [
    (b"<html><body>Access denied</body></html>", "HTML"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64
     + b"\nsize 9999999\n", "Git LFS pointer"),
])
def test_detect_inside_hf_directory(tmp_path, content, frag):
    """model.safetensors in an HF directory that is really an error page / LFS pointer."""
    root = raw_dir(tmp_path / "hf", content)
    expect_error(root, frag, file=root / "model.safetensors")


@pytest.mark.parametrize("content, frag", [
    (b"<!doctype html><html><body>" + b"x" * 100 + b"</body></html>", "HTML"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64
     + b"\nsize 9999999\n", "Git LFS pointer"),
])
def test_detect_inside_gguf_directory(tmp_path, content, frag):
    d = tmp_path / "d"
    d.mkdir()
    p = put(d, content, name="model.gguf")
    expect_error(d, frag, file=p)


# ------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def cli():
    from click.testing import CliRunner

    from export.cli import main

    def run(*args):
        res = CliRunner().invoke(main, list(map(str, args)))
        return res
    return run


def _cli_cases(tmp_path, st_valid, gguf_valid):
    html = put(tmp_path, b"<!DOCTYPE html><html>404</html>", name="page.gguf")
    trunc = raw_dir(tmp_path / "hf", st_valid[: len(st_valid) // 2])
    ver = put(tmp_path, patch(gguf_valid, 4, "<I", 99), name="v99.gguf")
    return [(html, "looks like an HTML"), (tmp_path / "missing.gguf", "does not exist"),
            (trunc, "truncated"), (ver, "version 99 is not supported")]


def test_cli_inspect_errors_are_one_line(tmp_path, cli, st_valid, gguf_valid):
    for path, frag in _cli_cases(tmp_path, st_valid, gguf_valid):
        res = cli("inspect", path)
        out = res.output
        assert res.exit_code == 1, (path, out, res.exception)
        assert isinstance(res.exception, SystemExit), res.exception
        assert "Traceback" not in out
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), out
        assert frag in out and str(path) in out, out


def test_cli_export_error_is_one_line(tmp_path, cli, gguf_valid):
    bad = put(tmp_path, patch(gguf_valid, 0, "4s", b"XXXX"), name="bad.gguf")
    res = cli("export", bad, "-o", tmp_path / "out")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "error: " in res.output and str(bad) in res.output
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ fuzz
def _mutate(data: bytes, rng: random.Random, hot_end: int) -> bytes:
    """Truncate, overwrite an 8-byte word in the header with an edge-case integer (lengths,
    counts, offsets), or overwrite 1-4 bytes (mostly in the header, where structure lives)."""
    r = rng.random()
    if r < 0.2:
        return data[:rng.randrange(len(data))]
    b = bytearray(data)
    if r < 0.45:
        pos = rng.randrange(hot_end - 8)
        v = rng.choice([0, 1, 7, 24, 2 ** 31, 2 ** 32, 2 ** 63, 2 ** 64 - 1, len(data),
                        len(data) + 1, rng.randrange(2 ** 64)])
        b[pos:pos + 8] = v.to_bytes(8, "little")
        return bytes(b)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(hot_end) if rng.random() < 0.85 else rng.randrange(len(b))
        b[pos] = rng.choice([0, 0xFF, 0x7F, 0x80, 0x01, rng.randrange(256)])
    return bytes(b)


def _fuzz_one(path: Path, blob: bytes, target: Path) -> str:
    if path.exists():
        path.unlink()  # a new inode: earlier results may still map the old file
    path.write_bytes(blob)
    try:
        load_checkpoint(target, load_tokenizer=False)
        return "ok"
    except CheckpointError as e:
        assert str(target) in str(e) or str(path) in str(e), str(e)
        return "error"


def test_fuzz_gguf(tmp_path, gguf_valid):
    rng = random.Random(1234)
    hot = gguf_tensor_info(gguf_valid, "output_norm.weight")["end"] + 64
    p = tmp_path / "f.gguf"
    seen = {"ok": 0, "error": 0}
    for i in range(200):
        blob = _mutate(gguf_valid, rng, hot)
        try:
            seen[_fuzz_one(p, blob, p)] += 1
        except Exception as e:  # pragma: no cover - report the failing mutation
            put(tmp_path, blob, name="loader_fuzz_failure.gguf")
            raise AssertionError(f"mutation {i}: {type(e).__name__}: {e}") from e
    assert seen["error"] > 100, seen


def test_fuzz_safetensors(tmp_path, st_valid):
    rng = random.Random(4321)
    root = hf_dir(tmp_path / "hf", tensors=False)
    p = root / "model.safetensors"
    seen = {"ok": 0, "error": 0}
    for i in range(200):
        blob = _mutate(st_valid, rng, st_header_len(st_valid))
        try:
            seen[_fuzz_one(p, blob, root)] += 1
        except Exception as e:  # pragma: no cover - report the failing mutation
            put(tmp_path, blob, name="loader_fuzz_failure.safetensors")
            raise AssertionError(f"mutation {i}: {type(e).__name__}: {e}") from e
    assert seen["error"] > 100, seen
