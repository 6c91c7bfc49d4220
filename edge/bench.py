"""Speed and memory of one engine, measured the way llama-bench measures them, as records.

A test is `pp N` (prompt processing: N tokens in one call, tokens/s) or `tg N` (text
generation: N decode steps, tokens/s), each at a depth D (D tokens already in the cache, not
timed). Every test runs `warmup` untimed times, then `repeat` timed times; a record holds the
samples, their mean and standard deviation under llama-bench's field names (model_filename,
model_type, model_size, model_n_params, n_threads, cpu_mask, n_prompt, n_gen, n_depth,
test_time, avg_ns, stddev_ns, avg_ts, stddev_ts, samples_ns, samples_ts, type_k, type_v,
cpu_info) plus ours (engine, isa, cpu_features, emulated, board, transport, artifact_sha256,
recipe, ttft_s, load_s, peak_rss_mb, the host's temperature / frequency / throttling / power
where readable, status). Prompt tokens are drawn with a fixed seed, so every engine sees the
same ids.

The CPU is identified from the auxiliary vector on Arm (AT_HWCAP / AT_HWCAP2, what the kernel
dispatcher reads): under qemu-user /proc/cpuinfo describes the host, not the emulated CPU.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import platform
import statistics
import struct
import time
from pathlib import Path

import numpy as np

from .errors import EdgeError
from .memory import peak_rss_mb

BENCH_SEED = 1234
FORMATS = ("md", "csv", "json", "jsonl", "pytorch")

AT_HWCAP, AT_HWCAP2 = 16, 26
# Linux arm64 hwcap bits (arch/arm64/include/uapi/asm/hwcap.h) of the features the kernels use
ARM_HWCAP = {"fp": 0, "asimd": 1, "aes": 3, "crc32": 7, "atomics": 8, "fphp": 9, "asimdhp": 10,
             "asimdrdm": 12, "asimddp": 20, "sve": 22}
ARM_HWCAP2 = {"sve2": 1, "svei8mm": 9, "i8mm": 13, "bf16": 14}
# MIDR part numbers of Arm Ltd (implementer 0x41) cores found on phones and boards
ARM_PARTS = {0xd03: "Cortex-A53", 0xd04: "Cortex-A35", 0xd05: "Cortex-A55", 0xd07: "Cortex-A57",
             0xd08: "Cortex-A72", 0xd09: "Cortex-A73", 0xd0a: "Cortex-A75", 0xd0b: "Cortex-A76",
             0xd0d: "Cortex-A77", 0xd41: "Cortex-A78", 0xd44: "Cortex-X1", 0xd46: "Cortex-A510",
             0xd47: "Cortex-A710", 0xd48: "Cortex-X2", 0xd4d: "Cortex-A715", 0xd4e: "Cortex-X3",
             0xd80: "Cortex-A520", 0xd81: "Cortex-A720", 0xd82: "Cortex-X4", 0xd0c: "Neoverse-N1",
             0xd40: "Neoverse-V1", 0xd49: "Neoverse-N2", 0xd4f: "Neoverse-V2"}
X86_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx_vnni")


def auxv(path: str = "/proc/self/auxv") -> dict[int, int]:
    """The process's auxiliary vector (key -> value), empty where it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return {}
    width = struct.calcsize("P")
    fmt = "<QQ" if width == 8 else "<II"
    out = {}
    for off in range(0, len(data) - 2 * width + 1, 2 * width):
        k, v = struct.unpack_from(fmt, data, off)
        if k == 0:
            break
        out[k] = v
    return out


