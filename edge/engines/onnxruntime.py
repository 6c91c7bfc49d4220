"""Run an ONNX decoder exported by `llama-export --target onnx` in onnxruntime.

The artifact directory (layout in export/targets/onnx/__init__.py) is checked before onnxruntime sees
it: the manifest's format and version, every listed file's size and sha256, the graph parsed
without its weights, every external-data reference (a plain file name inside the directory,
listed in the manifest, its byte range inside the file), and the graph's inputs and outputs
against the model config. onnxruntime itself is never handed a file we have not checked, and
its own load errors are reported in one line naming the file.

Sessions keep the KV cache in preallocated buffers (1, n_kv_heads, max_context, head_dim) per
layer and per K / V, bound with I/O binding as both the past input and the present output:
GroupQueryAttention writes the new positions in place (onnxruntime's shared past / present
buffer mode), so nothing is copied or allocated per token except the logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import sha256_file
from ..errors import ArtifactError, EdgeError, require
from ..sampling import GREEDY
from .base import check_kv, resolve_context, resolve_threads

FORMAT = "llama-edge-onnx"
VERSION = 1
MANIFEST = "llama_edge_onnx.json"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
GENAI_CONFIG = "genai_config.json"
ALIGN_LARGE = 1 << 16  # external-data offsets of large initializers (mmap granularity)
ALIGN_SMALL = 64
# Prompt tokens per run: bounds the (chunk, vocab) float32 logits onnxruntime returns
# (Llama 3.2: 256 x 128256 x 4 bytes = 131 MB).
PREFILL_CHUNK = 256


@dataclass(frozen=True)
class OnnxModelInfo:
    """What callers read from engine.config."""

    vocab_size: int
    max_position_embeddings: int
    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int


def _locate(path) -> tuple[Path, Path]:
    """(directory, model file) of a model path (the directory or its model.onnx)."""
    p = Path(path)
    if p.is_dir():
        return p, p / MODEL_FILE
    if not p.exists():
        raise ArtifactError(p, "no such file or directory")
    return p.parent, p


def _read_manifest(root: Path) -> dict:
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(root, f"no {MANIFEST}: not an ONNX export of llama-export (an "
                            "interrupted export leaves none); export again with --target onnx")
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(mpath, f"is not valid JSON ({e}); export again") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(mpath, f"field 'format' must be {FORMAT!r}; not an ONNX export of "
                            "llama-export")
    if m.get("version") != VERSION:
        raise ArtifactError(mpath, f"field 'version' = {m.get('version')!r}: this llama-edge "
                            f"reads version {VERSION}; re-export with a matching llama-export")
    for key, typ in (("config", dict), ("files", dict), ("tokenizer", dict),
                     ("max_context", int)):
        if not isinstance(m.get(key), typ):
            raise ArtifactError(mpath, f"field '{key}' is missing or not a {typ.__name__}")
    return m


def _check_files(root: Path, m: dict, model_file: Path, verify: bool) -> None:
    mpath = root / MANIFEST
    files = m["files"]
    for need in (model_file.name, "tokenizer.json"):
        if need not in files:
            raise ArtifactError(mpath, f"field 'files' does not list {need}")
    for name, info in files.items():
        fp = root / name
        if (Path(name).name != name or name in (".", "..") or not isinstance(info, dict)
                or not isinstance(info.get("bytes"), int)
                or not isinstance(info.get("sha256"), str)):
            raise ArtifactError(mpath, f"field 'files.{name}' is malformed")
        if fp.is_symlink() or not fp.is_file():
            raise ArtifactError(fp, "missing or not a regular file (listed in the manifest); "
                                "export again")
        size = fp.stat().st_size
        if size != info["bytes"]:
            raise ArtifactError(fp, f"is {size} bytes but the manifest says {info['bytes']}: "
                                "truncated or replaced; export again")
        if verify and sha256_file(fp) != info["sha256"]:
            raise ArtifactError(fp, "content does not match the manifest's sha256: the file "
                                "is corrupt or was modified; export again")


def _check_graph(root: Path, model_file: Path, m: dict, cfg) -> None:
    """Parse the graph without its weights; check external data references and the I/O."""
    onnx = require("onnx", "checking an ONNX model before onnxruntime loads it", "export")
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(model_file), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise ArtifactError(model_file, f"is not a valid ONNX model ({str(e).splitlines()[0]}); "
                            "export again") from None
    files = m["files"]
    for t in proto.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        ext = {e.key: e.value for e in t.external_data}
        if not all(isinstance(v, str) for kv in ext.items() for v in kv):
            # protobuf hands over the raw bytes of a string field that is not valid UTF-8
            raise ArtifactError(model_file, f"initializer '{t.name}': external data entries "
                                "are not valid UTF-8 text; the file is corrupt, export again")
        loc = ext.get("location", "")
        if Path(loc).name != loc or loc in ("", ".", "..") or loc not in files:
            raise ArtifactError(model_file, f"initializer '{t.name}': external data location "
                                f"{loc!r} is not a file of the artifact directory")
        try:
            off, length = int(ext.get("offset", 0)), int(ext["length"])
        except (KeyError, ValueError):
            raise ArtifactError(model_file, f"initializer '{t.name}': external data without a "
                                "valid offset / length") from None
        size = files[loc]["bytes"]
        if off < 0 or length < 0 or off + length > size:
            raise ArtifactError(root / loc, f"initializer '{t.name}' needs bytes {off}..."
                                f"{off + length} but the file has {size}")
    try:  # by path: external data is checked relative to the model's directory
        onnx.checker.check_model(str(model_file))
    except (onnx.checker.ValidationError, ValueError, OSError) as e:
        raise ArtifactError(model_file, f"fails the ONNX checker ({str(e).splitlines()[0]})"
                            ) from None
    want_in = ["input_ids", "attention_mask", "position_ids"]
    want_out = ["logits"]
    for i in range(cfg.num_layers):
        want_in += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        want_out += [f"present.{i}.key", f"present.{i}.value"]
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    if got_in != want_in or got_out != want_out:
        raise ArtifactError(model_file, f"graph inputs / outputs do not match a "
                            f"{cfg.num_layers}-layer decoder with a KV cache; export again")
    vocab = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    if vocab != cfg.vocab_size:
        raise ArtifactError(model_file, f"logits have {vocab} columns but the manifest's "
                            f"vocab_size is {cfg.vocab_size}")


class OnnxSession:
    """One conversation: its own KV cache buffers, bound to the shared onnxruntime session."""

    batch_logits = True

    def __init__(self, engine: "OnnxEngine", max_context: int):
        ort = engine.ort
        c = engine.config
        self.engine, self.max_context, self.pos = engine, max_context, 0
        shape = (1, c.num_kv_heads, max_context, c.head_dim)  # (B, n_kv_heads, max_ctx, hd)
        self._kv = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32))
                    for _ in range(2 * c.num_layers)]
        self.kv_bytes = 2 * c.num_layers * int(np.prod(shape)) * 4
        self._mask = np.ones((1, max_context), np.int64)  # (1, max_ctx) all attended
        self._positions = np.arange(max_context, dtype=np.int64)[None]  # (1, max_ctx)
        self._step_logits = np.empty((1, 1, c.vocab_size), np.float32)  # (B, S=1, vocab)
        self._step_out = ort.OrtValue.ortvalue_from_numpy(self._step_logits)
        self._binding = engine.sess.io_binding()
        b = self._binding
        for i in range(c.num_layers):
            for j, kv in enumerate(("key", "value")):
                buf = self._kv[2 * i + j]
                b.bind_ortvalue_input(f"past_key_values.{i}.{kv}", buf)
                b.bind_ortvalue_output(f"present.{i}.{kv}", buf)

    def reset(self) -> None:
        self.pos = 0

    def _check_room(self, n: int) -> None:
        if n <= 0:
            raise EdgeError("the prompt has no tokens")
        if self.pos + n > self.max_context:
            raise EdgeError(f"{self.pos + n} tokens do not fit the context of "
                            f"{self.max_context}; give a larger --ctx")

    def _run(self, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Run tokens `ids` (n,) at self.pos; logits (1, n, vocab) receives the output."""
        n, end = len(ids), self.pos + len(ids)
        b = self._binding
        b.bind_cpu_input("input_ids", np.ascontiguousarray(ids, np.int64)[None])
        b.bind_cpu_input("attention_mask", self._mask[:, :end])
        b.bind_cpu_input("position_ids", self._positions[:, self.pos:end])
        out = (self._step_out if logits is self._step_logits
               else self.engine.ort.OrtValue.ortvalue_from_numpy(logits))
        b.bind_ortvalue_output("logits", out)
        try:
            self.engine.sess.run_with_iobinding(b)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise EdgeError(f"{self.engine.path}: onnxruntime failed to run the model "
                            f"({str(e).splitlines()[0]})") from None
        self.pos = end
        return logits

    def _prompt(self, ids, keep_all: bool) -> np.ndarray:
        ids = np.asarray(list(ids), np.int64)
        self.pos = 0
        self._check_room(len(ids))
        vocab = self.engine.config.vocab_size
        if ids.min() < 0 or ids.max() >= vocab:
            raise EdgeError(f"token ids must be in 0..{vocab - 1}")
        out = np.empty((len(ids), vocab), np.float32) if keep_all else None
        last = None
        for s in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[s:s + PREFILL_CHUNK]
            last = self._run(chunk, np.empty((1, len(chunk), vocab), np.float32))[0]
            if keep_all:
                out[s:s + len(chunk)] = last
        return out if keep_all else last[-1].copy()

    def prefill(self, ids) -> np.ndarray:
        """(vocab,) logits after the prompt `ids`, from an empty cache."""
        return self._prompt(ids, keep_all=False)

    def decode(self, token: int) -> np.ndarray:
        """(vocab,) logits after one more token (a view, valid until the next call)."""
        self._check_room(1)
        return self._run(np.array([token], np.int64), self._step_logits)[0, 0]

    def logits_all(self, ids) -> np.ndarray:
        """(n, vocab) float32 logits of every position of `ids`, from an empty cache."""
        return self._prompt(ids, keep_all=True)

    def _ids(self, ids) -> np.ndarray:
        ids = np.asarray(list(ids), np.int64)
        vocab = self.engine.config.vocab_size
        if len(ids) and (ids.min() < 0 or ids.max() >= vocab):
            raise EdgeError(f"token ids must be in 0..{vocab - 1}")
        self._check_room(len(ids))
        return ids

    def forward(self, ids) -> np.ndarray:
        """(n, vocab) logits of every position of `ids`, continuing at self.pos."""
        ids = self._ids(ids)
        vocab = self.engine.config.vocab_size
        out = np.empty((len(ids), vocab), np.float32)
        for s in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[s:s + PREFILL_CHUNK]
            out[s:s + len(chunk)] = self._run(chunk, np.empty((1, len(chunk), vocab),
                                                              np.float32))[0]
        return out

    def extend(self, ids) -> np.ndarray:
        """(vocab,) logits after `ids`, continuing at self.pos."""
        return self.forward(ids)[-1].copy()

    def rewind(self, pos: int) -> None:
        if not 0 <= pos <= self.pos:
            raise EdgeError(f"cannot rewind a session at position {self.pos} to {pos}")
        self.pos = pos


