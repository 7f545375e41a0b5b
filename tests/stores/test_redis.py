"""RedisStore beyond the contract: NOSCRIPT recovery, key hygiene, errors, local denials, loops.

The contract suite (tests/stores/test_contract.py) runs against Redis too; these tests pin
what only Redis has. They talk to the real server and fail (never skip) without it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import re
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from importlib.resources import files
from typing import Any

import pytest
import redis

from buttress.errors import BackendError, ConfigurationError
from buttress.stores import BeginOutcome, Rate, RateRequest, StoredResponse, open_store
from buttress.stores._base import gcra, store_key
from buttress.stores._denials import LocalDenials
from buttress.stores._redis import RedisStore
from buttress.testing import FakeClock

pytestmark = pytest.mark.redis

RESPONSE = StoredResponse(200, ((b"content-type", b"text/plain"),), b"ok")


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make(redis_url: str, namespace: str) -> Iterator[Callable[..., RedisStore]]:
    opened: list[RedisStore] = []

    def factory(**options: Any) -> RedisStore:
        options.setdefault("namespace", namespace)
        store = RedisStore(redis_url, **options)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def count_commands(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[bytes | str]:
    """Record the name of every command the (sync or async) redis-py client sends."""
    sent: list[bytes | str] = []
    original = client.execute_command
    if asyncio.iscoroutinefunction(original):

        async def acounting(*args: Any, **kwargs: Any) -> Any:
            sent.append(args[0])
            return await original(*args, **kwargs)

        monkeypatch.setattr(client, "execute_command", acounting)
    else:

        def counting(*args: Any, **kwargs: Any) -> Any:
            sent.append(args[0])
            return original(*args, **kwargs)

        monkeypatch.setattr(client, "execute_command", counting)
    return sent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---------------------------------------------------------------- registry and options
def test_open_store_maps_redis_urls(redis_url: str, namespace: str) -> None:
    store = open_store(redis_url, namespace=namespace)
    try:
        assert isinstance(store, RedisStore)
        store.ping()
    finally:
        store.close()


@pytest.mark.parametrize(
    "options",
    [{"timeout": 0}, {"timeout": float("inf")}, {"max_connections": 0}, {"namespace": "a{b}"}],
)
def test_bad_options_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RedisStore("redis://127.0.0.1:6379/0", **options)


async def test_more_callers_than_connections_wait(make: Callable[..., RedisStore]) -> None:
    store = make(clock=FakeClock(1000.0), max_connections=2)
    rate = Rate(100, 1.0)

    async def caller() -> int:
        return sum([(await store.aacquire([RateRequest("k", rate)]))[0].allowed for _ in range(5)])

    assert sum(await asyncio.gather(*(caller() for _ in range(16)))) == 80
    assert len(store._acurrent[1]) <= 2  # connections made by the loop's client
    await store.aclose()


def test_more_threads_than_connections_wait(make: Callable[..., RedisStore]) -> None:
    store = make(clock=FakeClock(1000.0), max_connections=2)
    rate = Rate(100, 1.0)
    admitted: list[int] = []

    def caller() -> None:
        count = sum(store.acquire([RateRequest("k", rate)])[0].allowed for _ in range(5))
        admitted.append(count)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 40
    assert store._client is not None
    assert len(store._client) <= 2  # connections made


def test_a_forked_child_opens_its_own_connections(make: Callable[..., RedisStore]) -> None:
    """The parent's socket is never used by the child (nor closed under the parent)."""
    store = make(clock=FakeClock(1000.0))
    rate = Rate(10, 60.0)
    assert store.acquire([RateRequest("k", rate)])[0].remaining == 9
    pid = os.fork()
    if pid == 0:  # the child: its own connection, the same server state
        code = 0 if store.acquire([RateRequest("k", rate)])[0].remaining == 8 else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.acquire([RateRequest("k", rate)])[0].remaining == 7  # still connected