def _cpuinfo(path: str = "/proc/cpuinfo") -> list[dict[str, str]]:
    cores, cur = [], {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines() + [""]:
        if not line.strip():
            if cur:
                cores.append(cur)
            cur = {}
            continue
        key, _, val = line.partition(":")
        cur[key.strip().lower()] = val.strip()
    return cores


def cpu_info(machine: str | None = None, aux: dict | None = None,
             cpuinfo: list | None = None) -> dict:
    """cpu (name), cpu_features, machine, cores, emulated, isa_source. On aarch64 the features
    come from the auxiliary vector; /proc/cpuinfo naming an x86 host there means qemu-user."""
    machine = machine or platform.machine()
    cores = cpuinfo if cpuinfo is not None else _cpuinfo()
    first = cores[0] if cores else {}
    out = {"machine": machine, "cores": os.cpu_count()}
    if machine in ("aarch64", "arm64"):
        aux = auxv() if aux is None else aux
        hw, hw2 = aux.get(AT_HWCAP, 0), aux.get(AT_HWCAP2, 0)
        feats = [f for f, b in ARM_HWCAP.items() if hw >> b & 1]
        feats += [f for f, b in ARM_HWCAP2.items() if hw2 >> b & 1]
        emulated = bool(first) and "cpu implementer" not in first and (
            "vendor_id" in first or "flags" in first)
        name = "aarch64"
        if not emulated and first.get("cpu implementer", "").lower() == "0x41":
            parts = sorted({int(c.get("cpu part", "0"), 16) for c in cores if "cpu part" in c})
            name = " + ".join(ARM_PARTS.get(p, f"Arm part {p:#x}") for p in parts) or name
        out.update(cpu=name + (" (emulated)" if emulated else ""), cpu_features=feats,
                   emulated=emulated, isa_source="auxv")
        return out
    flags = (first.get("flags") or first.get("features") or "").split()
    out.update(cpu=first.get("model name") or first.get("cpu model") or platform.processor()
               or machine, cpu_features=[f for f in X86_FEATURES if f in flags], emulated=False,
               isa_source="cpuinfo")
    return out


def _read_number(path: Path) -> float | None:
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def host_sensors(root: str = "/sys") -> dict:
    """Temperature (hottest thermal zone, deg C), CPU 0's frequency (MHz), its thermal
    throttle count, and power draw (W) where the system exposes them; absent keys otherwise."""
    r = Path(root)
    out = {}
    temps = [t for t in (_read_number(z / "temp") for z in sorted(
        r.glob("class/thermal/thermal_zone*"))) if t is not None]
    if temps:
        out["temperature_c"] = round(max(temps) / 1000.0, 1)
    f = _read_number(r / "devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    if f is not None:
        out["cpu_freq_mhz"] = round(f / 1000.0, 1)
    t = _read_number(r / "devices/system/cpu/cpu0/thermal_throttle/core_throttle_count")
    if t is not None:
        out["throttle_count"] = int(t)
    for ps in sorted(r.glob("class/power_supply/*")):
        p = _read_number(ps / "power_now")
        if p is None:
            i, v = _read_number(ps / "current_now"), _read_number(ps / "voltage_now")
            p = i * v / 1e6 if i is not None and v is not None else None
        if p is not None:
            out["power_w"] = round(p / 1e6, 3)
            break
    return out


def parse_cpu_mask(mask: str) -> list[int]:
    """llama-bench's hex CPU mask ('0x3': CPUs 0 and 1) -> CPU indices."""
    try:
        bits = int(mask, 16)
    except ValueError:
        raise EdgeError(f"CPU mask {mask!r} is not hexadecimal (e.g. 0x3 for CPUs 0 and 1)") \
            from None
    cpus = [i for i in range(bits.bit_length()) if bits >> i & 1]
    if not cpus:
        raise EdgeError(f"CPU mask {mask!r} selects no CPU")
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        raise EdgeError("--cpu-mask needs Linux (sched_setaffinity)") from None
    missing = [c for c in cpus if c not in allowed]
    if missing:
        raise EdgeError(f"CPU mask {mask!r} names CPU(s) {missing} this process may not use "
                        f"(allowed: {sorted(allowed)})")
    return cpus


def prompt_ids(n: int, vocab: int, seed: int = BENCH_SEED) -> list[int]:
    # Ordinary token ids (the lowest few hundred are bytes / specials in every Llama vocabulary).
    rng = np.random.default_rng(seed)
    return rng.integers(min(1000, vocab // 2), vocab, n).tolist()


def _samples(fn, warmup: int, repeat: int, delay: float) -> list[int]:
    """The last `repeat` of `warmup + repeat` calls of fn, which returns the nanoseconds of its
    own timed part (its set-up is not timed)."""
    out = []
    for i in range(warmup + repeat):
        if delay and i:
            time.sleep(delay)
        t = fn()
        if i >= warmup:
            out.append(t)
    return out


def _timed(fn) -> int:
    t0 = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - t0


def run_test(session, vocab: int, n_prompt: int, n_gen: int, depth: int, warmup: int,
             repeat: int, delay: float = 0.0) -> list[int]:
    """Samples (ns) of one pp or tg test at a depth."""
    ctx_ids = prompt_ids(depth + 1, vocab, BENCH_SEED + 1)

    def pp():
        ids = prompt_ids(n_prompt, vocab)
        if depth:
            session.prefill(ctx_ids[:depth])
            return _timed(lambda: session.extend(ids))
        return _timed(lambda: session.prefill(ids))

    def tg():
        logits = session.prefill(ctx_ids[:depth + 1])
        tok = int(np.argmax(logits))

        def steps():
            nonlocal tok
            for _ in range(n_gen):
                tok = int(np.argmax(session.decode(tok)))
        return _timed(steps)

    if n_prompt and depth and not hasattr(session, "extend"):
        raise EdgeError("this engine cannot continue a prompt at a depth (pp at -d > 0)")
    return _samples(pp if n_prompt else tg, warmup, repeat, delay)


def first_token_s(session, vocab: int, warmup: int, repeat: int, delay: float = 0.0) -> float:
    """Median seconds from a 64-token prompt (empty cache) to its first greedy token."""
    ids = prompt_ids(min(64, session.max_context), vocab)
    return statistics.median(_samples(lambda: _timed(lambda: int(np.argmax(
        session.prefill(ids)))), warmup, repeat, delay)) / 1e9


def _stats(samples_ns: list[int], n: int) -> dict:
    ts = [n * 1e9 / s for s in samples_ns]
    return {"avg_ns": int(statistics.mean(samples_ns)),
            "stddev_ns": int(statistics.stdev(samples_ns)) if len(samples_ns) > 1 else 0,
            "avg_ts": round(statistics.mean(ts), 6),
            "stddev_ts": round(statistics.stdev(ts), 6) if len(ts) > 1 else 0.0,
            "samples_ns": samples_ns, "samples_ts": [round(t, 4) for t in ts]}


def artifact_digest(model: str) -> str | None:
    """SHA-256 naming the artifact: of its manifest (which records every file's digest) for a
    directory, of the file itself otherwise."""
    from .artifact import sha256_file

    p = Path(model)
    for f in (p / "manifest.json", p / "llama_edge_manifest.json") if p.is_dir() else (p,):
        if f.is_file():
            return sha256_file(f)
    return None


def run_bench(model: str, threads: int | None = None, ctx: int | None = None, repeat: int = 3,
              kv: str = "f32", verify: bool = True, engine: str = "auto",
              weight_memory: str = "auto", n_prompt=(128, 512), n_gen=(128,), depths=(0,),
              warmup: int = 1, delay: float = 0.0, cpu_mask: str | None = None,
              board: str | None = None, transport: str = "local") -> dict:
    """Load `model` once and run every test; the summary (load time, first-token time, peak
    RSS, host) and one record per test in `rows`. A test that fails (e.g. past the context)
    gives a row with status 'failed' and the reason; the others still run."""
    from .engines import model_bytes, open_model

    if repeat < 1 or warmup < 0 or delay < 0:
        raise EdgeError("repeat must be >= 1, warmup and delay >= 0")
    if cpu_mask:
        os.sched_setaffinity(0, parse_cpu_mask(cpu_mask))  # before the engine's threads start
    t0 = time.perf_counter()
    eng = open_model(model, max_context=ctx, threads=threads, kv=kv, verify=verify,
                     engine=engine, weight_memory=weight_memory)
    load_s = time.perf_counter() - t0
    session = eng.session()
    vocab = eng.config.vocab_size
    host = cpu_info()
    info = eng.info() if hasattr(eng, "info") else {}
    params = eng.config.num_parameters() if hasattr(eng.config, "num_parameters") else None
    recipe = info.get("recipe")
    size = model_bytes(model)
    ttft = first_token_s(session, vocab, warmup, repeat, delay)
    base = {"model_filename": str(model),
            "model_type": f"{getattr(eng.config, 'name', 'llama')} {recipe or eng.name}",
            "model_size": size, "model_n_params": params, "n_threads": eng.threads,
            "cpu_mask": cpu_mask or "0x0", "type_k": kv, "type_v": kv,
            "cpu_info": host["cpu"], "engine": eng.name, "isa": eng.isa,
            "cpu_features": host["cpu_features"], "cpu_count": host.get("cores"),
            "emulated": host["emulated"],
            "board": board or platform.node(), "transport": transport,
            "artifact_sha256": artifact_digest(model), "recipe": recipe,
            "ttft_s": round(ttft, 5), "load_s": round(load_s, 4)}
    tests = [(p, 0, d) for d in depths for p in n_prompt if p > 0] + \
        [(0, g, d) for d in depths for g in n_gen if g > 0]
    rows = []
    for p, g, d in tests:
        row = dict(base, n_prompt=p, n_gen=g, n_depth=d,
                   test_time=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        need = d + (p if p else g + 1)
        try:
            if need > session.max_context:
                raise EdgeError(f"needs {need} positions, the session holds "
                                f"{session.max_context} (raise --ctx)")
            row.update(_stats(run_test(session, vocab, p, g, d, warmup, repeat, delay), p or g))
            row["status"] = "ok"
        except EdgeError as e:
            row.update(status="failed", error=str(e))
        row.update(host_sensors(), peak_rss_mb=round(peak_rss_mb(), 1))
        rows.append(row)
    res = {"engine": eng.name, "model": str(model), "load_s": round(load_s, 4),
           "ttft64_s": round(ttft, 5), "threads": eng.threads, "isa": eng.isa,
           "weight_memory": eng.weight_memory, "max_context": session.max_context,
           "kv_bytes": session.kv_bytes, "repeat": repeat, "warmup": warmup,
           "file_mb": round(size / 1e6, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
           **host, "rows": rows}
    for r in rows:  # the summary's tokens/s at depth 0 (pp512_tok_s, tg128_tok_s, ...)
        if r["status"] == "ok" and r["n_depth"] == 0:
            key = f"pp{r['n_prompt']}_tok_s" if r["n_prompt"] else f"tg{r['n_gen']}_tok_s"
            res[key] = round(r["avg_ts"], 2)
    return res


def bench_session(session, vocab: int, repeat: int = 3, pp=(128, 512), tg: int = 128) -> dict:
    """pp / tg tokens/s and the 64-token first-token time of a session (depth 0; the medians of
    `repeat` runs after one warm-up): for benchmarks that hold their own session."""
    out = {}
    for n in pp:
        if n <= session.max_context:
            ns = run_test(session, vocab, n, 0, 0, 1, repeat)
            out[f"pp{n}_tok_s"] = round(n * 1e9 / statistics.median(ns), 2)
    if tg + 1 <= session.max_context:
        ns = run_test(session, vocab, 0, tg, 0, 1, repeat)
        out[f"tg{tg}_tok_s"] = round(tg * 1e9 / statistics.median(ns), 2)
    out["ttft64_s"] = round(first_token_s(session, vocab, 1, repeat), 5)
    return out


# ------------------------------------------------------------------------------------ schema
_NUM = (int, float)
# Every record's fields and their types (None allowed where listed); llama-bench's names first.
RECORD_FIELDS = {
    "model_filename": (str,), "model_type": (str,), "model_size": (int,),
    "model_n_params": (int, None), "n_threads": (int, None), "cpu_mask": (str,),
    "n_prompt": (int,), "n_gen": (int,), "n_depth": (int,), "test_time": (str, None),
    "avg_ns": (int, None), "stddev_ns": (int, None), "avg_ts": (*_NUM, None),
    "stddev_ts": (*_NUM, None), "samples_ns": (list,), "samples_ts": (list,),
    "type_k": (str, None), "type_v": (str, None), "cpu_info": (str, None),
    "engine": (str, None), "isa": (str, None), "cpu_features": (list,), "cpu_count": (int, None),
    "emulated": (bool, None), "board": (str,), "transport": (str,),
    "artifact_sha256": (str, None), "recipe": (str, None), "ttft_s": (*_NUM, None),
    "load_s": (*_NUM, None), "peak_rss_mb": (*_NUM, None), "status": (str,),
}
# Fields a record may carry besides: the reason of a failure, the board's sensors where it has
# them, and what a fleet run adds (rounds merged, whether the artifact was pushed).
OPTIONAL_FIELDS = {"error": (str,), "temperature_c": _NUM, "cpu_freq_mhz": _NUM,
                   "throttle_count": (int,), "power_w": _NUM, "rounds": (int,),
                   "artifact_pushed": (bool,)}
# measured, hence set, in every record whose status is "ok"
OK_FIELDS = ("avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "test_time", "engine", "isa",
             "n_threads", "ttft_s", "load_s", "peak_rss_mb", "cpu_info", "emulated")


def record_problems(r: dict) -> list[str]:
    """What makes r not a record of this schema (empty: it is one)."""
    out = []
    for name, types in {**RECORD_FIELDS, **OPTIONAL_FIELDS}.items():
        if name not in r:
            if name in RECORD_FIELDS:
                out.append(f"{name}: missing")
            continue
        v, ok = r[name], tuple(t for t in types if t is not None)
        if v is None and None in types:
            continue
        if not isinstance(v, ok) or (isinstance(v, bool) and bool not in ok):
            out.append(f"{name}: {type(v).__name__} {v!r}")
    out += [f"{k}: unknown field" for k in r if k not in RECORD_FIELDS and k not in OPTIONAL_FIELDS]
    if r.get("status") == "ok":
        out += [f"{k}: empty in an ok record" for k in OK_FIELDS if r.get(k) is None]
        if len(r.get("samples_ns", [])) != len(r.get("samples_ts", [])) or not r.get("samples_ns"):
            out.append("samples_ns / samples_ts: empty or of different lengths")
    elif r.get("status") == "failed":
        if not r.get("error"):
            out.append("error: a failed record must say why")
    else:
        out.append(f"status: {r.get('status')!r} (ok or failed)")
    return out


# ------------------------------------------------------------------------------------ output
MD_COLUMNS = ("model", "size", "params", "engine", "threads", "test", "t/s")


def _test_name(r: dict) -> str:
    t = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    return t + (f" @ d{r['n_depth']}" if r["n_depth"] else "")


def _size(n: int | None) -> str:
    return "" if not n else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _params(n: int | None) -> str:
    return "" if not n else f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def format_rows(rows: list[dict], fmt: str) -> str:
    """rows as llama-bench prints them (md, csv, json, jsonl) or as PyTorch benchmark database
    records (pytorch: one record per metric, the schema of benchmarks/ in pytorch/test-infra)."""
    if fmt == "md":
        lines = ["| " + " | ".join(MD_COLUMNS + ("board",)) + " |",
                 "| --- | ---: | ---: | --- | ---: | --- | ---: | --- |"]
        for r in rows:
            ts = (f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}" if r["status"] == "ok"
                  else f"failed: {r.get('error', '')}")
            lines.append(f"| {r['model_type']} | {_size(r['model_size'])} | "
                         f"{_params(r['model_n_params'])} | {r['engine']} | {r['n_threads']} | "
                         f"{_test_name(r)} | {ts} | {r['board']} |")
        return "\n".join(lines) + "\n"
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    if fmt == "csv":
        keys = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, keys, quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                        for k, v in r.items()})
        return buf.getvalue()
    if fmt == "pytorch":
        return json.dumps(pytorch_records(rows), indent=2) + "\n"
    raise EdgeError(f"output format {fmt!r}: choose one of {', '.join(FORMATS)}")


def pytorch_records(rows: list[dict]) -> list[dict]:
    """One PyTorch benchmark database record (benchmark / model / metric / runners) per row
    and metric: tokens/s of the test, plus time to first token and peak RSS once per row."""
    out = []
    for r in rows:
        if r["status"] != "ok":
            continue
        bench = {"name": "llama-edge bench", "mode": "inference", "dtype": r["recipe"] or "none",
                 "extra_info": {"test": _test_name(r), "n_prompt": r["n_prompt"],
                                "n_gen": r["n_gen"], "n_depth": r["n_depth"],
                                "n_threads": r["n_threads"], "cpu_mask": r["cpu_mask"],
                                "type_k": r["type_k"], "transport": r["transport"],
                                "emulated": r["emulated"]}}
        model = {"name": r["model_type"], "type": "llm", "backend": r["engine"],
                 "origins": [r["model_filename"]],
                 "extra_info": {"artifact_sha256": r["artifact_sha256"],
                                "model_size": r["model_size"],
                                "model_n_params": r["model_n_params"], "isa": r["isa"]}}
        runner = {"name": r["board"], "type": r["cpu_info"], "cpu_info": r["cpu_info"],
                  "cpu_count": r.get("cpu_count"), "avail_mem_in_gb": None, "gpu_info": "",
                  "extra_info": {"cpu_features": r["cpu_features"],
                                 **{k: r[k] for k in ("temperature_c", "cpu_freq_mhz",
                                                      "throttle_count", "power_w") if k in r}}}
        metrics = [("token_per_sec", r["samples_ts"]), ("ttft_s", [r["ttft_s"]]),
                   ("peak_rss_mb", [r["peak_rss_mb"]])]
        for name, values in metrics:
            out.append({"benchmark": bench, "model": model,
                        "metric": {"name": name, "benchmark_values": values,
                                   "target_value": None, "extra_info": {}},
                        "runners": [runner]})
    return out
