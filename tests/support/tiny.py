"""Tiny random Llamas and a tokenizer for them: what the export, lowering and quantization
tests build their models from.

CFG: 2 layers, hidden 64, GQA (4 query heads over 2 KV heads), llama3 rope scaling, separate
output layer, a 272-token byte-level BPE vocabulary (tiny_tokenizer). TINY: a tied-embedding
variant for quantization tests (tiny_tied_model)."""

from __future__ import annotations

import torch

from edge.config import LlamaConfig, RopeScaling
from edge.tokenizer import BYTE_TO_CHAR, Tokenizer
from export.model import LlamaModel, random_state_dict
from quant.apply import quantize
from quant.recipes import Recipe

TOKENS = list(BYTE_TO_CHAR) + ["Ġt", "he", "Ġthe", "<|im_start|>", "<|im_end|>",
                               "<|endoftext|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
            "{% endfor %}")
CFG = LlamaConfig(vocab_size=272, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=512,
                  rope_theta=500000.0, tie_word_embeddings=False,
                  rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_position_embeddings=64),
                  bos_token_id=261, eos_token_ids=(260,))


def tiny_tokenizer() -> Tokenizer:
    fields = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
              "tokenizer.ggml.tokens": TOKENS,
              "tokenizer.ggml.token_type": [1] * 259 + [3, 3, 3],
              "tokenizer.ggml.merges": ["Ġ t", "h e", "Ġt he"],
              "tokenizer.ggml.bos_token_id": 261, "tokenizer.ggml.eos_token_id": 260,
              "tokenizer.chat_template": TEMPLATE}
    return Tokenizer.from_gguf_fields(fields, "tiny")


def tiny_model(cfg=CFG, seed=0) -> LlamaModel:
    sd = {k: v.float() * (4.0 if k.endswith("embed_tokens.weight") else 1.0)
          for k, v in random_state_dict(cfg, seed, torch.float32).items()}
    return LlamaModel.from_state_dict(cfg, sd, max_seq_len=128)


def recipe(weight: dict, act: dict | None = None, pattern="*") -> Recipe:
    config = {"weight": {"type": "int", **weight}, "algorithm": "rtn"}
    if act is not None:
        config["act"] = act
    return Recipe.from_dict({"name": "test", "rules": [{"pattern": pattern, "config": config}]})


def quantized(r: Recipe, cfg=CFG, pruned: bool = False) -> LlamaModel:
    m = pruned_tiny_model() if pruned else tiny_model(cfg)
    quantize(m, r, None)
    return m


# What the mobile targets' parity tests also run on: CFG with a third block, then one block, one
# of the two KV groups (with its two query heads) and half of the FFN channels removed by
# importance on random calibration ids, the widths chosen per layer (export/prune.py): a smaller
# Llama whose two layers have different FFN widths.
PRUNE_SPEC = "layers=1,heads=1,ffn=0.5,multiple=32,ffn-per-layer"


def pruned_tiny_model(seed=0) -> LlamaModel:
    from export.pruning import parse_prune
    from export.pruning.structure import prune_tensors

    base = CFG.replace(num_layers=3)
    sd = {k: v.float() * (4.0 if k.endswith("embed_tokens.weight") else 1.0)
          for k, v in random_state_dict(base, seed, torch.float32).items()}
    ids = torch.randint(0, CFG.vocab_size, (2, 48), generator=torch.Generator().manual_seed(7))
    cfg, sd = prune_tensors(base, sd, parse_prune(PRUNE_SPEC), ids)
    assert (cfg.num_layers, cfg.num_kv_heads, cfg.num_heads) == (2, 1, 2)
    widths = [cfg.ffn_size(i) for i in range(cfg.num_layers)]
    assert sum(widths) == 128 and widths[0] != widths[1], widths
    return LlamaModel.from_state_dict(cfg, sd, max_seq_len=128)


TINY = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=256,
                   tie_word_embeddings=True)


def tiny_tied_model(seed=0):
    sd = {k: v.float() for k, v in random_state_dict(TINY, seed, torch.float32).items()}
    sd["model.embed_tokens.weight"] *= 20  # embeddings at a realistic scale for a 64-d model
    return LlamaModel.from_state_dict(TINY, sd, max_seq_len=64)
