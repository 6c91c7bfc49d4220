"""Structured pruning on tiny random models (fast), plus one real-model quality gate (slow).

Exactness: removing a structure must equal keeping it with its output zeroed (FFN channels:
their down_proj columns; KV groups: their query heads' o_proj columns; blocks: their o_proj and
down_proj), to float rounding. Choice: on a model where some structures are made unimportant,
importance must find them and beat random. Vocabulary: the pruned tokenizer reproduces the
corpus token for token and the pruned logits are the original ones at the kept ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edge.config import LlamaConfig
from export.cli import main as export_main
from export.pruning.heal import heal
from export.loaders import load_checkpoint
from export.loaders.common import Checkpoint
from export.model import LlamaModel, random_state_dict
from export.pruning import PruneError, check_spec, parse_prune, prune_checkpoint
from export.pruning.structure import (
    _activation_stats,
    choose_ffn,
    choose_groups,
    choose_layers,
    keep_ffn,
    keep_groups,
    prune_tensors,
    remove_layers,
)
from export.pruning.vocab import prune_tokenizer
from export.writers import write_hf

REPO = Path(__file__).resolve().parents[3]
CALIB = REPO / "quant" / "data" / "calibration.txt"
EVAL_TEXT = REPO / "quant" / "data" / "eval.txt"
EXACT_ATOL = 1e-4  # fp32, the same sums in a different order
# Constructed case: half the FFN channels (or one block) made 100x weaker than the rest.
WEAK = 0.01
# SmolLM2 with 2 of 30 blocks removed by importance (blocks 14 and 25): measured mean KLD 0.34
# on 4 windows of 256 tokens of the packaged evaluation text (random pairs, seeds 0-2: 0.35,
# 0.36, 0.46).
SMOL_LAYERS2_MAX_KLD = 0.4

CFG = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=4,
                  num_heads=6, num_kv_heads=3, head_dim=16, max_position_embeddings=512,
                  rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1,
                  eos_token_ids=(2,))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: threads only add contention on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tensors(cfg=CFG, seed=0) -> dict:
    sd = {k: v.float() for k, v in random_state_dict(cfg, seed, torch.float32).items()}
    sd["model.embed_tokens.weight"] *= 20  # a realistic activation scale for 64 dims
    return sd


def _ids(n=4, t=48, vocab=128, seed=1):
    return torch.randint(3, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def _logits(cfg, sd, ids):
    return LlamaModel.from_state_dict(cfg, sd)(ids)


def _kld(ref, got):
    lr, lg = torch.log_softmax(ref, -1), torch.log_softmax(got, -1)
    return float((lr.exp() * (lr - lg)).sum(-1).mean())


# ---------------------------------------------------------------------------- spec and errors
@pytest.mark.parametrize("text, fragment", [
    ("ffn=1.5", "out of range"), ("ffn=-0.1", "out of range"), ("ffn=abc", "not a number"),
    ("layers=two", "not an integer"), ("depth=3", "unknown key"), ("layers", "needs a value"),
    ("ffn-per-layer", "needs ffn"), ("vocab=/nonexistent/corpus.txt", "not found"),
    ("layers=-1", ">= 0"), ("multiple=0", "multiple=0"),
])
def test_bad_specs(text, fragment):
    with pytest.raises(PruneError, match=fragment):
        parse_prune(text)


def test_empty_vocab_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(PruneError, match="empty"):
        parse_prune(f"vocab={tmp_path / 'empty.txt'}")


@pytest.mark.parametrize("text, fragment", [
    ("layers=4", "no decoder block"), ("heads=3", "leave none"),
    ("ffn=0.25,multiple=48", "not a multiple of 48"), ("ffn=0.01,multiple=8", "less than one"),
    ("ffn=0.95,multiple=64", "without FFN channels"),
])
def test_requests_the_model_cannot_take(text, fragment):
    with pytest.raises(PruneError, match=fragment):
        check_spec(parse_prune(text), CFG)


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("method", ["importance", "magnitude", "random"])
@pytest.mark.parametrize("text", ["layers=2", "ffn=0.25,multiple=8", "heads=1",
                                  "ffn=0.5,multiple=8,ffn-per-layer",
                                  "layers=1,ffn=0.25,heads=2,multiple=16"])
def test_shapes_and_config(text, method):
    spec = parse_prune(text, method)
    cfg, sd = prune_tensors(CFG, _tensors(), spec, _ids())
    assert {k: tuple(v.shape) for k, v in sd.items()} == cfg.expected_shapes()
    assert cfg.num_layers == CFG.num_layers - spec.layers
    assert cfg.num_kv_heads == CFG.num_kv_heads - spec.heads
    assert cfg.num_heads == cfg.num_kv_heads * (CFG.num_heads // CFG.num_kv_heads)
    widths = [cfg.ffn_size(i) for i in range(cfg.num_layers)]
    assert all(w % spec.multiple == 0 for w in widths)
    if spec.ffn_per_layer:
        assert sum(widths) == CFG.intermediate_size * CFG.num_layers * (1 - spec.ffn)
        assert cfg.intermediate_size == max(widths)
    elif spec.ffn:
        assert cfg.layer_intermediate_sizes is None
        assert widths == [round(CFG.intermediate_size * (1 - spec.ffn))] * cfg.num_layers
    assert torch.isfinite(_logits(cfg, sd, _ids(1))).all()


def test_per_layer_widths_follow_importance():
    """A layer whose FFN is made weak gives up most of the channels under a global ranking."""
    sd = _tensors()
    sd["model.layers.2.mlp.down_proj.weight"] *= WEAK
    cfg, _ = prune_tensors(CFG, sd, parse_prune("ffn=0.25,multiple=8,ffn-per-layer"), _ids())
    widths = list(cfg.layer_intermediate_sizes)
    assert widths[2] == min(widths) and widths[2] <= 128 - 96


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("method", ["importance", "magnitude", "random"])
def test_ffn_pruning_equals_zeroed_channels(method):
    sd, ids = _tensors(), _ids()
    spec = parse_prune("ffn=0.5,multiple=8,ffn-per-layer", method)
    keep = choose_ffn(CFG, sd, spec, _activation_stats(CFG, sd, ids))
    cfg, pruned = keep_ffn(CFG, sd, keep)
    zeroed = dict(sd)
    for i, k in enumerate(keep):
        mask = torch.ones(CFG.intermediate_size, dtype=torch.bool)
        mask[k] = False
        w = sd[f"model.layers.{i}.mlp.down_proj.weight"].clone()
        w[:, mask] = 0
        zeroed[f"model.layers.{i}.mlp.down_proj.weight"] = w
    diff = (_logits(cfg, pruned, ids) - _logits(CFG, zeroed, ids)).abs().max()
    assert diff < EXACT_ATOL
    assert (_logits(CFG, sd, ids) - _logits(CFG, zeroed, ids)).abs().max() > 0.1  # it did prune


@pytest.mark.parametrize("method", ["importance", "magnitude", "random"])
def test_head_pruning_equals_zeroed_groups(method):
    sd, ids = _tensors(), _ids()
    keep = choose_groups(CFG, sd, parse_prune("heads=1", method), _activation_stats(CFG, sd, ids))
    cfg, pruned = keep_groups(CFG, sd, keep)
    per = (CFG.num_heads // CFG.num_kv_heads) * CFG.head_dim
    zeroed = dict(sd)
    for i, k in enumerate(keep):
        w = sd[f"model.layers.{i}.self_attn.o_proj.weight"].clone()
        for g in set(range(CFG.num_kv_heads)) - set(k.tolist()):
            w[:, g * per:(g + 1) * per] = 0
        zeroed[f"model.layers.{i}.self_attn.o_proj.weight"] = w
    assert (_logits(cfg, pruned, ids) - _logits(CFG, zeroed, ids)).abs().max() < EXACT_ATOL


def test_layer_pruning_equals_zeroed_blocks():
    sd, ids = _tensors(), _ids()
    cfg, pruned = remove_layers(CFG, sd, [0, 2])
    zeroed = dict(sd)
    for i in (0, 2):
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            zeroed[f"model.layers.{i}.{name}.weight"] = torch.zeros_like(
                sd[f"model.layers.{i}.{name}.weight"])
    assert cfg.num_layers == 2
    assert (_logits(cfg, pruned, ids) - _logits(CFG, zeroed, ids)).abs().max() < EXACT_ATOL


# ---------------------------------------------------------------------------- choice
def test_importance_finds_the_weak_block():
    sd = _tensors()
    for name in ("self_attn.o_proj", "mlp.down_proj"):
        sd[f"model.layers.2.{name}.weight"] *= WEAK
    drop, scores = choose_layers(CFG, sd, 1, "importance", _ids(), 0)
    assert drop == [2] and scores[2] < 0.1 * min(s for i, s in scores.items() if i != 2)


def test_importance_beats_random_and_magnitude_on_ffn():
    """Half the channels have the largest weights but are never active on the data; the other
    half carry the output. Every residual vector has one dominant direction (a constant
    embedding offset, like the massive activations of trained models), and the dead channels'
    gate rows point against it: silu(strongly negative) ~ 0. Magnitude sees the big weights,
    importance sees the activations."""
    sd, ids = _tensors(), _ids()
    sd["model.embed_tokens.weight"][:, 0] += 8.0  # ~20x the other dimensions
    dead = torch.arange(0, CFG.intermediate_size, 2)
    for i in range(CFG.num_layers):
        p = f"model.layers.{i}.mlp."
        sd[p + "gate_proj.weight"][dead] *= 3
        sd[p + "gate_proj.weight"][dead, 0] = -3.0
        sd[p + "up_proj.weight"][dead] *= 3
        sd[p + "down_proj.weight"][:, dead] *= 3
    ref = _logits(CFG, sd, ids)
    kld = {}
    for method in ("importance", "magnitude", "random"):
        cfg, pruned = prune_tensors(CFG, sd, parse_prune("ffn=0.5,multiple=8", method), ids)
        kld[method] = _kld(ref, _logits(cfg, pruned, ids))
    # Measured: importance 9e-8, magnitude 2e-3, random 1e-3 (a random model's logits are
    # flat, so every KLD is small; the ratio is what matters).
    assert min(kld["magnitude"], kld["random"]) > 1e-4
    assert kld["importance"] < 0.01 * min(kld["magnitude"], kld["random"])


def test_random_is_seeded():
    a = prune_tensors(CFG, _tensors(), parse_prune("ffn=0.5,multiple=8,seed=3", "random"), None)
    b = prune_tensors(CFG, _tensors(), parse_prune("ffn=0.5,multiple=8,seed=3", "random"), None)
    c = prune_tensors(CFG, _tensors(), parse_prune("ffn=0.5,multiple=8,seed=4", "random"), None)
    key = "model.layers.0.mlp.gate_proj.weight"
    assert torch.equal(a[1][key], b[1][key]) and not torch.equal(a[1][key], c[1][key])


# ---------------------------------------------------------------------------- vocabulary
@pytest.fixture(scope="module")
def tiny_tok():
    """A byte-level BPE with chat specials, trained on the packaged calibration text."""
    from tokenizers import Tokenizer as HF, decoders, models, pre_tokenizers, trainers

    from edge.tokenizer import Tokenizer

    hf = HF(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([CALIB.read_text()], trainer)
    return Tokenizer(hf, bos_id=1, eos_ids=[2], add_bos=False, source="tiny",
                     chat_template="{% for m in messages %}<|im_start|>{{ m.role }}\n"
                                   "{{ m.content }}<|im_end|>\n{% endfor %}")


@pytest.fixture(scope="module")
def tiny_ck(tiny_tok):
    cfg = CFG.replace(vocab_size=tiny_tok.vocab_size, num_layers=3)
    return Checkpoint(Path("tiny"), "random", cfg, _tensors(cfg), tiny_tok)


def test_vocab_pruning_round_trip(tiny_ck, tmp_path):
    tok = tiny_ck.tokenizer
    corpus = "The river rose three metres.\nNobody expected the bridge to hold, but it did."
    (tmp_path / "c.txt").write_text(corpus)
    pk, rep = prune_checkpoint(tiny_ck, parse_prune(f"vocab={tmp_path / 'c.txt'}"))
    new = pk.tokenizer
    assert rep.vocab_after == new.vocab_size == pk.config.vocab_size < tok.vocab_size
    old_ids, new_ids = tok.encode(corpus), new.encode(corpus)
    keep = {old: i for i, old in enumerate(
        [tok._hf.token_to_id(new._hf.id_to_token(j)) for j in range(new.vocab_size)])}
    assert new_ids == [keep[i] for i in old_ids]
    assert new.decode(new_ids) == corpus
    for name in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert new.id_of(name) is not None
    assert new.bos_id == keep[tok.bos_id] and pk.config.eos_token_ids == (keep[2],)
    # Other text still encodes and decodes exactly, in more pieces.
    other = "Zebras quietly juggle 42 ümlauts"
    assert new.decode(new.encode(other)) == other
    # Logits at the kept ids are the original ones (untied output layer sliced too).
    kept = torch.tensor(sorted(keep, key=keep.get))
    x_old, x_new = torch.tensor([old_ids]), torch.tensor([new_ids])
    ref = _logits(tiny_ck.config, tiny_ck.tensors, x_old)[..., kept]
    assert (_logits(pk.config, pk.tensors, x_new) - ref).abs().max() < EXACT_ATOL


def test_vocab_closure_keeps_merge_chains(tiny_tok):
    """Seeding with one long token keeps the tokens its merges are built from."""
    long_tok = max((t for t in tiny_tok._hf.get_vocab() if tiny_tok.id_of(t) is None), key=len)
    new, keep = prune_tokenizer(tiny_tok, {tiny_tok._hf.token_to_id(long_tok)})
    text = long_tok.replace("Ġ", " ")
    assert len(new.encode(text)) == 1 and new.decode(new.encode(text)) == text


def test_vocab_pruning_smollm2_tokenizer(smol, tmp_path):
    """The real tokenizer (49k tokens): the packaged sample text survives token for token."""
    from export.pruning.vocab import plan_vocab

    sample = REPO / "edge" / "data" / "sample.txt"
    cfg = LlamaConfig(vocab_size=smol.vocab_size, hidden_size=8, intermediate_size=8,
                      num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8, bos_token_id=1,
                      eos_token_ids=(2,))
    plan = plan_vocab(Checkpoint(Path("smol"), "random", cfg, {}, smol), sample)
    assert len(plan.keep) < smol.vocab_size // 10
    text = sample.read_text()
    assert plan.tokenizer.decode(plan.tokenizer.encode(text)) == text
    assert plan.tokenizer.id_of("<|im_start|>") is not None


# ---------------------------------------------------------------------------- healing
def test_healing_lowers_the_kl():
    torch.manual_seed(0)
    sd, ids = _tensors(), _ids(4, 32)
    cfg, pruned = prune_tensors(CFG, sd, parse_prune("ffn=0.5,multiple=8", "random"), None)
    before = _kld(_logits(CFG, sd, ids), _logits(cfg, pruned, ids))
    healed, rep = heal(cfg, pruned, CFG, sd, ids, steps=12, lr=1e-3)
    after = _kld(_logits(CFG, sd, ids), _logits(cfg, healed, ids))
    assert rep["steps"] == 12 and rep["kl_last"] < rep["kl_first"]
    assert after < 0.8 * before  # measured: 0.0075 -> 0.0049
    assert set(healed) == set(pruned)


def test_healing_stops_at_the_budget():
    sd, ids = _tensors(), _ids(2, 32)
    cfg, pruned = prune_tensors(CFG, sd, parse_prune("heads=1", "random"), None)
    _, rep = heal(cfg, pruned, CFG, sd, ids, steps=10_000, budget=0.5)
    assert rep["stopped_by"] == "budget" and 0 < rep["steps"] < 10_000


# ---------------------------------------------------------------------------- written checkpoint
@pytest.fixture(scope="module")
def tiny_hf(tiny_ck, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "hf"
    write_hf(tiny_ck, out, dtype=torch.float32)
    return out


def _cli(args):
    r = CliRunner().invoke(export_main, [str(a) for a in args])
    return r.exit_code, r.output


def test_prune_command_writes_a_loadable_checkpoint(tiny_hf, tmp_path):
    out = tmp_path / "pruned"
    code, text = _cli(["prune", tiny_hf, "-o", out, "--prune",
                       "layers=1,ffn=0.5,heads=1,multiple=16,ffn-per-layer", "--json",
                       "--threads", "1"])
    assert code == 0, text
    rep = json.loads((out / "prune_report.json").read_text())
    assert rep["params_after"] < rep["params_before"] and len(rep["removed_layers"]) == 1
    ck = load_checkpoint(out)
    assert ck.config.num_layers == 2 and ck.config.num_kv_heads == 2
    assert ck.config.layer_intermediate_sizes is not None
    assert json.loads((out / "config.json").read_text())["layer_intermediate_sizes"] == \
        list(ck.config.layer_intermediate_sizes)
    ids = torch.tensor([ck.tokenizer.encode("A short test sentence.")])
    assert torch.isfinite(_logits(ck.config, ck.tensors, ids)).all()
    # and it flows into the export pipeline like any checkpoint
    code, text = _cli(["export", out, "-o", tmp_path / "exp", "--target", "hf"])
    assert code == 0, text


def test_export_with_prune_stage(tiny_hf, tmp_path):
    code, text = _cli(["export", tiny_hf, "-o", tmp_path / "exp", "--target", "hf",
                       "--prune", "ffn=0.25,multiple=16,heads=1", "--prune-method", "magnitude",
                       "--json"])
    assert code == 0, text
    rep = json.loads((tmp_path / "exp" / "export_report.json").read_text())
    assert [s["stage"] for s in rep["stages"]][:2] == ["load", "prune"]
    assert rep["pruning"]["params_after"] < rep["pruning"]["params_before"]
    assert rep["artifacts"]["hf"]["top1_agreement"] == 1.0
    cfg = load_checkpoint(tmp_path / "exp" / "hf").config
    assert cfg.intermediate_size == 96 and cfg.num_kv_heads == 2


def test_pruned_model_runs_in_the_edge_runtime(tiny_hf, tmp_path):
    """Every kind at once, per-layer widths included, quantized and lowered to the edge
    artifact; the verify stage runs it on the edge kernels against the pruned reference."""
    sample = REPO / "edge" / "data" / "sample.txt"
    code, text = _cli(["export", tiny_hf, "-o", tmp_path / "exp", "--target", "edge",
                       "--recipe", "int8", "--prune",
                       f"layers=1,ffn=0.5,multiple=32,ffn-per-layer,heads=1,vocab={sample}"])
    assert code == 0, text
    rep = json.loads((tmp_path / "exp" / "export_report.json").read_text())
    edge = rep["artifacts"]["edge"]
    assert edge["top1_agreement"] == 1.0 and edge["max_abs_logit_diff"] < 1e-3
    from edge.artifact import load_artifact

    art = load_artifact(tmp_path / "exp" / "edge")
    assert art.config.layer_intermediate_sizes is not None and art.config.num_kv_heads == 2
    assert art.config.vocab_size == rep["pruning"]["vocab_after"] < rep["pruning"]["vocab_before"]
    text = sample.read_text()
    assert art.tokenizer.decode(art.tokenizer.encode(text)) == text


def test_pruned_export_to_onnx(tiny_hf, tmp_path):
    """Every kind at once, per-layer FFN widths and vocabulary included, quantized with the
    mobile schemes through the CLI; the verify stage runs the artifact in onnxruntime against the
    pruned, quantized reference. (Both mobile targets' own parity tests also run on a pruned
    model with per-layer widths: targets/test_xnnpack_target.py, targets/test_onnx_target.py.)"""
    pytest.importorskip("onnxruntime")
    sample = REPO / "edge" / "data" / "sample.txt"
    code, text = _cli(["export", tiny_hf, "-o", tmp_path / "exp", "--target", "onnx",
                       "--recipe", REPO / "benchmarks" / "recipes" / "mobile-rtn.json",
                       "--max-context", "256", "--prune",
                       f"layers=1,ffn=0.5,multiple=32,ffn-per-layer,heads=1,vocab={sample}"])
    assert code == 0, text
    rep = json.loads((tmp_path / "exp" / "export_report.json").read_text())
    assert len(set(rep["pruning"]["ffn_sizes"])) > 1  # the layers kept different widths
    from export.pipeline.verify import VERIFY_MIN_LOGIT_CORR

    info = rep["artifacts"]["onnx"]
    assert info["logit_correlation"] >= VERIFY_MIN_LOGIT_CORR
    assert info["quality"]["kld_mean"] < 0.05
    cfg = json.loads((tmp_path / "exp" / "onnx" / "genai_config.json").read_text())["model"]
    assert cfg["decoder"]["num_hidden_layers"] == 2 and cfg["decoder"]["num_key_value_heads"] == 2
    assert cfg["vocab_size"] == rep["pruning"]["vocab_after"] < rep["pruning"]["vocab_before"]


@pytest.mark.parametrize("args, fragment", [
    (["--prune", "layers=3"], "no decoder block"),
    (["--prune", "ffn=2"], "out of range"),
    (["--prune", "heads=3"], "leave none"),
    (["--prune", "vocab=/nonexistent.txt"], "not found"),
    (["--prune", "layers=0"], "removes nothing"),
    (["--prune", "layers=1", "--heal-budget", "5"], "--heal-steps"),
    (["--prune", "layers=1", "--prune-method", "best"], "best"),
])
def test_prune_command_errors(tiny_hf, tmp_path, args, fragment):
    out = tmp_path / "out"
    code, text = _cli(["prune", tiny_hf, "-o", out, *args])
    assert code != 0 and fragment in text.strip().splitlines()[-1] and "Traceback" not in text
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_importance_needs_a_tokenizer():
    ck = Checkpoint(Path("mem"), "random", CFG, _tensors())
    with pytest.raises(PruneError, match="--prune-method magnitude"):
        prune_checkpoint(ck, parse_prune("layers=1"))
    pk, _ = prune_checkpoint(ck, parse_prune("layers=1", "magnitude"))
    assert pk.config.num_layers == CFG.num_layers - 1


# ---------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_smollm2_two_layers_by_importance(smollm2_ck):
    from export.evaluate import eval_with_model

    pk, rep = prune_checkpoint(smollm2_ck, parse_prune("layers=2"))
    assert pk.config.num_layers == 28 and rep.params_after < rep.params_before
    ref = LlamaModel.from_state_dict(smollm2_ck.config, smollm2_ck.tensors, max_seq_len=256)
    model = LlamaModel.from_state_dict(pk.config, pk.tensors, max_seq_len=256)
    r = eval_with_model(model, ref, smollm2_ck.tokenizer, EVAL_TEXT, 256, max_windows=4)
    assert r["kld_mean"] < SMOL_LAYERS2_MAX_KLD
