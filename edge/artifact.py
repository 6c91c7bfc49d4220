"""The edge artifact: a self-describing directory the runtime memory-maps and runs.

    manifest.json            format name + version, model config, every tensor's kind / shape /
                             group / zero points / scheme / activation handling, tied weights,
                             tokenizer and chat format, special and end-of-generation ids,
                             generation defaults, maximum context, the files with their sizes
                             and digests, and the manifest's own digest
    weights.safetensors      kernel-layout arrays (edge/packing.py): NAME.data, NAME.scale,
                             NAME.zp, NAME.rowsum; norms as float32
    tokenizer.json, tokenizer_config.json

The writer writes the manifest last, inside a temporary directory that then takes the
artifact's place in one step (swapped with the previous artifact where the system can), so an
interrupted export never leaves something that looks complete and never destroys the previous
artifact; what a killed writer leaves behind is removed by the next write of the same path.
The reader validates everything it relies on before the kernels see a byte: format and
version, manifest digest, file sizes and digests (skippable for speed with verify=False), the
safetensors header, every tensor's presence, dtype and shape against its kind and the config
(and no stored tensor the manifest does not describe), scales (finite, > 0), zero points in
range, tokenizer against the embedding.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import LlamaConfig
from .errors import ArtifactError, CheckpointError, ConfigError, EdgeError, TokenizerError
from .packing import KINDS, LOW_BIT_KINDS, Packed, low_bit_row_bytes
from .safetensors import ITEMSIZE, loads_strict, read_header
from .sampling import checked_sampling_defaults

FORMAT = "llama-edge"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Files are digested as the SHA-256 of the SHA-256 digests of their 64 MiB chunks, so that a
# large file is checked by several threads at memory speed.
DIGEST_CHUNK = 64 << 20
DIGEST_ALGORITHM = "sha256-of-64MiB-chunk-sha256"
# Activation quantizations the kernels implement (quant/schemes/activation.py names): per token
# asymmetric (needs the weights' row sums), and per block of 32 symmetric.
ACT_INT8 = "int8_dyn_token_asym"
ACT_INT8_BLOCKS = "int8_dyn_g32_sym"
ACTS = (ACT_INT8, ACT_INT8_BLOCKS)

# Stored dtype of each array of a kind.
_DTYPES = {
    "f32": {"data": "F32"}, "f16": {"data": "F16"}, "bf16": {"data": "U16"},
    "q8": {"data": "I8", "scale": "F16", "rowsum": "F32"},
    "q8u": {"data": "U8", "scale": "F16", "zp": "U8", "rowsum": "F32"},
    "q4": {"data": "U8", "scale": "F16", "zp": "U8", "rowsum": "F32"},
    "q5": {"data": "U8", "scale": "F16", "zp": "U8", "rowsum": "F32"},
    "q6": {"data": "U8", "scale": "F16", "zp": "U8", "rowsum": "F32"},
    "f8": {"data": "U8", "scale": "F16"},
}
QUANT_KINDS = ("q8", "q8u", "q4", "q5", "q6", "f8")
INT_KINDS = ("q8", "q8u", "q4", "q5", "q6")
_NP = {"F32": np.float32, "F16": np.float16, "U16": np.uint16, "I8": np.int8, "U8": np.uint8}


def sha256_file(path) -> str:
    """Plain SHA-256 of a file, read in 4 MiB pieces (the digest .pte and ONNX sidecars
    record)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path, mm=None) -> str:
    """DIGEST_ALGORITHM over a file (or its already mapped bytes), chunks hashed in parallel."""
    size = path.stat().st_size if mm is None else len(mm)
    if size == 0:
        return hashlib.sha256(b"").hexdigest()
    own = None
    if mm is None:
        with open(path, "rb") as f:
            own = mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _chunked(memoryview(mm), None, True)
    finally:
        if own is not None:
            own.close()


