"""llama.cpp measured with our own definitions (edge/bench.py), for side-by-side tables.

pp128 / pp512: prompt processing from an empty cache (tok/s); tg128: 128 decode steps after a
one-token prompt, each step feeding back the argmax of the returned logits (tok/s); ttft64:
time to the first sampled token of a 64-token prompt (s); load: model load + context creation
(s); peak RSS of the process; file size. Each figure is the median of --repeat runs after one
warm-up, with the same prompt token ids as `llama-edge bench`.

llama.cpp is driven through its C API (llama-cpp-python's ctypes bindings), so Python does per
token what it does for our engine: one call into C for the forward pass, the logits read in
place as a numpy view, an argmax. llama.cpp's defaults are kept (memory-mapped weights, CPU
weight repacking); the batch is 512 tokens, so pp512 is a single forward pass, and only the
last prompt token's logits are computed, as in llama-bench.

    python benchmarks/llamacpp_bench.py MODEL.gguf --threads N [--ctx 2048] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.bench import bench_session, peak_rss_mb  # noqa: E402
from make_gguf import llama_cpp_errors, quiet_llama_cpp_log  # noqa: E402

BATCH = 512


class BenchError(Exception):
    pass


class LlamaCppSession:
    """One llama.cpp context behind the prefill / decode interface edge.bench measures."""

    def __init__(self, llama_cpp, ctx, n_vocab: int):
        self._l, self._ctx, self._n_vocab = llama_cpp, ctx, n_vocab
        self.max_context = llama_cpp.llama_n_ctx(ctx)
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._token = (ctypes.c_int32 * 1)()
        # Positions are left to llama.cpp (continuing the sequence), and only the last token's
        # logits are computed: llama_batch_get_one's batch.
        self._step = llama_cpp.llama_batch_get_one(self._token, 1)
        self._addr, self._logits = None, None

    def _run(self, batch) -> np.ndarray:
        rc = self._l.llama_decode(self._ctx, batch)
        if rc != 0:
            raise BenchError(f"llama_decode failed ({rc}){llama_cpp_errors()}")
        ptr = self._l.llama_get_logits_ith(self._ctx, -1)
        addr = ctypes.cast(ptr, ctypes.c_void_p).value
        if not addr:
            raise BenchError(f"llama.cpp returned no logits{llama_cpp_errors()}")
        if addr != self._addr:  # the output buffer moved: a new view (no copy)
            self._logits = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))
            self._addr = addr
        return self._logits  # valid until the next call

    def prefill(self, ids) -> np.ndarray:
        self._l.llama_memory_clear(self._memory, True)
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        ptr = ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        return self._run(self._l.llama_batch_get_one(ptr, len(ids)))

    def decode(self, token: int) -> np.ndarray:
        self._token[0] = token
        return self._run(self._step)


def run(model: str, threads: int, ctx: int = 2048, repeat: int = 3) -> dict:
    try:
        import llama_cpp
    except ImportError:
        raise BenchError("llama-cpp-python is not installed: pip install 'llama-edge[bench]'") from None
    path = Path(model)
    if not path.is_file():
        raise BenchError(f"{path}: no such file")
    quiet_llama_cpp_log()
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = ctx
    cparams.n_batch = cparams.n_ubatch = BATCH
    cparams.n_threads = cparams.n_threads_batch = threads

    t0 = time.perf_counter()
    lm = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    if not lm:
        raise BenchError(f"{path}: llama.cpp could not load the model{llama_cpp_errors()}")
    lctx = llama_cpp.llama_init_from_model(lm, cparams)
    load_s = time.perf_counter() - t0
    if not lctx:
        llama_cpp.llama_model_free(lm)
        raise BenchError(f"{path}: llama.cpp could not create a context of {ctx} tokens"
                         f"{llama_cpp_errors()}")
    try:
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(lm))
        session = LlamaCppSession(llama_cpp, lctx, n_vocab)
        res = {"engine": "llama.cpp", "model": str(model), "load_s": round(load_s, 4)}
        res.update(bench_session(session, n_vocab, repeat))
        ftype = llama_cpp.llama_ftype_name(llama_cpp.llama_model_ftype(lm))
        res.update(peak_rss_mb=round(peak_rss_mb(), 1), file_mb=round(path.stat().st_size / 1e6, 2),
                   threads=threads, repeat=repeat, llama_cpp_version=llama_cpp.__version__,
                   file_type=ftype.decode() if ftype else None)
    finally:
        llama_cpp.llama_free(lctx)
        llama_cpp.llama_model_free(lm)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="GGUF file")
    ap.add_argument("--threads", type=int, required=True, help="compute threads (prompt and decode)")
    ap.add_argument("--ctx", type=int, default=2048, help="context to allocate (default: 2048)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure, median reported "
                    "(default: 3)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args(argv)
    if a.threads < 1 or a.repeat < 1:
        ap.error("--threads and --repeat must be at least 1")
    if a.ctx < 64:
        ap.error("--ctx must be at least 64 (the time-to-first-token prompt)")
    try:
        r = run(a.model, a.threads, a.ctx, a.repeat)
    except BenchError as e:
        sys.exit(f"error: {e}")
    if a.json:
        print(json.dumps(r))
        return
    for key in ("engine", "file_type", "threads", "pp128_tok_s", "pp512_tok_s", "tg128_tok_s",
                "ttft64_s", "load_s", "peak_rss_mb", "file_mb", "llama_cpp_version"):
        if r.get(key) is not None:
            print(f"{key:18} {r[key]}")


if __name__ == "__main__":
    main()
