"""Bulkhead: limits, queues, queue timeouts, threads and tasks sharing one bulkhead."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from buttress import Bulkhead, BulkheadFull, ConfigurationError, Pipeline, deadline
from buttress.errors import ErrorCode


def test_rejects_at_once_without_a_queue(events) -> None:
    bulkhead = Bulkhead(max_concurrent=1)
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        inside.set()
        release.wait(5)

    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(Pipeline(bulkhead).call, hold)
        assert inside.wait(5)
        with pytest.raises(BulkheadFull) as caught:
            Pipeline(bulkhead).call(lambda: None)
        release.set()
        fut.result(5)
    assert caught.value.code is ErrorCode.OVERLOADED
    assert bulkhead.active == 0
    assert events.kinds() == ["call_rejected"]


def test_threads_queue_and_are_served_in_order() -> None:
    bulkhead = Bulkhead(max_concurrent=2, max_queued=10)
    lock = threading.Lock()
    running = 0
    peak = 0

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)
        with lock:
            running -= 1

    with ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(Pipeline(bulkhead).call, work) for _ in range(12)]:
            f.result(10)
    assert peak == 2
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


def test_thread_queue_timeout() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=1, queue_timeout=0.05)
    assert bulkhead.try_acquire()
    started = time.monotonic()
    with pytest.raises(BulkheadFull, match="waited"):
        Pipeline(bulkhead).call(lambda: None)
    assert time.monotonic() - started >= 0.05
    bulkhead.release()
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


def test_queue_wait_is_bounded_by_the_deadline() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=1)
    assert bulkhead.try_acquire()
    with deadline(0.03), pytest.raises(BulkheadFull):
        Pipeline(bulkhead).call(lambda: None)
    bulkhead.release()


async def test_tasks_queue_and_the_limit_holds() -> None:
    bulkhead = Bulkhead(max_concurrent=3, max_queued=50)
    running = 0
    peak = 0

    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1

    await asyncio.gather(*(Pipeline(bulkhead).acall(work) for _ in range(40)))
    assert peak == 3
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


async def test_task_queue_full_and_queue_timeout() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=1, queue_timeout=0.05)
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    holder = asyncio.ensure_future(Pipeline(bulkhead).acall(hold))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(Pipeline(bulkhead).acall(hold))
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFull, match="queue full"):
        await Pipeline(bulkhead).acall(hold)
    with pytest.raises(BulkheadFull, match="waited"):
        await waiter
    gate.set()
    await holder
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


async def test_cancelled_waiter_never_leaks_a_slot() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queued=5)
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    holder = asyncio.ensure_future(Pipeline(bulkhead).acall(hold))
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(Pipeline(bulkhead).acall(hold)) for _ in range(3)]
    await asyncio.sleep(0)
    assert bulkhead.queued == 3
    waiters[0].cancel()
    gate.set()  # holder finishes and hands its slot to waiter 0, which is being cancelled
    await asyncio.gather(holder, *waiters, return_exceptions=True)
    assert waiters[0].cancelled()
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


async def test_threads_and_tasks_share_one_bulkhead() -> None:
    bulkhead = Bulkhead(max_concurrent=2, max_queued=100)
    lock = threading.Lock()
    running = 0
    peak = 0

    def enter() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)

    def leave() -> None:
        nonlocal running
        with lock:
            running -= 1

    def sync_work() -> None:
        enter()
        time.sleep(0.002)
        leave()

    async def async_work() -> None:
        enter()
        await asyncio.sleep(0.002)
        leave()

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(4) as pool:
        thread_calls = [
            loop.run_in_executor(pool, Pipeline(bulkhead).call, sync_work) for _ in range(10)
        ]
        task_calls = [Pipeline(bulkhead).acall(async_work) for _ in range(10)]
        await asyncio.gather(*thread_calls, *task_calls)
    assert peak <= 2
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_queued": -1}, "max_queued"),
        ({"queue_timeout": 0}, "queue_timeout"),
    ],
)
def test_invalid_bulkhead_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Bulkhead(**kwargs)  # type: ignore[arg-type]


def test_no_slot_is_lost_or_doubled_under_thread_contention() -> None:
    # free slots are taken and given back without a lock: hammer the hand-over between a
    # release and a caller joining the queue (a lost wake-up would end in BulkheadFull)
    bulkhead = Bulkhead(2, max_queued=16, queue_timeout=5.0)
    pipe = Pipeline(bulkhead)
    guard = threading.Lock()
    inside = [0, 0]  # now, most

    def work() -> None:
        with guard:
            inside[0] += 1
            inside[1] = max(inside[1], inside[0])
        time.sleep(0)
        with guard:
            inside[0] -= 1

    def hammer() -> int:
        for _ in range(300):
            pipe.call(work)
        return 300

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(lambda _: hammer(), range(8))) == 2400
    finally:
        sys.setswitchinterval(interval)
    assert inside[1] <= 2
    assert (bulkhead.active, bulkhead.queued) == (0, 0)
