"""Structured pruning (layers, FFN channels, KV groups, vocabulary) with optional healing: a
smaller, still standard Llama. spec.py parses requests, structure.py chooses and removes,
vocab.py rebuilds the tokenizer, heal.py distils the pruned model from the original."""

from .spec import METHODS, PruneError, PruneSpec, check_spec, parse_prune
from .structure import PruneReport, describe, prune_checkpoint

__all__ = ["METHODS", "PruneError", "PruneReport", "PruneSpec", "check_spec", "describe",
           "parse_prune", "prune_checkpoint"]
