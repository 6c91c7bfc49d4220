"""The ExecuTorch engine: runs a `.pte` (from `llama-export --target xnnpack`) in executorch's
Python runtime behind the same engine / session interface as the edge runtime.

The program is checked before the runtime sees it: the file identifier, the extended header's
program and segment sizes against the file's length, and (with verify) the SHA-256 recorded in
the sidecar `llama_edge.json`; then the runtime loads it with full flatbuffer verification. A
truncated or corrupt file gives a one-line error naming the file and what is wrong.

Tokenization and chat formatting are ours, from the tokenizer files shipped beside the program
(the same tokenizer.json ExecuTorch's own runner reads), so a prompt becomes the same token ids
on every engine. The program returns the last token's logits of each forward call: prompts go
in chunks of the program's `get_max_seq_len`, and `logits_all` runs one token per call.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import sha256_file
from ..errors import ArtifactError, EdgeError, require
from ..memory import available_memory_bytes
from ..nativelog import native_log_held, quiet_imports
from ..sampling import GREEDY
from .base import check_kv, resolve_context, resolve_threads

SIDECAR = "llama_edge.json"
SIDECAR_FORMAT = "llama-edge-pte"
SIDECAR_VERSION = 1
# Flatbuffer file identifier at offset 4: "ET" and the schema version this runtime reads. It is
# checked in full here because the runtime's own log line for a wrong one carries the raw bytes.
_IDENT = b"ET12"
_EXT_MAGIC = b"eh00"  # extended header at offset 8
RUNNER_METHODS = ("get_max_seq_len", "get_max_context_len", "get_vocab_size", "get_n_layers",
                  "use_kv_cache", "enable_dynamic_shape")


@dataclass(frozen=True)
class PteModelInfo:
    """What callers read from engine.config for a .pte model."""

    vocab_size: int
    max_position_embeddings: int
    name: str


def check_pte_file(path: Path) -> None:
    """Sizes and identifiers of a .pte against the file, before any runtime reads it."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise ArtifactError(path, f"cannot be read ({e.strerror})") from None
    if len(head) < 32 or head[4:6] != _IDENT[:2]:
        raise ArtifactError(path, "is not an ExecuTorch program (no 'ET' file identifier at "
                            "offset 4); re-export it with llama-export --target xnnpack")
    if head[4:8] != _IDENT:
        raise ArtifactError(path, f"has program format {head[4:8]!r}, this runtime reads "
                            f"{_IDENT.decode()}; re-export it with this llama-export")
    if head[8:12] != _EXT_MAGIC:
        raise ArtifactError(path, "has no extended header ('eh00' at offset 8); re-export it")
    program_size = int.from_bytes(head[16:24], "little")
    base = int.from_bytes(head[24:32], "little")
    length = int.from_bytes(head[12:16], "little")
    data_size = int.from_bytes(head[32:40], "little") if length > 24 else 0
    if program_size > size:
        raise ArtifactError(path, f"is truncated: the program needs {program_size} bytes, the "
                            f"file has {size}")
    if base and base + data_size > size:
        raise ArtifactError(path, f"is truncated: its weight segments end at byte "
                            f"{base + data_size}, the file has {size}")
    with open(path, "rb") as f:
        check_plans(path, f.read(program_size or size))


# Fields of the program schema's tables this check reads (their index in each table's vtable)
_PROGRAM_PLANS = 1
_PLAN_FIELDS = {"name": 0, "values": 2, "inputs": 3, "outputs": 4, "non_const_buffer_sizes": 8}


