"""Open any MODEL the CLI accepts and return an engine with sessions.

Edge artifacts (a directory with manifest.json) run on the edge kernels. A `.gguf` file runs in
llama.cpp (edge/llamacpp.py) when llama-cpp-python is installed. Checkpoints (HF directory, Meta
directory, GGUF file, or a known model name) run on the torch reference path, which lives in the
toolchain extra; without it the user is told which extra to install.

An ExecuTorch program (`.pte`, from `--target xnnpack`) runs in executorch's Python runtime
(edge/executorch_engine.py); an ONNX model (`.onnx`, or the directory holding `model.onnx` from
`--target onnx`) runs in onnxruntime (edge/onnx_engine.py).

`engine` chooses explicitly: "auto" (edge for artifacts, executorch for .pte, onnxruntime for
ONNX, llama.cpp for GGUF files when llama-cpp-python is importable, torch otherwise), "edge",
"executorch", "onnxruntime", "llamacpp" or "torch" (a GGUF file is also a checkpoint: "torch"
dequantizes it and runs the reference).
"""

from __future__ import annotations

from pathlib import Path

from .errors import require

# Context allocated when the caller does not ask for one (the artifact may allow more).
DEFAULT_CONTEXT = 2048


ENGINES = ("auto", "edge", "executorch", "onnxruntime", "llamacpp", "torch")


def _is_pte(path: str) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix == ".pte"


def _is_onnx(path: str) -> bool:
    p = Path(path)
    return (p.is_file() and p.suffix == ".onnx") or (p.is_dir() and (p / "model.onnx").is_file())


def open_model(path: str, max_context: int | None = None, threads: int | None = None,
               kv: str = "f32", verify: bool = True, engine: str = "auto",
               weight_memory: str = "auto"):
    from .artifact import is_artifact
    from .errors import EdgeError

    if engine not in ENGINES:
        raise EdgeError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    artifact = is_artifact(path)
    if engine == "edge" and not artifact:
        raise EdgeError(f"{path}: --engine edge needs an edge artifact directory (from "
                        "llama-export --target edge)")
    if engine in ("llamacpp", "torch", "executorch", "onnxruntime") and artifact:
        raise EdgeError(f"{path}: is an edge artifact; it runs on --engine edge (or auto)")
    if engine == "executorch" or (engine == "auto" and _is_pte(path)):
        if not _is_pte(path):
            raise EdgeError(f"{path}: --engine executorch needs a .pte file (from llama-export "
                            "--target xnnpack)")
        from .executorch_engine import ExecuTorchEngine

        return ExecuTorchEngine(path, max_context=max_context, threads=threads, kv=kv)
    if engine == "onnxruntime" or (engine == "auto" and _is_onnx(path)):
        if not _is_onnx(path):
            raise EdgeError(f"{path}: --engine onnxruntime needs a .onnx file or a directory "
                            "with model.onnx (from llama-export --target onnx)")
        from .onnx_engine import OnnxEngine

        return OnnxEngine(path, max_context=max_context, threads=threads, kv=kv)
    if engine in ("auto", "llamacpp") and not artifact:
        from . import llamacpp

        gguf = llamacpp.is_gguf_file(path)
        if engine == "llamacpp" and not gguf:
            raise EdgeError(f"{path}: --engine llamacpp needs a .gguf file")
        if gguf and (engine == "llamacpp" or llamacpp.available()):
            return llamacpp.LlamaCppEngine(path, max_context=max_context, threads=threads,
                                           kv=kv)
    if artifact:
        from .artifact import load_artifact
        from .runtime import EdgeEngine

        art = load_artifact(path, verify=verify, weight_memory=weight_memory)
        return EdgeEngine(art, max_context=max_context or min(art.max_context, DEFAULT_CONTEXT),
                          threads=threads, kv=kv)
    require("torch", "running a checkpoint on the torch reference path", "export")
    from export.loaders import load_checkpoint
    from export.reference import TorchEngine

    if kv != "f32":
        from .errors import EdgeError

        raise EdgeError("--kv-cache int8 needs an edge artifact; the torch reference keeps an "
                        "fp32 cache")
    return TorchEngine(load_checkpoint(path), max_context=max_context, threads=threads)


def model_bytes(path: str) -> int:
    """Bytes on disk of a model file or directory (0 for a name that is not a path)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    try:
        from export.loaders import resolve_model

        return Path(resolve_model(path)).stat().st_size
    except Exception:  # noqa: BLE001 - sizes are informative only
        return 0
