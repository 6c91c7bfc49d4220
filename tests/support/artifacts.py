"""A tiny random edge artifact written by the product's own writer: 2 layers, hidden 64, 4-bit
linears (symmetric and asymmetric) with int8 activations (row sums stored), an int8 embedding
tied to an int8-activation output layer, float32 norms, a byte-level BPE tokenizer with chat
specials."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from edge.artifact import ACT_INT8, TensorEntry, write_artifact
from edge.config import LlamaConfig
from edge.packing import from_canonical
from edge.tokenizer import BYTE_TO_CHAR, Tokenizer

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGES = (("t", "h"), ("Ġ", "t"), ("e", "r"), ("i", "n"), ("Ġ", "a"))
TOKENIZER_VOCAB = 256 + len(MERGES) + len(SPECIALS)  # 264
CFG = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=2, num_kv_heads=1, head_dim=32, max_position_embeddings=512,
                  tie_word_embeddings=True, eos_token_ids=(256 + len(MERGES),))
MAX_CONTEXT = 256
GROUP = 32
# Linears stored as symmetric 4-bit (no zero points); the others are asymmetric.
SYMMETRIC = ("q_proj", "o_proj", "gate_proj")
EMB = "model.embed_tokens"


def make_tokenizer() -> Tokenizer:
    """Byte-level BPE: the 256 byte symbols, a few merges, then the chat specials."""
    vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=list(MERGES)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return Tokenizer(hf, bos_id=None, eos_ids=[hf.token_to_id("<|endoftext|>")],
                     source="test tokenizer")


def make_weights(cfg: LlamaConfig = CFG, seed: int = 0):
    """(weights, norms) in kernel layout, quantized the way an 8da4w export stores them."""
    rng = np.random.default_rng(seed)

    def scales(n, groups, base):
        return (base * rng.uniform(0.5, 1.5, (n, groups))).astype(np.float16).astype(np.float32)

    weights: dict[str, TensorEntry] = {}
    n, k = cfg.vocab_size, cfg.hidden_size
    emb = from_canonical(rng.integers(-127, 128, (n, k), dtype=np.int8), scales(n, 1, 0.02),
                         None, 8, k, act_int8=True)
    weights[EMB] = TensorEntry(emb, "int8_pc_sym", None)
    weights["lm_head"] = TensorEntry(None, "int8_pc_sym", ACT_INT8, tied_to=EMB)
    norms = {"model.norm": rng.uniform(0.8, 1.2, k).astype(np.float32)}
    for name, shape in cfg.expected_shapes().items():
        name = name.removesuffix(".weight")
        if name == EMB or name in norms:
            continue
        if len(shape) == 1:
            norms[name] = rng.uniform(0.8, 1.2, shape).astype(np.float32)
            continue
        n, k = shape
        g = k // GROUP
        if name.endswith(SYMMETRIC):
            p = from_canonical(rng.integers(-8, 8, (n, k), dtype=np.int8),
                               scales(n, g, 0.3 / np.sqrt(k)), None, 4, GROUP, act_int8=True)
            scheme = "int4_g32_sym"
        else:
            p = from_canonical(rng.integers(0, 16, (n, k), dtype=np.uint8),
                               scales(n, g, 0.3 / np.sqrt(k)),
                               rng.integers(4, 12, (n, g), dtype=np.uint8), 4, GROUP,
                               act_int8=True)
            scheme = "int4_g32_asym"
        weights[name] = TensorEntry(p, scheme, ACT_INT8)
    return weights, norms


def write(dest, cfg: LlamaConfig = CFG, seed: int = 0, tokenizer=None,
          max_context: int = MAX_CONTEXT, **kw) -> Path:
    weights, norms = make_weights(cfg, seed)
    return write_artifact(dest, cfg, weights, norms, tokenizer or make_tokenizer(), "chatml",
                          max_context, recipe="8da4w", **kw)
