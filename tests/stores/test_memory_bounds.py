"""MemoryStore's bounds: full tables refuse new keys and never drop live state (issue 8)."""

from __future__ import annotations

from typing import Any

import pytest

from buttress.asgi.middleware import IdempotencyMiddleware
from buttress.errors import BackendError, ConfigurationError
from buttress.stores import BeginOutcome, MemoryStore, Rate, RateRequest, StoredResponse
from buttress.stores._denials import LocalDenials
from buttress.testing import FakeClock

HOURLY = Rate(10, 3600.0)  # burst 10, one request back every 360 s


def hit(store: MemoryStore, *keys: str, rate: Rate = HOURLY) -> bool:
    [*decisions] = store.acquire([RateRequest(k, rate) for k in keys])
    return all(d.allowed for d in decisions)


# ---------------------------------------------------------------- rate limits
def test_a_flood_of_new_keys_never_resets_an_exhausted_one(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_keys=1000)
    assert all(hit(store, "victim") for _ in range(10))
    assert not hit(store, "victim")
    admitted = sum(hit(store, f"attacker-{i}") for i in range(10_000))  # 10x max_keys
    assert admitted == 999  # every slot but the victim's
    assert not hit(store, "victim")
    [refused] = store.acquire([RateRequest("attacker-x", HOURLY)])
    assert (refused.allowed, refused.remaining) == (False, 0)
    assert refused.retry_after == pytest.approx(360.0)  # the earliest attacker expires
    clock.advance(360.0)
    assert hit(store, "attacker-x")  # room again
    # 360 s earned the victim one request back, as GCRA says; a reset would give it 10
    assert [hit(store, "victim") for _ in range(10)] == [True] + [False] * 9
    clock.advance(3600.0)
    assert all(hit(store, "victim") for _ in range(10))  # its TAT passed: a full burst


def test_a_refusal_consumes_nothing(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_keys=2)
    per_second = Rate(5, 1.0)
    assert hit(store, "a", rate=per_second)
    # "a" is present, the two new keys need two slots and only one is free: all denied
    decisions = store.acquire([RateRequest(k, per_second) for k in ("a", "n1", "n2")])
    assert [d.allowed for d in decisions] == [False] * 3
    assert [d.retry_after for d in decisions] == [pytest.approx(0.2)] * 3  # "a" expires
    assert store.acquire([RateRequest("a", per_second)])[0].remaining == 3  # one counted
    assert hit(store, "n1", rate=per_second)


def test_more_new_keys_than_the_table_holds_are_refused_with_a_finite_wait(
    clock: FakeClock,
) -> None:
    store = MemoryStore(clock=clock, max_keys=1)
    decisions = store.acquire([RateRequest("a", HOURLY), RateRequest("b", Rate(1, 60.0))])
    assert [d.retry_after for d in decisions] == [3600.0, 3600.0]  # never: the longest period


def test_long_keys_are_bounded_by_bytes(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_bytes=1 << 16)
    admitted = sum(hit(store, "k" * 1000 + str(i)) for i in range(1000))
    assert 40 < admitted < 64  # ~1.2 kB each
    assert not hit(store, "k" * 1000 + "x")


# ---------------------------------------------------------------- idempotency
def response(body: bytes = b"{}") -> StoredResponse:
    return StoredResponse(201, ((b"content-type", b"application/json"),), body)


def test_a_full_table_refuses_new_begins_and_keeps_every_record(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_keys=3)
    done = store.begin("done", "fp", lease=10.0)
    assert store.complete("done", done.token or "", response(b"kept"), ttl=100.0)
    store.begin("a", "fp", lease=10.0)
    store.begin("b", "fp", lease=20.0)
    with pytest.raises(BackendError, match=r"max_keys=3\b.*room in 10 s") as caught:
        store.begin("new", "fp", lease=10.0)
    assert caught.value.retry_after == pytest.approx(10.0)
    replay = store.begin("done", "fp", lease=10.0)  # a completed record still replays
    assert replay.outcome is BeginOutcome.REPLAY
    assert replay.response == response(b"kept")
    assert store.begin("a", "fp", lease=10.0).outcome is BeginOutcome.IN_FLIGHT
    clock.advance(10.0)  # the lease of "a" ran out: its slot comes back
    assert store.begin("new", "fp", lease=10.0).outcome is BeginOutcome.ACQUIRED
    assert store.begin("done", "fp", lease=10.0).outcome is BeginOutcome.REPLAY