class OnnxEngine:
    """An ONNX export loaded in onnxruntime (CPU), shared by its sessions."""

    name = "onnxruntime"

    def __init__(self, path, max_context: int | None = None, threads: int | None = None,
                 kv: str = "f32", verify: bool = True):
        from ..config import LlamaConfig
        from ..errors import ConfigError, TokenizerError
        from ..tokenizer import Tokenizer

        check_kv(kv, "onnxruntime")
        root, model_file = _locate(path)
        self.path = model_file
        m = _read_manifest(root)
        try:
            cfg = LlamaConfig.from_hf_dict(m["config"], str(root / MANIFEST)).validate(
                str(root / MANIFEST))
        except ConfigError as e:
            raise ArtifactError(root / MANIFEST, f"field 'config': {e}") from None
        _check_files(root, m, model_file, verify)
        _check_graph(root, model_file, m, cfg)
        try:
            self.tokenizer = Tokenizer.from_hf_dir(root)
        except TokenizerError as e:
            raise ArtifactError(root, f"tokenizer: {e}") from None
        if self.tokenizer.vocab_size > cfg.vocab_size:
            raise ArtifactError(root / "tokenizer.json", f"the tokenizer has "
                                f"{self.tokenizer.vocab_size} tokens but the model only "
                                f"{cfg.vocab_size} rows: tokenizer and model do not match")
        eos = m["tokenizer"].get("eos_token_ids") or []
        if not all(isinstance(i, int) and 0 <= i < cfg.vocab_size for i in eos):
            raise ArtifactError(root / MANIFEST, f"field 'tokenizer.eos_token_ids' = {eos!r} "
                                f"must list token ids below {cfg.vocab_size}")
        self._eos = tuple(dict.fromkeys(list(eos) + list(self.tokenizer.eos_ids)))
        self.chat_format = m.get("chat_format")
        self.manifest = m
        limit = m["max_context"]
        self.config = OnnxModelInfo(cfg.vocab_size, limit, m.get("name") or cfg.name,
                                    cfg.num_layers, cfg.num_kv_heads, cfg.head_dim)
        self.max_context = resolve_context(max_context, limit)
        self.threads = resolve_threads(threads)
        self.isa = self.weight_memory = None
        self.generation = dict(GREEDY)
        self.ort = require("onnxruntime", "running an .onnx model", "export")
        opts = self.ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's
        try:
            self.sess = self.ort.InferenceSession(str(model_file), opts,
                                                  providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ArtifactError(model_file, f"onnxruntime could not load the model "
                                f"({str(e).splitlines()[0]}); export again") from None

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return self._eos

    def session(self, max_context: int | None = None) -> OnnxSession:
        return OnnxSession(self, resolve_context(max_context, self.max_context,
                                                 self.max_context))
