"""The export's peak-memory estimate, checked before the expensive stages."""

from __future__ import annotations

from edge.errors import EdgeError
from edge.memory import available_memory_bytes

# Peak resident memory of an export as a multiple of the source's float weights, plus a fixed
# part (interpreter, torch, executorch / onnxruntime, the quality stage's scoring). Measured with
# the mobile schemes at the Llama 3.2 1B shape (2.47 GB of bf16 weights): load 1.12x, quantize
# 1.79x, lowering to xnnpack 1.91x (onnx 1.12x), verify / quality at most 1.62x; at the 3B shape
# (6.43 GB) to onnx: quantize 1.69x. Healing after pruning also holds a trainable fp32 copy, its
# gradients and Adam's two moments.
PEAK_PER_WEIGHT_BYTE = 2.1
PEAK_FIXED_BYTES = 0.7e9
HEAL_BYTES_PER_PARAM = 16


def source_weight_bytes(checkpoint: str) -> int | None:
    """Bytes of float weights a checkpoint will load as, before loading it: a preset's size in
    bf16, else the weight files on disk (a quantized GGUF loads larger: checked again after
    loading). None when unknown."""
    from edge.config import PRESETS

    from ..loaders import resolve_model

    s = str(checkpoint)
    if s.startswith("preset:"):
        cfg = PRESETS.get(s.split(":", 1)[1])
        return None if cfg is None else 2 * cfg.num_parameters()
    try:
        p = resolve_model(s)
        if p.is_file():
            return p.stat().st_size
        return sum(f.stat().st_size for f in p.iterdir() if f.is_file() and f.suffix in
                   (".safetensors", ".pth", ".bin", ".gguf", ".pt"))
    except OSError:
        return None


def estimate_peak_bytes(cfg, weight_bytes: int, params: int) -> int:
    peak = PEAK_PER_WEIGHT_BYTE * weight_bytes + PEAK_FIXED_BYTES
    if cfg.dtype == "fp32":  # unquantized weights upcast: the artifact's model is twice as big
        peak += weight_bytes
    if cfg.prune and cfg.heal_steps:
        peak += HEAL_BYTES_PER_PARAM * params
    return int(peak)


def check_memory(cfg, weight_bytes: int | None, params: int | None,
                 held_bytes: int = 0) -> int | None:
    """Refuse an export whose estimated peak exceeds the memory this machine has available (plus
    what the process already holds of it), before the expensive stages; the estimate in bytes."""
    if weight_bytes is None:
        return None
    if params is None:
        params = weight_bytes // 2
    need = estimate_peak_bytes(cfg, weight_bytes, params)
    avail = available_memory_bytes()
    if not cfg.memory_check or avail is None or need <= avail + held_bytes:
        return need
    raise EdgeError(
        f"exporting {cfg.checkpoint} needs about {need / 1e9:.1f} GB of memory at its peak "
        f"(estimate: {PEAK_PER_WEIGHT_BYTE} x its {weight_bytes / 1e9:.2f} GB of weights + "
        f"{PEAK_FIXED_BYTES / 1e9:.1f} GB), and {(avail + held_bytes) / 1e9:.1f} GB is available; "
        "free memory or export on a machine with more, or pass --skip-memory-check to try "
        "anyway")
