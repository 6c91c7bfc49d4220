"""The response of a generating request, and the state every handler shares.

GenerationResponse waits for a session (429 with Retry-After when the queue is full, 503 when
the wait outlasts --timeout or the server is stopping), runs the job in a worker thread and
sends its text whole (JSON) or as it comes (server-sent events, responses.py). A watcher on the
connection stops the generation as soon as the client goes away, and the session goes back to
the pool at the next token.
"""

from __future__ import annotations

import asyncio
import math
import time

from ..errors import EdgeError, InputError
from .errors import APIError
from .jobs import ServedModel
from .metrics import Metrics
from .pool import QueueFull, Run, SessionPool, ShuttingDown
from .responses import Shape, dumps, sse

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


async def send_json(send, body: bytes, status: int, headers: dict | None = None) -> None:
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body, "more_body": False})


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
        while True:  # the whole text of a non-streamed answer comes with "done"
            kind, value, t = await run.events.get()
            if kind == "text":
                if "ttft_s" not in info:
                    info["ttft_s"] = t - info["t0"]
                    st.metrics.ttft.observe(info["ttft_s"])
                if self.stream:
                    await send({"type": "http.response.body", "body": shape.delta(value),
                                "more_body": True})
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
            elif isinstance(value, InputError):  # found while running a task: its input's fault
                await self._error(send, APIError(400, str(value), "input_not_processable"),
                                  info)
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
