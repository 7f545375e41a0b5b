"""Noisy neighbours: the Space-Saving guarantee, the sliding window, the view and the metric."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from buttress.asgi import HardenSettings, harden
from buttress.asgi._heavy_hitters import NoisyNeighbours, SlidingTopKeys, SpaceSaving
from buttress.asgi._noisy import TopKeysView
from buttress.asgi._ratelimit import Limit, RateLimitMiddleware
from buttress.asgi.keys import header
from buttress.testing import FakeClock

_STREAMS = st.lists(st.integers(0, 40).map(lambda i: f"k{i}"), max_size=400)


@given(capacity=st.integers(1, 16), stream=_STREAMS)
def test_space_saving_bounds_every_count_and_keeps_every_heavy_key(
    capacity: int, stream: list[str]
) -> None:
    sketch = SpaceSaving(capacity)
    for key in stream:
        sketch.offer(key)
    true = Counter(stream)
    n = len(stream)
    assert len(sketch) <= capacity  # bounded memory, whatever the stream
    assert sketch.total == n
    for top in sketch.top(capacity):
        assert top.guaranteed <= true[top.key] <= top.count  # never under, error bounded
        assert top.error <= n / capacity
    monitored = set(sketch.counts)
    for key, count in true.items():
        if count > n / capacity:
            assert key in monitored  # every heavy hitter is found


@given(
    capacity=st.integers(1, 16),
    stream=st.lists(
        st.tuples(st.integers(0, 40).map(lambda i: f"k{i}"), st.integers(1, 5)), max_size=400
    ),
)
def test_space_saving_keeps_its_smallest_counters_without_scanning_each_time(
    capacity: int, stream: list[tuple[str, int]]
) -> None:
    sketch = SpaceSaving(capacity)
    true: Counter[str] = Counter()
    for key, weight in stream:
        sketch.offer(key, weight)
        true[key] += weight
        counts = sketch.counts
        # counters hold exactly what was offered; every error is below every count
        assert sum(counts.values()) == sketch.total == true.total()
        assert set(sketch.errors) == set(counts)
        assert all(0 <= sketch.errors[k] < counts[k] for k in counts)
        if sketch._low:  # the keys it would replace are the smallest, all of them
            smallest = min(counts.values())
            assert sketch._min == smallest
            assert set(sketch._low) == {k for k, c in counts.items() if c == smallest}
        if len(counts) == capacity:
            assert sketch.floor == min(counts.values())
    # amortized O(1): one scan of the counters per rise of the smallest count, at most
    # total / capacity of them
    assert sketch.scans <= sketch.total / capacity + 1
    # weighted, the guarantee holds too: never under the true count, error bounded
    for top in sketch.top(capacity):
        assert top.guaranteed <= true[top.key] <= top.count
        assert top.error <= sketch.total / capacity


def test_many_distinct_keys_cost_one_scan_per_capacity_keys() -> None:
    sketch = SpaceSaving(64)
    for i in range(64_000):  # 1,000 keys round-robin: every offer is a new key
        sketch.offer(f"k{i % 1000}")
    assert sketch.scans <= 64_000 / 64 + 1
    assert sketch.floor == 1000
    assert len(sketch) == 64


@given(
    capacity=st.integers(2, 8),
    events=st.lists(
        st.tuples(st.floats(0, 20, allow_nan=False), st.integers(0, 12).map(str)), max_size=200
    ),
)
def test_the_sliding_window_bounds_counts_over_the_slices_it_keeps(
    capacity: int, events: list[tuple[float, str]]
) -> None:
    window = SlidingTopKeys(window=60.0, buckets=6, capacity=capacity)
    now = 1000.0
    seen: list[tuple[float, str]] = []
    for dt, key in events:
        now += dt
        window.offer(key, now)
        seen.append((now, key))
    assert len(window) <= 6 * capacity
    if not seen:
        assert window.top(5, now) == []
        return
    # what the window covers: the slices kept, each `span` long, the newest started at _start
    oldest = window._start - (len(window._slices) - 1) * window.span
    true = Counter(key for at, key in seen if at >= oldest - 1e-9)
    for top in window.top(capacity, now):
        assert top.guaranteed <= true[top.key] <= top.count


def test_old_slices_leave_the_window() -> None:
    clock = FakeClock(1000.0)
    noisy = NoisyNeighbours(window=60, buckets=6, capacity=4, top=2, clock=clock)
    for _ in range(50):
        noisy.record("burst", "ip:a", admitted=False)
    noisy.record("burst", "ip:b", admitted=False)
    assert [t.key for t in noisy.heaviest("burst", False)] == ["ip:a", "ip:b"]
    clock.advance(61)
    assert noisy.heaviest("burst", False) == []


async def test_the_middleware_records_decisions_and_the_view_shows_hashed_ids() -> None:
    clock = FakeClock(1000.0)
    noisy = NoisyNeighbours(top=3, clock=clock)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limits = RateLimitMiddleware(
        app, [Limit("burst", "5/minute", key=header("x-user"))], clock=clock, top_keys=noisy
    )
    view = TopKeysView(limits, noisy, limits.key_hash, token="s3cret-token", expose="token")
    transport = httpx.ASGITransport(app=view)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for user, count in (("mallory", 20), ("alice", 3), ("bob", 1)):
            for _ in range(count):
                await client.get("/", headers={"x-user": user})
        denied = await client.get("/health/ratelimit")
        assert denied.status_code == 403
        answer = await client.get(
            "/health/ratelimit", headers={"authorization": "Bearer s3cret-token"}
        )
    assert answer.status_code == 200
    body = answer.json()
    burst = body["policies"]["burst"]
    mallory = limits.key_hash("header:x-user:mallory")
    assert burst["refused"] == [{"id": mallory, "count": 15, "error": 0}]
    assert burst["admitted"][0] == {"id": mallory, "count": 5, "error": 0}
    assert "mallory" not in answer.text
    assert "header:" not in answer.text


async def test_harden_exports_the_top_keys_metric_with_hashed_ids_only() -> None:
    registry = CollectorRegistry()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    settings = HardenSettings(
        rate_limits=("burst=2/minute",),
        rate_limit_top_keys=2,
        configure_logging=False,
        health_token="health-token-1",
    )
    hardened = harden(app, settings, registry=registry)
    transport = httpx.ASGITransport(app=hardened, client=("203.0.113.9", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for _ in range(4):
            await client.get("/")
        view = await client.get(
            "/health/ratelimit", headers={"authorization": "Bearer health-token-1"}
        )
    assert view.status_code == 200
    text = generate_latest(registry).decode()
    lines = [line for line in text.splitlines() if line.startswith("buttress_ratelimit_top_keys{")]
    assert len(lines) == 2  # admitted and refused, one key each
    assert all("203.0.113.9" not in line for line in lines)
    assert any('outcome="refused"' in line and line.endswith(" 2.0") for line in lines)
