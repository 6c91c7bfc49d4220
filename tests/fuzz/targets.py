"""Fuzz targets: every parser of untrusted bytes, driven by one input each.

A target takes the fuzzer's bytes, puts them where the parser reads them (a file in a scratch
directory, a JSON document, a string) and runs the product's own entry point. The contract under
test is the one every user-facing reader promises: it either succeeds or raises an `EdgeError`
(a one-line, specific error). Any other exception, a hang or a native crash is a finding.

Targets (name: what the bytes are; what reads them):
    gguf         a .gguf file; edge.gguf_io.parse_gguf, the tokenizer and config from its metadata
    safetensors  a .safetensors file; edge.safetensors.read_header
    manifest     an edge artifact's manifest.json (weights and tokenizer fixed);
                 edge.artifact.load_artifact, then the native model built from it, one token
    weights      an edge artifact's weights.safetensors (manifest fixed); the same path
    tokenizer    a tokenizer.json; edge.tokenizer.Tokenizer.from_hf_json, encode and decode
    chat         a chat template and messages; edge.chat (format detection, system turns,
                 encode_chat)
    config       a config.json; edge.config.LlamaConfig.from_hf_dict
    pte          a .pte program; the ExecuTorch engine's checks, program load and metadata
    onnx         an ONNX export's model.onnx (manifest fixed); the onnxruntime engine's checks

`tests/fuzz/run.py` runs one target under atheris; `tests/fuzz/corpus/TARGET/` holds its seeds
(made by `tests/fuzz/seeds.py`) and `tests/fuzz/regressions/TARGET/` every input that once
failed, replayed by `tests/fuzz/test_fuzz.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from edge.errors import EdgeError

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
REGRESSIONS = HERE / "regressions"
FIXTURES = HERE / "fixtures"  # fixed files a target puts its input beside
# Largest input a target is given (bytes): big enough for every seed, small enough that one
# execution stays in the millisecond range.
MAX_LEN = {"gguf": 1 << 16, "weights": 1 << 17, "pte": 1 << 18, "onnx": 1 << 16}
DEFAULT_MAX_LEN = 1 << 14
# Memory a program may plan for its buffers under the fuzzer (see Pte.setup)
FUZZ_MEMORY_BYTES = 1 << 30


def _scratch() -> Path:
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="llama-edge-fuzz-", dir=base))


class Target:
    """One fuzz target: `setup()` once per process, then `run(data)` per input."""

    name = ""
    modules: tuple[str, ...] = ()  # what it runs: imported under the fuzzer's instrumentation

    def setup(self) -> None:
        self.dir = _scratch()

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, data: bytes) -> None:
        raise NotImplementedError

    def __call__(self, data: bytes) -> None:
        try:
            self.run(data)
        except EdgeError:
            pass


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class Gguf(Target):
    """The runtime's check before llama.cpp opens a file, then the toolchain's full loader
    (config, every tensor dequantized, tokenizer)."""

    modules = ("edge.engines.llamacpp", "export.loaders.gguf_loader", "edge.tokenizer")
    name = "gguf"

    def run(self, data):
        from edge.engines.llamacpp import validate_gguf
        from export.loaders.gguf_loader import load_gguf

        p = self.dir / "model.gguf"
        p.write_bytes(data)
        _meta, tok = validate_gguf(p)
        tok.decode(tok.encode("Hello, world"))
        load_gguf(p)


class Safetensors(Target):
    modules = ("edge.safetensors",)
    name = "safetensors"

    def run(self, data):
        from edge.safetensors import read_header

        p = self.dir / "model.safetensors"
        p.write_bytes(data)
        read_header(p)


class _ArtifactFile(Target):
    """An edge artifact with one of its files replaced by the input; loaded without digests
    (they would reject every mutation before the structure is read), then run for one token."""

    modules = ("edge.artifact", "edge.engines.native", "edge.tokenizer", "edge.config")
    file = ""

    def setup(self):
        super().setup()
        from support import artifacts

        self.art = artifacts.write(self.dir / "art")
        self.orig = (self.art / self.file).read_bytes()
        self.manifest = json.loads((self.art / "manifest.json").read_text())

    def _fix_sizes(self, size: int) -> None:
        m = json.loads(json.dumps(self.manifest))
        m["files"][self.file]["bytes"] = size
        (self.art / "manifest.json").write_text(json.dumps(m))

    def run(self, data):
        from edge.engines.native import EdgeEngine

        (self.art / self.file).write_bytes(data)
        eng = EdgeEngine(self.art, max_context=16, threads=1, verify=False)
        s = eng.session()
        s.prefill([1, 2, 3])
        s.decode(4)


class Manifest(_ArtifactFile):
    name = "manifest"
    file = "manifest.json"


class Weights(_ArtifactFile):
    name = "weights"
    file = "weights.safetensors"

    def run(self, data):
        self._fix_sizes(len(data))  # a size mismatch alone is refused before the header is read
        super().run(data)


class TokenizerJson(Target):
    modules = ("edge.tokenizer",)
    name = "tokenizer"

    def run(self, data):
        from edge.tokenizer import Tokenizer

        tok = Tokenizer.from_hf_json(_text(data), None, source="tokenizer.json")
        ids = tok.encode("Hello <|im_start|> wörld 12345")
        tok.decode(ids)


class Chat(Target):
    """The input is a chat template, a NUL byte, then a JSON list of messages."""

    modules = ("edge.chat", "edge.tokenizer")
    name = "chat"

    def setup(self):
        super().setup()
        from support.artifacts import make_tokenizer

        self.tok = make_tokenizer()

    def run(self, data):
        from edge.chat import chatml_default_system, detect_chat_format, encode_chat, llama3_system_preamble

        template, _, rest = data.partition(b"\0")
        template = _text(template)
        chatml_default_system(template)
        llama3_system_preamble(template, "04 Dec 2026")
        detect_chat_format(self.tok)
        try:
            messages = json.loads(rest)
        except ValueError:
            messages = [{"role": "user", "content": _text(rest)}]
        encode_chat(self.tok, messages, "chatml")


class Config(Target):
    modules = ("edge.config",)
    name = "config"

    def run(self, data):
        from edge.config import LlamaConfig

        try:
            d = json.loads(data)
        except ValueError:
            return
        if isinstance(d, dict):
            LlamaConfig.from_hf_dict(d)


class Pte(Target):
    modules = ("edge.engines.executorch",)
    name = "pte"

    def setup(self):
        super().setup()
        from edge.engines.executorch import _runtime

        _runtime()  # the runtime's first load takes seconds: once here, not in the first input
        # Planned buffers are allowed up to the memory available; here that is the fuzzer's
        # budget (libFuzzer stops at 4 GB of RSS), so a program planning more is refused as it
        # would be on a machine with 1 GB free.
        import edge.engines.executorch as et

        et.available_memory_bytes = lambda: FUZZ_MEMORY_BYTES

    def run(self, data):
        from edge.engines.executorch import _load_program, check_pte_file, program_metadata

        p = self.dir / "model.pte"
        p.write_bytes(data)
        check_pte_file(p)
        program_metadata(_load_program(p), p)


class Onnx(Target):
    """An ONNX export (manifest and tokenizer from a tiny model) with model.onnx replaced."""

    modules = ("edge.engines.onnxruntime", "edge.config")
    name = "onnx"

    def setup(self):
        super().setup()
        seed = FIXTURES / "onnx_export"
        self.root = self.dir / "onnx"
        shutil.copytree(seed, self.root)
        from edge.engines.onnxruntime import MANIFEST

        self.mpath = self.root / MANIFEST
        self.manifest = json.loads(self.mpath.read_text())

    def run(self, data):
        from edge.config import LlamaConfig
        from edge.engines.onnxruntime import _check_files, _check_graph, _read_manifest

        model = self.root / "model.onnx"
        model.write_bytes(data)
        m = json.loads(json.dumps(self.manifest))
        m["files"]["model.onnx"]["bytes"] = len(data)
        self.mpath.write_text(json.dumps(m))
        m = _read_manifest(self.root)
        _check_files(self.root, m, model, verify=False)
        _check_graph(self.root, model, m, LlamaConfig.from_hf_dict(m["config"]))


TARGETS: dict[str, type[Target]] = {t.name: t for t in (
    Gguf, Safetensors, Manifest, Weights, TokenizerJson, Chat, Config, Pte, Onnx)}


def max_len(name: str) -> int:
    return MAX_LEN.get(name, DEFAULT_MAX_LEN)
