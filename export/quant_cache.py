"""A cache of quantized models: a second export of the same weights with the same recipe and
calibration text (to another target, or after a failed lowering) skips quantization.

An entry is keyed by the SHA-256 of everything quantization reads: the checkpoint's tensors
(after pruning, as held in memory), its config, the calibration token windows, the recipe's
rules (or `auto`'s size target), the quantizer's source code (Python and C++) and the torch
version. It holds every quantized module's integers, scales and scheme, the float parameters
quantization changed (AWQ folds its scales into the norms), and the quantization report.

Location: $LLAMA_EDGE_CACHE (a directory, or `off`), else $XDG_CACHE_HOME/llama-edge/quant, else
~/.cache/llama-edge/quant. Size: at most $LLAMA_EDGE_CACHE_MB megabytes (default
DEFAULT_LIMIT_MB); the least recently used entries are removed past it. An entry that cannot be
read is ignored (and removed): the model is quantized again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from edge.atomic import remove

DEFAULT_LIMIT_MB = 4096
FORMAT = "llama-edge-quant-cache/1"
_SOURCES = ("quant", "export/quantize.py", "export/quant_cache.py", "export/model")
_REPO = Path(__file__).resolve().parents[1]


def cache_root() -> Path | None:
    """The cache directory, or None when the cache is turned off."""
    env = os.environ.get("LLAMA_EDGE_CACHE", "").strip()
    if env.lower() in ("off", "0", "none", "false"):
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llama-edge" / "quant"


def limit_bytes() -> int:
    try:
        return int(float(os.environ.get("LLAMA_EDGE_CACHE_MB", DEFAULT_LIMIT_MB)) * 2**20)
    except ValueError:
        return DEFAULT_LIMIT_MB * 2**20


def _code_digest() -> str:
    h = hashlib.sha256()
    for src in _SOURCES:
        p = _REPO / src
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file() and f.suffix in (".py", ".json", ".txt", ".cpp"):
                h.update(str(f.relative_to(_REPO)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def _update_tensor(h, name: str, t: torch.Tensor) -> None:
    t = t.detach().contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(memoryview(t.view(torch.uint8).reshape(-1).numpy()))


def cache_key(tensors: dict, config: dict, recipe: dict, calib: list, max_seq_len: int) -> str:
    """SHA-256 of what quantization reads (module docstring). `calib`: the token-id tensors."""
    h = hashlib.sha256(FORMAT.encode())
    h.update(_code_digest().encode())
    h.update(torch.__version__.encode())
    h.update(json.dumps({"config": config, "recipe": recipe, "max_seq_len": max_seq_len},
                        sort_keys=True, default=str).encode())
    for i, ids in enumerate(calib):
        _update_tensor(h, f"calib{i}", ids)
    for name in sorted(tensors):
        _update_tensor(h, name, tensors[name])
    return h.hexdigest()


def _entry_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file())


def _evict(root: Path, keep: Path, limit: int) -> None:
    entries = []
    for d in root.iterdir():
        meta = d / "entry.json"
        if d.is_dir() and meta.is_file() and d != keep:
            entries.append((meta.stat().st_mtime, _entry_bytes(d), d))
    total = sum(b for _, b, _ in entries) + _entry_bytes(keep)
    for _, size, d in sorted(entries):  # oldest use first
        if total <= limit:
            break
        remove(d)
        total -= size


def store(key: str, model: nn.Module, source: dict, report: dict, log=None) -> Path | None:
    """Write the quantized `model`'s entry (atomically: a temporary directory renamed into
    place); `source`: the checkpoint tensors it was built from. A write that fails (full disk,
    read-only cache) costs only the cache: the export goes on."""
    from quant.apply import QuantEmbedding, QuantLinear

    root = cache_root()
    if root is None:
        return None
    tensors, modules, by_qt = {}, {}, {}
    for name, m in model.named_modules():
        if not isinstance(m, (QuantLinear, QuantEmbedding)):
            continue
        info = {"kind": "embedding" if isinstance(m, QuantEmbedding) else "linear",
                "config": m.config.to_dict()}
        if id(m.qt) in by_qt:
            info["shares"] = by_qt[id(m.qt)]
        else:
            by_qt[id(m.qt)] = name
            qt = m.qt
            info.update(scheme=qt.scheme, group_size=qt.group_size, bits=qt.bits)
            tensors[f"{name}.qdata"], tensors[f"{name}.scale"] = qt.qdata, qt.scale
            if qt.zero_point is not None:
                tensors[f"{name}.zero_point"] = qt.zero_point
        modules[name] = info
    changed = []
    for name, p in model.named_parameters():
        src = source.get(name)
        if src is None or src.is_meta or not torch.equal(p.detach(), src.float()):
            tensors[f"param:{name}"] = p.detach()
            changed.append(name)
    tmp = root / f".{key}.{os.getpid()}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove(tmp)
        tmp.mkdir()
        torch.save({k: v.contiguous() for k, v in tensors.items()}, tmp / "tensors.pt")
        (tmp / "entry.json").write_text(json.dumps(
            {"format": FORMAT, "key": key, "modules": modules, "params": changed,
             "report": report}, indent=1))
        dest = root / key
        remove(dest)
        tmp.rename(dest)
        _evict(root, dest, limit_bytes())
        return dest
    except OSError as e:
        remove(tmp)
        if log:
            log(f"quantization cache not written ({root}: {e.strerror or e}); the export goes on")
        return None


def load(key: str, model: nn.Module, log=None) -> dict | None:
    """Put the cached quantization of `key` into `model` (a LlamaModel built from the same
    checkpoint, still float) and return the cached report; None on a miss. A damaged entry is
    removed and counts as a miss."""
    from quant.apply import QuantEmbedding, QuantLinear
    from quant.recipes import QuantConfig
    from quant.schemes import QuantizedTensor

    root = cache_root()
    d = None if root is None else root / key
    if d is None or not (d / "entry.json").is_file():
        return None
    try:
        entry = json.loads((d / "entry.json").read_text(encoding="utf-8"))
        if entry.get("format") != FORMAT or entry.get("key") != key:
            raise ValueError("format or key does not match")
        tensors = torch.load(d / "tensors.pt", weights_only=True, mmap=True)
        names = dict(model.named_modules())
        qts = {}
        new = {}
        for name, info in entry["modules"].items():
            if name not in names:
                raise ValueError(f"module {name!r} is not in the model")
            if "shares" in info:
                qt = qts[info["shares"]]
            else:
                qt = QuantizedTensor(info["scheme"], tensors[f"{name}.qdata"],
                                     tensors[f"{name}.scale"], tensors.get(f"{name}.zero_point"),
                                     int(info["group_size"]), int(info["bits"]))
                want = tuple(names[name].weight.shape)
                if qt.shape != want:
                    raise ValueError(f"module {name!r} has shape {qt.shape}, the model {want}")
                qts[name] = qt
            cfg = QuantConfig.from_dict(info["config"])
            new[name] = (QuantEmbedding(qt, cfg) if info["kind"] == "embedding"
                         else QuantLinear(qt, cfg.act, cfg))
        params = {n: tensors[f"param:{n}"] for n in entry["params"]}
        own = dict(model.named_parameters())
        for n, t in params.items():
            if n not in own or own[n].shape != t.shape:
                raise ValueError(f"parameter {n!r} does not fit the model")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError) as e:
        if log:
            log(f"quantization cache entry {d} cannot be read ({e}); quantizing again")
        remove(d)
        return None
    for name, m in new.items():
        model.set_submodule(name, m)
    model.float()
    own = dict(model.named_parameters())
    for n, t in params.items():
        own[n].data = t.float().clone()
    now = time.time()
    os.utime(d / "entry.json", (now, now))  # most recently used
    return entry["report"]
