"""Property tests (hypothesis) for the asyncio drivers: bulkhead, cancellation, retries.

* A `Bulkhead` never runs more than ``max_concurrent`` tasks, with or without a queue and
  queue timeouts, and leaks nothing (``active == queued == 0``, no timer left armed).
* A cancelled call is never a failure: tasks going through ``Pipeline(CircuitBreaker,
  [Timeout], Bulkhead)`` and cancelled at random points leave no failure in the window,
  no bulkhead slot taken and every half-open probe free again.
* ``Pipeline(Timeout(total), Retry(...))`` in ``acall``: sleeps within the backoff bounds,
  no attempt after the deadline, at most ``attempts`` attempts.

Each example runs its own event loop (``asyncio.run``) on a `FakeClock`; the schedule of
yields, cancellations, clock advances and completions is drawn by hypothesis, so a failure
replays exactly.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

from buttress import (
    Backoff,
    Bulkhead,
    BulkheadFull,
    CircuitBreaker,
    CircuitOpen,
    ConfigurationError,
    Pipeline,
    Retry,
    Timeout,
)
from buttress.errors import DeadlineExceeded
from buttress.testing import FakeClock

from .test_properties import _check_delay, backoffs

SLOW = 0.75  # fake seconds a "slow" call takes once released
PLANS = ["ok", "fail", "slow", "slow_fail"]

# One step of the driver: yield to the loop, cancel task i, let task i finish, or move
# the fake clock (which fires Timeout expiries and bulkhead queue timeouts).
actions = st.one_of(
    st.tuples(st.just("yield"), st.integers(1, 3)),
    st.tuples(st.just("cancel"), st.integers(0, 11)),
    st.tuples(st.just("finish"), st.integers(0, 11)),
    st.tuples(st.just("advance"), st.sampled_from([0.1, 0.5, 1.0, 3.0])),
)


@dataclass
class Scenario:
    tasks: list[asyncio.Task[Any]]
    cancelled_by_us: set[int]
    outcomes: list[str]


def _outcome(task: asyncio.Task[Any]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is None:
        return "ok"
    for kind, name in (
        (BulkheadFull, "bulkhead_full"),
        (CircuitOpen, "circuit_open"),
        (DeadlineExceeded, "timeout"),
        (ConnectionError, "failed"),
    ):
        if isinstance(exc, kind):
            return name
    raise AssertionError(f"unexpected outcome {exc!r}") from exc


async def _drive(
    pipe: Pipeline,
    bulkhead: Bulkhead,
    clock: FakeClock,
    plans: list[str],
    steps: list[tuple[str, Any]],
    *,
    finish_all: bool,
) -> Scenario:
    """Start one task per plan, play ``steps``, then finish (or cancel) everything."""
    limit = bulkhead.max_concurrent
    gates = [asyncio.Event() for _ in plans]
    inside = 0
    over: list[int] = []

    async def work(i: int) -> int:
        nonlocal inside
        inside += 1
        if inside > limit or bulkhead.active > limit:
            over.append(inside)
        try:
            await gates[i].wait()
            if plans[i].startswith("slow"):
                await clock.asleep(SLOW)
            if plans[i].endswith("fail"):
                raise ConnectionError("down")
            return i
        finally:
            inside -= 1

    tasks = [asyncio.ensure_future(pipe.acall(work, i)) for i in range(len(plans))]
    cancelled_by_us: set[int] = set()
    for action, arg in steps:
        if action == "yield":
            for _ in range(arg):
                await asyncio.sleep(0)
        elif action == "advance":
            clock.advance(arg)
        elif action == "cancel":
            i = arg % len(tasks)
            if bulkhead.queued:
                event("cancel while the bulkhead queue is in use")
            if tasks[i].cancel():
                cancelled_by_us.add(i)
        else:
            gates[arg % len(tasks)].set()
        assert not over, f"{max(over)} calls inside a bulkhead of {limit}"
    if finish_all:
        for gate in gates:
            gate.set()
    else:
        for i, task in enumerate(tasks):
            if task.cancel():
                cancelled_by_us.add(i)
    for _ in range(500):
        if all(t.done() for t in tasks):
            break
        await asyncio.sleep(0)
    else:
        raise AssertionError("tasks still pending: a slot or a waiter leaked")
    assert not over, f"{max(over)} calls inside a bulkhead of {limit}"
    assert inside == 0
    outcomes = [_outcome(t) for t in tasks]
    for name in sorted(set(outcomes)):
        event(f"outcome: {name}")
    for i in cancelled_by_us:  # cancellation is never turned into anything else
        assert outcomes[i] == "cancelled", f"task {i} cancelled, ended {outcomes[i]}"
    return Scenario(tasks, cancelled_by_us, outcomes)


bulkhead_configs = st.tuples(
    st.integers(1, 4),  # max_concurrent
    st.integers(0, 6),  # max_queued
    st.sampled_from([None, 0.5, 2.0]),  # queue_timeout (fake seconds)
)


# ====================================================================== bulkhead, tasks
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cfg=bulkhead_configs,
    plans=st.lists(st.sampled_from(PLANS), min_size=1, max_size=12),
    steps=st.lists(actions, max_size=40),
)
def test_bulkhead_never_exceeds_its_limit_with_tasks(
    cfg: tuple[int, int, float | None], plans: list[str], steps: list[tuple[str, Any]]
) -> None:
    limit, max_queued, queue_timeout = cfg
    clock = FakeClock(1000.0)
    bulkhead = Bulkhead(limit, max_queued, queue_timeout=queue_timeout, clock=clock)
    pipe = Pipeline(bulkhead)

    async def main() -> Scenario:
        return await _drive(pipe, bulkhead, clock, plans, steps, finish_all=True)

    scenario = asyncio.run(main())
    assert bulkhead.active == 0
    assert bulkhead.queued == 0
    assert clock.pending_timers == 0  # every queue timer was cancelled or fired
    counts = Counter(scenario.outcomes)
    assert set(counts) <= {"ok", "failed", "bulkhead_full", "cancelled"}
    assert counts["bulkhead_full"] <= max(0, len(plans) - limit)
    if max_queued >= len(plans) and queue_timeout is None:
        assert counts["bulkhead_full"] == 0  # room in the queue for everyone


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limit=st.integers(1, 3),
    max_queued=st.integers(0, 8),
    workers=st.integers(1, 4),
    thread_holds=st.lists(st.sampled_from([0.0, 0.0005, 0.002]), max_size=10),
    task_holds=st.lists(st.sampled_from([0.0, 0.0005, 0.002]), max_size=10),
)
def test_bulkhead_shared_by_threads_and_tasks_never_exceeds_its_limit(
    limit: int,
    max_queued: int,
    workers: int,
    thread_holds: list[float],
    task_holds: list[float],
) -> None:
    """One bulkhead, threads and tasks at once (real, tiny waits: the property is about
    interleavings): never more than ``limit`` inside, nothing leaked."""
    bulkhead = Bulkhead(limit, max_queued)
    pipe = Pipeline(bulkhead)
    lock = threading.Lock()
    inside = 0
    over: list[int] = []

    def enter() -> None:
        nonlocal inside
        with lock:
            inside += 1
            if inside > limit or bulkhead.active > limit:
                over.append(inside)

    def leave() -> None:
        nonlocal inside
        with lock:
            inside -= 1

    def work_sync(hold: float) -> str:
        enter()
        time.sleep(hold)
        leave()
        return "ok"

    async def work_async(hold: float) -> str:
        enter()
        await asyncio.sleep(hold)
        leave()
        return "ok"

    def call_sync(hold: float) -> str:
        try:
            return pipe.call(work_sync, hold)
        except BulkheadFull:
            return "full"

    async def call_async(hold: float) -> str:
        try:
            return await pipe.acall(work_async, hold)
        except BulkheadFull:
            return "full"

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(workers) as pool:
            threads = [loop.run_in_executor(pool, call_sync, h) for h in thread_holds]
            tasks = [asyncio.ensure_future(call_async(h)) for h in task_holds]
            return list(await asyncio.wait_for(asyncio.gather(*threads, *tasks), 30))

    outcomes = asyncio.run(main())
    assert not over, f"{max(over)} calls inside a bulkhead of {limit}"
    assert bulkhead.active == 0
    assert bulkhead.queued == 0
    assert len(outcomes) == len(thread_holds) + len(task_holds)
    if max_queued >= len(outcomes):
        assert "full" not in outcomes  # room in the queue for everyone


# ====================================================================== cancellation
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cfg=bulkhead_configs,
    with_timeout=st.booleans(),
    plans=st.lists(st.sampled_from(PLANS), min_size=1, max_size=12),
    steps=st.lists(actions, max_size=40),
)
def test_cancelled_calls_never_count_as_failures_nor_leak_slots(
    cfg: tuple[int, int, float | None],
    with_timeout: bool,
    plans: list[str],
    steps: list[tuple[str, Any]],
) -> None:
    """Pipeline(CircuitBreaker, [Timeout], Bulkhead); tasks cancelled at random points."""
    limit, max_queued, queue_timeout = cfg
    clock = FakeClock(1000.0)
    # a breaker that never trips, so that its window counts every outcome
    breaker = CircuitBreaker(
        window_calls=1000, minimum_calls=1000, consecutive_failures=None, clock=clock
    )
    bulkhead = Bulkhead(limit, max_queued, queue_timeout=queue_timeout, clock=clock)
    inner = [Timeout(1.0, clock=clock)] if with_timeout else []
    pipe = Pipeline(breaker, *inner, bulkhead)

    async def main() -> Scenario:
        return await _drive(pipe, bulkhead, clock, plans, steps, finish_all=True)

    scenario = asyncio.run(main())
    counts = Counter(scenario.outcomes)
    snap = breaker.snapshot()
    assert breaker.state == "closed"
    # failures are exactly the calls that failed or timed out: no cancelled call among them
    assert snap.failures == counts["failed"] + counts["timeout"]
    assert counts["timeout"] == 0 or with_timeout
    # every finished call is counted; a cancelled call or a local rejection (a full
    # bulkhead) says nothing about the dependency and is not counted at all
    assert snap.calls == counts["ok"] + counts["failed"] + counts["timeout"]
    assert bulkhead.active == 0
    assert bulkhead.queued == 0
    assert clock.pending_timers == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    probes=st.integers(1, 4),
    spare=st.integers(0, 1),
    extra_queue=st.integers(0, 3),
    with_timeout=st.booleans(),
    n=st.integers(1, 10),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("yield"), st.integers(1, 3)),
            st.tuples(st.just("cancel"), st.integers(0, 11)),
        ),
        max_size=30,
    ),
    data=st.data(),
)
def test_cancelled_probes_give_their_half_open_slots_back(
    probes: int,
    spare: int,
    extra_queue: int,
    with_timeout: bool,
    n: int,
    steps: list[tuple[str, Any]],
    data: st.DataObject,
) -> None:
    """Probes cancelled while queued in the bulkhead or running, or turned away by a full
    bulkhead: all come back, and the breaker stays half-open."""
    clock = FakeClock(1000.0)
    breaker = CircuitBreaker(half_open_probes=probes, break_duration=1.0, clock=clock)
    # the bulkhead may hold fewer slots than probes: the others wait in its queue, or
    # are turned away when the queue is short too
    limit = data.draw(st.integers(1, probes + spare), label="max_concurrent")
    max_queued = data.draw(st.integers(0, max(0, probes - limit) + extra_queue), label="queue")
    bulkhead = Bulkhead(limit, max_queued, clock=clock)
    inner = [Timeout(5.0, clock=clock)] if with_timeout else []
    pipe = Pipeline(breaker, *inner, bulkhead)
    breaker.force_open(1.0)
    clock.advance(1.0)
    breaker.release(breaker.acquire())  # the break is over: now half-open
    generation = breaker.generation
    assert breaker.state == "half_open"

    async def main() -> Scenario:
        return await _drive(pipe, bulkhead, clock, ["ok"] * n, steps, finish_all=False)

    scenario = asyncio.run(main())
    assert set(scenario.outcomes) <= {"cancelled", "circuit_open", "bulkhead_full"}
    assert bulkhead.active == 0
    assert bulkhead.queued == 0
    assert breaker.state == "half_open"  # a cancelled probe is no outcome
    assert breaker.generation == generation
    assert breaker.snapshot().failures == 0
    permits = []
    for _ in range(probes):  # every probe slot is free again
        permits.append(breaker.acquire())
    try:
        breaker.acquire()
    except CircuitOpen:
        pass
    else:
        raise AssertionError(f"more than {probes} probes admitted")
    for permit in permits:
        breaker.release(permit)

    async def fine() -> str:
        return "ok"

    async def recover() -> None:
        for _ in range(probes):
            assert await pipe.acall(fine) == "ok"

    asyncio.run(recover())
    assert breaker.state == "closed"


# ====================================================================== retry in acall
@settings(max_examples=150, deadline=None)
@given(
    backoff=backoffs(),
    attempts=st.integers(1, 8),
    total=st.floats(0.05, 30.0),
    latency=st.sampled_from([0.0, 0.0, 0.01, 0.3, 2.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_async_retry_pipeline_sleeps_within_bounds_and_inside_the_total_timeout(
    backoff: Backoff, attempts: int, total: float, latency: float, seed: int
) -> None:
    clock = FakeClock(1000.0)
    try:
        pipe = Pipeline(
            Timeout(total, clock=clock),
            Retry(attempts, backoff=backoff, clock=clock, rng=random.Random(seed)),
        )
    except ConfigurationError:
        reject()  # the pipeline refuses retries that cannot fit: nothing to run
    starts: list[float] = []

    async def down() -> None:
        starts.append(clock.now())
        clock.advance(latency)  # the call takes `latency` (not a sleep: not in clock.sleeps)
        await asyncio.sleep(0)  # where the Timeout's cancellation lands, if it fired
        raise ConnectionError("down")

    t0 = clock.now()
    at = t0 + total

    async def main() -> BaseException:
        try:
            await pipe.acall(down)
        except (ConnectionError, DeadlineExceeded) as exc:
            return exc
        raise AssertionError("an always-failing call succeeded")

    error = asyncio.run(main())
    assert 1 <= len(starts) <= attempts
    assert len(clock.sleeps) == len(starts) - 1
    previous = 0.0
    for n, delay in enumerate(clock.sleeps, start=1):
        _check_delay(backoff, n, previous, delay)
        previous = delay
    assert all(s < at for s in starts)  # no attempt starts after the deadline
    if isinstance(error, DeadlineExceeded):
        assert latency > 0  # only a call in flight can be cut off
        assert clock.now() >= at
    elif latency == 0.0:
        assert clock.now() - t0 < total  # total time never exceeds the total timeout
    if isinstance(error, ConnectionError):
        notes = getattr(error, "__notes__", [])
        assert len(notes) == 1
        if "attempts exhausted" in notes[0]:
            assert len(starts) == attempts
        else:
            assert "(deadline)" in notes[0]
            assert len(starts) < attempts
