"""The llama.cpp engine: runs a `.gguf` file through llama.cpp's C API (llama-cpp-python's ctypes
bindings) behind the same engine / session interface as the edge runtime.

The file is validated by our own GGUF parser (every count, length, offset and tensor range
checked against the file, the tokenizer metadata rebuilt) before llama.cpp sees it, so a
truncated or corrupt file gives a one-line error naming the file and field instead of reaching
llama.cpp's loader. Tokenization and chat formatting are ours (from the GGUF metadata), so a
prompt becomes the same token ids on every engine; llama.cpp only computes logits.

Per token, Python does what it does for the edge engine: one call into C for the forward pass,
the logits read in place as a numpy view.
"""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, EdgeError, require
from ..sampling import GREEDY
from .base import check_kv, resolve_context, resolve_threads

# Context a GGUF file without llama.context_length is taken to support.
TRAIN_CONTEXT_FALLBACK = 2048
BATCH = 512  # tokens per llama_decode call when prefilling (llama.cpp's default batch)
_GGML_LOG_LEVEL_ERROR = 4  # ggml_log_level: none, debug, info, warn, error, cont
_GGML_TYPE_F32 = 0
_LOG_ERRORS: list[str] = []
_LOG_CALLBACK = None


def available() -> bool:
    """Whether llama-cpp-python can be imported (the `bench` extra)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def quiet_llama_cpp_log() -> list[str]:
    """Silence llama.cpp's logging. Its error messages are kept (the last few) in the returned
    list, for error reports."""
    global _LOG_CALLBACK
    import llama_cpp

    if _LOG_CALLBACK is None:
        @llama_cpp.llama_log_callback
        def callback(level, text, _user_data):
            if level == _GGML_LOG_LEVEL_ERROR and text:
                _LOG_ERRORS.append(text.decode("utf-8", "replace").strip())
                del _LOG_ERRORS[:-8]

        _LOG_CALLBACK = callback  # llama.cpp holds a raw pointer to it: keep it alive
        llama_cpp.llama_log_set(callback, None)
    return _LOG_ERRORS


def llama_cpp_errors() -> str:
    """The last error messages llama.cpp logged (once quieted), as one clause for a message."""
    return f" (llama.cpp: {'; '.join(_LOG_ERRORS)})" if _LOG_ERRORS else ""


def is_gguf_file(path) -> bool:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return p.is_file() and f.read(4) == b"GGUF"
    except OSError:
        return False


@dataclass(frozen=True)
class GGUFModelInfo:
    """What callers read from engine.config for a GGUF model."""

    vocab_size: int
    max_position_embeddings: int
    name: str


def validate_gguf(path) -> tuple[dict, object]:
    """(metadata, tokenizer) of a GGUF file after our parser checked its whole structure, or an
    EdgeError naming the file and the field at fault."""
    require("gguf", "validating a .gguf file before llama.cpp opens it", "bench")
    from ..gguf_io import parse_gguf
    from ..tokenizer import Tokenizer

    meta, tensors, _ = parse_gguf(path)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ArtifactError(path, f"general.architecture={arch!r}: only 'llama' GGUF files are "
                            "supported")
    names = {t.name for t in tensors}
    if "token_embd.weight" not in names:
        raise ArtifactError(path, "tensor 'token_embd.weight' is missing")
    tok = Tokenizer.from_gguf_fields(meta, str(path))
    emb = next(t for t in tensors if t.name == "token_embd.weight")
    if len(emb.shape) != 2 or emb.shape[1] < tok.vocab_size:
        raise ArtifactError(path, f"tensor 'token_embd.weight' has shape {list(emb.shape)}, "
                            f"too small for the tokenizer's {tok.vocab_size} tokens")
    return meta, tok


class LlamaCppSession:
    """One llama.cpp context (its own KV cache) behind the prefill / decode interface."""

    batch_logits = True

    def __init__(self, engine: "LlamaCppEngine", max_context: int, exact: bool = False):
        lc = engine.llama_cpp
        self._l, self.engine, self.max_context = lc, engine, max_context
        p = lc.llama_context_default_params()
        p.n_ctx = max_context
        p.n_batch = p.n_ubatch = min(BATCH, max_context)
        p.n_threads = p.n_threads_batch = engine.threads
        if exact:
            # fp32 K/V and the plain attention path: the cache holds what the model computed,
            # so only the weights' and activations' own rounding remains.
            p.type_k = p.type_v = _GGML_TYPE_F32
            if hasattr(p, "flash_attn_type"):
                p.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED
            elif hasattr(p, "flash_attn"):
                p.flash_attn = False
        self.n_batch = p.n_batch
        _LOG_ERRORS.clear()
        self._ctx = lc.llama_init_from_model(engine._model, p)
        if not self._ctx:
            raise EdgeError(f"{engine.path}: llama.cpp could not create a context of "
                            f"{max_context} tokens{llama_cpp_errors()}")
        self._free = weakref.finalize(self, lc.llama_free, self._ctx)
        self._memory = lc.llama_get_memory(self._ctx)
        self._n_vocab = engine.config.vocab_size
        self._token = (ctypes.c_int32 * 1)()
        self._step = lc.llama_batch_get_one(self._token, 1)
        self._addr, self._logits = None, None
        self.pos = 0
        self.kv_bytes = None  # held inside llama.cpp's context

    def reset(self) -> None:
        self._l.llama_memory_clear(self._memory, True)
        self.pos = 0

    def _check_room(self, n: int) -> None:
        if self.pos + n > self.max_context:
            raise EdgeError(f"{self.pos + n} tokens do not fit the context of "
                            f"{self.max_context}; give a larger --ctx")

    def _run(self, batch, n: int) -> np.ndarray:
        rc = self._l.llama_decode(self._ctx, batch)
        if rc != 0:
            raise EdgeError(f"llama.cpp could not run the model (llama_decode returned {rc})"
                            f"{llama_cpp_errors()}")
        self.pos += n
        ptr = self._l.llama_get_logits_ith(self._ctx, -1)
        addr = ctypes.cast(ptr, ctypes.c_void_p).value
        if not addr:
            raise EdgeError(f"llama.cpp returned no logits{llama_cpp_errors()}")
        if addr != self._addr:  # the output buffer moved: a new view (no copy)
            self._logits = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))
            self._addr = addr
        return self._logits  # (vocab,) valid until the next call

    def prefill(self, ids) -> np.ndarray:
        """Logits after the prompt `ids`, from an empty cache (a view, valid until the next
        call)."""
        self.reset()
        ids = np.ascontiguousarray(ids, dtype=np.int32)  # (n,)
        if len(ids) == 0:
            raise EdgeError("the prompt has no tokens")
        self._check_room(len(ids))
        logits = None
        for s in range(0, len(ids), self.n_batch):
            chunk = ids[s:s + self.n_batch]
            ptr = chunk.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
            logits = self._run(self._l.llama_batch_get_one(ptr, len(chunk)), len(chunk))
        return logits

    def decode(self, token: int) -> np.ndarray:
        self._check_room(1)
        self._token[0] = token
        return self._run(self._step, 1)

    def forward(self, ids) -> np.ndarray:
        """(n, vocab) float32 logits of every position of `ids`, continuing at self.pos."""
        lc = self._l
        self._check_room(len(ids))
        out = np.empty((len(ids), self._n_vocab), np.float32)
        for s in range(0, len(ids), self.n_batch):
            chunk = [int(t) for t in ids[s:s + self.n_batch]]
            batch = lc.llama_batch_init(len(chunk), 0, 1)
            try:
                for i, t in enumerate(chunk):
                    batch.token[i] = t
                    batch.pos[i] = self.pos + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = 1
                batch.n_tokens = len(chunk)
                rc = lc.llama_decode(self._ctx, batch)
                if rc != 0:
                    raise EdgeError(f"llama.cpp could not run the model (llama_decode returned "
                                    f"{rc}){llama_cpp_errors()}")
                ptr = lc.llama_get_logits(self._ctx)
                out[s:s + len(chunk)] = np.ctypeslib.as_array(
                    ptr, shape=(len(chunk), self._n_vocab))
            finally:
                lc.llama_batch_free(batch)
            self.pos += len(chunk)
        self._addr = None  # the output buffer was used for a batch
        return out

    def logits_all(self, ids) -> np.ndarray:
        """(n, vocab) float32 logits of every position of `ids`, from an empty cache."""
        self.reset()
        return self.forward(ids)

    def extend(self, ids) -> np.ndarray:
        """(vocab,) logits after `ids`, continuing at self.pos."""
        return self.forward(ids)[-1].copy()

    def rewind(self, pos: int) -> None:
        """Drop positions pos.. from llama.cpp's cache."""
        if not 0 <= pos <= self.pos:
            raise EdgeError(f"cannot rewind a session at position {self.pos} to {pos}")
        self._l.llama_memory_seq_rm(self._memory, 0, pos, -1)
        self.pos = pos


