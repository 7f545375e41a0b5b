"""The store contract: every store (memory, SQLite, Redis, PostgreSQL) behaves the same.

The stores run on the test's `FakeClock` (the clock is passed to the server with each
command), so every timing below is exact and nothing sleeps.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buttress.errors import BackendError
from buttress.resilience import RateLimiter
from buttress.stores import (
    BeginOutcome,
    Rate,
    RateRequest,
    Store,
    StoredResponse,
)
from buttress.stores._base import gcra
from buttress.stores._denials import LocalDenials
from buttress.testing import FakeClock

from .conftest import StoreFactory

FIVE_PER_SECOND = Rate(5, 1.0)


def req(key: str, rate: Rate = FIVE_PER_SECOND, cost: int = 1) -> RateRequest:
    return RateRequest(key, rate, cost)


# ---------------------------------------------------------------- rate limits
def test_burst_then_exact_retry_after(store: Store, clock: FakeClock) -> None:
    decisions = [store.acquire([req("k")])[0] for _ in range(5)]
    assert [d.allowed for d in decisions] == [True] * 5
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    assert decisions[-1].reset_after == pytest.approx(1.0)
    denied = store.acquire([req("k")])[0]
    assert not denied.allowed
    assert denied.remaining == 0
    assert denied.retry_after == pytest.approx(0.2)
    clock.advance(0.19)
    assert not store.acquire([req("k")])[0].allowed  # a denial consumes nothing
    clock.advance(0.01)
    assert store.acquire([req("k")])[0].allowed


def test_keys_are_independent(store: Store) -> None:
    for _ in range(5):
        assert store.acquire([req("a")])[0].allowed
    assert not store.acquire([req("a")])[0].allowed
    assert store.acquire([req("b")])[0].allowed


def test_cost_and_burst(store: Store, clock: FakeClock) -> None:
    rate = Rate(10, 10.0, burst=3)  # one per second, bursts of three
    assert store.acquire([req("k", rate, cost=2)])[0].remaining == 1
    denied = store.acquire([req("k", rate, cost=2)])[0]
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(1.0)
    clock.advance(1.0)
    assert store.acquire([req("k", rate, cost=2)])[0].allowed


def test_cost_above_burst_is_never_admitted(store: Store, clock: FakeClock) -> None:
    decision = store.acquire([req("k", Rate(2, 1.0), cost=3)])[0]
    assert not decision.allowed
    assert decision.retry_after > 0
    clock.advance(3600)
    assert not store.acquire([req("k", Rate(2, 1.0), cost=3)])[0].allowed


def test_several_limits_are_all_or_nothing(store: Store, clock: FakeClock) -> None:
    burst = Rate(5, 1.0)
    daily = Rate(3, 86400.0)
    for _ in range(3):
        assert all(d.allowed for d in store.acquire([req("u:burst", burst), req("u:day", daily)]))
    per_second, per_day = store.acquire([req("u:burst", burst), req("u:day", daily)])
    assert not per_day.allowed
    assert per_day.retry_after == pytest.approx(86400 / 3)
    assert per_second.retry_after == 0.0
    assert per_second.remaining == 2  # the daily denial spent nothing of the burst
    # the burst alone still has exactly two left
    assert [store.acquire([req("u:burst", burst)])[0].allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]
    clock.advance(86400 / 3)
    assert all(d.allowed for d in store.acquire([req("u:burst", burst), req("u:day", daily)]))


@pytest.mark.parametrize("key", ["", "ключ-🔑", "x" * 10_000, "a{b}c", "\x00\n\t"])
def test_any_key_is_accepted(store: Store, key: str) -> None:
    assert store.acquire([req(key, Rate(1, 60.0))])[0].allowed
    assert not store.acquire([req(key, Rate(1, 60.0))])[0].allowed


# The agreement property: a few keys, each with its own rate; each step advances the clock
# (by nothing, by a fraction of the first key's interval, by any amount, or by exactly the
# last denial's retry_after: the boundaries) and then asks for 1-3 keys at once.
rates = st.builds(
    Rate,
    limit=st.integers(1, 50),
    period=st.one_of(st.sampled_from([0.1, 1.0, 7.3, 60.0, 3600.0]), st.floats(0.01, 1e4)),
    burst=st.integers(0, 20),
)
advances = st.one_of(
    st.just("retry"),
    st.just(("seconds", 0.0)),
    st.builds(lambda k: ("interval", k / 4), st.integers(0, 12)),
    st.floats(0.0, 100.0).map(lambda x: ("seconds", x)),
)
picks = st.lists(st.tuples(st.integers(0, 2), st.integers(1, 4)), min_size=1, max_size=3)
_examples = iter(range(10**9))  # fresh keys for every example (the servers keep state)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    key_rates=st.lists(rates, min_size=3, max_size=3),
    seq=st.lists(st.tuples(advances, picks), min_size=1, max_size=30),
    start=st.sampled_from([1000.0, 86400.7, 3.2e7, 1.7e9]),
)
def test_matches_the_pure_gcra_model(
    make_store: StoreFactory, key_rates: list[Rate], seq: list[Any], start: float
) -> None:
    """Every GCRA agrees with the pure `buttress._gcra.gcra`, number for number.

    The store (memory, SQLite, Redis's Lua, PostgreSQL's SQL), a `LocalDenials` fed with
    its denials, and a `RateLimiter` (on the single-key steps), against the model, for
    random sequences of (keys, cost, time advance) on a fake clock: the same decisions
    (admitted, remaining, limit, retry_after and reset_after), to the tolerance of
    `buttress._gcra`, which they meet exactly: every one evaluates the same doubles in the
    same order.
    """
    clock = FakeClock(start)
    store = make_store(clock=clock)
    n = next(_examples)
    keys = [f"p{n}:k{i}" for i in range(3)]
    model: dict[str, float] = {}
    denials = LocalDenials()
    limiters = {
        k: RateLimiter(r.limit, r.period, burst=r.burst, clock=clock)
        for k, r in zip(keys, key_rates, strict=True)
    }
    limiter_model: dict[str, float] = {}
    retry = 0.0
    try:
        for advance, pick in seq:
            if advance == "retry":
                clock.advance(retry)
            else:
                kind, amount = advance
                clock.advance(amount * key_rates[0].interval if kind == "interval" else amount)
            now = clock.now()
            requests = [req(keys[i], key_rates[i], cost) for i, cost in pick]
            before = [model.get(r.key) for r in requests]
            expected, new = gcra(before, now, requests)
            local = denials.check(requests, now)
            assert store.acquire(requests) == expected, (now, requests, before)
            if local is not None:  # the cache answers only what the store would deny
                assert new is None
                assert local == expected
            if new is None:
                denials.record(requests, before, now, now)
                retry = max(d.retry_after for d in expected)
            else:
                model.update({r.key: t for r, t in zip(requests, new, strict=True)})
                denials.refresh(requests, new, now, now)
            if len(requests) == 1 and requests[0].cost <= requests[0].rate.burst:
                # the in-process limiter runs the same arithmetic (decide() refuses a cost
                # above the burst)
                [r] = requests
                want, tats = gcra([limiter_model.get(r.key)], now, requests)
                assert limiters[r.key].decide(r.key, r.cost) == want[0]
                if tats is not None:
                    limiter_model[r.key] = tats[0]
    finally:
        store.close()


async def test_async_acquire(store: Store, clock: FakeClock) -> None:
    assert (await store.aacquire([req("k", Rate(1, 1.0))]))[0].allowed
    denied = (await store.aacquire([req("k", Rate(1, 1.0))]))[0]
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(1.0)
    assert not store.acquire([req("k", Rate(1, 1.0))])[0].allowed  # same state both ways


def test_concurrent_acquires_never_exceed_the_burst(make_store: StoreFactory) -> None:
    """Threads with their own store objects (as separate processes would have)."""
    clock = FakeClock(1000.0)  # time stands still: exactly the burst may pass
    stores = [make_store(clock=clock) for _ in range(4)]
    admitted = []
    lock = threading.Lock()

    def worker(s: Store) -> None:
        count = sum(s.acquire([req("shared", Rate(20, 60.0))])[0].allowed for _ in range(15))
        with lock:
            admitted.append(count)

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if stores[0].url == "memory://":  # separate memory stores share nothing
        assert admitted == [15, 15, 15, 15]
    else:
        assert sum(admitted) == 20


# ---------------------------------------------------------------- idempotency
RESPONSE = StoredResponse(
    201,
    ((b"content-type", b"application/json"), (b"location", b"/orders/7")),
    b'{"id": 7}',
)


def test_idempotency_lifecycle(store: Store, clock: FakeClock) -> None:
    first = store.begin("key-1", "fp", lease=60.0)
    assert first.outcome is BeginOutcome.ACQUIRED
    assert first.token
    clock.advance(10)
    busy = store.begin("key-1", "fp", lease=60.0)
    assert busy.outcome is BeginOutcome.IN_FLIGHT
    assert busy.retry_after == pytest.approx(50.0)
    assert store.begin("key-1", "other", lease=60.0).outcome is BeginOutcome.MISMATCH
    assert store.complete("key-1", first.token, RESPONSE, ttl=3600.0)
    replay = store.begin("key-1", "fp", lease=60.0)
    assert replay.outcome is BeginOutcome.REPLAY
    assert replay.response == RESPONSE
    assert store.begin("key-1", "other", lease=60.0).outcome is BeginOutcome.MISMATCH
    clock.advance(3600.0)  # the stored response expired: the key is free again
    assert store.begin("key-1", "other", lease=60.0).outcome is BeginOutcome.ACQUIRED


def test_release_frees_the_key(store: Store) -> None:
    first = store.begin("k", "fp", lease=60.0)
    store.release("k", "not-the-token")
    assert store.begin("k", "fp", lease=60.0).outcome is BeginOutcome.IN_FLIGHT
    store.release("k", first.token)
    again = store.begin("k", "fp", lease=60.0)
    assert again.outcome is BeginOutcome.ACQUIRED
    assert again.token != first.token


def test_expired_lease_can_be_taken_over(store: Store, clock: FakeClock) -> None:
    crashed = store.begin("k", "fp", lease=30.0)
    clock.advance(29.0)
    assert store.renew("k", crashed.token, lease=30.0)  # renewed: 30 s from now
    clock.advance(29.0)
    assert store.begin("k", "fp", lease=30.0).outcome is BeginOutcome.IN_FLIGHT
    clock.advance(1.0)
    taken = store.begin("k", "fp", lease=30.0)
    assert taken.outcome is BeginOutcome.ACQUIRED
    # the old holder lost it: it can neither renew, complete nor release
    assert not store.renew("k", crashed.token, lease=30.0)
    assert not store.complete("k", crashed.token, RESPONSE, ttl=60.0)
    store.release("k", crashed.token)
    assert store.begin("k", "fp", lease=30.0).outcome is BeginOutcome.IN_FLIGHT
    assert store.complete("k", taken.token, RESPONSE, ttl=60.0)
    assert not store.renew("k", taken.token, lease=30.0)  # completed: nothing to renew
    assert store.begin("k", "fp", lease=30.0).response == RESPONSE


def test_an_expired_lease_holds_nothing(store: Store, clock: FakeClock) -> None:
    """Even when nobody took the key over, a holder whose lease ran out lost it."""
    late = store.begin("k", "fp", lease=10.0)
    clock.advance(10.0)
    assert not store.renew("k", late.token, lease=10.0)
    assert not store.complete("k", late.token, RESPONSE, ttl=60.0)
    assert store.begin("k", "fp", lease=10.0).outcome is BeginOutcome.ACQUIRED


@pytest.mark.parametrize(
    "response",
    [
        StoredResponse(200, (), b""),
        StoredResponse(500, ((b"x-a", b""), (b"x-b", b"\x00\xff")), bytes(range(256)) * 4096),
        StoredResponse(204, tuple((f"x-{i}".encode(), b"v" * i) for i in range(50)), b""),
    ],
)
def test_responses_round_trip_exactly(store: Store, response: StoredResponse) -> None:
    token = store.begin("k", "fp", lease=60.0).token
    assert store.complete("k", token, response, ttl=60.0)
    assert store.begin("k", "fp", lease=60.0).response == response


@pytest.mark.parametrize("key", ["", "ключ-🔑", "k" * 255, "x" * 10_000])
def test_idempotency_keys_of_any_shape(store: Store, key: str) -> None:
    token = store.begin(key, "fp", lease=60.0).token
    assert store.complete(key, token, RESPONSE, ttl=60.0)
    assert store.begin(key, "fp", lease=60.0).outcome is BeginOutcome.REPLAY
    assert store.begin(key + "x", "fp", lease=60.0).outcome is BeginOutcome.ACQUIRED


async def test_async_idempotency(store: Store, clock: FakeClock) -> None:
    first = await store.abegin("k", "fp", lease=10.0)
    assert first.outcome is BeginOutcome.ACQUIRED
    assert (await store.abegin("k", "fp", lease=10.0)).outcome is BeginOutcome.IN_FLIGHT
    clock.advance(9.0)
    assert await store.arenew("k", first.token, lease=10.0)
    assert await store.acomplete("k", first.token, RESPONSE, ttl=60.0)
    assert (await store.abegin("k", "fp", lease=10.0)).response == RESPONSE
    other = await store.abegin("j", "fp", lease=10.0)
    await store.arelease("j", other.token)
    assert (await store.abegin("j", "fp", lease=10.0)).outcome is BeginOutcome.ACQUIRED


def test_concurrent_duplicates_acquire_once(make_store: StoreFactory) -> None:
    clock = FakeClock(1000.0)
    stores = [make_store(clock=clock) for _ in range(4)]
    if stores[0].url == "memory://":
        stores = [stores[0]] * 4  # one process: the threads share its store
    outcomes: list[BeginOutcome] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(stores) * 3)

    def worker(s: Store) -> None:
        barrier.wait()
        outcome = s.begin("dup", "fp", lease=60.0).outcome
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(BeginOutcome.ACQUIRED) == 1
    assert outcomes.count(BeginOutcome.IN_FLIGHT) == len(threads) - 1


# ---------------------------------------------------------------- breaker state
def test_breaker_reports(store: Store, clock: FakeClock) -> None:
    assert store.reports("payments") == []
    store.publish("payments", "a", "open", ttl=10.0)
    clock.advance(2.0)
    store.publish("payments", "b", "closed", ttl=10.0)
    store.publish("other", "a", "closed", ttl=10.0)
    reports = {r.instance: r for r in store.reports("payments")}
    assert {i: r.state for i, r in reports.items()} == {"a": "open", "b": "closed"}
    assert reports["a"].age == pytest.approx(2.0)
    clock.advance(3.0)
    store.publish("payments", "a", "half_open", ttl=10.0)  # replaces a's report
    assert {r.instance: r.state for r in store.reports("payments")}["a"] == "half_open"
    clock.advance(8.0)  # b's report expired; a's newer one still lives
    assert [r.instance for r in store.reports("payments")] == ["a"]


async def test_async_breaker_reports(store: Store, clock: FakeClock) -> None:
    await store.apublish("svc", "i1", "open", ttl=5.0)
    assert [(r.instance, r.state) for r in await store.areports("svc")] == [("i1", "open")]
    clock.advance(5.0)
    assert await store.areports("svc") == []


# ---------------------------------------------------------------- lifecycle
def test_ping_and_close(make_store: StoreFactory) -> None:
    store = make_store()
    store.ping()
    store.close()
    store.close()  # closing twice is harmless


async def test_aping_and_aclose(make_store: StoreFactory) -> None:
    store = make_store()
    await store.aping()
    await store.aclose()


def test_server_clock_by_default(make_store: StoreFactory) -> None:
    """Without a clock, the store's own notion of time decides (the server's for Redis/PG)."""
    store = make_store()
    rate = Rate(2, 3600.0)
    assert [store.acquire([req("k", rate)])[0].allowed for _ in range(3)] == [True, True, False]
    denied = store.acquire([req("k", rate)])[0]
    assert 1790 < denied.retry_after <= 1800
    first = store.begin("i", "fp", lease=60.0)
    assert store.begin("i", "fp", lease=60.0).outcome is BeginOutcome.IN_FLIGHT
    assert store.complete("i", first.token, RESPONSE, ttl=60.0)
    assert store.begin("i", "fp", lease=60.0).response == RESPONSE
    store.publish("b", "me", "open", ttl=60.0)
    assert [r.state for r in store.reports("b")] == ["open"]


def test_damaged_record_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="damaged"):
        StoredResponse.decode(b"\x00\xc8\x00\x00\x00\x05")