def test_redis_py_is_used_through_its_public_api() -> None:
    """No reach into redis-py's or asyncio's private attributes (issue 9)."""
    sources = files("buttress.stores")
    for name in ("_redis.py", "_redis_client.py"):
        text = (sources / name).read_text(encoding="utf-8")
        found = re.findall(r"(?:connection|conn|pool|transport|writer)\._[a-z]\w*", text)
        assert found == [], (name, found)
        for private in (
            "_available_connections",
            "_in_use_connections",
            "_writer",
            "_call_connection_lost",
            "_re_auth_token",
            "_should_reconnect",
        ):
            assert private not in text, (name, private)


# ---------------------------------------------------------------- NOSCRIPT
def test_scripts_reload_after_script_flush(
    make: Callable[..., RedisStore], raw: redis.Redis, clock: FakeClock
) -> None:
    store = make(clock=clock)
    rate = Rate(2, 60.0)
    assert store.acquire([RateRequest("k", rate)])[0].allowed
    raw.script_flush()
    assert store.acquire([RateRequest("k", rate)])[0].remaining == 0  # state kept, script back
    raw.script_flush()
    token = store.begin("i", "fp", lease=10.0).token
    raw.script_flush()
    assert store.complete("i", token, RESPONSE, ttl=10.0)
    raw.script_flush()
    store.publish("b", "me", "open", ttl=10.0)
    raw.script_flush()
    assert [r.state for r in store.reports("b")] == ["open"]


async def test_scripts_reload_after_script_flush_async(
    make: Callable[..., RedisStore], raw: redis.Redis, clock: FakeClock
) -> None:
    store = make(clock=clock)
    rate = Rate(2, 60.0)
    assert (await store.aacquire([RateRequest("k", rate)]))[0].allowed
    raw.script_flush()
    assert (await store.aacquire([RateRequest("k", rate)]))[0].remaining == 0
    raw.script_flush()
    assert (await store.abegin("i", "fp", lease=10.0)).outcome is BeginOutcome.ACQUIRED
    await store.aclose()


# ---------------------------------------------------------------- key hygiene
def test_keys_are_hashed_and_expire(
    make: Callable[..., RedisStore], raw: redis.Redis, namespace: str, clock: FakeClock
) -> None:
    store = make(clock=clock)
    secret = "api-key-SECRET-42"
    store.acquire([RateRequest(secret, Rate(10, 60.0))])
    token = store.begin(secret, "fp", lease=30.0).token
    assert store.complete(secret, token, RESPONSE, ttl=120.0)
    store.begin(secret + "-2", "fp", lease=30.0)
    store.publish(secret, "web-1", "open", ttl=15.0)
    names = sorted(raw.scan_iter(match=f"{namespace}:*", count=1000))
    assert names == sorted(
        store_key(namespace, kind, key).encode()
        for kind, key in [("rl", secret), ("idem", secret), ("idem", secret + "-2"), ("br", secret)]
    )
    ttl_ms = {
        store_key(namespace, "rl", secret): 6_000,  # one interval spent: full again in 6 s
        store_key(namespace, "idem", secret): 120_000,
        store_key(namespace, "idem", secret + "-2"): 30_000,
        store_key(namespace, "br", secret): 15_000,
    }
    for name, expected in ttl_ms.items():
        assert b"SECRET" not in name.encode()
        assert expected - 2_000 < raw.pttl(name) <= expected


def test_breaker_key_lives_as_long_as_its_latest_report(
    make: Callable[..., RedisStore], raw: redis.Redis, namespace: str, clock: FakeClock
) -> None:
    store = make(clock=clock)
    store.publish("svc", "a", "open", ttl=60.0)
    store.publish("svc", "b", "closed", ttl=5.0)  # a shorter report does not shorten the key
    assert raw.pttl(store_key(namespace, "br", "svc")) > 55_000


# ---------------------------------------------------------------- errors
def test_closed_port_is_a_quick_backend_error(make: Callable[..., RedisStore]) -> None:
    port = free_port()
    store = RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0", timeout=0.2)
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        store.acquire([RateRequest("k", Rate(1, 1.0))])
    assert time.monotonic() - started < 0.5
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "acquire" in message
    assert "hunter2" not in message
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    with pytest.raises(BackendError, match="ping"):
        store.ping()
    store.close()