def check_plans(path: Path, fb: bytes) -> None:
    """Each method (execution plan) of the program's flatbuffer names itself and carries its
    values, inputs, outputs and memory plan, and its planned buffers fit in memory. ExecuTorch's
    Python bindings abort the process (rather than raise) on a plan without its buffer sizes, and
    allocate every planned buffer as they load: both are refused here with a one-line error."""
    def bad(what):
        raise ArtifactError(path, f"has a damaged program table ({what}); re-export it with "
                            "llama-export --target xnnpack")

    def u32(o):
        if not 0 <= o <= len(fb) - 4:
            bad(f"offset {o} outside the {len(fb)}-byte program")
        return struct.unpack_from("<I", fb, o)[0]

    def field(table, idx):
        u32(table)  # in bounds; its signed offset leads to the vtable
        vt = table - struct.unpack_from("<i", fb, table)[0]
        if not 0 <= vt <= len(fb) - 4:
            bad(f"vtable at {vt} outside the program")
        vsize = struct.unpack_from("<H", fb, vt)[0]
        if 4 + 2 * idx + 2 > vsize or vt + 4 + 2 * idx + 2 > len(fb):
            return None
        off = struct.unpack_from("<H", fb, vt + 4 + 2 * idx)[0]
        return table + off if off else None

    def vector(at):
        start = at + u32(at)
        n = u32(start)
        return start + 4, n

    plans_at = field(u32(0), _PROGRAM_PLANS)
    if plans_at is None:
        bad("no execution plans")
    first, n = vector(plans_at)
    largest = 0
    for k in range(n):
        e = first + 4 * k
        plan = e + u32(e)
        at = {name: field(plan, idx) for name, idx in _PLAN_FIELDS.items()}
        missing = [name for name, a in at.items() if a is None]
        if missing:
            bad(f"method {k} lacks its {', '.join(missing)}")
        sizes_at, m = vector(at["non_const_buffer_sizes"])
        if sizes_at + 8 * m > len(fb):
            bad(f"method {k}'s buffer sizes run past the program")
        sizes = struct.unpack_from(f"<{m}q", fb, sizes_at)
        if any(x < 0 for x in sizes):
            bad(f"method {k} has a negative buffer size")
        largest = max(largest, sum(sizes))
    avail = available_memory_bytes()
    if avail is not None and largest > avail:
        raise ArtifactError(path, f"plans {largest / 2**20:.0f} MB of buffers for one method, "
                            f"more than the {avail / 2**20:.0f} MB of memory available; export it "
                            "with a shorter --max-context or free memory")


def read_sidecar(path: Path) -> dict | None:
    side = path.parent / SIDECAR
    if not side.is_file():
        return None
    try:
        d = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(side, f"is not valid JSON ({e})") from None
    if not isinstance(d, dict) or (d.get("format"), d.get("version")) != (SIDECAR_FORMAT,
                                                                          SIDECAR_VERSION):
        raise ArtifactError(side, f"field 'format'/'version': expected {SIDECAR_FORMAT} "
                            f"{SIDECAR_VERSION}; re-export with a matching llama-export")
    return d


def write_sidecar(pte: Path, extra: dict) -> None:
    d = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "program": pte.name,
         "bytes": pte.stat().st_size, "sha256": sha256_file(pte), **extra}
    side = pte.parent / SIDECAR
    tmp = side.with_suffix(".tmp")
    tmp.write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, side)


def _runtime():
    with quiet_imports():
        require("executorch", "running a .pte program", "export")
        import executorch.kernels.quantized  # noqa: F401 (quantized embedding kernels)
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401 (KV cache, SDPA)
        from executorch.runtime import Runtime, Verification

    return Runtime.get(), Verification


def _runtime_call(fn, path: Path, message: str, errors=(RuntimeError, MemoryError)):
    """fn() with the runtime's log lines held back; a failure becomes a one-line ArtifactError:
    message, the runtime's error and its last log lines (filled once the hold ends)."""
    with native_log_held() as log:
        try:
            return fn()
        except errors as e:
            err = e
    said = f"; the runtime said: {log.tail()}" if log.lines else ""
    raise ArtifactError(path, message.format(err=err) + said)


def _load_program(path: Path):
    rt, verification = _runtime()
    return _runtime_call(
        lambda: rt.load_program(path, verification=verification.InternalConsistency), path,
        "ExecuTorch could not load the program ({err})",
        # MemoryError: a size inside the program larger than memory (the runtime's bad_alloc)
        (RuntimeError, ValueError, MemoryError))


def program_metadata(program, path: Path) -> dict:
    """The runner's constant methods (get_max_seq_len, ...) of a loaded program."""
    names = set(program.method_names)
    missing = [m for m in RUNNER_METHODS if m not in names] + (
        [] if "forward" in names else ["forward"])
    if missing:
        raise ArtifactError(path, f"lacks the LLM runner's method(s) {', '.join(missing)}; it is "
                            "not a program from llama-export --target xnnpack")
    meta = {}
    for n in sorted(names - {"forward"}):
        values = list(_runtime_call(lambda: program.load_method(n).execute([]), path,
                                    f"method {n} cannot run ({{err}})"))
        meta[n] = values if n == "get_eos_ids" else (values[0] if values else None)
    return meta


