"""A `llama-edge serve` process for the tests: started on a free loopback port, its stderr
collected (the banner, one log line per request), its memory read from /proc, its /metrics
parsed, stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx

MODEL_ID = "smollm2-int8"
# Bounds on waiting for the server: failure guards only, never what a test measures. Loading
# the 145 MB artifact (digest check included) takes about a second on an idle machine.
STARTUP_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60
_BANNER = re.compile(r"^llama-edge serve: \S+ on (http://\S+) ")
_REQUEST_LINE = re.compile(r" INFO \S+ (GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS) (\S+) (\d{3}) ")


class ServerProcess:
    def __init__(self, artifact, *args: str, env: dict | None = None):
        cmd = [sys.executable, "-m", "edge.cli", "serve", "-m", str(artifact), "--port", "0",
               "--alias", MODEL_ID, *args]
        full_env = {k: v for k, v in os.environ.items() if k != "LLAMA_EDGE_API_KEY"}
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=full_env)
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(STARTUP_TIMEOUT_S) or self.url is None:
            self.stop()
            raise RuntimeError("llama-edge serve did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            m = _BANNER.match(line)
            if m:
                self.url = m.group(1)
                self._ready.set()
        self._ready.set()  # the process ended

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status_kb(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def maps(self) -> str:
        with open(f"/proc/{self.pid}/maps", encoding="ascii", errors="replace") as f:
            return f.read()

    def metrics(self, headers: dict | None = None) -> dict:
        """{(sample name, ((label, value), ...)): value} from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        r = httpx.get(self.url + "/metrics", headers=headers)
        r.raise_for_status()
        out = {}
        for fam in text_string_to_metric_families(r.text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def request_lines(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request log line so far."""
        out = []
        for line in list(self.lines):
            m = _REQUEST_LINE.search(line)
            if m:
                out.append((m.group(1), m.group(2), int(m.group(3))))
        return out

    def wait_request_lines(self, n: int) -> list[tuple[str, str, int]]:
        """The request log once it has at least n lines (stderr arrives through a pipe)."""
        end = time.monotonic() + STOP_TIMEOUT_S
        while len(lines := self.request_lines()) < n and time.monotonic() < end:
            time.sleep(0.02)
        return lines

    def health(self) -> dict:
        return httpx.get(self.url + "/health").json()

    def wait_health(self, pred, what: str, timeout: float = STARTUP_TIMEOUT_S) -> dict:
        """Poll /health until pred(health) (a failure guard, not a measurement)."""
        end = time.monotonic() + timeout
        while True:
            h = self.health()
            if pred(h):
                return h
            if time.monotonic() > end:
                raise AssertionError(f"server never reached: {what}; last /health {h}")
            time.sleep(0.02)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
