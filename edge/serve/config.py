"""The server's options and request limits, checked once at start."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeError
from ..tasks import MAX_INPUT_TOKENS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_PARALLEL = 2
DEFAULT_QUEUE = 16
# A request body carries at most one task document (edge.tasks caps those at 512 KiB of
# UTF-8) plus JSON escaping and the other fields; 2 MiB leaves room for escaped non-ASCII text.
DEFAULT_MAX_BODY = 2 << 20
# Conversations longer than this are a client bug rather than a chat (and each message costs
# a tokenizer call).
DEFAULT_MAX_MESSAGES = 256
# Seconds a request may take from arrival to its last token, queue wait included.
DEFAULT_TIMEOUT = 600.0
# OpenAI accepts at most 4 stop sequences; each one is searched for after every token, so they
# are kept short too.
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
# Open connections beyond the sessions and the queue: room for /health, /metrics and requests
# answered 429, while a flood of idle connections still hits a bound (uvicorn answers 503).
EXTRA_CONNECTIONS = 256


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_model_id(path: str) -> str:
    """The id /v1/models lists: the artifact directory's name, or its parent's for the export
    layout OUT/edge."""
    p = Path(path).resolve()
    return p.parent.name if p.name == "edge" and p.parent.name else p.name


@dataclass
class ServeConfig:
    model: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    parallel: int = DEFAULT_PARALLEL
    queue: int = DEFAULT_QUEUE
    ctx: int | None = None  # context of each session (default: the engine's)
    api_key: str | None = None
    threads: int | None = None
    weight_memory: str = "auto"
    kv: str = "f32"
    verify: bool = True
    max_body: int = DEFAULT_MAX_BODY
    max_messages: int = DEFAULT_MAX_MESSAGES
    max_tokens: int | None = None  # largest max_tokens a request may ask (default: the context)
    max_input: int = MAX_INPUT_TOKENS  # task documents of more tokens are refused
    timeout: float = DEFAULT_TIMEOUT
    model_id: str | None = None  # the name clients use (default: default_model_id)

    def validate(self) -> "ServeConfig":
        def bad(flag, msg):
            raise EdgeError(f"{flag}: {msg}")

        if not 0 <= self.port <= 65535:
            bad("--port", f"must be in 0..65535 (0 picks a free port), got {self.port}")
        if not 1 <= self.parallel <= 256:
            bad("--parallel", f"must be in 1..256 sessions, got {self.parallel}")
        if not 0 <= self.queue <= 65536:
            bad("--queue", f"must be in 0..65536 waiting requests, got {self.queue}")
        if self.ctx is not None and self.ctx < 16:
            bad("--ctx", f"must be at least 16 tokens, got {self.ctx}")
        if self.api_key is not None and not self.api_key.strip():
            bad("--api-key", "is empty; give a key or leave the option out")
        if not 1024 <= self.max_body <= 1 << 30:
            bad("--max-body", f"must be in 1024..{1 << 30} bytes, got {self.max_body}")
        if not 1 <= self.max_messages <= 1 << 16:
            bad("--max-messages", f"must be in 1..65536, got {self.max_messages}")
        if self.max_tokens is not None and self.max_tokens < 1:
            bad("--max-tokens", f"must be at least 1, got {self.max_tokens}")
        if not 1 <= self.max_input <= 1 << 22:
            bad("--max-input", f"must be in 1..{1 << 22} tokens, got {self.max_input}")
        if not 0 < self.timeout <= 86400:
            bad("--timeout", f"must be in (0, 86400] seconds, got {self.timeout}")
        if self.model_id is not None and not self.model_id.strip():
            bad("--alias", "is empty")
        if Path(self.model).name == "manifest.json" and Path(self.model).is_file():
            self.model = str(Path(self.model).parent)  # the artifact named by its manifest
        if self.model_id is None:
            self.model_id = default_model_id(self.model)
        return self