class ExecuTorchSession:
    # the program returns the last position's logits: checking a draft takes one call per
    # token, so speculation would not pay
    batch_logits = False
    def __init__(self, engine: "ExecuTorchEngine", max_context: int):
        import torch

        self.engine, self.max_context = engine, max_context
        self._torch = torch
        self._forward = _runtime_call(
            lambda: engine.program.load_method("forward"), engine.path,
            "method forward cannot be loaded ({err}); the program needs kernels this executorch "
            "does not have")
        self._chunk = engine.max_seq_len
        self.pos = 0
        self.kv_bytes = None  # the cache lives in the program's own buffers

    def reset(self) -> None:
        self.pos = 0  # positions past `pos` in the program's cache are never read

    def _check_room(self, n: int) -> None:
        if self.pos + n > self.max_context:
            raise EdgeError(f"context full: {self.pos} + {n} tokens exceed the context of "
                            f"{self.max_context}")

    def _run(self, ids) -> np.ndarray:
        torch = self._torch
        tokens = torch.tensor([list(ids)], dtype=torch.long)
        out = self._forward.execute([tokens, torch.tensor([self.pos], dtype=torch.long)])[0]
        self.pos += len(ids)
        return out.reshape(-1).numpy()

    def _checked(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        v = self.engine.config.vocab_size
        bad = [i for i in ids if not 0 <= i < v]
        if bad:
            raise EdgeError(f"token id {bad[0]} is outside the vocabulary (0..{v - 1})")
        return ids

    def prefill(self, ids) -> np.ndarray:
        ids = self._checked(ids)
        if not ids:
            raise EdgeError("prefill needs at least one token")
        self._check_room(len(ids))
        out = None
        for i in range(0, len(ids), self._chunk):
            out = self._run(ids[i:i + self._chunk])
        return out

    def decode(self, token: int) -> np.ndarray:
        ids = self._checked([token])
        self._check_room(1)
        return self._run(ids)

    def extend(self, ids) -> np.ndarray:
        """(vocab,) logits after `ids`, continuing at self.pos."""
        ids = self._checked(ids)
        self._check_room(len(ids))
        out = None
        for i in range(0, len(ids), self._chunk):
            out = self._run(ids[i:i + self._chunk])
        return out

    def forward(self, ids) -> np.ndarray:
        """(n, vocab) logits of every position of `ids`, continuing at self.pos."""
        ids = self._checked(ids)
        self._check_room(len(ids))
        return np.stack([self._run([t]).copy() for t in ids])

    def rewind(self, pos: int) -> None:
        if not 0 <= pos <= self.pos:
            raise EdgeError(f"cannot rewind a session at position {self.pos} to {pos}")
        self.pos = pos  # positions past `pos` in the program's cache are never read

    def logits_all(self, ids) -> np.ndarray:
        """Logits after every token of `ids` from position 0 (one forward call per token)."""
        ids = self._checked(ids)
        self.reset()
        self._check_room(len(ids))
        out = np.empty((len(ids), self.engine.config.vocab_size), dtype=np.float32)
        for i, t in enumerate(ids):
            out[i] = self._run([t])
        return out


class ExecuTorchEngine:
    """A .pte program in executorch's runtime (XNNPACK delegate), shared by its sessions."""

    name = "executorch"

    def __init__(self, path, max_context: int | None = None, threads: int | None = None,
                 kv: str = "f32", verify: bool = True):
        from ..tokenizer import Tokenizer

        check_kv(kv, "executorch", "the f32 cache the program was exported with")
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(self.path, "does not exist")
        check_pte_file(self.path)
        side = read_sidecar(self.path)
        if side is not None and verify:
            if side.get("bytes") != self.path.stat().st_size or \
                    side.get("sha256") != sha256_file(self.path):
                raise ArtifactError(self.path, f"does not match the SHA-256 recorded in "
                                    f"{SIDECAR} (the file was changed or damaged); re-export it")
        try:
            self.tokenizer = Tokenizer.from_hf_dir(self.path.parent)
        except Exception as e:  # noqa: BLE001 - any tokenizer problem is one line for the user
            raise ArtifactError(self.path.parent, f"tokenizer files next to the program cannot "
                                f"be read ({e})") from None
        self.program = _load_program(self.path)
        self.meta = program_metadata(self.program, self.path)
        ctx = int(self.meta["get_max_context_len"])
        self.config = PteModelInfo(int(self.meta["get_vocab_size"]), ctx,
                                   (side or {}).get("name", self.path.stem))
        if self.tokenizer.vocab_size > self.config.vocab_size:
            raise ArtifactError(self.path, f"the tokenizer has {self.tokenizer.vocab_size} "
                                f"tokens but the program's vocabulary is {self.config.vocab_size}")
        self.max_context = resolve_context(max_context, ctx, ctx)
        self.max_seq_len = int(self.meta["get_max_seq_len"])
        self.chat_format = (side or {}).get("chat_format")
        self.threads = resolve_threads(threads)
        from executorch.extension.pybindings import portable_lib

        with native_log_held():
            portable_lib._unsafe_reset_threadpool(self.threads)
        self.isa = self.weight_memory = None
        self.generation = dict(GREEDY)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.meta.get("get_eos_ids") or ()) |
                            set(self.tokenizer.eos_ids)))

    def session(self, max_context: int | None = None) -> ExecuTorchSession:
        return ExecuTorchSession(self, resolve_context(max_context, self.max_context,
                                                       self.max_context))
