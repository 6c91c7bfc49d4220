"""The Starlette application: routes, API keys and the request log.

    GET  /health               liveness and load (no API key needed)
    GET  /metrics              Prometheus text
    GET  /v1/models[/{id}]     the one model served
    POST /v1/chat/completions  messages -> reply (stream: server-sent events)
    POST /v1/completions       prompt -> continuation
    POST /v1/tasks/summarize   {"text"} -> summary, the prompts of `llama-edge summarize`
    POST /v1/tasks/rewrite     {"text", "style"} -> rewrite, as `llama-edge rewrite`

A generating request is parsed, validated and tokenized first (every problem a 4xx before it
waits for a session), then answered by a GenerationResponse (generating.py).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import APIError
from .generating import GenerationResponse, ServeState, send_json
from .jobs import chat_job, completion_job, task_job
from .responses import Shape, dumps
from .schemas import chat_request, completion_request, parse_json, task_request

log = logging.getLogger("llama_edge.serve")

ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
             "/v1/tasks/summarize", "/v1/tasks/rewrite")


def json_response(obj, status: int = 200, headers: dict | None = None) -> Response:
    return Response(dumps(obj), status, headers, media_type="application/json")


def error_response(e: APIError) -> Response:
    return json_response(e.body(), e.status, e.headers)


async def read_body(request: Request, limit: int) -> bytes:
    def too_large(n):
        return APIError(413, f"the request body has {n} bytes; this server takes at most {limit} "
                             "(--max-body)", "request_too_large")

    cl = request.headers.get("content-length")
    if cl is not None:
        if not cl.isdigit():
            raise APIError(400, f"Content-Length {cl[:40]!r} is not a number", "invalid_header")
        if int(cl) > limit:
            raise too_large(int(cl))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"more than {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def _state(request: Request) -> ServeState:
    return request.app.state.serve


async def _generating(request: Request, kind: str, parse, build, task: str | None = None):
    st = _state(request)
    body = parse_json(await read_body(request, st.config.max_body))
    req = parse(body)
    st.model.check_model(req.model)
    if st.pool.full():  # before spending time on the tokenizer
        raise st.queue_full()
    job = await asyncio.to_thread(build, st.model, req)
    shape = Shape(kind, st.model.id, task)
    return GenerationResponse(st, job, shape, req.stream, req.include_usage)


async def chat(request: Request):
    cfg = _state(request).config
    return await _generating(request, "chat", lambda b: chat_request(b, cfg.max_messages),
                             chat_job)


async def completions(request: Request):
    return await _generating(request, "completion", completion_request, completion_job)


async def summarize(request: Request):
    return await _generating(request, "task", lambda b: task_request("summarize", b), task_job,
                             "summary")


async def rewrite(request: Request):
    return await _generating(request, "task", lambda b: task_request("rewrite", b), task_job,
                             "rewrite")


def _model_card(st: ServeState) -> dict:
    return {"id": st.model.id, "object": "model", "created": st.model.created,
            "owned_by": "llama-edge"}


async def models(request: Request):
    return json_response({"object": "list", "data": [_model_card(_state(request))]})


async def model(request: Request):
    st = _state(request)
    st.model.check_model(request.path_params["model_id"])
    return json_response(_model_card(st))


async def health(request: Request):
    st = _state(request)
    return json_response({"status": "ok", "model": st.model.id, "sessions": st.pool.size,
                          "busy": st.pool.busy, "queued": st.pool.waiting})


async def metrics(request: Request):
    m = _state(request).metrics
    return Response(m.render(), media_type=m.content_type)


async def _api_error(request: Request, e: APIError):
    request.scope["llama_edge"]["code"] = e.code
    return error_response(e)


async def _http_error(request: Request, e: HTTPException):
    if e.status_code == 404:
        err = APIError(404, f"no endpoint {request.url.path}; see GET /v1/models, POST "
                            "/v1/chat/completions", "unknown_url")
    elif e.status_code == 405:
        allowed = (e.headers or {}).get("Allow", "")
        err = APIError(405, f"{request.method} is not allowed on {request.url.path}; use "
                            f"{allowed}", "method_not_allowed", headers=e.headers)
    else:
        err = APIError(e.status_code, str(e.detail), None, headers=e.headers)
    return await _api_error(request, err)


async def _disconnected(request: Request, e: ClientDisconnect):
    request.scope["llama_edge"]["status"] = 499
    return Response(status_code=400)  # nobody reads it


async def _internal(request: Request, e: Exception):
    return await _api_error(request, APIError(500, "internal error; see the server's log",
                                              "internal_error"))


def build_app(st: ServeState):
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/tasks/summarize", summarize, methods=["POST"]),
        Route("/v1/tasks/rewrite", rewrite, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={
        APIError: _api_error, HTTPException: _http_error, ClientDisconnect: _disconnected,
        Exception: _internal})
    app.state.serve = st
    return Gate(app, st)


class Gate:
    """ASGI middleware around the application: the API key, the request's deadline, the
    request counter and one log line per request."""

    def __init__(self, app, st: ServeState):
        self.app, self.st = app, st
        key = st.config.api_key
        self.key = key.encode() if key else None

    def _denied(self, scope) -> APIError | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
                    return None
                return APIError(401, "Incorrect API key provided", "invalid_api_key",
                                headers={"WWW-Authenticate": "Bearer"})
        return APIError(401, "Missing API key: send the header 'Authorization: Bearer KEY'",
                        "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        info = scope["llama_edge"] = {"t0": t0, "status": None,
                                      "deadline": time.monotonic() + self.st.config.timeout}

        async def send_(message):
            if message["type"] == "http.response.start" and info["status"] is None:
                info["status"] = message["status"]
            await send(message)

        try:
            denied = self._denied(scope) if self.key and scope["path"] != "/health" else None
            if denied is not None:
                info["code"] = denied.code
                await send_json(send_, dumps(denied.body()), 401, denied.headers)
            else:
                await self.app(scope, receive, send_)
        except Exception:  # noqa: BLE001 - Starlette answered 500 already; log it, keep serving
            log.exception("request failed: %s %s", scope["method"], scope["path"])
        finally:
            self._log(scope, info, time.perf_counter() - t0)

    def _log(self, scope, info: dict, elapsed: float) -> None:
        status = info["status"] or 499
        path = scope["path"]
        endpoint = (path if path in ENDPOINTS else "/v1/models/{id}"
                    if path.startswith("/v1/models/") else "other")
        self.st.metrics.requests.labels(endpoint, str(status)).inc()
        client = scope.get("client") or ("-", 0)
        fields = [f"{client[0]}:{client[1]}", scope["method"], path, str(status),
                  f"{elapsed:.3f}s"]
        for key, fmt in (("prompt", "prompt={}"), ("completion", "completion={}"),
                         ("queue_s", "queue={:.3f}s"), ("ttft_s", "ttft={:.3f}s"),
                         ("finish", "finish={}"), ("code", "error={}")):
            if info.get(key) is not None:
                fields.append(fmt.format(info[key]))
        if info.get("stream"):
            fields.append("stream")
        log.info(" ".join(fields))
