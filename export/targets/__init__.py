"""Lowering targets: one registry, every target the same small interface.

A target module defines `TARGET = Target(...)`:
  check_request(cfg, recipe)   refuse an unsupported combination before any work (recipe: the
                               parsed RecipeChoice)
  stage(st)                    write into st.workdir, set st.artifacts[name] and
                               st.report["artifacts"][name] (with "exact": whether the artifact
                               computes the reference's arithmetic exactly)
  artifact_logits(path, n)     a function (1, n) ids -> (n, vocab) logits on the artifact's own
                               runtime, for verification and quality; None for targets whose
                               stage checks and scores the artifact itself (simulated vendor
                               programs)
  from_quantized               lowers from the quantized model alone, so the float weights may
                               be released once quantization is done
A stage that completes its part but cannot finish the artifact (a vendor compiler that is not
installed) appends a one-line message to st.deferred_errors: the other artifacts and the report
are still written, then the export fails with that message.

Modules are imported when a target is asked for (xnnpack pulls in ExecuTorch, onnx onnx).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge.errors import EdgeError

MODULES = {"edge": "export.targets.edge", "hf": "export.targets.hf",
           "gguf": "export.targets.gguf", "xnnpack": "export.targets.xnnpack",
           "onnx": "export.targets.onnx", "onnx-qdq": "export.targets.onnx.qdq",
           "qnn": "export.targets.qnn", "mediatek": "export.targets.mediatek"}
TARGETS = tuple(MODULES)


@dataclass(frozen=True)
class Target:
    name: str
    stage: Callable
    artifact_logits: Callable[[Path, int], Callable] | None
    check_request: Callable = lambda cfg, recipe: None
    from_quantized: bool = False


def get(name: str) -> Target:
    if name not in MODULES:
        raise EdgeError(f"unknown target {name!r}; available: {', '.join(TARGETS)}")
    return importlib.import_module(MODULES[name]).TARGET
