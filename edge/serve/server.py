"""Start the server: bind the address (a busy port fails before the model loads), load the
model, create the sessions, run uvicorn until SIGINT / SIGTERM.

Once listening, one line goes to stderr:
    llama-edge serve: MODEL_ID on http://HOST:PORT (...)
(with the port chosen when --port 0 was given), then one line per request.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import EdgeError, require
from .config import EXTRA_CONNECTIONS, ServeConfig, is_loopback

log = logging.getLogger("llama_edge.serve")
# Seconds open connections get to finish after SIGINT / SIGTERM (running generations are
# stopped at once, so this is only the time to send their last bytes).
GRACEFUL_SHUTDOWN_S = 5


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise EdgeError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise EdgeError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port "
                        "or stop what uses it") from None
    sock.set_inheritable(True)
    return sock


def _files_bytes(path: str) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _setup_logging() -> None:
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


def build(cfg: ServeConfig):
    """The model, its sessions and the application (everything but the socket)."""
    from prometheus_client import disable_created_metrics

    from ..artifact import is_artifact
    from ..engines import open_model
    from .app import ServeState, build_app
    from .jobs import ServedModel
    from .metrics import Metrics
    from .pool import SessionPool

    if not is_artifact(cfg.model):
        raise EdgeError(f"{cfg.model}: not an edge artifact; llama-edge serve runs the directory "
                        "that llama-export --target edge writes (OUT/edge)")
    disable_created_metrics()  # the *_created series say nothing a server's user needs
    extra = {} if cfg.verify else {"verify": False}
    engine = open_model(cfg.model, max_context=cfg.ctx, threads=cfg.threads, kv=cfg.kv,
                        engine="edge", weight_memory=cfg.weight_memory, **extra)
    if engine.tokenizer is None:
        raise EdgeError(f"{cfg.model}: has no tokenizer, so it cannot serve text")
    # every KV cache is allocated here, once; requests never allocate one
    sessions = [engine.session() for _ in range(cfg.parallel)]
    ctx = sessions[0].max_context
    model = ServedModel(engine, cfg.model_id, ctx, cfg.max_tokens,
                        created=int(os.stat(cfg.model).st_mtime), max_input=cfg.max_input)
    pool = SessionPool(sessions, cfg.queue)
    kv_bytes = sum(getattr(s, "kv_bytes", 0) for s in sessions)
    info = {"id": cfg.model_id, "path": str(Path(cfg.model).resolve()), "context": str(ctx),
            "threads": str(getattr(engine, "threads", "")), "isa": str(getattr(engine, "isa", "")),
            "kv_cache": cfg.kv,
            "weights": str(getattr(getattr(engine, "artifact", None), "weight_memory", ""))}
    metrics = Metrics(pool, info, kv_bytes, _files_bytes(cfg.model))
    return build_app(ServeState(cfg, model, pool, metrics)), pool, info, kv_bytes


def serve(cfg: ServeConfig) -> None:
    require("starlette", "llama-edge serve", "serve")
    require("uvicorn", "llama-edge serve", "serve")
    require("prometheus_client", "llama-edge serve", "serve")
    import uvicorn

    cfg.validate()
    sock = _bind(cfg.host, cfg.port)
    try:
        t0 = time.perf_counter()
        app, pool, info, kv_bytes = build(cfg)
        load_s = time.perf_counter() - t0
        _setup_logging()
        host, port = sock.getsockname()[:2]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        banner = (f"llama-edge serve: {cfg.model_id} on {url} ({cfg.parallel} sessions x "
                  f"{info['context']} tokens, queue {cfg.queue}, KV cache "
                  f"{kv_bytes / 2**20:.1f} MiB, {info['threads']} threads, loaded in "
                  f"{load_s:.2f} s)")
        if not is_loopback(cfg.host) and not cfg.api_key:
            log.warning("listening on %s without --api-key: anyone who can reach this address "
                        "can use the model", cfg.host)

        class Server(uvicorn.Server):
            async def startup(self, sockets=None):
                await super().startup(sockets)
                if self.started:
                    print(banner, file=sys.stderr, flush=True)

            async def shutdown(self, sockets=None):
                pool.shut()  # running generations stop at their next token
                await super().shutdown(sockets)

        config = uvicorn.Config(
            app, log_config=None, access_log=False, server_header=False, lifespan="off",
            limit_concurrency=cfg.parallel + cfg.queue + EXTRA_CONNECTIONS,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
        try:
            Server(config).run(sockets=[sock])
        finally:
            pool.close()
    finally:
        sock.close()
