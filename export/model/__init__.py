"""The torch model: one Llama definition (llama.py), the static chunk program the NPU targets
lower (static.py) and the reference engine (reference.py)."""

from .llama import (KVCache, LlamaModel, RMSNorm, Step, reference_model, random_state_dict,
                    remodel, rope_tables, rotate_half, run_layers)

__all__ = ["KVCache", "LlamaModel", "RMSNorm", "Step", "reference_model", "random_state_dict",
           "remodel", "rope_tables", "rotate_half", "run_layers"]
