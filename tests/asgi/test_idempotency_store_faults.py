"""Idempotency against real store outages, and many requests with one key at once.

tests/asgi/test_idempotency_faults.py injects a fault at every await of a keyed request
(each store call before and after it, the handler, the client's send at the start and
the body; the deadline, a cancelled task, a client gone, a store call failing) through a
proxy around the store. This file adds what a proxy cannot show:

* a real server going away: a private ``redis-server`` stopped before a request, stopped
  by the handler between the reserve and the record and started again, and frozen
  (``SIGSTOP``) so that its replies never come;
* many requests with the same key at once, on every store kind (Redis DB 12, a
  PostgreSQL database of this file's own, ``rq_<random>``, dropped at the end): the
  handler runs exactly once, a different body gets 422, retries get the first response.

Time: the stores' leases run on a `FakeClock`; the middleware's record retries sleep on a
clock that the test releases, so an outage lasts exactly as long as the test says.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from buttress.asgi._idempotency import IdempotencyMiddleware
from buttress.stores import Store, open_store
from buttress.testing import FakeClock
from tests.conftest import PrivateRedis, own_database

LEASE = 30.0
REDIS_DB12 = "redis://127.0.0.1:6379/12"


class GatedClock(FakeClock):
    """A fake clock whose sleeps wait until the test opens the gate (then advance time)."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def asleep(self, seconds: float) -> None:
        self.waiting.set()
        await self.gate.wait()
        await super().asleep(seconds)


class Orders:
    """The handler: counts its runs per key and answers 201 with the order."""

    def __init__(self, before: Any = None) -> None:
        self.runs: Counter[str] = Counter()
        self.before = before  # awaited once the handler started (a fault, a barrier)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        key = dict(scope["headers"])[b"idempotency-key"].decode()
        self.runs[key] += 1
        if self.before is not None:
            await self.before()
        payload = json.dumps({"order": sum(self.runs.values()), "body": body.decode()}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _post(client: httpx.AsyncClient, key: str, body: str = '{"sku":"x"}') -> httpx.Response:
    return await client.post(
        "/orders",
        content=body,
        headers={"idempotency-key": key, "content-type": "application/json"},
    )


def _error(response: httpx.Response) -> str | None:
    if response.headers.get("content-type") != "application/problem+json":
        return None
    value: str | None = response.json().get("idempotency_error")
    return value


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, durable=True)  # a restart keeps the keys
    server.start()
    try:
        yield server
    finally:
        server.close()


def _pid(server: PrivateRedis) -> int:
    return server.pid()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[str]:
    with own_database("rq") as url:
        yield url


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, FakeClock]]:
    clock = FakeClock(1000.0)
    kind = request.param
    options: dict[str, Any] = {"clock": clock}
    if kind == "memory":
        url = "memory://"
    else:
        options["namespace"] = f"ri{uuid.uuid4().hex[:10]}"
        if kind == "sqlite":
            url = f"sqlite:///{tmp_path / 'idem.db'}"
        elif kind == "redis":
            url = REDIS_DB12
        else:
            url = request.getfixturevalue("own_postgres")
    store = open_store(url, **options)
    try:
        yield store, clock
    finally:
        store.close()
        if kind == "redis":
            _forget(options["namespace"])


def _forget(namespace: str) -> None:
    """Delete what a test left in Redis DB 12 under its namespace."""
    import redis

    client = redis.Redis.from_url(REDIS_DB12)
    try:
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# ----------------------------------------------------------------------------- concurrency
async def test_many_requests_with_one_key_at_once_run_the_handler_once(
    any_store: tuple[Store, FakeClock],
) -> None:
    store, clock = any_store
    release = asyncio.Event()

    async def hold() -> None:
        await asyncio.wait_for(release.wait(), 10.0)

    orders = Orders(before=hold)
    app = IdempotencyMiddleware(orders, store=store, clock=clock, lease=LEASE)  # type: ignore[arg-type]
    bodies = ['{"sku":"x"}'] * 12 + ['{"sku":"y"}'] * 4  # 4 reuse the key for another body
    async with _client(app) as client:
        tasks = [asyncio.create_task(_post(client, "k-many", body)) for body in bodies]
        while not orders.runs:  # one of them holds the key
            await asyncio.sleep(0.01)
        await asyncio.wait(tasks, timeout=0.2)  # the others are answered meanwhile
        release.set()
        answers = [await t for t in tasks]
        winner = next(
            (
                i
                for i, a in enumerate(answers)
                if a.status_code == 201 and "idempotent-replayed" not in a.headers
            ),
            -1,
        )
        retries = [await _post(client, "k-many", bodies[winner]) for _ in range(3)]
        loser = '{"sku":"y"}' if bodies[winner] == '{"sku":"x"}' else '{"sku":"x"}'
        reused = await _post(client, "k-many", loser)
    assert orders.runs == {"k-many": 1}
    assert winner >= 0, [a.status_code for a in answers]
    first = answers[winner]
    assert first.status_code == 201
    assert first.json()["body"] == bodies[winner]
    for i, a in enumerate(answers):
        if i == winner:
            continue
        if bodies[i] == bodies[winner]:  # the same request: in flight (retriable), or replayed
            assert a.status_code in (201, 409), a.text
            if a.status_code == 409:
                assert _error(a) == "in_flight"
                assert a.headers["retry-after"] == "1"
            else:
                assert a.headers["idempotent-replayed"] == "true"
                assert a.content == first.content
        else:  # another body: in flight while the first runs, 422 once it completed
            assert (a.status_code, _error(a)) in {(409, "in_flight"), (422, "key_reused")}
    assert all(r.status_code == 201 and r.content == first.content for r in retries)
    assert all(r.headers["idempotent-replayed"] == "true" for r in retries)
    assert (reused.status_code, _error(reused)) == (422, "key_reused")


