"""The core's hot path: what it costs in store calls, where a sync handler runs, what is stable.

Cost in time is measured in bench/jobs.py (never in a timed unit test); these tests pin
what the cheap path must keep: two store calls per job, the fingerprint of existing keys,
sync handlers off the event loop with `current_job` there, and no key released under a
handler still running in its thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from buttress.jobs import Job, JobDeadLettered, JobPolicy, JobRunner, current_job, job_status
from buttress.jobs._celery import JobDeadLettered as CeleryJobDeadLettered
from buttress.jobs._core import decode_result, encode_result, fingerprint
from buttress.jobs.taskiq import TaskiqJobs
from buttress.stores import MemoryStore, open_store
from buttress.stores._base import StoredResponse


class Counting:
    """A store that counts the calls made to it (one call is one round trip)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return target(*args, **kwargs)

        return call


def _job(i: int = 1, **changes: Any) -> Job:
    return Job(id=uuid.uuid4().hex, name="shop.receipt", args=(i,), engine="test", **changes)


def test_the_happy_path_is_two_store_calls_sync_and_async() -> None:
    store = Counting(MemoryStore())
    runner = JobRunner(store=store, dlq=None)  # type: ignore[arg-type]
    assert runner.run(_job(1), lambda order: order).result == 1
    assert store.calls == ["begin", "complete"]
    store.calls.clear()

    async def handler(order: int) -> int:
        return order

    assert asyncio.run(runner.arun(_job(2), handler)).result == 2
    assert store.calls == ["abegin", "acomplete"]
    store.calls.clear()
    assert runner.run(_job(1), lambda order: order).replayed  # a duplicate: one call
    assert store.calls == ["begin"]


def test_the_fingerprint_and_the_result_encoding_did_not_change() -> None:
    # derived keys and in-flight records carry these bytes: a new encoder must not move them
    args = (42, "x", 1.5, None, [1, {"b": 2, "a": "é"}])
    assert fingerprint("shop.receipt", args, {"z": 1, "a": "set"}) == (
        "68c215d0a57e8247156e46d169047d20"
    )
    assert fingerprint("t", (object,), {}) == "8a39452da3d80916198eb9adecd076b7"  # repr()
    assert encode_result(None) == StoredResponse(200, (), b"null")
    assert encode_result({"a": "é"}).body == b'{"a":"\\u00e9"}'
    assert decode_result(encode_result([1, 2.5])) == [1, 2.5]
    assert decode_result(encode_result(object())) is None  # not JSON: not replayed


def test_job_dead_lettered_lives_in_the_core() -> None:
    assert JobDeadLettered is CeleryJobDeadLettered
    assert JobDeadLettered.__module__ == "buttress.jobs._core"
    assert JobDeadLettered("gone", record_id="r1").record_id == "r1"


def test_arun_runs_a_sync_handler_in_a_thread_with_current_job() -> None:
    runner = JobRunner(store=MemoryStore(), dlq=None)
    seen: dict[str, Any] = {}
    release = threading.Event()

    def handler(order: int) -> int:
        seen["thread"] = threading.get_ident()
        found = current_job()
        seen["key"] = found.args if found is not None else None
        # blocks until the event loop sets it: a handler run on the loop would deadlock
        if not release.wait(10):
            raise TimeoutError("the event loop was blocked by the handler")
        return order * 2

    async def main() -> tuple[Any, int, int]:
        loop_thread = threading.get_ident()
        run = asyncio.create_task(runner.arun(_job(21), handler))
        ticks = 0
        for _ in range(1000):  # the loop keeps running while the handler blocks
            await asyncio.sleep(0.001)
            ticks += 1
            if "thread" in seen:
                break
        release.set()
        decision = await asyncio.wait_for(run, 10)
        return decision, loop_thread, ticks

    decision, loop_thread, ticks = asyncio.run(main())
    assert (decision.action, decision.result) == ("done", 42)
    assert seen["thread"] != loop_thread
    assert seen["key"] == (21,)
    assert ticks >= 1
    assert current_job() is None


def test_a_sync_handler_cancelled_mid_run_is_recorded_not_released() -> None:
    # a worker shutting down cancels the task; the thread cannot be stopped, so its side
    # effect happens: the key must be completed (a redelivery replays), never released
    store = MemoryStore()
    runner = JobRunner(store=store, dlq=None)
    started = threading.Event()
    effects: list[int] = []

    def handler(order: int) -> str:
        started.set()
        time.sleep(0.2)
        effects.append(order)
        return "sent"

    async def main() -> None:
        run = asyncio.create_task(runner.arun(_job(7), handler))
        for _ in range(1000):
            if started.is_set():
                break
            await asyncio.sleep(0.005)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, 10)

    asyncio.run(main())
    assert effects == [7]
    status = job_status(store, "shop.receipt", (7,))
    assert (status.state, status.result) == ("completed", "sent")
    again = runner.run(_job(7), handler)  # the redelivery
    assert (again.replayed, again.result, effects) == (True, "sent", [7])


def test_a_sync_handler_failing_after_cancellation_releases_its_key() -> None:
    store = MemoryStore()
    runner = JobRunner(store=store, dlq=None)
    started = threading.Event()

    def handler(order: int) -> None:
        started.set()
        time.sleep(0.1)
        raise RuntimeError("smtp down")

    async def main() -> None:
        run = asyncio.create_task(runner.arun(_job(8), handler))
        for _ in range(1000):
            if started.is_set():
                break
            await asyncio.sleep(0.005)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, 10)

    asyncio.run(main())
    assert job_status(store, "shop.receipt", (8,)).state == "absent"  # it may run again


@pytest.mark.redis
def test_taskiq_2000_jobs_in_memory_broker_with_a_redis_store(redis_url: str) -> None:
    # the collapse reported at 2,000 jobs (32 jobs/s): every job must run once, quickly
    from taskiq import InMemoryBroker

    url = redis_url.rsplit("/", 1)[0] + "/5"
    namespace = f"jobs2-{uuid.uuid4().hex[:8]}"
    broker = InMemoryBroker(max_stored_results=-1)
    # a store call that times out hands its job back unacknowledged, which a real broker
    # redelivers but InMemoryBroker drops: a generous timeout, so a loaded CI machine (a
    # 1 s stall was seen under the full suite) does not turn into lost jobs here
    store = Counting(open_store(url, namespace=namespace, timeout=15.0))
    jobs = TaskiqJobs(
        broker, store=store, dlq="memory://", native_delay=True, policy=JobPolicy(ttl=120.0)
    )
    ran: list[int] = []

    @jobs.task(name="jobs2.noop")
    async def noop(i: int) -> None:
        ran.append(i)

    async def main() -> float:
        await broker.startup()
        try:
            began = time.perf_counter()
            for i in range(2000):
                await noop.kiq(i)
            await asyncio.wait_for(broker.wait_all(), 60)
            return time.perf_counter() - began
        finally:
            await broker.shutdown()

    try:
        elapsed = asyncio.run(main())
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(f"*{namespace}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    assert sorted(ran) == list(range(2000))
    assert store.calls.count("abegin") == store.calls.count("acomplete") == 2000
    # ~0.5 s here when quiet; 32 jobs/s (the reported collapse) would take 60 s
    assert elapsed < 30, f"2,000 jobs took {elapsed:.1f} s"
