"""What an export is asked to do (ExportConfig) and what its stages pass along (ExportState)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..quantize import NO_RECIPE, RecipeChoice


@dataclass
class ExportConfig:
    checkpoint: str
    out: Path
    recipe: str = "none"  # --recipe as given; parsed once into ExportState.recipe
    targets: tuple[str, ...] = ("edge",)
    dtype: str = "auto"  # unquantized weights: auto keeps the source precision
    force: bool = False
    allow_pickle: bool = False
    calib: Path | None = None
    max_context: int | None = None  # edge target (default: min(model, 4096))
    prune: str | None = None  # "layers=N,ffn=F,heads=N,vocab=FILE" (see export/pruning)
    prune_method: str = "importance"
    heal_steps: int = 0
    heal_budget: float | None = None  # seconds
    keep_model: bool = False  # keep the quantized torch model on the returned state (its
    # memory stays in use through the quality stage)
    memory_check: bool = True  # refuse early when the estimated peak exceeds available memory
    cache: bool = True  # read / write the quantization cache (export/quant_cache.py)


@dataclass
class ExportState:
    cfg: ExportConfig
    recipe: RecipeChoice = NO_RECIPE  # the parsed --recipe
    applied: object = None  # quant.recipes.Recipe as applied (exact rules), once quantized
    workdir: Path | None = None
    checkpoint: object = None  # export.loaders.Checkpoint
    model: object = None  # the quantized LlamaModel (fake-quant reference), when a recipe ran
    artifacts: dict[str, Path] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    deferred_errors: list[str] = field(default_factory=list)
    log: Callable[[str], None] = print  # one-line messages to the person running the export
    # quant.eval.SpilledLogits of the source on the quality text, when computed before lowering
    reference_logits: object = None

    @property
    def recipe_record(self) -> dict | str:
        """What an artifact records as its recipe: the rules applied, or "none"."""
        return self.applied.to_dict() if self.applied is not None else "none"
