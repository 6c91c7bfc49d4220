"""/metrics in Prometheus' text format (prometheus_client, on a registry of the server's own).

Counters: requests by endpoint and status, prompt and generated tokens, rejected and cancelled
requests. Gauges: queue depth, busy and total sessions, KV cache and weight bytes, the
process's memory (current and peak). Histograms: time to first token, queue wait, request
duration, decode speed per request. Throughput over any window is
rate(llama_edge_generated_tokens_total[1m]).
"""

from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               Info, ProcessCollector, generate_latest)

from ..memory import proc_kb

# Seconds: from a few ms (a short prompt on a small model) to minutes (a long task on a board).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Decode tokens/s per request: boards with 3B models run a few, desktops with 135M hundreds.
SPEED_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, pool, model_info: dict, kv_bytes: int, weight_bytes: int):
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        p = "llama_edge_"
        self.requests = Counter(p + "requests", "HTTP requests answered, by endpoint and "
                                "status (499: the client went away first)",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens processed", registry=r)
        self.generated_tokens = Counter(p + "generated_tokens", "Tokens generated", registry=r)
        self.rejected = Counter(p + "rejected_requests", "Requests refused for load: queue_full "
                                "(429) or queue_timeout (503)", ["reason"], registry=r)
        self.cancelled = Counter(p + "cancelled_requests", "Generations stopped early: client "
                                 "(went away), timeout, shutdown", ["reason"], registry=r)
        Gauge(p + "queue_depth", "Requests waiting for a session",
              registry=r).set_function(lambda: pool.waiting)
        Gauge(p + "sessions_busy", "Sessions generating",
              registry=r).set_function(lambda: pool.busy)
        Gauge(p + "sessions", "Sessions (--parallel)", registry=r).set(pool.size)
        Gauge(p + "queue_limit", "Requests that may wait (--queue)",
              registry=r).set(pool.max_queue)
        Gauge(p + "kv_cache_bytes", "KV cache bytes of all sessions", registry=r).set(kv_bytes)
        Gauge(p + "weight_file_bytes", "Bytes of the model's files", registry=r).set(weight_bytes)
        Gauge(p + "peak_resident_memory_bytes", "Peak resident memory of the process (VmHWM)",
              registry=r).set_function(lambda: (proc_kb("/proc/self/status", "VmHWM") or 0) * 1024)
        Info(p + "model", "The model served", registry=r).info(model_info)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "From arrival to the first "
                              "generated text, queue wait included", buckets=LATENCY_BUCKETS,
                              registry=r)
        self.queue_wait = Histogram(p + "queue_wait_seconds", "Wait for a free session",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.duration = Histogram(p + "request_duration_seconds", "From arrival to the last "
                                  "byte of generating requests", buckets=LATENCY_BUCKETS,
                                  registry=r)
        self.decode_speed = Histogram(p + "decode_tokens_per_second", "Decode speed of each "
                                      "finished generation", buckets=SPEED_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
