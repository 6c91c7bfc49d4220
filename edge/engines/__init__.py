"""Open any MODEL the CLI accepts and return an engine with sessions.

Registered engines (edge/engines/base.py has the interface):
  edge         an edge artifact directory (manifest.json) on our kernels (native.py)
  executorch   a `.pte` program (from --target xnnpack) in executorch's runtime (executorch.py)
  onnxruntime  a `.onnx` file, or the directory holding model.onnx (from --target onnx), in
               onnxruntime (onnxruntime.py)
  llamacpp     a `.gguf` file in llama.cpp, when llama-cpp-python is installed (llamacpp.py)
  torch        a checkpoint (HF directory, Meta directory, GGUF file, known model name) on the
               torch reference; registered by the toolchain (`export` extra) through the
               `llama_edge.engines` entry points
`auto` takes the first registered engine (by priority) that recognises the path and is
installed; naming an engine runs it or says why it cannot.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EdgeError
from .base import (DEFAULT_CONTEXT, KV_KINDS, Engine, EngineOptions, EngineSpec, Session,
                   check_kv, resolve_context, resolve_threads)

__all__ = ["DEFAULT_CONTEXT", "KV_KINDS", "ENGINES", "Engine", "EngineOptions", "EngineSpec",
           "Session", "check_kv", "engine_specs", "model_bytes", "open_model", "register",
           "resolve_context", "resolve_threads"]

ENTRY_POINT_GROUP = "llama_edge.engines"


def _is_pte(path: str) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix == ".pte"


def _is_onnx(path: str) -> bool:
    from .onnxruntime import MODEL_FILE

    p = Path(path)
    return (p.is_file() and p.suffix == ".onnx") or (p.is_dir() and (p / MODEL_FILE).is_file())


def _is_artifact(path: str) -> bool:
    from ..artifact import is_artifact

    return is_artifact(path)


def _is_gguf(path: str) -> bool:
    from .llamacpp import is_gguf_file

    return is_gguf_file(path)


def _open_edge(path: str, o: EngineOptions) -> Engine:
    from ..artifact import load_artifact
    from .native import EdgeEngine

    art = load_artifact(path, verify=o.verify, weight_memory=o.weight_memory)
    return EdgeEngine(art, max_context=o.max_context, threads=o.threads, kv=o.kv)


def _open_executorch(path: str, o: EngineOptions) -> Engine:
    from .executorch import ExecuTorchEngine

    return ExecuTorchEngine(path, max_context=o.max_context, threads=o.threads, kv=o.kv,
                            verify=o.verify)


def _open_onnx(path: str, o: EngineOptions) -> Engine:
    from .onnxruntime import OnnxEngine

    return OnnxEngine(path, max_context=o.max_context, threads=o.threads, kv=o.kv,
                      verify=o.verify)


def _open_llamacpp(path: str, o: EngineOptions) -> Engine:
    from .llamacpp import LlamaCppEngine

    return LlamaCppEngine(path, max_context=o.max_context, threads=o.threads, kv=o.kv)


def _llamacpp_available() -> bool:
    from .llamacpp import available

    return available()


_REGISTRY: dict[str, EngineSpec] = {}


def register(spec: EngineSpec) -> None:
    """Add an engine (a later registration of the same name replaces the earlier one)."""
    _REGISTRY[spec.name] = spec


for _spec in (
        EngineSpec("edge", "an edge artifact directory (from llama-export --target edge)",
                   _is_artifact, _open_edge, priority=0),
        EngineSpec("executorch", "a .pte file (from llama-export --target xnnpack)", _is_pte,
                   _open_executorch, priority=10),
        EngineSpec("onnxruntime", "a .onnx file or a directory with model.onnx (from "
                   "llama-export --target onnx)", _is_onnx, _open_onnx, priority=20),
        EngineSpec("llamacpp", "a .gguf file (llama.cpp needs llama-cpp-python: pip install "
                   "'llama-edge[bench]')", _is_gguf, _open_llamacpp, _llamacpp_available,
                   priority=30)):
    register(_spec)
_entry_points_loaded = False


def _load_entry_points() -> None:
    """Engines other packages register (the toolchain's torch reference)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            spec = ep.load()
        except ImportError:  # the providing package's own dependencies are missing
            continue
        register(spec)


def engine_specs(load_plugins: bool = True) -> list[EngineSpec]:
    """Registered engines by priority; load_plugins=False: the runtime's own only (other
    packages' engines are imported only when needed: the torch reference imports torch)."""
    if load_plugins:
        _load_entry_points()
    return sorted(_REGISTRY.values(), key=lambda s: s.priority)


# Engine names the CLI offers; "torch" is always listed (without the toolchain it says which
# extra to install).
ENGINES = ("auto", "edge", "executorch", "onnxruntime", "llamacpp", "torch")


def open_model(path: str, max_context: int | None = None, threads: int | None = None,
               kv: str = "f32", verify: bool = True, engine: str = "auto",
               weight_memory: str = "auto") -> Engine:
    """The engine for MODEL `path` (see the module docstring for how it is chosen)."""
    opts = EngineOptions(max_context, threads, kv, verify, weight_memory)
    path = str(path)
    if engine == "auto":
        for s in engine_specs(load_plugins=False):
            if s.detect(path) and s.available():
                return s.open(path, opts)
        engine = "torch"  # checkpoints, and anything the others do not recognise
    if engine not in ENGINES[1:]:
        raise EdgeError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    specs = {s.name: s for s in engine_specs(load_plugins=engine not in _REGISTRY)}
    if engine not in specs:  # only the torch reference is registered from outside
        from ..errors import MissingExtraError

        raise MissingExtraError("running a checkpoint on the torch reference path", "export",
                                "torch")
    spec = specs[engine]
    owner = next((s for s in specs.values() if s.name != engine and s.priority < spec.priority
                  and s.detect(path)), None)
    if owner is not None and owner.name == "edge":
        raise EdgeError(f"{path}: is an edge artifact; it runs on --engine edge (or auto)")
    if not spec.detect(path):
        raise EdgeError(f"{path}: --engine {engine} needs {spec.describe}")
    return spec.open(path, opts)


def model_bytes(path: str) -> int:
    """Bytes on disk of a model file or directory (0 for a name that is not a path)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    for s in engine_specs():
        try:
            found = s.locate(str(path))
        except EdgeError:
            found = None
        if found is not None and Path(found).is_file():
            return Path(found).stat().st_size
    return 0
