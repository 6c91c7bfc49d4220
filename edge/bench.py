"""Speed and memory of one engine, measured the way llama-bench reports them.

pp N: prompt processing of N tokens from an empty cache (tokens/s); tg N: N decode steps after
a one-token prompt (tokens/s); ttft64: time to the first sampled token of a 64-token prompt;
load: time to open the model; peak RSS of the process; file size. Each figure is the median of
`repeat` runs after one warm-up. Prompt tokens are drawn with a fixed seed, so every engine sees
the same ids.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np

from .memory import peak_rss_mb

BENCH_SEED = 1234


def cpu_info() -> dict:
    model, flags = None, []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:  # the first core's entries describe them all
                key, _, val = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model") and model is None:
                    model = val.strip()
                elif key in ("flags", "features") and not flags:
                    flags = val.split()
    except OSError:
        pass
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
              "asimd", "asimddp", "i8mm", "sve")
    return {"cpu": model or platform.processor() or platform.machine(), "cpu_features": [f for f in wanted if f in flags],
            "cores": os.cpu_count(), "machine": platform.machine()}


def prompt_ids(n: int, vocab: int, seed: int = BENCH_SEED) -> list[int]:
    # Ordinary token ids (the lowest few hundred are bytes / specials in every Llama vocabulary).
    rng = np.random.default_rng(seed)
    return rng.integers(min(1000, vocab // 2), vocab, n).tolist()


def _median_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_session(session, vocab: int, repeat: int = 3, pp=(128, 512), tg: int = 128) -> dict:
    out = {}
    for n in pp:
        if n > session.max_context:
            continue
        ids = prompt_ids(n, vocab)
        out[f"pp{n}_tok_s"] = round(n / _median_time(lambda: session.prefill(ids), repeat), 2)
    first = prompt_ids(1, vocab)

    def gen():
        logits = session.prefill(first)
        for _ in range(tg):
            logits = session.decode(int(np.argmax(logits)))

    if tg + 1 <= session.max_context:
        # the one-token prefill is included; it costs one decode step
        out[f"tg{tg}_tok_s"] = round(tg / _median_time(gen, repeat), 2)
    ids64 = prompt_ids(64, vocab)
    out["ttft64_s"] = round(_median_time(lambda: int(np.argmax(session.prefill(ids64))), repeat), 5)
    return out


def run_bench(model: str, threads: int | None = None, ctx: int | None = None, repeat: int = 3,
              kv: str = "f32", verify: bool = True, engine: str = "auto",
              weight_memory: str = "auto") -> dict:
    from .engines import open_model, model_bytes

    t0 = time.perf_counter()
    engine = open_model(model, max_context=ctx, threads=threads, kv=kv, verify=verify,
                        engine=engine, weight_memory=weight_memory)
    load_s = time.perf_counter() - t0
    session = engine.session()
    res = {"engine": engine.name, "model": str(model), "load_s": round(load_s, 4)}
    res.update(bench_session(session, engine.config.vocab_size, repeat))
    res.update(peak_rss_mb=round(peak_rss_mb(), 1), file_mb=round(model_bytes(model) / 1e6, 2),
               threads=engine.threads, isa=engine.isa, weight_memory=engine.weight_memory,
               max_context=session.max_context, kv_bytes=session.kv_bytes,
               repeat=repeat, **cpu_info())
    return res
