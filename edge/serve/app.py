"""The Starlette application: routes, the generation response, API keys and the request log.

    GET  /health               liveness and load (no API key needed)
    GET  /metrics              Prometheus text
    GET  /v1/models[/{id}]     the one model served
    POST /v1/chat/completions  messages -> reply (stream: server-sent events)
    POST /v1/completions       prompt -> continuation
    POST /v1/tasks/summarize   {"text"} -> summary, the prompts of `llama-edge summarize`
    POST /v1/tasks/rewrite     {"text", "style"} -> rewrite, as `llama-edge rewrite`

A generating request is parsed, validated and tokenized first (every problem a 4xx before it
waits), then waits for a session (429 with Retry-After when the queue is full, 503 when the
wait outlasts --timeout), then generates in a worker thread while the response streams or
collects its text. A client that goes away stops its generation and frees its session.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import EdgeError
from .errors import APIError
from .jobs import ServedModel, chat_job, completion_job, task_job
from .metrics import Metrics
from .pool import QueueFull, Run, SessionPool, ShuttingDown
from .responses import Shape, dumps, sse
from .schemas import chat_request, completion_request, parse_json, task_request

log = logging.getLogger("llama_edge.serve")

ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
             "/v1/tasks/summarize", "/v1/tasks/rewrite")
# Retry-After (seconds) for a full queue: the queue's share of the recent request time,
# within these bounds.
RETRY_AFTER_MIN, RETRY_AFTER_MAX = 1, 60
# Weight of the newest request in the moving average of request time behind Retry-After.
SERVICE_TIME_WEIGHT = 0.2


class ServeState:
    """What every handler shares."""

    def __init__(self, config, model: ServedModel, pool: SessionPool, metrics: Metrics):
        self.config, self.model, self.pool, self.metrics = config, model, pool, metrics
        self.service_time = 1.0  # moving average of generating requests' seconds

    def retry_after(self) -> int:
        est = self.service_time * (self.pool.waiting + 1) / self.pool.size
        return int(min(max(math.ceil(est), RETRY_AFTER_MIN), RETRY_AFTER_MAX))

    def queue_full(self) -> APIError:
        self.metrics.rejected.labels("queue_full").inc()
        return APIError(429, f"the server is busy: {self.pool.size} requests generating and "
                             f"{self.pool.waiting} waiting (--queue {self.pool.max_queue}); "
                             "retry later", "queue_full",
                        headers={"Retry-After": str(self.retry_after())})


def json_response(obj, status: int = 200, headers: dict | None = None) -> Response:
    return Response(dumps(obj), status, headers, media_type="application/json")


def error_response(e: APIError) -> Response:
    return json_response(e.body(), e.status, e.headers)


async def send_json(send, body: bytes, status: int, headers: dict | None = None) -> None:
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body, "more_body": False})


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


class GenerationResponse:
    """The ASGI response of a generating request: waits for a session, runs the job in a
    worker thread and sends its text whole (JSON) or as it comes (server-sent events)."""

    def __init__(self, st: ServeState, job, shape: Shape, stream: bool, include_usage: bool):
        self.st, self.job, self.shape = st, job, shape
        self.stream, self.include_usage = stream, include_usage
        self.gone = asyncio.Event()
        self.run: Run | None = None

    async def __call__(self, scope, receive, send) -> None:
        watcher = asyncio.create_task(self._watch(receive))
        try:
            await self._respond(scope["llama_edge"], send)
        finally:
            watcher.cancel()
            if self.run is not None:  # a no-op once the run has finished
                self.run.cancel("client")

    async def _watch(self, receive) -> None:
        """The body has been read: the next message is http.disconnect (client gone, or the
        response finished)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone.set()
        if self.run is not None:
            self.run.cancel("client")

    async def _acquire(self, info: dict):
        st = self.st
        remaining = info["deadline"] - time.monotonic()
        acquire = asyncio.ensure_future(st.pool.acquire(remaining))
        gone = asyncio.ensure_future(self.gone.wait())
        await asyncio.wait((acquire, gone), return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not acquire.done():  # the client went away while waiting
            acquire.cancel()
            got = (await asyncio.gather(acquire, return_exceptions=True))[0]
            if not isinstance(got, BaseException):  # arrived with the cancellation
                st.pool.release(got)
            return None
        return acquire.result()

    async def _respond(self, info: dict, send) -> None:
        st, shape = self.st, self.shape
        info.update(prompt=self.job.prompt_tokens, stream=self.stream)
        t_wait = time.perf_counter()
        try:
            session = await self._acquire(info)
        except QueueFull:
            await self._error(send, st.queue_full(), info)
            return
        except ShuttingDown:
            await self._error(send, APIError(503, "the server is shutting down", "shutdown"),
                              info)
            return
        except asyncio.TimeoutError:
            st.metrics.rejected.labels("queue_timeout").inc()
            await self._error(send, APIError(
                503, f"no session became free within --timeout {st.config.timeout:g} s",
                "queue_timeout", headers={"Retry-After": str(st.retry_after())}), info)
            return
        if session is None:
            st.metrics.cancelled.labels("client").inc()
            return
        info["queue_s"] = time.perf_counter() - t_wait
        st.metrics.queue_wait.observe(info["queue_s"])
        self.run = run = Run(st.pool, session, self.job, info["deadline"])
        if self.gone.is_set():
            run.cancel("client")
        if self.stream:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})
            for b in shape.opening():
                await send({"type": "http.response.body", "body": b, "more_body": True})
        parts: list[str] = []
        while True:
            kind, value, t = await run.events.get()
            if kind == "text":
                if "ttft_s" not in info:
                    info["ttft_s"] = t - info["t0"]
                    st.metrics.ttft.observe(info["ttft_s"])
                if self.stream:
                    await send({"type": "http.response.body", "body": shape.delta(value),
                                "more_body": True})
                else:
                    parts.append(value)
                continue
            if kind == "done":
                await self._done(info, send, value)
            elif kind == "cancelled":
                st.metrics.cancelled.labels(value).inc()
                info["finish"] = f"cancelled:{value}"
                if value == "timeout":
                    await self._error(send, APIError(
                        504, f"generation stopped: the request took longer than --timeout "
                             f"{st.config.timeout:g} s", "timeout"), info)
                elif value == "shutdown":
                    await self._error(send, APIError(503, "the server is shutting down",
                                                     "shutdown"), info)
            else:  # the model failed (e.g. NaN logits): this request only; the session is reset
                msg = (str(value) if isinstance(value, EdgeError)
                       else "internal error; see the server's log")
                await self._error(send, APIError(500, msg, "generation_failed"), info)
            return

    async def _done(self, info: dict, send, r) -> None:
        st, shape = self.st, self.shape
        m = st.metrics
        m.prompt_tokens.inc(r.prompt_tokens)
        m.generated_tokens.inc(r.generated_tokens)
        if r.decode_tok_s > 0:
            m.decode_speed.observe(r.decode_tok_s)
        elapsed = time.perf_counter() - info["t0"]
        m.duration.observe(elapsed)
        st.service_time += SERVICE_TIME_WEIGHT * (elapsed - st.service_time)
        info.update(completion=r.generated_tokens, finish=r.finish_reason)
        if self.stream:
            for b in shape.closing(r, self.include_usage):
                await send({"type": "http.response.body", "body": b, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send_json(send, dumps(shape.full(r)), 200)

    async def _error(self, send, e: APIError, info: dict) -> None:
        """An error before the stream started is a status and JSON; after, one error event."""
        info["code"] = e.code
        if self.stream and self.run is not None:
            await send({"type": "http.response.body", "body": sse(e.body()), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await send_json(send, dumps(e.body()), e.status, e.headers)


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
