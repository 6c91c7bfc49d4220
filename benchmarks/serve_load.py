"""Load run of `llama-edge serve`: many clients at once against a few sessions.

    python benchmarks/serve_load.py -m build/smollm2-135m-instruct/edge --name smollm2 \\
        --clients 32 --parallel 4 --max-tokens 64

Starts the server (loopback, a free port), runs every distinct prompt alone first (greedy:
the answers the loaded run must reproduce; this also warms every session), then starts all
clients at once, each sending --requests chat requests one after the other (half the clients
stream, half do not). Reports throughput (generated tokens / wall time of the loaded run),
requests/s, time to first token (streaming requests, client side) and total latency
percentiles, and what must be nothing: requests lost (neither a full answer nor a 429),
answered twice, answered differently from alone, or miscounted by the server's own /metrics.
Memory: the server's peak RSS (VmHWM) against file + sessions x KV cache + MARGIN_MB, and its
RSS after the load against before. Writes benchmarks/results/serve_load_NAME.{json,md}.

The asyncio client here (run_clients) is also what tests/edge/serve/test_serve_load.py uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

CHAT = "/v1/chat/completions"
# What the server process holds besides the weights file and the KV caches: the interpreter,
# numpy, the tokenizer (SmolLM2: 49k tokens), uvicorn / Starlette, the kernels' workspaces,
# request buffers. Measured on SmolLM2 (int8 artifact, 2 sessions x 512, 6 clients): 118 MiB
# at the peak; the margin leaves room for more clients and larger vocabularies. (MB in the
# reports are MiB, as in llama-edge bench.)
MARGIN_MB = 256
# Prompts of several lengths; each client takes them in turn.
PROMPTS = (
    "What is the capital of France?",
    "Write two sentences about the sea.",
    "Explain in one paragraph why the sky is blue.",
    "List five fruits and their colours.",
    "Summarize: the town council voted on Tuesday to turn the old railway line into a cycle "
    "path; work starts in March and should take two years.",
    "Give three tips for writing clear emails.",
    "What does a compiler do? Answer briefly.",
    "Rewrite in a formal style: hey, the meeting got moved to friday, see you there.",
)
STARTUP_TIMEOUT_S = 300
_BANNER = re.compile(r"^llama-edge serve: \S+ on (http://\S+) ")


@dataclass
class Outcome:
    client: int
    prompt: int
    stream: bool
    status: int | str  # HTTP status, or "stream_error" / "transport_error"
    complete: bool  # a finish reason arrived (and [DONE] for streams)
    request_id: str | None = None
    text: str = ""
    finish: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None  # streams: to the first content delta
    total_s: float = 0.0
    retry_after: str | None = None
    error: dict | None = None


async def _one(client, url: str, model: str, c: int, p: int, stream: bool,
               max_tokens: int) -> Outcome:
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[p % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    out = Outcome(c, p, stream, 0, False)
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", url + CHAT, json=body) as r:
            out.status = r.status_code
            if r.status_code != 200:
                await r.aread()
                out.retry_after = r.headers.get("retry-after")
                out.error = r.json().get("error")
            elif not stream:
                d = json.loads(await r.aread())
                ch = d["choices"][0]
                out.request_id, out.text, out.finish = d["id"], ch["message"]["content"], \
                    ch["finish_reason"]
                out.prompt_tokens = d["usage"]["prompt_tokens"]
                out.completion_tokens = d["usage"]["completion_tokens"]
                out.complete = out.finish is not None
            else:
                parts, ids, done = [], set(), False
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        continue
                    obj = json.loads(line[6:])
                    if "error" in obj:
                        out.status, out.error = "stream_error", obj["error"]
                        break
                    ids.add(obj["id"])
                    for ch in obj["choices"]:
                        if ch["delta"].get("content"):
                            if out.ttft_s is None:
                                out.ttft_s = time.perf_counter() - t0
                            parts.append(ch["delta"]["content"])
                        out.finish = ch["finish_reason"] or out.finish
                    if obj.get("usage"):
                        out.prompt_tokens = obj["usage"]["prompt_tokens"]
                        out.completion_tokens = obj["usage"]["completion_tokens"]
                out.text = "".join(parts)
                out.request_id = ids.pop() if len(ids) == 1 else None
                out.complete = out.status == 200 and done and out.finish is not None
    except httpx.HTTPError as e:
        out.status, out.error = "transport_error", {"message": str(e)}
    out.total_s = time.perf_counter() - t0
    return out


async def run_clients(url: str, model: str, clients: int, requests: int, max_tokens: int,
                      first_prompt: int = 0) -> tuple[list[Outcome], float]:
    """`clients` clients at once, each sending `requests` requests one after the other (odd
    clients stream); client c's k-th request asks prompt first_prompt + c + k. Returns the
    outcomes and the wall time."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:
        async def one_client(c: int) -> list[Outcome]:
            return [await _one(client, url, model, c, first_prompt + c + k, c % 2 == 1,
                               max_tokens) for k in range(requests)]

        t0 = time.perf_counter()
        per = await asyncio.gather(*(one_client(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    return [o for lst in per for o in lst], wall


def check(outcomes: list[Outcome], alone: dict[int, str] | None = None) -> dict:
    """What must be nothing in a load run: requests lost, answered twice, answered otherwise
    than alone."""
    lost = [o for o in outcomes if not (o.status == 200 and o.complete) and o.status != 429]
    # an id seen twice is one answer given to two requests; a stream whose chunks carry
    # several ids (request_id None) mixed two answers
    ids = Counter(o.request_id for o in outcomes if o.status == 200)
    twice = sum(n - 1 for i, n in ids.items() if i is not None) + ids.get(None, 0)
    different = [o for o in outcomes if alone is not None and o.status == 200 and o.complete
                 and o.text != alone[o.prompt % len(PROMPTS)]]
    return {"requests": len(outcomes),
            "completed": sum(o.status == 200 and o.complete for o in outcomes),
            "rejected_429": sum(o.status == 429 for o in outcomes),
            "lost": len(lost), "answered_twice": twice, "different_from_alone": len(different)}


class Server:
    """`llama-edge serve` in a child process on a free loopback port."""

    def __init__(self, model: str, args: list[str]):
        cmd = [sys.executable, "-m", "edge.cli", "serve", "-m", model, "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.url, self.lines, ready = None, [], threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = _BANNER.match(line)
                if m:
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(STARTUP_TIMEOUT_S) or self.url is None:
            self.stop()
            raise SystemExit("llama-edge serve did not start:\n" + "".join(self.lines))

    def status_mb(self, field: str) -> float:
        from edge.memory import proc_kb

        return (proc_kb(f"/proc/{self.proc.pid}/status", field) or 0) / 1024

    def metrics(self) -> dict:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        out = {}
        for fam in text_string_to_metric_families(httpx.get(self.url + "/metrics").text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _pct(values: list[float]) -> dict:
    import numpy as np

    if not values:
        return {}
    return {f"p{q}": round(float(np.percentile(values, q)), 4) for q in (50, 90, 99)}


def _requests_delta(m1: dict, m0: dict, status: str) -> int:
    key = ("llama_edge_requests_total", (("endpoint", CHAT), ("status", status)))
    return int(m1.get(key, 0) - m0.get(key, 0))


def run(args) -> dict:
    from edge.bench import cpu_info

    srv_args = ["--parallel", str(args.parallel), "--queue", str(args.queue), "--ctx",
                str(args.ctx), "--alias", "model"]
    for flag, v in (("--threads", args.threads), ("--weights", args.weights),
                    ("--kv-cache", args.kv_cache)):
        if v is not None:
            srv_args += [flag, str(v)]
    srv = Server(args.model, srv_args)
    try:
        # alone: every distinct prompt, one at a time, greedy (also warms every session)
        n_prompts = min(len(PROMPTS), args.clients + args.requests - 1)
        alone = {}
        for p in range(n_prompts):
            [o], _ = asyncio.run(run_clients(srv.url, "model", 1, 1, args.max_tokens, p))
            if not (o.status == 200 and o.complete):
                raise SystemExit(f"prompt {p} alone failed: {o}")
            alone[p] = o.text
        rss_before = srv.status_mb("VmRSS")
        m0 = srv.metrics()
        outcomes, wall = asyncio.run(run_clients(srv.url, "model", args.clients, args.requests,
                                                 args.max_tokens))
        m1 = srv.metrics()
        rss_after = srv.status_mb("VmRSS")
        peak = srv.status_mb("VmHWM")
    finally:
        srv.stop()
    ok = [o for o in outcomes if o.status == 200 and o.complete]
    tokens = sum(o.completion_tokens for o in ok)
    verdict = check(outcomes, alone)
    verdict["server_counted_200"] = _requests_delta(m1, m0, "200")
    verdict["server_counted_429"] = _requests_delta(m1, m0, "429")
    verdict["server_counts_match"] = (verdict["server_counted_200"] == verdict["completed"]
                                      and verdict["server_counted_429"] == verdict["rejected_429"])
    file_mb = m1[("llama_edge_weight_file_bytes", ())] / 2**20
    kv_mb = m1[("llama_edge_kv_cache_bytes", ())] / 2**20
    ttft_server = m1[("llama_edge_time_to_first_token_seconds_sum", ())] - m0[(
        "llama_edge_time_to_first_token_seconds_sum", ())]
    n_ttft = m1[("llama_edge_time_to_first_token_seconds_count", ())] - m0[(
        "llama_edge_time_to_first_token_seconds_count", ())]
    return {
        "name": args.name, "model": str(args.model), "clients": args.clients,
        "requests_per_client": args.requests, "parallel": args.parallel, "queue": args.queue,
        "ctx": args.ctx, "max_tokens": args.max_tokens, "threads": args.threads,
        **verdict,
        "wall_s": round(wall, 3), "generated_tokens": tokens,
        "throughput_tok_s": round(tokens / wall, 2), "requests_per_s": round(len(ok) / wall, 3),
        "ttft_s": _pct([o.ttft_s for o in ok if o.ttft_s is not None]),
        "ttft_server_mean_s": round(ttft_server / n_ttft, 4) if n_ttft else None,
        "total_s": _pct([o.total_s for o in ok]),
        "file_mb": round(file_mb, 1), "kv_cache_mb": round(kv_mb, 1), "margin_mb": MARGIN_MB,
        "peak_rss_mb": round(peak, 1), "bound_mb": round(file_mb + kv_mb + MARGIN_MB, 1),
        "within_bound": peak <= file_mb + kv_mb + MARGIN_MB,
        "overhead_mb": round(peak - file_mb - kv_mb, 1),
        "rss_before_load_mb": round(rss_before, 1), "rss_after_load_mb": round(rss_after, 1),
        "host": cpu_info(), "outcomes": [asdict(o) for o in outcomes],
    }


def markdown(r: dict) -> str:
    def p(d):
        return " / ".join(f"{d[k]:.3f}" for k in ("p50", "p90", "p99")) if d else "-"

    return "\n".join([
        f"# llama-edge serve under load: {r['name']}", "",
        f"`{r['model']}`, {r['clients']} clients x {r['requests_per_client']} requests, "
        f"--parallel {r['parallel']}, --queue {r['queue']}, --ctx {r['ctx']}, max_tokens "
        f"{r['max_tokens']} (greedy; odd clients stream), host: {r['host']['cpu']}.", "",
        "| requests | completed | 429 | lost | answered twice | differ from alone | server "
        "counts match |", "|---:|---:|---:|---:|---:|---:|---|",
        f"| {r['requests']} | {r['completed']} | {r['rejected_429']} | {r['lost']} | "
        f"{r['answered_twice']} | {r['different_from_alone']} | {r['server_counts_match']} |",
        "", "| throughput tok/s | requests/s | TTFT p50 / p90 / p99 s (streams) | total p50 / "
        "p90 / p99 s | peak RSS MB | bound MB (file + KV + margin) |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {r['throughput_tok_s']} | {r['requests_per_s']} | {p(r['ttft_s'])} | "
        f"{p(r['total_s'])} | {r['peak_rss_mb']} | {r['bound_mb']} ({r['file_mb']} + "
        f"{r['kv_cache_mb']} + {r['margin_mb']}) |", "",
        f"RSS before the load {r['rss_before_load_mb']} MB, after {r['rss_after_load_mb']} MB; "
        f"wall {r['wall_s']} s, {r['generated_tokens']} tokens generated.", ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True, help="Edge artifact directory.")
    ap.add_argument("--name", required=True, help="Results go to serve_load_NAME.{json,md}.")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=1, help="Requests per client, in turn.")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--queue", type=int, default=None,
                    help="Server queue (default: clients - parallel, so that none is refused).")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--weights", default=None, help="auto | mapped | resident")
    ap.add_argument("--kv-cache", default=None, help="f32 | int8")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if args.queue is None:
        args.queue = max(args.clients - args.parallel, 0)
    r = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(r, indent=1) + "\n"), (".md", markdown(r))):
        dest = args.out / f"serve_load_{args.name}{suffix}"
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, dest)
    print(markdown(r))
    bad = r["lost"] or r["answered_twice"] or r["different_from_alone"] or not (
        r["server_counts_match"] and r["within_bound"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
