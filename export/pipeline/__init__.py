"""The export pipeline (stages.py), its request and state (config.py), the memory estimate
(memory.py) and the checks of every artifact (verify.py)."""

from .config import ExportConfig, ExportState
from .stages import build_stages, run_export

__all__ = ["ExportConfig", "ExportState", "build_stages", "run_export"]