async def test_closed_port_is_a_quick_backend_error_async() -> None:
    port = free_port()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    started = time.monotonic()
    with pytest.raises(BackendError, match=rf"127\.0\.0\.1:{port}.*begin") as info:
        await store.abegin("k", "fp", lease=1.0)
    assert time.monotonic() - started < 0.5
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    with pytest.raises(BackendError, match="ping"):
        await store.aping()
    await store.aclose()


def test_silent_server_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.1)
        started = time.monotonic()
        with pytest.raises(BackendError, match="publish") as info:
            store.publish("b", "me", "open", ttl=1.0)
        assert time.monotonic() - started < 0.8
        assert isinstance(info.value.__cause__, redis.TimeoutError)
        store.close()


async def test_cancellation_passes_through() -> None:
    with socket.socket() as listener:  # never answers: the call waits for its reply
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=5.0)
        task = asyncio.ensure_future(store.aacquire([RateRequest("k", Rate(5, 1.0))]))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):  # not a BackendError
            await task
        await store.aclose()


# ---------------------------------------------------------------- local denials
def test_local_denials_skip_the_round_trip(
    make: Callable[..., RedisStore], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make(clock=clock)
    store.ping()
    sent = count_commands(store._client, monkeypatch)
    rate = Rate(2, 10.0)  # one per 5 s, bursts of two
    assert [store.acquire([RateRequest("k", rate)])[0].allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]
    assert len(sent) == 3
    clock.advance(4.0)
    for _ in range(50):
        [denied] = store.acquire([RateRequest("k", rate)])
        assert not denied.allowed
        assert denied.retry_after == pytest.approx(1.0)
        assert denied.remaining == 0
    assert len(sent) == 3  # answered locally
    clock.advance(0.999)
    assert not store.acquire([RateRequest("k", rate)])[0].allowed
    assert len(sent) == 3
    clock.advance(0.001)  # the server would admit now: so does the cache (it asks)
    assert store.acquire([RateRequest("k", rate)])[0].allowed
    assert len(sent) == 4
    # a cheaper request on a cached key is decided locally too when it cannot pass
    assert not store.acquire([RateRequest("k", rate, cost=1)])[0].allowed
    assert len(sent) == 4


def test_local_denials_need_every_key_cached(
    make: Callable[..., RedisStore], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make(clock=clock)
    store.ping()
    sent = count_commands(store._client, monkeypatch)
    day = Rate(1, 86400.0)
    second = Rate(5, 1.0)
    assert store.acquire([RateRequest("day", day)])[0].allowed
    assert not store.acquire([RateRequest("day", day)])[0].allowed  # "day" now cached
    both = [RateRequest("sec", second), RateRequest("day", day)]
    first = store.acquire(both)  # "sec" unknown locally: asks, then caches both
    assert len(sent) == 3
    again = store.acquire(both)
    assert len(sent) == 3
    assert again == first  # same numbers as the server's (the clock stood still)
    assert again[0].remaining == 5  # nothing consumed from the per-second limit


def test_local_denials_can_be_turned_off(
    make: Callable[..., RedisStore], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make(clock=clock, local_denials=False)
    store.ping()
    sent = count_commands(store._client, monkeypatch)
    for _ in range(5):
        store.acquire([RateRequest("k", Rate(1, 60.0))])
    assert len(sent) == 5


def test_local_denials_with_the_server_clock(
    make: Callable[..., RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make()  # server time; the cache maps it onto the local monotonic clock
    store.ping()
    sent = count_commands(store._client, monkeypatch)
    rate = Rate(1, 0.3)
    assert store.acquire([RateRequest("k", rate)])[0].allowed
    denied = store.acquire([RateRequest("k", rate)])[0]
    assert 0.2 < denied.retry_after <= 0.3
    local = store.acquire([RateRequest("k", rate)])[0]
    assert len(sent) == 2
    assert not local.allowed
    assert local.retry_after <= denied.retry_after
    time.sleep(denied.retry_after + 0.02)  # the server admits by then, whatever the offset
    assert store.acquire([RateRequest("k", rate)])[0].allowed
    assert len(sent) == 3


async def test_local_denials_async(
    make: Callable[..., RedisStore], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make(clock=clock)
    await store.aping()
    sent = count_commands(store._acurrent[1], monkeypatch)
    rate = Rate(1, 60.0)
    assert (await store.aacquire([RateRequest("k", rate)]))[0].allowed
    for _ in range(10):
        assert (await store.aacquire([RateRequest("k", rate)]))[0].retry_after == 60.0
    assert len(sent) == 2
    await store.aclose()


def test_local_answers_match_the_model_under_load(
    make: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """Threads sharing one store, mostly over the limit: local and remote answers agree."""
    store = make(clock=clock)
    rate = Rate(3, 1.0)
    errors: list[str] = []

    def worker() -> None:
        for _ in range(40):
            [d] = store.acquire([RateRequest("hot", rate)])
            if not d.allowed and not 0 < d.retry_after <= 1 / 3 + 1e-9:
                errors.append(repr(d))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    clock.advance(1.0)
    assert sum(store.acquire([RateRequest("hot", rate)])[0].allowed for _ in range(5)) == 3


def test_local_denials_cache_is_bounded() -> None:
    cache = LocalDenials(max_entries=100)
    rate = Rate(1, 60.0)
    for i in range(1000):
        requests = [RateRequest(f"k{i}", rate)]
        cache.record(requests, [1060.0], 1000.0, 1000.0)
        assert len(cache) <= 100
    latest = [RateRequest("k999", rate)]
    [d] = cache.check(latest, 1000.0) or [None]
    assert d is not None
    assert not d.allowed
    assert d.retry_after == pytest.approx(60.0)
    assert cache.check([RateRequest("k0", rate)], 1000.0) is None  # evicted: ask the store


def test_local_denials_agree_with_gcra() -> None:
    cache = LocalDenials()
    rate = Rate(5, 1.0, burst=2)
    requests = [RateRequest("k", rate)]
    tat = 1000.4  # two intervals ahead of now=1000: the burst is spent
    cache.record(requests, [tat], 1000.0, 500.0)  # local clock 500 s behind the server's
    expected, _ = gcra([tat], 1000.1, requests)
    assert cache.check(requests, 500.1) == expected
    assert cache.check(requests, 500.2) is None  # admissible: the store decides
    assert cache.check([RateRequest("k", rate, cost=3)], 500.3) is not None  # never fits
    with pytest.raises(ConfigurationError):
        LocalDenials(max_entries=0)


def test_local_single_key_path_is_gcra() -> None:
    """The inlined one-key denial equals `gcra`, number for number, on random states."""
    rng = random.Random(11)
    for _ in range(3000):
        rate = Rate(rng.randint(1, 50), rng.choice([0.1, 1.0, 7.0, 60.0]), rng.randint(0, 20))
        req = RateRequest("k", rate, rng.randint(1, 4))
        now = 1000.0 + rng.random() * 100
        tat = now + rng.uniform(-1.0, 3.0) * rate.interval * rate.burst
        cache = LocalDenials()
        cache.record([req], [tat], now, now)
        expected, new = gcra([tat], now, [req])
        assert cache.check([req], now) == (None if new is not None else expected)


# ---------------------------------------------------------------- event loops
def test_async_client_follows_the_event_loop(make: Callable[..., RedisStore]) -> None:
    store = make(clock=FakeClock(1000.0))
    rate = Rate(3, 60.0)

    async def use() -> bool:
        await store.aping()
        return (await store.aacquire([RateRequest("k", rate)]))[0].allowed

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(use())  # loop 1, closed afterwards
        assert asyncio.run(use())  # loop 2: a new client; loop 1's sockets are closed
        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(use())  # loop 3, still open at close()
            store.close()
        finally:
            loop.close()
        assert not asyncio.run(use())  # after close: reconnects; the burst is spent
        store.close()
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_sync_and_async_share_state(make: Callable[..., RedisStore]) -> None:
    store = make(clock=FakeClock(1000.0))
    rate = Rate(2, 60.0)
    assert store.acquire([RateRequest("k", rate)])[0].allowed
    assert (await store.aacquire([RateRequest("k", rate)]))[0].remaining == 0
    await store.aclose()
    await store.aclose()  # idempotent
