"""The session pool and generation in worker threads.

`parallel` sessions are created at start (each allocates its KV cache then, once). A request
takes a free session or waits in a FIFO queue of at most `max_queue` requests; beyond that it
is refused (QueueFull -> 429). Each generation runs in a worker thread of its own (forward
passes release the GIL; the engine lets one pass run at a time on its thread pool, so sessions
take turns token by token) and sends its text back to the event loop through an asyncio
queue. A run is stopped between two forward passes when its client goes away, its deadline
passes or the server shuts down; the session is reset and handed to the next waiter at once.

Everything here except Run._work runs on the event loop's thread, so the pool needs no lock.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import EdgeError

log = logging.getLogger("llama_edge.serve")


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    pass


class Cancelled(Exception):
    """Raised inside the worker between forward passes; reason: client | timeout | shutdown."""


class SessionPool:
    def __init__(self, sessions: list, max_queue: int):
        self.size, self.max_queue = len(sessions), max_queue
        self._free = collections.deque(sessions)
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.runs: set[Run] = set()
        self.closing = False
        self.executor = ThreadPoolExecutor(max_workers=self.size,
                                           thread_name_prefix="llama-edge-decode")

    @property
    def busy(self) -> int:
        return self.size - len(self._free)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def full(self) -> bool:
        return not self._free and len(self._waiters) >= self.max_queue

    async def acquire(self, timeout: float):
        """A free session, waiting up to `timeout` seconds in the queue (TimeoutError);
        QueueFull when the queue is full."""
        if self.closing:
            raise ShuttingDown
        if self._free and not self._waiters:
            return self._free.popleft()
        if len(self._waiters) >= self.max_queue:
            raise QueueFull
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiters.append(fut)
        # not asyncio.wait_for: it returns a result that arrived together with a cancellation,
        # and a cancelled caller would then hold a session it never releases
        timer = loop.call_later(max(timeout, 0.0), self._expire, fut)
        try:
            return await fut
        except BaseException:
            # handed a session in the same loop iteration as the cancellation: give it back
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())
            raise
        finally:
            timer.cancel()
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass

    @staticmethod
    def _expire(fut: asyncio.Future) -> None:
        if not fut.done():
            fut.set_exception(asyncio.TimeoutError())

    def release(self, session) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(session)
                return
        self._free.append(session)

    def shut(self) -> None:
        """Stop taking work: running generations stop at their next token, waiting requests
        get ShuttingDown."""
        self.closing = True
        for run in list(self.runs):
            run.cancel("shutdown")
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(ShuttingDown())

    def close(self) -> None:
        self.shut()
        self.executor.shutdown(wait=True)


class _Guarded:
    """A session that refuses its next forward pass once its run is cancelled or past its
    deadline (Generation then resets it and re-raises); everything else is the session's."""

    COMPUTE = frozenset({"prefill", "decode", "extend", "forward"})

    def __init__(self, session, run: "Run"):
        self._s, self._run = session, run

    def _check(self) -> None:
        run = self._run
        if not run.stop.is_set() and time.monotonic() > run.deadline:
            run.cancel("timeout")
        if run.stop.is_set():
            raise Cancelled(run.reason)

    def __getattr__(self, name):
        attr = getattr(self._s, name)
        if name not in self.COMPUTE:
            return attr

        def guarded(*a, **kw):
            self._check()
            return attr(*a, **kw)

        return guarded


class Run:
    """One job on one session in a worker thread. Events on `events`:
    ("text", chunk, t), ("done", result, t), ("cancelled", reason, t), ("error", exc, t), t
    being time.perf_counter() in the worker when it happened."""

    def __init__(self, pool: SessionPool, session, job, deadline: float):
        self.pool, self.session, self.job, self.deadline = pool, session, job, deadline
        self.stop = threading.Event()
        self.reason = "client"
        self.events: asyncio.Queue = asyncio.Queue()
        self.finished = False
        loop = asyncio.get_running_loop()
        pool.runs.add(self)
        loop.run_in_executor(pool.executor, self._work, loop)

    def cancel(self, reason: str) -> None:
        if not self.stop.is_set():
            self.reason = reason
            self.stop.set()

    def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        def post(callback, event):
            try:
                loop.call_soon_threadsafe(callback, (*event, time.perf_counter()))
            except RuntimeError:  # the loop closed under us (shutdown): nobody is listening
                pass

        final = ("error", RuntimeError("the generation ended without a result"))
        try:
            stream = self.job.start(_Guarded(self.session, self))
            for chunk in stream:
                post(self.events.put_nowait, ("text", chunk))
            final = ("done", stream.result)
        except Cancelled as e:
            final = ("cancelled", str(e))
        except EdgeError as e:  # e.g. NaN logits: this request fails, the session is reset
            final = ("error", e)
        except Exception as e:  # noqa: BLE001 - a bug; reported as a 500, the server goes on
            log.exception("generation failed")
            final = ("error", e)
        finally:
            post(self._finish, final)

    def _finish(self, event: tuple) -> None:
        """The session goes back to the pool before the last event reaches the response: a
        client that has its answer and asks again finds the session free."""
        self.finished = True
        self.pool.runs.discard(self)
        self.pool.release(self.session)
        self.events.put_nowait(event)
