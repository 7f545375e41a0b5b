"""SharedBreakerState: fleet quorum, no latching, expiry, store outages, lifecycles.

Several `SharedBreakerState` objects on one `MemoryStore` play several instances; one
`FakeClock` drives the store and the breakers, and the tests call ``refresh_once``
themselves, so nothing sleeps (except the two bounded lifecycle runs).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buttress import CircuitBreaker, CircuitOpen, ConfigurationError, Pipeline
from buttress.errors import BackendError
from buttress.resilience._fleet_breaker import FleetView, SharedBreakerState
from buttress.stores import BreakerReport, MemoryStore
from buttress.testing import FakeClock


def make_fleet(
    store: MemoryStore, clock: FakeClock, n: int, name: str = "payments", **options: object
) -> list[tuple[CircuitBreaker, SharedBreakerState]]:
    fleet = []
    for i in range(n):
        breaker = CircuitBreaker(name=name, clock=clock, break_duration=5.0)
        shared = SharedBreakerState(store, [breaker], instance=f"i{i}", clock=clock, **options)  # type: ignore[arg-type]
        fleet.append((breaker, shared))
    return fleet


def refresh_all(fleet: list[tuple[CircuitBreaker, SharedBreakerState]]) -> None:
    for _ in range(2):  # everyone publishes, then everyone reads everyone
        for _, shared in fleet:
            shared.refresh_once()


def published(store: MemoryStore, instance: str, name: str = "payments") -> str:
    return {r.instance: r.state for r in store.reports(name)}[instance]


# ---------------------------------------------------------------- the quorum rule
def test_quorum_reached_forces_the_others_open(clock: FakeClock, events) -> None:
    store = MemoryStore(clock=clock)
    fleet = make_fleet(store, clock, 4)
    (a, _), (b, _), (c, shared_c), (d, _) = fleet
    a.force_open(60.0)  # their own judgment (as if they had tripped)
    b.force_open(60.0)
    refresh_all(fleet)
    assert c.state == d.state == "open"
    assert shared_c.view("payments") == FleetView(
        live=4, reporting_open=2, fleet_open=True, forced=True
    )
    reasons = [e.reason for e in events if e.kind == "circuit_state_changed" and e.reason]
    assert "fleet: 2 of 4 instances report open" in reasons
    with pytest.raises(CircuitOpen):
        Pipeline(c).call(lambda: "ok")  # the call path sees a plain open breaker


def test_below_quorum_nothing_happens(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    fleet = make_fleet(store, clock, 5)
    fleet[0][0].force_open(60.0)
    fleet[1][0].force_open(60.0)
    refresh_all(fleet)  # 2 of 5 < 0.5
    assert [b.state for b, _ in fleet[2:]] == ["closed"] * 3
    assert fleet[2][1].view("payments") == FleetView(
        live=5, reporting_open=2, fleet_open=False, forced=False
    )


def test_min_open_keeps_one_sick_instance_from_opening_the_fleet(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    pair = make_fleet(store, clock, 2)  # 1 of 2 is the quorum, but min_open is 2
    pair[0][0].force_open(60.0)
    refresh_all(pair)
    assert pair[1][0].state == "closed"

    lenient = make_fleet(MemoryStore(clock=clock), clock, 2, name="search", min_open=1)
    lenient[0][0].force_open(60.0)
    refresh_all(lenient)
    assert lenient[1][0].state == "open"


def test_a_forced_breaker_reports_its_own_state_and_the_fleet_does_not_latch(
    clock: FakeClock, events
) -> None:
    store = MemoryStore(clock=clock)
    fleet = make_fleet(store, clock, 4)
    (a, _), (b, _), (c, _), (d, _) = fleet
    a.force_open(60.0)
    b.force_open(60.0)
    refresh_all(fleet)
    assert c.state == d.state == "open"
    assert published(store, "i2") == published(store, "i3") == "closed"  # not "open"
    a.reset()  # the sick instances recover
    b.reset()
    refresh_all(fleet)
    assert [br.state for br, _ in fleet] == ["closed"] * 4  # the forced ones were let go
    assert any(
        e.kind == "circuit_state_changed" and e.reason.startswith("fleet recovered: 0 of 4")
        for e in events
    )
    refresh_all(fleet)
    assert [br.state for br, _ in fleet] == ["closed"] * 4


def test_a_forced_breaker_probes_after_its_break_and_is_forced_again(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    fleet = make_fleet(store, clock, 3)
    fleet[0][0].force_open(600.0)
    fleet[1][0].force_open(600.0)
    refresh_all(fleet)
    c, shared_c = fleet[2]
    assert c.state == "open"
    clock.advance(2.5)
    refresh_all(fleet)
    assert shared_c.view("payments").forced  # type: ignore[union-attr]
    clock.advance(2.5)  # its break_duration has passed
    assert Pipeline(c).call(lambda: "ok") == "ok"  # the half-open probe goes through
    assert c.state == "closed"
    shared_c.refresh_once()  # the fleet still says open
    assert c.state == "open"
    assert shared_c.view("payments").forced  # type: ignore[union-attr]


def test_a_probe_that_fails_is_the_breakers_own_judgment(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    fleet = make_fleet(store, clock, 3)
    fleet[0][0].force_open(600.0)
    fleet[1][0].force_open(600.0)
    refresh_all(fleet)
    c, shared_c = fleet[2]
    clock.advance(2.5)
    refresh_all(fleet)
    clock.advance(2.5)

    def boom() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        Pipeline(c).call(boom)
    assert c.state == "open"
    shared_c.refresh_once()
    assert published(store, "i2") == "open"  # it saw the failure itself: now it counts


def test_a_crashed_instance_stops_counting_when_its_report_expires(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    fleet = make_fleet(store, clock, 3, refresh=1.0)  # ttl = 3 s
    fleet[0][0].force_open(600.0)
    fleet[1][0].force_open(600.0)
    refresh_all(fleet)
    c, shared_c = fleet[2]
    assert c.state == "open"
    clock.advance(2.0)  # the two open instances crash: they never refresh again
    shared_c.refresh_once()
    assert c.state == "open"  # their reports are still live
    clock.advance(1.5)
    shared_c.refresh_once()
    assert c.state == "closed"
    assert shared_c.view("payments") == FleetView(
        live=1, reporting_open=0, fleet_open=False, forced=False
    )


@settings(max_examples=150, deadline=None)
@given(
    peers=st.lists(st.sampled_from(["closed", "open", "half_open"]), max_size=12),
    quorum=st.sampled_from([0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.6, 2 / 3, 0.75, 0.9, 1.0]),
    min_open=st.integers(1, 4),
)
def test_the_quorum_rule_over_random_fleets(peers: list[str], quorum: float, min_open: int) -> None:
    clock = FakeClock(1000.0)
    store = MemoryStore(clock=clock)
    breaker = CircuitBreaker(name="svc", clock=clock)
    shared = SharedBreakerState(
        store, [breaker], instance="me", quorum=quorum, min_open=min_open, clock=clock
    )
    for i, state in enumerate(peers):
        store.publish("svc", f"peer{i}", state, ttl=3.0)
    shared.refresh_once()
    opened, live = peers.count("open"), len(peers) + 1
    expected = opened >= min_open and Fraction(opened, live) >= Fraction(str(quorum))
    assert breaker.state == ("open" if expected else "closed")
    assert shared.view("svc") == FleetView(
        live=live, reporting_open=opened, fleet_open=expected, forced=expected
    )
    shared.refresh_once()  # held open, it still reports its own judgment
    assert published(store, "me", "svc") == "closed"
    for i in range(len(peers)):  # the fleet recovers: nothing stays forced
        store.publish("svc", f"peer{i}", "closed", ttl=3.0)
    shared.refresh_once()
    assert breaker.state == "closed"


# ---------------------------------------------------------------- the store fails
class FlakyStore:
    """A MemoryStore that raises BackendError while ``down``."""

    def __init__(self, clock: FakeClock) -> None:
        self.inner = MemoryStore(clock=clock)
        self.down = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise BackendError("flaky store: connection refused")

    def publish(self, name: str, instance: str, state: str, ttl: float) -> None:
        self._check()
        self.inner.publish(name, instance, state, ttl)

    async def apublish(self, name: str, instance: str, state: str, ttl: float) -> None:
        self.publish(name, instance, state, ttl)

    def reports(self, name: str) -> list[BreakerReport]:
        self._check()
        return self.inner.reports(name)

    async def areports(self, name: str) -> list[BreakerReport]:
        return self.reports(name)


def test_a_store_outage_leaves_each_breaker_alone_and_is_logged_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore(clock)
    breakers = [
        CircuitBreaker(name="payments", clock=clock, consecutive_failures=2) for _ in range(3)
    ]
    fleet = [
        SharedBreakerState(store, [b], instance=f"i{i}", clock=clock)  # type: ignore[arg-type]
        for i, b in enumerate(breakers)
    ]
    for shared in fleet:
        shared.refresh_once()
    store.down = True
    caplog.set_level(logging.INFO, logger="buttress")
    for _ in range(3):
        for shared in fleet:
            shared.refresh_once()
        clock.advance(1.0)
    assert fleet[0].errors == 3
    assert fleet[0].alone
    assert fleet[0].view("payments") is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # once per instance, not once per refresh
    assert "work alone" in warnings[0].getMessage()

    def boom() -> None:
        raise ConnectionError("down")

    pipe = Pipeline(breakers[0])  # the breaker still trips on its own, off the store
    for _ in range(2):
        with pytest.raises(ConnectionError):
            pipe.call(boom)
    assert breakers[0].state == "open"
    calls = store.calls
    with pytest.raises(CircuitOpen):
        pipe.call(boom)
    assert store.calls == calls  # and the call path never touches the store

    breakers[1].force_open(60.0)  # two own opens: the fleet would open the third...
    store.down = False
    for _ in range(2):
        for shared in fleet:
            shared.refresh_once()
    assert not fleet[2].alone
    assert fleet[2].refreshes == 3
    assert breakers[2].state == "open"  # ...and does, once the store answers again
    assert any("answers again after 3.0 s" in r.getMessage() for r in caplog.records)


async def test_async_refresh_and_outage(clock: FakeClock) -> None:
    store = FlakyStore(clock)
    fleet = make_fleet(store.inner, clock, 3)
    shared_c = SharedBreakerState(
        store,  # type: ignore[arg-type]
        [fleet[2][0]],
        instance="i2",
        clock=clock,
    )
    fleet[0][0].force_open(60.0)
    fleet[1][0].force_open(60.0)
    for _, shared in fleet[:2]:
        await shared.arefresh_once()
    store.down = True
    await shared_c.arefresh_once()
    assert shared_c.alone
    assert fleet[2][0].state == "closed"
    store.down = False
    await shared_c.arefresh_once()
    assert fleet[2][0].state == "open"


# ---------------------------------------------------------------- lifecycles
async def test_the_async_lifecycle_starts_and_stops_cleanly() -> None:
    store = MemoryStore()
    breaker = CircuitBreaker(name="payments")
    peers = [CircuitBreaker(name="payments") for _ in range(2)]
    for i, peer in enumerate(peers):
        peer.force_open(60.0)
        store.publish("payments", f"peer{i}", "open", ttl=60.0)
    shared = SharedBreakerState(store, [breaker], refresh=0.01)
    deadline = time.monotonic() + 0.5
    async with shared:
        task = shared._task
        assert task is not None
        with pytest.raises(RuntimeError):
            await shared.astart()
        while breaker.state != "open" or shared.refreshes < 3:
            assert time.monotonic() < deadline, "the loop did not refresh in time"
            await asyncio.sleep(0.005)
    assert task.done()
    assert shared._task is None
    await shared.astop()  # stopping twice is harmless


async def test_the_async_loop_survives_a_bug_in_a_refresh(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(FlakyStore):
        def publish(self, name: str, instance: str, state: str, ttl: float) -> None:
            self.calls += 1
            raise TypeError("a bug")

    store = Broken(clock)
    shared = SharedBreakerState(
        store,  # type: ignore[arg-type]
        [CircuitBreaker(name="payments", clock=clock)],
        clock=clock,
    )
    await shared.astart()  # FakeClock: each loop turn advances time and yields once
    for _ in range(5):
        await asyncio.sleep(0)
    await shared.astop()
    assert store.calls >= 3
    assert shared.errors == store.calls
    errors = [r for r in caplog.records if r.name == "buttress"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None


def test_the_thread_refreshes_and_stops(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    breaker = CircuitBreaker(name="payments", clock=clock)
    shared = SharedBreakerState(store, [breaker], instance="me", refresh=0.01, clock=clock)
    deadline = time.monotonic() + 0.5
    with shared:
        thread = shared._thread
        assert thread is not None
        assert thread.daemon
        with pytest.raises(RuntimeError):
            shared.start()
        while shared.refreshes < 3:
            assert time.monotonic() < deadline, "the thread did not refresh in time"
            time.sleep(0.005)
    assert not thread.is_alive()
    assert thread not in threading.enumerate()
    assert published(store, "me") == "closed"
    shared.stop()  # stopping twice is harmless
    shared.start()  # and it can start again
    shared.stop()


# ---------------------------------------------------------------- configuration
def test_configuration_is_validated(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    with pytest.raises(ConfigurationError, match="needs a name"):
        SharedBreakerState(store, [CircuitBreaker(clock=clock)])
    named = CircuitBreaker(name="payments", clock=clock)
    shared = SharedBreakerState(store, [named, named])  # the same breaker twice: once
    assert shared.breakers == [named]
    with pytest.raises(ConfigurationError, match="unique"):
        shared.add(CircuitBreaker(name="payments", clock=clock))
    with pytest.raises(ConfigurationError, match="not a CircuitBreaker"):
        shared.add("payments")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="ttl"):
        SharedBreakerState(store, refresh=1.0, ttl=1.0)
    with pytest.raises(ConfigurationError, match="quorum"):
        SharedBreakerState(store, quorum=0.0)
    with pytest.raises(ConfigurationError, match="min_open"):
        SharedBreakerState(store, min_open=0)
    with pytest.raises(ConfigurationError, match="BreakerStateStore"):
        SharedBreakerState(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="instance"):
        SharedBreakerState(store, instance="")
    default = SharedBreakerState(store)
    assert default.ttl == 3.0
    assert default.instance.count("-") >= 2
    assert default.instance != SharedBreakerState(store).instance
    assert shared.view("unknown") is None
    assert "payments" in repr(shared)


# ---------------------------------------------------------------- a real store
@pytest.mark.redis
def test_the_fleet_opens_through_real_redis(redis_url: str) -> None:
    from buttress.stores import open_store

    store = open_store(redis_url, namespace=f"shared{uuid.uuid4().hex[:10]}")
    try:
        breakers = [CircuitBreaker(name="payments") for _ in range(3)]
        fleet = [
            SharedBreakerState(store, [b], instance=f"i{i}", refresh=5.0)
            for i, b in enumerate(breakers)
        ]
        breakers[0].force_open(60.0)
        breakers[1].force_open(60.0)
        for _ in range(2):
            for shared in fleet:
                shared.refresh_once()
        assert breakers[2].state == "open"
        assert fleet[2].view("payments") == FleetView(
            live=3, reporting_open=2, fleet_open=True, forced=True
        )
        assert {r.instance: r.state for r in store.reports("payments")}["i2"] == "closed"
        breakers[0].reset()
        for shared in fleet:
            shared.refresh_once()
        assert breakers[2].state == "closed"
        assert all(s.errors == 0 for s in fleet)
    finally:
        store.close()
