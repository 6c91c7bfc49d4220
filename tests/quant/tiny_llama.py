"""A tiny random Llama for fast quantization tests."""

import torch

from edge.config import LlamaConfig
from export.model import LlamaModel, random_state_dict

TINY = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=256,
                   tie_word_embeddings=True)


def tiny_model(seed=0):
    sd = {k: v.float() for k, v in random_state_dict(TINY, seed, torch.float32).items()}
    sd["model.embed_tokens.weight"] *= 20  # embeddings at a realistic scale for a 64-d model
    return LlamaModel.from_state_dict(TINY, sd, max_seq_len=64)