def test_records_round_trip_whatever_the_response(clock: FakeClock) -> None:
    """Records are packed bytes: any status (0: an abandoned handler's unknown outcome)."""
    store = MemoryStore(clock=clock)
    for i, stored in enumerate(
        [StoredResponse(0, (), b""), StoredResponse(200, ((b"a", b""), (b"", b"b")), b"\x00" * 9)]
    ):
        key, fingerprint = f"k{i}", "fp-é"
        got = store.begin(key, fingerprint, lease=10.0)
        assert store.complete(key, got.token or "", stored, ttl=60.0)
        replay = store.begin(key, fingerprint, lease=10.0)
        assert (replay.outcome, replay.response) == (BeginOutcome.REPLAY, stored)
        assert store.begin(key, "other", lease=10.0).outcome is BeginOutcome.MISMATCH


def test_renewed_leases_are_kept(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_keys=2)
    a = store.begin("a", "fp", lease=10.0)
    store.begin("b", "fp", lease=30.0)
    clock.advance(9.0)
    assert store.renew("a", a.token or "", lease=60.0)
    clock.advance(2.0)  # past the first lease of "a"
    with pytest.raises(BackendError, match="max_keys=2"):
        store.begin("new", "fp", lease=10.0)
    assert store.begin("a", "fp", lease=10.0).outcome is BeginOutcome.IN_FLIGHT


def test_a_released_key_frees_its_slot_at_the_end_of_its_lease(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_keys=1)
    a = store.begin("a", "fp", lease=10.0)
    store.release("a", a.token or "")
    assert store.begin("a", "fp", lease=10.0).outcome is BeginOutcome.ACQUIRED  # its own slot
    clock.advance(10.0)
    assert store.begin("b", "fp", lease=10.0).outcome is BeginOutcome.ACQUIRED


def test_the_bytes_budget_refuses_new_begins_and_complete_always_stores(
    clock: FakeClock,
) -> None:
    store = MemoryStore(clock=clock, max_bytes=1 << 16)
    big = store.begin("big", "fp", lease=10.0)
    assert store.complete("big", big.token or "", response(b"x" * 70_000), ttl=100.0)
    with pytest.raises(BackendError, match=r"max_bytes=65,536"):
        store.begin("new", "fp", lease=10.0)
    assert store.begin("big", "fp", lease=10.0).outcome is BeginOutcome.REPLAY
    clock.advance(100.0)
    assert store.begin("new", "fp", lease=10.0).outcome is BeginOutcome.ACQUIRED


async def test_the_middleware_answers_503_and_never_runs_the_handler(clock: FakeClock) -> None:
    calls = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    store = MemoryStore(clock=clock, max_keys=1)
    mw = IdempotencyMiddleware(app, store=store, clock=clock)
    statuses = []
    for key in (b"k1", b"k2"):
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any], sent: list[Any] = sent) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": f"/orders/{key.decode()}",
            "raw_path": b"/orders",
            "query_string": b"",
            "headers": [(b"idempotency-key", key)],
        }
        await mw(scope, receive, send)
        statuses.append(next(m["status"] for m in sent if m["type"] == "http.response.start"))
        headers = dict(next(m["headers"] for m in sent if m["type"] == "http.response.start"))
    assert statuses == [201, 503]
    assert calls == ["/orders/k1"]
    assert b"retry-after" in headers


# ---------------------------------------------------------------- the denial cache
def test_local_denials_evict_the_least_recently_recorded_by_entries_and_bytes() -> None:
    rate = Rate(1, 60.0)
    cache = LocalDenials(max_entries=3, max_bytes=1 << 20)
    for key in ("a", "b", "c", "a", "d"):  # "a" recorded again: "b" is the oldest
        cache.record([RateRequest(key, rate)], [1060.0], 1000.0, 1000.0)
    cached = [k for k in "abcd" if cache.check([RateRequest(k, rate)], 1000.0)]
    assert (cached, len(cache)) == (["a", "c", "d"], 3)
    small = LocalDenials(max_bytes=4096)
    for i in range(100):
        small.record([RateRequest("k" * 500 + str(i), rate)], [1060.0], 1000.0, 1000.0)
    assert 2 <= len(small) <= 5  # ~700 bytes each
    big = LocalDenials(max_entries=100_000)
    assert len(big._shards) == 8  # no dict rebuild copies more than ~16k entries
    big.clear()
    assert len(big) == 0


# ---------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_keys": 0}, "max_keys"),
        ({"max_bytes": 1000}, "max_bytes"),
        ({"max_keys": True}, "max_keys"),
        ({"max_keys": 2**32}, "max_keys"),
    ],
)
def test_invalid_bounds(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        MemoryStore(**kwargs)


def test_defaults() -> None:
    store = MemoryStore()
    assert (store.max_keys, store.max_bytes) == (1_000_000, 256 << 20)