# ----------------------------------------------------------------------------- outages
@pytest.mark.parametrize("fail_open", [False, True])
async def test_a_store_that_is_down_fails_as_documented(
    private_redis: PrivateRedis, fail_open: bool
) -> None:
    clock = FakeClock(1000.0)
    store = open_store(private_redis.url, clock=clock, namespace="down", timeout=0.5)
    orders = Orders()
    app = IdempotencyMiddleware(orders, store=store, clock=clock, fail_open=fail_open)  # type: ignore[arg-type]
    try:
        private_redis.stop()
        async with _client(app) as client:
            answer = await _post(client, "k-down")
        if fail_open:  # run unprotected, once
            assert answer.status_code == 201
            assert orders.runs == {"k-down": 1}
        else:  # 503, retriable with the same key; nothing ran
            assert answer.status_code == 503
            assert _error(answer) == "store_unavailable"
            assert int(answer.headers["retry-after"]) >= 1
            assert orders.runs == {}
    finally:
        await store.aclose()
        store.close()


async def test_the_store_down_between_reserve_and_record_still_runs_once(
    private_redis: PrivateRedis,
) -> None:
    """The handler runs, the store dies before the record, and comes back within the lease."""
    store_clock = FakeClock(1000.0)  # leases
    clock = GatedClock(1000.0)  # the middleware's record retries wait for the test
    store = open_store(private_redis.url, clock=store_clock, namespace="mid", timeout=0.5)

    async def outage() -> None:
        await asyncio.to_thread(private_redis.stop)

    orders = Orders(before=outage)
    app = IdempotencyMiddleware(orders, store=store, clock=clock, lease=LEASE)  # type: ignore[arg-type]
    try:
        async with _client(app) as client:
            first = await _post(client, "k-mid")  # answered: the record waits for the store
            await asyncio.wait_for(clock.waiting.wait(), 10.0)
            down = await _post(client, "k-mid")  # the store is down: 503, not a second run
            await asyncio.to_thread(private_redis.start)
            held = await _post(client, "k-mid")  # back, the record not in yet: in flight
            clock.gate.set()  # the record retry runs now
            await asyncio.wait_for(app.adrain(), 10.0)
            replay = await _post(client, "k-mid")
        assert first.status_code == 201
        assert (down.status_code, _error(down)) == (503, "store_unavailable")
        assert (held.status_code, _error(held)) == (409, "in_flight")
        assert replay.status_code == 201
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.content == first.content
        assert orders.runs == {"k-mid": 1}
    finally:
        await store.aclose()
        store.close()


async def test_a_frozen_store_times_out_and_the_key_resolves_after_one_lease(
    private_redis: PrivateRedis,
) -> None:
    """SIGSTOP: the begin is sent and never answered; the documented exception applies."""
    clock = FakeClock(1000.0)
    store = open_store(private_redis.url, clock=clock, namespace="frozen", timeout=0.3)
    orders = Orders()
    app = IdempotencyMiddleware(orders, store=store, clock=clock, lease=LEASE)  # type: ignore[arg-type]
    pid = _pid(private_redis)
    try:
        async with _client(app) as client:
            await _post(client, "k-warm")  # a connection and the scripts, loaded
            os.kill(pid, signal.SIGSTOP)
            try:
                frozen = await asyncio.wait_for(_post(client, "k-frozen"), 10.0)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert (frozen.status_code, _error(frozen)) == (503, "store_unavailable")
            assert orders.runs["k-frozen"] == 0
            answers = []
            for _ in range(3):
                answer = await _post(client, "k-frozen")
                answers.append(answer)
                if answer.status_code == 201:
                    break
                # the server ran the begin whose reply was lost: held for one lease
                assert (answer.status_code, _error(answer)) == (409, "in_flight"), answer.text
                clock.advance(LEASE + 1)
        assert answers[-1].status_code == 201
        assert orders.runs["k-frozen"] == 1
    finally:
        await store.aclose()
        store.close()
