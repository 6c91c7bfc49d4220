"""llama.cpp GGUF files for the side-by-side benchmarks.

* `requantize`: llama.cpp's own quantizer applied to an existing GGUF (requantization allowed),
  e.g. SmolLM2-135M, which ships as a Q4_1 GGUF, to Q4_0 or Q8_0.
* `random_llama_gguf`: a Llama-architecture GGUF at the exact published shape of an
  edge.config preset (Llama 3.2 1B / 3B) with seeded random weights, written as F16 and then
  quantized by llama.cpp. The compute per token depends only on the shape and the weight
  types, so speed and memory match the real model's; the output is meaningless text.

    python benchmarks/make_gguf.py random llama3.2-1b OUT.gguf --type Q4_0
    python benchmarks/make_gguf.py requant SRC OUT.gguf --type Q8_0
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.config import PRESETS, LlamaConfig  # noqa: E402
from edge.errors import EdgeError  # noqa: E402
from edge.engines.llamacpp import _LOG_ERRORS, llama_cpp_errors, quiet_llama_cpp_log  # noqa: E402, F401
from export.targets.gguf import (GGUFVocab, PlannedTensor, rope_freq_factors,  # noqa: E402
                               write_llama_gguf)

# The types the benchmarks use; requantize accepts every LLAMA_FTYPE_MOSTLY_* name.
FTYPES = ("Q4_0", "Q8_0", "Q4_K_M", "F16")
# Vocabulary (tokens, merges, token types) given to random-weight models.
VOCAB_SOURCE = "smollm2-135m-instruct"
WEIGHT_STD = 0.02


def ftype_id(name: str) -> int:
    import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}", None)
    if value is None:
        raise ValueError(f"unknown llama.cpp quantization type {name!r}; e.g. {', '.join(FTYPES)}")
    return value


def requantize(src_gguf, dst, ftype_name: str, threads: int | None = None) -> Path:
    """Quantize the GGUF `src_gguf` to `ftype_name` (Q4_0, Q8_0, Q4_K_M, F16, ...) with
    llama.cpp's quantizer and its default per-tensor choices; the source may itself be
    quantized. Raises RuntimeError when llama.cpp refuses."""
    import llama_cpp

    src, dst = Path(src_gguf), Path(dst)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_id(ftype_name)
    params.allow_requantize = True
    params.nthread = threads or 0  # 0: all hardware threads
    _LOG_ERRORS.clear()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama.cpp quantize of {src} to {ftype_name} failed ({rc})"
                           f"{llama_cpp_errors()}")
    return dst


def _gguf_vocab(cfg: LlamaConfig, source) -> GGUFVocab:
    """The source GGUF's byte-level BPE ('gpt2') vocabulary: tokens, merges, token types and
    special ids (the writer pads it to cfg.vocab_size with control tokens)."""
    import gguf

    from edge.tokenizer import gguf_tokenizer_fields

    fields = gguf_tokenizer_fields(gguf.GGUFReader(source), str(source))
    vocab = GGUFVocab.from_fields(fields, str(source))
    # Only the vocabulary is borrowed; the chat template and special ids follow the preset.
    vocab.chat_template = vocab.unk = vocab.pad = vocab.add_bos = None
    if cfg.bos_token_id is not None:
        vocab.bos = cfg.bos_token_id
    if cfg.eos_token_ids:
        vocab.eos = cfg.eos_token_ids[0]
    return vocab


def _normal_f16(rng: np.random.Generator, shape, std: float, chunk: int = 1 << 24) -> np.ndarray:
    out = np.empty(shape, np.float16)
    flat = out.reshape(-1)
    for s in range(0, flat.size, chunk):
        x = rng.standard_normal(min(chunk, flat.size - s), dtype=np.float32)
        x *= std
        flat[s:s + x.size] = x
    return out


def write_random_f16(cfg: LlamaConfig, dst, seed: int = 0, vocab_source=None) -> Path:
    """Write `cfg` as an F16 llama-architecture GGUF with random weights (normal, std 0.02;
    norms 1.0), tensors generated and written one at a time."""
    import gguf

    if vocab_source is None:
        from export.loaders import resolve_model

        vocab_source = resolve_model(VOCAB_SOURCE)
    dst = Path(dst)
    vocab = _gguf_vocab(cfg, vocab_source)
    # Tensors in llama.cpp's names and (out, in) row-major layout. A tied lm_head is no tensor:
    # llama.cpp computes the output from token_embd when output.weight is absent. llama.cpp
    # rotates adjacent pairs of q/k dimensions (export/lower_gguf.py permutes real weights);
    # random weights are simply drawn in llama.cpp's order, which changes no shape and no cost.
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_layers)
    rng = np.random.default_rng(seed)  # drawn tensor by tensor, in file order
    plan: list[PlannedTensor] = []
    factors = rope_freq_factors(cfg)
    if factors is not None:
        plan.append(PlannedTensor("rope_freqs.weight", factors.shape, "F32", lambda: factors))
    for hf_name, shape in cfg.expected_shapes().items():
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise ValueError(f"no llama.cpp name for {hf_name}")
        if len(shape) == 1:
            plan.append(PlannedTensor(name, shape, "F32",
                                      lambda shape=shape: np.ones(shape, np.float32)))
        else:
            plan.append(PlannedTensor(name, shape, "F16",
                                      lambda shape=shape: _normal_f16(rng, shape, WEIGHT_STD)))
    return write_llama_gguf(dst, cfg, vocab, plan, "MOSTLY_F16")


def random_llama_gguf(preset_name: str, dst, ftype: str = "Q4_0", seed: int = 0,
                      keep_f16: bool = False, threads: int | None = None,
                      vocab_source=None) -> Path:
    """A llama.cpp GGUF of preset `preset_name` (edge.config.PRESETS) with random weights,
    quantized to `ftype` by llama.cpp. The F16 intermediate is written next to `dst` as
    <stem>-f16.gguf and deleted afterwards unless `keep_f16`."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    cfg, dst = PRESETS[preset_name], Path(dst)
    if ftype.upper() == "F16":
        return write_random_f16(cfg, dst, seed, vocab_source)
    ftype_id(ftype)  # an unknown type fails before gigabytes are written
    f16 = dst.with_name(f"{dst.stem}-f16.gguf")
    try:
        write_random_f16(cfg, f16, seed, vocab_source)
        requantize(f16, dst, ftype, threads)
    finally:
        if not keep_f16:
            f16.unlink(missing_ok=True)
    return dst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("random", help="published shape, random weights")
    r.add_argument("preset", choices=sorted(PRESETS))
    r.add_argument("out")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--keep-f16", action="store_true", help="keep the F16 file (<stem>-f16.gguf)")
    q = sub.add_parser("requant", help="llama.cpp's quantizer on an existing GGUF")
    q.add_argument("src", help=f"a GGUF file or a known model name ({VOCAB_SOURCE})")
    q.add_argument("out")
    for p in (r, q):
        p.add_argument("--type", default="Q4_0", help=f"llama.cpp file type ({', '.join(FTYPES)}, ...)")
        p.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        sys.exit("error: llama-cpp-python is not installed: pip install 'llama-edge[bench]'")
    quiet_llama_cpp_log()
    t0 = time.perf_counter()
    try:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        if a.cmd == "random":
            out = random_llama_gguf(a.preset, a.out, a.type, a.seed, a.keep_f16, a.threads)
        else:
            src = Path(a.src)
            if not src.is_file():
                from export.loaders import resolve_model

                src = resolve_model(a.src)
                if not src.is_file():
                    raise ValueError(f"{src}: no such file")
            out = requantize(src, a.out, a.type, a.threads)
    except (ValueError, RuntimeError, OSError, EdgeError) as e:
        sys.exit(f"error: {e}")
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
