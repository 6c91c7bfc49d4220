"""The session pool and worker-thread runs, with stand-in sessions (no model): first come first
served, a full queue refused, waits that time out or are cancelled never lose a session (also
when the session arrives in the same instant), shutdown refuses waiters, and a run stops at
its next forward pass once cancelled or past its deadline, with its session reset and back in
the pool."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from edge.serve.pool import QueueFull, Run, SessionPool, ShuttingDown

# A bound on waiting for a worker thread (a failure guard; the runs here take microseconds).
EVENT_TIMEOUT_S = 30


class FakeSession:
    max_context = 64

    def __init__(self, name: str, gate: threading.Event | None = None):
        self.name, self.gate = name, gate
        self.prefills = self.decodes = self.resets = 0

    def reset(self):
        self.resets += 1

    def prefill(self, ids):
        if self.gate is not None:
            self.gate.wait(EVENT_TIMEOUT_S)
        self.prefills += 1
        return [0.0]

    def decode(self, token):
        self.decodes += 1
        return [0.0]


class FakeStream:
    """Shaped like edge.generate.Generation: yields text, sets result, resets on the way out."""

    def __init__(self, session, steps: int):
        self.session, self.steps, self.result = session, steps, None

    def __iter__(self):
        self.session.reset()
        try:
            self.session.prefill([1, 2, 3])
            for i in range(self.steps):
                yield f"t{i} "
                self.session.decode(i)
            self.result = f"{self.steps} steps"
        finally:
            if self.result is None:
                self.session.reset()


class FakeJob:
    prompt_tokens = 3

    def __init__(self, steps: int):
        self.steps = steps

    def start(self, session):
        return FakeStream(session, self.steps)


def test_first_come_first_served_and_a_full_queue_is_refused():
    async def main():
        pool = SessionPool([FakeSession("a")], max_queue=2)
        s = await pool.acquire(1)
        w1 = asyncio.create_task(pool.acquire(10))
        w2 = asyncio.create_task(pool.acquire(10))
        await asyncio.sleep(0)
        assert pool.waiting == 2 and pool.full()
        with pytest.raises(QueueFull):
            await pool.acquire(10)
        pool.release(s)
        assert await w1 is s and not w2.done()
        pool.release(s)
        assert await w2 is s
        pool.release(s)
        assert pool.busy == 0 and pool.waiting == 0

    asyncio.run(main())


def test_timed_out_and_cancelled_waits_lose_no_session():
    async def main():
        a = FakeSession("a")
        pool = SessionPool([a], max_queue=4)
        s = await pool.acquire(1)
        with pytest.raises(asyncio.TimeoutError):
            await pool.acquire(0.01)
        w = asyncio.create_task(pool.acquire(10))
        await asyncio.sleep(0)
        w.cancel()
        await asyncio.gather(w, return_exceptions=True)
        assert pool.waiting == 0
        # handed the session and cancelled before it could resume: the session comes back
        w = asyncio.create_task(pool.acquire(10))
        await asyncio.sleep(0)
        pool.release(s)
        w.cancel()
        await asyncio.gather(w, return_exceptions=True)
        assert pool.busy == 0 and pool.waiting == 0
        assert await pool.acquire(1) is a

    asyncio.run(main())


def test_shutdown_refuses_waiting_and_new_requests():
    async def main():
        pool = SessionPool([FakeSession("a")], max_queue=4)
        await pool.acquire(1)
        w = asyncio.create_task(pool.acquire(10))
        await asyncio.sleep(0)
        pool.shut()
        with pytest.raises(ShuttingDown):
            await w
        with pytest.raises(ShuttingDown):
            await pool.acquire(1)

    asyncio.run(main())


async def _drain(run: Run) -> list:
    events = []
    while True:
        ev = await asyncio.wait_for(run.events.get(), EVENT_TIMEOUT_S)
        events.append(ev)
        if ev[0] != "text":
            return events


def test_run_streams_then_returns_its_session():
    async def main():
        a = FakeSession("a")
        pool = SessionPool([a], max_queue=1)
        run = Run(pool, await pool.acquire(1), FakeJob(5), time.monotonic() + 60)
        events = await _drain(run)
        assert [e[1] for e in events] == [f"t{i} " for i in range(5)] + ["5 steps"]
        assert events[-1][0] == "done"
        # the session is back before the last event: a client that has its answer and asks
        # again finds it free
        assert run.finished and pool.busy == 0 and a.decodes == 5 and a.resets == 1
        pool.close()

    asyncio.run(main())


def test_cancelled_run_stops_at_its_next_forward_pass():
    async def main():
        gate = threading.Event()
        a = FakeSession("a", gate)
        pool = SessionPool([a], max_queue=1)
        run = Run(pool, await pool.acquire(1), FakeJob(1000), time.monotonic() + 60)
        run.cancel("client")
        gate.set()
        events = await _drain(run)
        assert events[-1][:2] == ("cancelled", "client") and pool.busy == 0
        # the prefill in flight when it was cancelled may finish; nothing after it runs
        assert a.decodes == 0 and a.resets == 2 and pool.busy == 0
        # the next request gets the session at once
        assert await pool.acquire(0.01) is a
        pool.close()

    asyncio.run(main())


def test_run_past_its_deadline_is_stopped_as_a_timeout():
    async def main():
        a = FakeSession("a")
        pool = SessionPool([a], max_queue=1)
        run = Run(pool, await pool.acquire(1), FakeJob(1000), time.monotonic() - 1)
        events = await _drain(run)
        assert events[-1][:2] == ("cancelled", "timeout") and a.decodes == 0
        pool.close()

    asyncio.run(main())