class LlamaCppEngine:
    """A GGUF file loaded by llama.cpp (weights memory-mapped), shared by its sessions."""

    name = "llama.cpp"

    def __init__(self, path, max_context: int | None = None, threads: int | None = None,
                 kv: str = "f32", exact: bool = False):
        """exact: sessions keep an fp32 K/V cache and the plain attention path (for comparing
        with a reference: only the weights' and activations' own rounding remains)."""
        check_kv(kv, "llama.cpp", "its own cache")
        self.exact = exact
        self.path = Path(path)
        meta, self.tokenizer = validate_gguf(self.path)
        self.llama_cpp = require("llama_cpp", "running a .gguf file in llama.cpp", "bench")
        lc = self.llama_cpp
        quiet_llama_cpp_log()
        lc.llama_backend_init()
        _LOG_ERRORS.clear()
        self._model = lc.llama_model_load_from_file(str(self.path).encode(),
                                                    lc.llama_model_default_params())
        if not self._model:
            raise ArtifactError(self.path, f"llama.cpp could not load the model"
                                f"{llama_cpp_errors()}")
        self._free = weakref.finalize(self, lc.llama_model_free, self._model)
        n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self._model))
        train_ctx = int(meta.get("llama.context_length") or TRAIN_CONTEXT_FALLBACK)
        self.config = GGUFModelInfo(n_vocab, train_ctx, str(meta.get("general.name", "llama")))
        self.max_context = resolve_context(max_context, train_ctx)
        self.threads = resolve_threads(threads)
        self.isa = self.weight_memory = None
        self.generation = dict(GREEDY)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return tuple(self.tokenizer.eos_ids)

    def session(self, max_context: int | None = None) -> LlamaCppSession:
        return LlamaCppSession(self, resolve_context(max_context, self.max_context,
                                                     self.max_context), exact=self.exact)
