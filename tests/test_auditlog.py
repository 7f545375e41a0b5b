"""The business audit log: nothing in clear, nothing lost while the store is down, drops counted.

Real servers: a private ``redis-server`` per test (stopped and restarted by the test) and
a PostgreSQL database of this file's own (``test_q_audit``), whose connection the test
kills with ``pg_terminate_backend``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from buttress.asgi import HardenSettings
from buttress.asgi._ratelimit import Limit, RateLimitMiddleware
from buttress.asgi.keys import header
from buttress.auditlog import AuditLog, audit_event, configure_audit_log
from buttress.errors import ConfigurationError
from tests.conftest import PrivateRedis as SharedRedis
from tests.conftest import captured_logs, own_database

KEY = "audit-key-0123456789abcdef"
SUBJECT = "alice@example.com"


# ----------------------------------------------------------------------------- servers
class PrivateRedis(SharedRedis):
    """The shared private redis-server, durable (restarts keep the stream), and its stream."""

    def xlen(self, stream: str = "buttress:audit") -> int:
        client = redis.Redis(port=self.port)
        try:
            return int(client.xlen(stream))
        finally:
            client.close()

    def entries(self, stream: str = "buttress:audit") -> list[dict[bytes, bytes]]:
        client = redis.Redis(port=self.port)
        try:
            return [fields for _, fields in client.xrange(stream)]
        finally:
            client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, durable=True)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def audit_db() -> Iterator[str]:
    with own_database("q_audit") as url:
        yield url


@contextlib.contextmanager
def audit_log(**options: Any) -> Iterator[AuditLog]:
    log = AuditLog(key=KEY, retry_max=0.2, **options)
    previous = configure_audit_log(log)
    try:
        yield log
    finally:
        configure_audit_log(previous)
        log.close(2.0)


def _rows(url: str, table: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [json.dumps(row[0]) for row in conn.execute(f"SELECT row_to_json(t) FROM {table} t")]


# ----------------------------------------------------------------------------- tests
def test_a_durable_log_refuses_to_start_without_a_key() -> None:
    with pytest.raises(ConfigurationError, match="needs a key"):
        AuditLog(url="redis://127.0.0.1:6379/6")
    with pytest.raises(ConfigurationError, match="audit_key"):
        HardenSettings(audit_url="redis://127.0.0.1:6379/6")
    with pytest.raises(ConfigurationError, match="16 bytes"):
        AuditLog(key="short")


def test_nothing_in_clear_in_the_log_or_the_stored_rows(audit_db: str) -> None:
    with captured_logs(json=True) as stream, audit_log(url=audit_db, name="audit_clear") as log:
        record = audit_event("user.sign_in", subject=SUBJECT, method="password")
        audit_event("data.export", subject=SUBJECT, rows=2500)
        assert log.flush(10.0)
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    signed = [line for line in lines if line.get("event") == "user.sign_in"]
    assert signed
    assert signed[0]["audit"] is True
    assert signed[0]["subject"] == record.subject == log.hash_subject(SUBJECT)
    rows = _rows(audit_db, "audit_clear")
    assert len(rows) == 2
    assert SUBJECT not in stream.getvalue()
    assert "alice" not in stream.getvalue()
    assert all("alice" not in row for row in rows)
    assert sum(record.subject in row for row in rows) == 2
    assert any('"rows": 2500' in row for row in rows)


def test_nothing_lost_when_the_postgres_connection_is_killed(audit_db: str) -> None:
    with audit_log(url=audit_db, name="audit_killed") as log:
        audit_event("permission.change", subject="user:1", role="admin")
        assert log.flush(10.0)
        pid = log._sink._conn.info.backend_pid  # type: ignore[union-attr]
        with psycopg.connect(audit_db, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for i in range(20):
            audit_event("data.deletion", subject=f"user:{i}", table="invoices")
        assert log.flush(10.0)
        assert log.failures >= 1  # the first write met the dead connection
        assert log.dropped == 0
    assert len(_rows(audit_db, "audit_killed")) == 21


def test_nothing_lost_while_a_redis_store_is_down(private_redis: PrivateRedis) -> None:
    private_redis.start()
    with audit_log(url=private_redis.url) as log:
        audit_event("user.sign_in", subject=SUBJECT)
        assert log.flush(10.0)
        private_redis.stop()
        for i in range(30):
            audit_event("quota.breach", subject=f"tenant:{i}", policy="daily")
        assert not log.flush(0.5)  # the store is down: they wait
        assert log.pending == 30
        private_redis.start()
        assert log.flush(15.0)
        assert (log.written, log.dropped) == (31, 0)
    assert private_redis.xlen() == 31
    assert all(
        b"alice" not in value for entry in private_redis.entries() for value in entry.values()
    )


def test_a_full_buffer_drops_and_counts(private_redis: PrivateRedis) -> None:
    with audit_log(url=private_redis.url, buffer=5) as log:  # nothing listens yet
        for i in range(8):
            audit_event("data.export", subject=f"user:{i}")
        assert (log.pending, log.dropped) == (5, 3)
        private_redis.start()
        assert log.flush(15.0)
        assert log.written == 5
    assert private_redis.xlen() == 5


async def test_rate_limit_breaches_are_audited_once_per_breach_with_hashed_subjects() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limits = RateLimitMiddleware(app, [Limit("login", "1/minute", key=header("x-user"))])
    with captured_logs(json=True) as stream, audit_log():
        transport = httpx.ASGITransport(app=limits)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            codes = [
                (await client.get("/", headers={"x-user": SUBJECT})).status_code for _ in range(4)
            ]
    assert codes == [200, 429, 429, 429]
    breaches = [
        json.loads(line) for line in stream.getvalue().splitlines() if '"ratelimit.breach"' in line
    ]
    assert len(breaches) == 1  # one event per breach, not per refused request
    assert breaches[0]["policy"] == "login"
    assert breaches[0]["audit"] is True
    assert "alice" not in stream.getvalue()


async def test_an_idempotency_key_reused_with_another_payload_is_audited_hashed() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from buttress.asgi.middleware import IdempotencyMiddleware
    from buttress.stores import MemoryStore

    async def create(request: Request) -> JSONResponse:
        return JSONResponse(await request.json(), status_code=201)

    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/orders", create, methods=["POST"])]), store=MemoryStore()
    )
    key = {"Idempotency-Key": f'"{SUBJECT}-order-1"'}
    with captured_logs(json=True) as stream, audit_log():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = await client.post("/orders", json={"sku": "a"}, headers=key)
            other = await client.post("/orders", json={"sku": "b"}, headers=key)
    assert (first.status_code, other.status_code) == (201, 422)
    events = [
        json.loads(line)
        for line in stream.getvalue().splitlines()
        if '"idempotency.conflict"' in line
    ]
    assert len(events) == 1
    assert events[0]["reason"] == "key_reused"
    assert events[0]["path"] == "/orders"
    assert events[0]["audit"] is True
    assert "alice" not in stream.getvalue()  # the key (and who is in it) only hashed
