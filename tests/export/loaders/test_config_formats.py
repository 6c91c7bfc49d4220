"""Config formats at small scale: llama3 rope scaling, GQA and untied heads against
transformers, with random weights (fast; no real model needed)."""

from __future__ import annotations

import json

import pytest
import torch

from edge.config import LlamaConfig, RopeScaling
from export.loaders import load_checkpoint
from export.loaders.common import Checkpoint
from export.model import LlamaModel, random_state_dict
from export.writers import write_hf

LOGIT_ATOL = 1e-3  # fp32, two implementations of the same math

TINY = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_layers=3,
                   num_heads=8, num_kv_heads=2, head_dim=8, rope_theta=10000.0,
                   rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0,
                                            high_freq_factor=4.0,
                                            original_max_position_embeddings=32),
                   max_position_embeddings=512, tie_word_embeddings=False,
                   bos_token_id=1, eos_token_ids=(2, 3))


def _ck(cfg, seed=0):
    sd = {k: v.float() * (4.0 if v.dim() == 2 else 1.0)
          for k, v in random_state_dict(cfg, seed, torch.float32).items()}
    return Checkpoint(path="mem", format="random", config=cfg, tensors=sd)


@pytest.mark.parametrize("cfg", [TINY, TINY.replace(rope_scaling=None, tie_word_embeddings=True),
                                 TINY.replace(num_kv_heads=8, head_dim=16, hidden_size=128)])
@torch.inference_mode()
def test_tiny_matches_transformers(cfg, tmp_path):
    transformers = pytest.importorskip("transformers")
    ck = _ck(cfg)
    write_hf(ck, tmp_path / "m", dtype=torch.float32)
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m",
                                                        dtype=torch.float32).eval()
    # Long enough that positions pass original_max_position_embeddings several times over.
    ids = torch.randint(0, cfg.vocab_size, (1, 300), generator=torch.Generator().manual_seed(1))
    ours = LlamaModel.from_state_dict(cfg, ck.tensors)(ids)
    diff = (ours - ref(ids).logits).abs().max().item()
    assert diff < LOGIT_ATOL


def test_config_roundtrip_through_hf_dir(tmp_path):
    ck = _ck(TINY)
    write_hf(ck, tmp_path / "m", dtype=torch.bfloat16)
    back = load_checkpoint(tmp_path / "m", load_tokenizer=False)
    assert back.config == TINY
    assert back.tensors["model.embed_tokens.weight"].dtype == torch.bfloat16  # kept as bf16
    d = json.loads((tmp_path / "m" / "config.json").read_text())
    assert d["rope_scaling"]["rope_type"] == "llama3"


def test_newer_rope_parameters_key():
    d = TINY.to_hf_dict()
    rs = d.pop("rope_scaling")
    d.pop("rope_theta")
    d["rope_parameters"] = {**rs, "rope_theta": 10000.0}
    assert LlamaConfig.from_hf_dict(d) == TINY


def test_sharded_checkpoint_loads(tmp_path):
    ck = _ck(TINY)
    write_hf(ck, tmp_path / "m", dtype=torch.float32, max_shard_bytes=40_000)
    assert len(list((tmp_path / "m").glob("model-*.safetensors"))) > 2
    back = load_checkpoint(tmp_path / "m", load_tokenizer=False)
    for k, v in ck.tensors.items():
        assert torch.equal(back.tensors[k], v), k


def test_writer_is_deterministic(tmp_path):
    ck = _ck(TINY)
    write_hf(ck, tmp_path / "a", dtype=torch.bfloat16)
    write_hf(ck, tmp_path / "b", dtype=torch.bfloat16)
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_writer_refuses_existing_and_keeps_it(tmp_path):
    from edge.errors import EdgeError

    ck = _ck(TINY)
    out = write_hf(ck, tmp_path / "m", dtype=torch.float32)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(EdgeError, match="--force"):
        write_hf(ck, out, dtype=torch.bfloat16)
    assert (out / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp dirs left behind


def test_interrupted_write_leaves_previous_output(tmp_path, monkeypatch):
    import export.writers as w

    ck = _ck(TINY)
    out = write_hf(ck, tmp_path / "m", dtype=torch.float32)
    before = (out / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(w, "write_safetensors", boom)
    with pytest.raises(KeyboardInterrupt):
        w.write_hf(ck, out, dtype=torch.bfloat16, force=True)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@torch.inference_mode()
@pytest.mark.parametrize("chunk", [7, 8192])
def test_logits_by_layer_are_the_forward_calls_logits_bit_for_bit(monkeypatch, chunk):
    """The reference run layer by layer over several windows (each layer's weights upcast once)
    gives each window's forward logits exactly, with the output layer in row chunks or whole,
    and reports its progress up to all of the work."""
    import export.model as em
    import export.model.llama as llama

    monkeypatch.setattr(llama, "UPCAST_CHUNK_ROWS", chunk)
    sd = random_state_dict(TINY, 5, torch.bfloat16)
    ref = em.reference_model(TINY, sd, max_seq_len=32)
    g = torch.Generator().manual_seed(5)
    wins = [torch.randint(0, TINY.vocab_size, (1, 24), generator=g) for _ in range(3)]
    want = [ref(w) for w in wins]
    done = []
    got = list(ref.logits_by_layer(wins, done.append))
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and len(got) == len(want)
    assert done == sorted(done) and done[-1] == pytest.approx(1.0)
    assert len(done) == TINY.num_layers + len(wins)
    assert all(m.held is None for m in ref.modules() if isinstance(m, llama.Fp32Linear))


@torch.inference_mode()
def test_reference_model_shares_bf16_weights_and_computes_fp32(monkeypatch):
    """The scoring reference holds the checkpoint's bf16 tensors (no fp32 copy) and gives the
    logits of an fp32 copy, also with the output layer upcast in small row chunks."""
    import export.model as em
    import export.model.llama as llama

    sd = random_state_dict(TINY, 4, torch.bfloat16)
    ids = torch.randint(0, TINY.vocab_size, (1, 20), generator=torch.Generator().manual_seed(4))
    want = LlamaModel.from_state_dict(TINY, sd, torch.float32, max_seq_len=32)(ids)
    monkeypatch.setattr(llama, "UPCAST_CHUNK_ROWS", 7)
    ref = em.reference_model(TINY, sd, max_seq_len=32)
    assert ref.model.layers[1].mlp.up_proj.weight.data_ptr() == \
        sd["model.layers.1.mlp.up_proj.weight"].data_ptr()
    got = ref(ids)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5)
