"""Open any MODEL the CLI accepts and return an engine with sessions.

Checkpoints (HF directory, Meta directory, GGUF file, or a known model name) run on the torch
reference path, which lives in the toolchain extra; without it the user is told which extra to
install.
"""

from __future__ import annotations

from .errors import require


def open_model(path: str, max_context: int | None = None, threads: int | None = None):
    require("torch", "running a checkpoint on the torch reference path", "export")
    from export.loaders import load_checkpoint
    from export.reference import TorchEngine

    return TorchEngine(load_checkpoint(path), max_context=max_context, threads=threads)