def _chunked(view: memoryview, fill, digest: bool) -> str | None:
    """Run over `view` in DIGEST_CHUNK pieces on all cores: fill(offset, piece) first when
    given (reading the piece in), then hash it when `digest` (hashlib and file reads drop the
    GIL). Returns DIGEST_ALGORITHM's value, or None."""
    size = len(view)
    chunks = [view[o:o + DIGEST_CHUNK] for o in range(0, size, DIGEST_CHUNK)]

    def work(i):
        if fill is not None:
            fill(i * DIGEST_CHUNK, chunks[i])
        return hashlib.sha256(chunks[i]).digest() if digest else b""

    try:
        workers = max(1, min(len(chunks), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as ex:
            parts = list(ex.map(work, range(len(chunks))))
    finally:
        for c in chunks:
            c.release()
        view.release()
    return hashlib.sha256(b"".join(parts)).hexdigest() if digest else None


# Where the weights live once loaded. "mapped": the file's pages, memory-mapped (shared with
# the page cache and with other processes mapping the same file; the system can drop them
# under memory pressure). "resident": read once into anonymous memory the kernel backs with
# 2 MiB transparent huge pages; decode streams every weight once per token, and from 4 KiB
# pages the same stream runs slower (1B shape, 2 threads: see README, "Weights in memory";
# prefetching the next rows in software did not make up for it). "auto": resident where the
# system offers transparent huge pages, mapped elsewhere.
WEIGHT_MEMORY = ("auto", "mapped", "resident")
HUGE_PAGE = 2 << 20
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_available() -> bool:
    """True when the kernel backs madvise()d anonymous memory with transparent huge pages."""
    try:
        with open(THP_SETTING) as f:
            mode = f.read()
    except OSError:
        return False
    return hasattr(mmap, "MADV_HUGEPAGE") and ("[always]" in mode or "[madvise]" in mode)


def resolve_weight_memory(choice: str) -> str:
    if choice not in WEIGHT_MEMORY:
        raise EdgeError(f"weight memory {choice!r}: choose one of {', '.join(WEIGHT_MEMORY)}")
    if choice == "auto":
        return "resident" if huge_pages_available() else "mapped"
    if choice == "resident" and not (hasattr(mmap, "MAP_ANONYMOUS") and hasattr(mmap, "MAP_PRIVATE")):
        raise EdgeError("resident weights need anonymous memory mappings, which this system's "
                        "Python does not offer; use mapped weights")
    return choice


def _read_resident(wpath: Path, size: int, digest: bool):
    """The weights file read into huge-page-advised anonymous memory (2 MiB-aligned). Returns
    (owner, read-only view, DIGEST_ALGORITHM value or None)."""
    try:
        owner = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as e:
        raise ArtifactError(wpath, f"cannot reserve {size / 1e6:.0f} MB to hold the weights "
                            f"({e.strerror}); load them memory-mapped (--weights mapped)") from None
    if hasattr(mmap, "MADV_HUGEPAGE"):
        owner.madvise(mmap.MADV_HUGEPAGE)
    base = np.frombuffer(owner, dtype=np.uint8, count=1).ctypes.data
    start = -base % HUGE_PAGE
    view = memoryview(owner)[start:start + size]

    def fill(offset, piece):
        with open(wpath, "rb", buffering=0) as f:
            f.seek(offset)
            done = 0
            while done < len(piece):
                got = f.readinto(piece[done:])
                if not got:
                    raise ArtifactError(wpath, f"ended at byte {offset + done} of {size} while "
                                        "being read: truncated or replaced; export again")
                done += got

    value = _chunked(view[:], fill, digest)
    return owner, view.toreadonly(), value


def manifest_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------------------------- writing
@dataclass
class TensorEntry:
    """One weight of the model as the artifact stores it."""

    packed: Packed | None = None  # None for a tied weight
    scheme: str = "none"  # quant scheme name (quant/schemes) or the float kind
    act: str | None = None  # one of ACTS when the runtime quantizes this linear's inputs
    tied_to: str | None = None


def write_artifact(dest, config: LlamaConfig, weights: dict[str, TensorEntry],
                   norms: dict[str, np.ndarray], tokenizer, chat_format: str, max_context: int,
                   recipe: dict | str = "none", generation: dict | None = None,
                   extra: dict | None = None, force: bool = False) -> Path:
    """Write an edge artifact to `dest` atomically (edge/atomic.py): `dest` always holds
    either the previous artifact or the complete new one."""
    from .atomic import atomic_dir

    with atomic_dir(dest, force) as tmp:
        write_artifact_into(tmp, config, weights, norms, tokenizer, chat_format, max_context,
                            recipe, generation, extra)
    return Path(dest)


def write_artifact_into(out: Path, config: LlamaConfig, weights: dict[str, TensorEntry],
                        norms: dict[str, np.ndarray], tokenizer, chat_format: str,
                        max_context: int, recipe: dict | str = "none",
                        generation: dict | None = None, extra: dict | None = None) -> dict:
    """Write the artifact's files into an existing empty directory; the manifest goes last.

    recipe: what quantized the weights (the resolved rules, or a label); generation: the
    sampling defaults the model's publisher recommends (edge.sampling.sampling_defaults; greedy
    when None), which `llama-edge run` uses for every option not given."""
    from .sampling import sampling_defaults

    from safetensors.numpy import save_file

    from . import __version__

    out = Path(out)
    arrays: dict[str, np.ndarray] = {}
    entries: dict[str, dict] = {}
    for name in sorted(weights):
        e = weights[name]
        if e.tied_to is not None:
            entries[name] = {"tied_to": e.tied_to, "act": e.act, "scheme": e.scheme}
            continue
        p = e.packed
        entries[name] = {"kind": p.kind, "shape": list(p.shape), "group": p.group,
                         "scheme": e.scheme, "act": e.act}
        if p.kind in QUANT_KINDS:
            # 4-bit weights may or may not have zero points; the reader must know which
            # rather than guess from the tensors that happen to be in the file.
            entries[name]["zero_points"] = p.zp is not None
        for part, arr in p.arrays().items():
            arrays[f"{name}.{part}"] = np.ascontiguousarray(arr)
    for name in sorted(norms):
        entries[name] = {"kind": "f32", "shape": list(norms[name].shape), "scheme": "none"}
        arrays[f"{name}.data"] = np.ascontiguousarray(norms[name], dtype=np.float32)
    save_file(arrays, str(out / WEIGHTS))
    tokenizer.save(out)
    files = {}
    for fname in (WEIGHTS,) + TOKENIZER_FILES:
        path = out / fname
        files[fname] = {"bytes": path.stat().st_size, "digest": file_digest(path)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "producer": f"llama-edge {__version__}",
        "recipe": recipe,
        "config": config.to_hf_dict(),
        "max_context": int(max_context),
        "tensors": entries,
        "tokenizer": {
            "chat_format": chat_format,
            "bos_token_id": tokenizer.bos_id,
            "add_bos": bool(tokenizer.add_bos),
            "eos_token_ids": sorted(set(config.eos_token_ids) | set(tokenizer.eos_ids)),
            "vocab_size": tokenizer.vocab_size,
        },
        "generation": sampling_defaults(generation or {}),
        "files": files,
        "digest_algorithm": DIGEST_ALGORITHM,
        **(extra or {}),
    }
    manifest["digest"] = manifest_digest(manifest)
    tmp = out / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    return manifest


# ---------------------------------------------------------------------------------- reading
@dataclass
class Artifact:
    path: Path
    manifest: dict
    config: LlamaConfig
    weights: dict[str, Packed]  # including norms (kind f32); tied names resolved to the source
    acts: dict[str, str | None]  # weight name -> activation handling
    tied: dict[str, str]
    max_context: int
    tokenizer: object
    chat_format: str
    eos_ids: tuple[int, ...]
    generation: dict
    file_bytes: int
    weight_memory: str = "mapped"  # where the weights live: "mapped" or "resident"
    _mm: object = field(default=None, repr=False)

    @property
    def recipe_name(self) -> str:
        """The recipe's name (the manifest holds the rules applied, or a label)."""
        r = self.manifest.get("recipe")
        return str(r.get("name")) if isinstance(r, dict) else str(r)

    def close(self):
        """Drop this object's references to the weights' memory (arrays handed out keep it
        alive)."""
        self.weights.clear()
        self._mm = None


def is_artifact(path) -> bool:
    p = Path(path)
    return (p / MANIFEST).is_file() or (p.name == MANIFEST and p.is_file())


def _check_digest(path: Path, got: str, info: dict):
    if got != info["digest"]:
        raise ArtifactError(path, "content does not match the manifest's digest: the file was "
                            "altered or corrupted; export again")


def load_artifact(path, verify: bool = True, weight_memory: str = "auto") -> Artifact:
    """Validate and load an edge artifact, its weights memory-mapped or read into huge-page
    memory (`weight_memory`, see WEIGHT_MEMORY). verify=False skips the file digests (the
    structure and every value the kernels rely on are still checked)."""
    root = Path(path)
    if root.name == MANIFEST:
        root = root.parent
    mpath = root / MANIFEST
    if not root.exists():
        raise ArtifactError(root, "no such artifact directory")
    if not root.is_dir():
        raise ArtifactError(root, f"is not a directory; an edge artifact is a directory holding "
                            f"{MANIFEST}")
    if not mpath.is_file():
        hint = " (an interrupted export leaves no manifest; export again)" if any(root.iterdir()) else ""
        raise ArtifactError(root, f"no {MANIFEST}: not an edge artifact{hint}")
    m = _read_manifest(mpath)
    # files: sizes, then digests
    files = m["files"]
    for fname in (WEIGHTS,) + TOKENIZER_FILES:
        if fname not in files:
            raise ArtifactError(mpath, f"field 'files' does not list {fname}")
    for fname, info in files.items():
        if not isinstance(info, dict) or not isinstance(info.get("bytes"), int) or not isinstance(
                info.get("digest"), str):
            raise ArtifactError(mpath, f"field 'files.{fname}' is malformed")
        fp = root / fname
        if Path(fname).name != fname or not fp.is_file():
            raise ArtifactError(fp, "missing (listed in the manifest)")
        size = fp.stat().st_size
        if size != info["bytes"]:
            raise ArtifactError(fp, f"is {size} bytes but the manifest says {info['bytes']}: "
                                "truncated or replaced; export again")
    try:
        config = LlamaConfig.from_hf_dict(m["config"], source=f"{mpath}: field 'config'")
    except ConfigError as e:
        raise ArtifactError(mpath, f"field 'config': {e}") from None
    max_ctx = m["max_context"]
    if not isinstance(max_ctx, int) or not 0 < max_ctx <= config.max_position_embeddings:
        raise ArtifactError(mpath, f"field 'max_context' = {max_ctx!r} is not in 1.."
                            f"{config.max_position_embeddings}")
    wpath = root / WEIGHTS
    infos, _ = read_header(wpath, ArtifactError)
    if verify:
        for fname, info in files.items():
            if fname != WEIGHTS:
                _check_digest(root / fname, file_digest(root / fname), info)
    placement = resolve_weight_memory(weight_memory)
    # the tokenizer is parsed while the weights are read and checked
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        tok_job = ex.submit(_tokenizer, root, m, config)
        if placement == "resident":
            owner, mm, digest = _read_resident(wpath, files[WEIGHTS]["bytes"], verify)
        else:
            with open(wpath, "rb") as f:
                owner = mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            digest = file_digest(wpath, mm) if verify else None
        if verify:
            _check_digest(wpath, digest, files[WEIGHTS])
        weights, acts, tied = _tensors(mpath, wpath, m["tensors"], infos, mm, config)
        tok, eos = tok_job.result()
    try:
        gen = checked_sampling_defaults(m.get("generation"))
    except EdgeError as e:
        raise ArtifactError(mpath, f"field 'generation': {e}") from None
    fmt = m["tokenizer"].get("chat_format")
    if fmt not in ("llama3", "chatml", "raw"):
        raise ArtifactError(mpath, f"field 'tokenizer.chat_format' = {fmt!r}: expected llama3, "
                            "chatml or raw")
    total = sum(i["bytes"] for i in files.values())
    return Artifact(root, m, config, weights, acts, tied, max_ctx, tok, fmt, eos, gen, total,
                    placement, owner)


def _read_manifest(mpath: Path) -> dict:
    raw = mpath.read_bytes()
    if len(raw) > 64 << 20:
        raise ArtifactError(mpath, f"is {len(raw)} bytes: not a manifest")
    try:
        m = loads_strict(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(mpath, f"is not valid JSON ({e}); the artifact is corrupt, export "
                            "again") from None
    if not isinstance(m, dict):
        raise ArtifactError(mpath, "is not a JSON object")
    if m.get("format") != FORMAT:
        raise ArtifactError(mpath, f"field 'format' is {m.get('format')!r}, not {FORMAT!r}")
    v = m.get("format_version")
    if not isinstance(v, int) or isinstance(v, bool):
        raise ArtifactError(mpath, f"field 'format_version' = {v!r} is not an integer")
    if v > FORMAT_VERSION:
        raise ArtifactError(mpath, f"format version {v} was written by a newer llama-edge "
                            f"({m.get('producer', 'unknown')}); this runtime reads version "
                            f"{FORMAT_VERSION}: upgrade llama-edge")
    if v < FORMAT_VERSION:
        raise ArtifactError(mpath, f"format version {v} ({m.get('producer', 'unknown')}) is older "
                            f"than this runtime's {FORMAT_VERSION}: re-export the model with "
                            "this version's llama-export")
    if m.get("digest") != manifest_digest(m):
        raise ArtifactError(mpath, "field 'digest' does not match the manifest's content: the "
                            "manifest was edited or corrupted; export again")
    for key, typ in (("config", dict), ("tensors", dict), ("tokenizer", dict), ("files", dict),
                     ("max_context", int)):
        if not isinstance(m.get(key), typ):
            raise ArtifactError(mpath, f"field '{key}' is missing or not a {typ.__name__}")
    return m


def _array(wpath, infos, mm, key: str, dtype: str, shape: tuple) -> np.ndarray:
    t = infos.get(key)
    if t is None:
        raise ArtifactError(wpath, f"tensor '{key}' is missing")
    if t.dtype != dtype:
        raise ArtifactError(wpath, f"tensor '{key}': dtype {t.dtype}, expected {dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ArtifactError(wpath, f"tensor '{key}': shape {list(t.shape)}, expected "
                            f"{list(shape)}")
    n = (t.end - t.start) // ITEMSIZE[dtype]
    return np.frombuffer(mm, dtype=_NP[dtype], count=n, offset=t.start).reshape(shape)


def _expected(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    shapes = {k.removesuffix(".weight"): v for k, v in config.expected_shapes().items()}
    if config.tie_word_embeddings:
        shapes.setdefault("lm_head", (config.vocab_size, config.hidden_size))
    return shapes


def _positive_finite_fp16(s: np.ndarray) -> bool:
    """Every value > 0 and finite, from the bits: 0 < bits < 0x7C00 (sign clear, exponent not
    all ones, not zero); one integer pass, ~10x faster than isfinite and a compare."""
    return s.size == 0 or int((s.view(np.uint16) - np.uint16(1)).max()) < 0x7BFF


def _tensors(mpath, wpath, entries, infos, mm, config):
    expected = _expected(config)
    missing = sorted(set(expected) - set(entries))
    if missing:
        raise ArtifactError(mpath, f"field 'tensors' lacks {missing[0]}"
                            + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    extra = sorted(set(entries) - set(expected))
    if extra:
        raise ArtifactError(mpath, f"field 'tensors' has '{extra[0]}', which this model does not use")
    weights, acts, tied = {}, {}, {}
    used = set()
    for name, e in entries.items():
        where = f"field 'tensors.{name}'"
        if not isinstance(e, dict):
            raise ArtifactError(mpath, f"{where} is not an object")
        act = e.get("act")
        if act is not None and act not in ACTS:
            raise ArtifactError(mpath, f"{where}: activation handling {act!r} is not supported "
                                f"(expected null, {' or '.join(map(repr, ACTS))})")
        acts[name] = act
        if "tied_to" in e:
            src = e["tied_to"]
            if src not in entries or "tied_to" in entries.get(src, {}) or src == name:
                raise ArtifactError(mpath, f"{where}: tied to {src!r}, which is not a stored tensor")
            if tuple(expected[src]) != tuple(expected[name]):
                raise ArtifactError(mpath, f"{where}: tied to {src!r} of another shape")
            tied[name] = src
            continue
        kind, shape, group = e.get("kind"), e.get("shape"), e.get("group")
        if kind not in KINDS:
            raise ArtifactError(mpath, f"{where}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
        if not isinstance(shape, list) or tuple(shape) != tuple(expected[name]):
            raise ArtifactError(mpath, f"{where}: shape {shape!r}, the config needs "
                                f"{list(expected[name])}")
        if len(shape) == 1:
            if kind != "f32":
                raise ArtifactError(mpath, f"{where}: vectors are stored as f32, not {kind}")
            weights[name] = Packed("f32", (shape[0], 1), 1,
                                   _array(wpath, infos, mm, f"{name}.data", "F32", (shape[0],)))
            used.add(f"{name}.data")
            continue
        n, k = shape
        quant = kind in QUANT_KINDS
        if quant:
            if not isinstance(group, int) or isinstance(group, bool) or group <= 0 or k % group:
                raise ArtifactError(mpath, f"{where}: group size {group!r} does not divide the "
                                    f"input dimension {k}")
            low = LOW_BIT_KINDS.get(kind)
            if low and (k % 64 or group % 32):
                raise ArtifactError(mpath, f"{where}: {low}-bit weights need rows of a multiple of "
                                    f"64 and groups of a multiple of 32 (rows {k}, group {group})")
            has_zp = e.get("zero_points")
            if has_zp is not (kind == "q8u") and not (low and isinstance(has_zp, bool)):
                raise ArtifactError(mpath, f"{where}: 'zero_points' = {has_zp!r} is not valid for "
                                    f"kind {kind} (q8u: true, q4 / q5 / q6: true or false, "
                                    "otherwise false); export again")
        else:
            group, has_zp = k, False
        if act is not None and kind not in INT_KINDS:
            raise ArtifactError(mpath, f"{where}: int8 activations need integer weights, not {kind}")
        if act == ACT_INT8_BLOCKS and (k % 32 or group % 32):
            raise ArtifactError(mpath, f"{where}: int8 activation blocks of 32 need inputs and weight "
                                f"groups that are multiples of 32 (inputs {k}, group {group})")
        dts = _DTYPES[kind]
        data_shape = (n, low_bit_row_bytes(LOW_BIT_KINDS[kind], k)) if kind in LOW_BIT_KINDS else (n, k)
        data = _array(wpath, infos, mm, f"{name}.data", dts["data"], data_shape)
        used.add(f"{name}.data")
        p = Packed(kind, (n, k), group, data)
        if quant:
            p.scale = _array(wpath, infos, mm, f"{name}.scale", "F16", (n, k // group))
            used.add(f"{name}.scale")
            if not _positive_finite_fp16(p.scale):
                raise ArtifactError(wpath, f"tensor '{name}.scale': scales must be finite and "
                                    "positive (found zero, negative, NaN or Inf)")
            if has_zp:
                p.zp = _array(wpath, infos, mm, f"{name}.zp", "U8", (n, k // group))
                used.add(f"{name}.zp")
                zmax = (1 << LOW_BIT_KINDS[kind]) - 1 if kind in LOW_BIT_KINDS else 255
                if p.zp.size and int(p.zp.max()) > zmax:
                    raise ArtifactError(wpath, f"tensor '{name}.zp': {LOW_BIT_KINDS[kind]}-bit zero "
                                        f"points must be <= {zmax}, found {int(p.zp.max())}")
        weights[name] = p
    # row sums: every per-token int8-activation use needs them on the stored weight
    for name, act in acts.items():
        if act != ACT_INT8:
            continue
        src = tied.get(name, name)
        p = weights[src]
        key = f"{src}.rowsum"
        if p.rowsum is None:
            p.rowsum = _array(wpath, infos, mm, key, "F32", (p.shape[0],))
            used.add(key)
            if not np.isfinite(p.rowsum).all():
                raise ArtifactError(wpath, f"tensor '{key}': non-finite row sums")
    unused = sorted(set(infos) - used)
    if unused:
        raise ArtifactError(wpath, f"tensor '{unused[0]}' is not described by the manifest")
    for name, src in tied.items():
        weights[name] = weights[src]
    return weights, acts, tied


def _tokenizer(root: Path, m: dict, config: LlamaConfig):
    from .tokenizer import Tokenizer

    try:
        tok = Tokenizer.from_hf_dir(root)
    except (TokenizerError, CheckpointError) as e:
        raise ArtifactError(root, f"tokenizer: {e}") from None
    except UnicodeDecodeError as e:  # from_hf_dir reads tokenizer.json as UTF-8 text
        raise ArtifactError(root / "tokenizer.json", f"is not UTF-8 text ({e}); the artifact is "
                            "corrupt, export again") from None
    mpath = root / MANIFEST
    if tok.vocab_size > config.vocab_size:
        raise ArtifactError(root / "tokenizer.json", f"the tokenizer has {tok.vocab_size} tokens "
                            f"but the embedding only {config.vocab_size} rows: tokenizer and "
                            "model do not match")
    eos = m["tokenizer"].get("eos_token_ids")
    if not isinstance(eos, list) or not eos or not all(
            isinstance(i, int) and 0 <= i < config.vocab_size for i in eos):
        raise ArtifactError(mpath, f"field 'tokenizer.eos_token_ids' = {eos!r} must list token ids "
                            f"below {config.vocab_size}")
    bos = m["tokenizer"].get("bos_token_id")
    if bos is not None and not (isinstance(bos, int) and 0 <= bos < config.vocab_size):
        raise ArtifactError(mpath, f"field 'tokenizer.bos_token_id' = {bos!r} is outside the "
                            "vocabulary")
    return tok, tuple(eos)
