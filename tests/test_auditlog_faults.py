"""The business audit log under faults: hostile values, a store that rejects or goes away.

The promises (`buttress.auditlog`, docs/observability.md "Business audit log"):

* the subject is only ever its HMAC: not in the log line, the PostgreSQL row, the Redis
  stream entry, a repr or an exception message, whatever it holds (``password=...``, a
  JWT, non-ASCII); the store's own password is never shown either;
* nothing is lost while the store is down: records wait (bounded) and are written when it
  answers again; whatever is dropped is counted, including what comes after ``close``;
* one record the store cannot take (a NUL byte, a lone surrogate, a NaN) never wedges the
  writer: the others are written, and what is set aside is counted;
* the request id and the trace id of the request being served are attached.

Real servers: PostgreSQL (a database of this file's own, ``rq_<random>``, dropped at the
end; made unreachable with ``ALLOW_CONNECTIONS false``) and Redis DB 12.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import structlog

from buttress.asgi import HardenSettings, harden
from buttress.auditlog import AuditLog, audit_event
from buttress.errors import ConfigurationError
from tests.conftest import POSTGRES_URL, PrivateRedis, captured_logs, own_database
from tests.test_auditlog import KEY, audit_log  # one set-up for both files

REDIS_DB12 = "redis://127.0.0.1:6379/12"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsInJvbGUiOiJhZG1pbiJ9."
    "c2lnbmF0dXJlLXNlY3JldC1wYXJ0"
)
SUBJECTS = [
    "password=hunter2&user=alice",
    JWT,
    "Zoë Åström <zoë@exämple.org>",
    "ユーザー:秘密",
]
# pieces of the subjects that must never be seen anywhere
CLEAR = ["hunter2", "alice", "eyJhbGci", "c2lnbmF0dXJl", "Zoë", "Åström", "ユーザー", "秘密"]


@pytest.fixture(scope="module")
def audit_db() -> Iterator[str]:
    with own_database("rq") as url:
        yield url


def _rows(url: str, table: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute(f"SELECT row_to_json(t) FROM {table} t ORDER BY id")]


def _no_clear(text: str) -> None:
    for piece in CLEAR:
        assert piece not in text, f"{piece!r} in clear: {text[:500]}"


# ----------------------------------------------------------------------------- in clear
def test_hostile_subjects_are_hashed_in_every_sink(audit_db: str) -> None:
    """Log line, PostgreSQL row, Redis entry, repr and exception messages."""
    stream_name = f"rq_{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_DB12)
    try:
        with (
            captured_logs(json=True) as stream,
            audit_log(url=audit_db, name="audit_hostile") as pg_log,
        ):
            records = [pg_log.event("user.sign_in", subject=s, method="sso") for s in SUBJECTS]
            assert pg_log.flush(10.0)
            with audit_log(url=REDIS_DB12, name=stream_name) as redis_log:
                for s in SUBJECTS:
                    redis_log.event("user.sign_in", subject=s)
                assert redis_log.flush(10.0)
                shown = repr(redis_log) + repr(pg_log) + "".join(map(repr, records))
            errors = []
            for call in (
                lambda: pg_log.event("", subject=SUBJECTS[0]),
                lambda: pg_log.event("x", subject=SUBJECTS[1], request_id="again"),
            ):
                with pytest.raises(ValueError) as caught:
                    call()
                errors.append(str(caught.value))
        rows = _rows(audit_db, "audit_hostile")
        entries = client.xrange(stream_name.replace("_", ":"))
    finally:
        with contextlib.suppress(redis.RedisError):
            stream_key = stream_name.replace("_", ":")
            client.delete(stream_key, f"{stream_key}:ids")
        client.close()
    assert len(rows) == len(entries) == len(SUBJECTS)
    assert [row["subject"] for row in rows] == [pg_log.hash_subject(s) for s in SUBJECTS]
    _no_clear(stream.getvalue())
    _no_clear(json.dumps(rows, ensure_ascii=False))
    _no_clear(repr(entries) + b"".join(v for _, e in entries for v in e.values()).decode())
    _no_clear(shown)
    _no_clear(" ".join(errors))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app@db.internal:5432/audit?password=s3cr3t-pw&sslmode=require",
        "postgresql://app:s3cr3t-pw@db.internal:5432/audit",
        "rediss://default:s3cr3t-pw@cache.internal:6380/0",
        "host=db.internal dbname=audit password=s3cr3t-pw",  # a libpq DSN, not a URL
        "mysql://app:s3cr3t-pw@db.internal/audit",  # not a store the log takes
    ],
)
def test_the_store_password_is_never_shown(url: str) -> None:
    shown = []
    try:
        shown.append(repr(AuditLog(url=url, key=KEY)))
    except ConfigurationError as exc:
        shown.append(str(exc))
    with pytest.raises(ConfigurationError) as caught:
        AuditLog(url=url)  # no key
    shown.append(str(caught.value))
    assert all("s3cr3t" not in text for text in shown), shown


# ----------------------------------------------------------------------------- poison
def test_a_record_the_table_cannot_take_never_wedges_the_writer(
    audit_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    with audit_log(url=audit_db, name="audit_poison", buffer=50) as log:
        log.event("ok.first", subject="user:1")
        log.event("note.nul", subject="user:2", note="before\x00after")  # jsonb refuses \u0000
        log.event("note.surrogate", subject="user:3", note="half \udce9 a pair")
        log.event("code\x00nul", subject="user:4")  # a text column refuses NUL
        log.event("score.nan", subject="user:5", score=float("nan"))  # not JSON at all
        log.event("ok.last", subject="user:6")
        with caplog.at_level(logging.ERROR, logger="buttress"):
            assert log.flush(10.0), f"the writer is wedged: {log.pending} records wait"
        rows = _rows(audit_db, "audit_poison")
        codes = [row["code"] for row in rows]
        # the NUL and the surrogate are replaced; only the NaN record is set aside, counted
        assert codes == ["ok.first", "note.nul", "note.surrogate", "code\ufffdnul", "ok.last"]
        assert rows[1]["fields"] == {"note": "before\ufffdafter"}
        assert (log.written, log.dropped) == (5, 1)
        assert "score.nan" in caplog.text  # which record, never its content
        for i in range(20):  # the writer goes on
            log.event("after", subject=f"user:{i}")
        assert log.flush(10.0)
        assert len(_rows(audit_db, "audit_poison")) == 25


# ----------------------------------------------------------------------------- lost
def test_events_after_close_are_counted_as_dropped(audit_db: str) -> None:
    log = AuditLog(url=audit_db, key=KEY, name="audit_closed", retry_max=0.2)
    log.event("before.close", subject="user:1")
    log.close(10.0)
    assert (log.written, log.dropped) == (1, 0)
    log.event("after.close", subject="user:2")  # a background task still auditing
    assert log.pending == 0
    assert log.dropped == 1
    assert len(_rows(audit_db, "audit_closed")) == 1


def test_nothing_lost_while_postgres_refuses_connections(audit_db: str) -> None:
    name = audit_db.rsplit("/", 1)[1]
    with audit_log(url=audit_db, name="audit_down") as log:
        log.event("before", subject="user:0")
        assert log.flush(10.0)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        try:
            for i in range(30):
                log.event("during", subject=f"user:{i}")
            assert not log.flush(0.5)  # the store is down: the records wait
            assert (log.pending, log.dropped) == (30, 0)
        finally:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        assert log.flush(15.0)
        assert (log.written, log.dropped) == (31, 0)
        assert log.failures >= 1
    rows = _rows(audit_db, "audit_down")
    assert len(rows) == len({row["event_id"] for row in rows}) == 31


def test_a_redis_batch_retried_after_a_lost_reply_is_not_stored_twice(tmp_path: Path) -> None:
    """The server runs the batch, but only after the writer gave up waiting for it."""
    server = PrivateRedis(tmp_path)
    server.start()
    admin = redis.Redis(port=server.port)
    try:
        with audit_log(url=server.url) as log:
            log.event("warm", subject="user:0")
            assert log.flush(10.0)
            # a script keeps the server busy 3 to 4 s, past the writer's 2 s reply timeout:
            # the batch waits in the socket, runs after it, and its reply finds nobody
            busy = threading.Thread(
                target=admin.eval,
                args=(
                    "local s = redis.call('TIME')[1] "
                    "while redis.call('TIME')[1] - s < 4 do end return 1",
                    0,
                ),
            )
            busy.start()
            time.sleep(0.3)  # the script is running
            for i in range(5):
                log.event("data.export", subject=f"user:{i}")
            assert log.flush(20.0)
            busy.join(10.0)
            assert log.failures >= 1  # the lost reply: the batch was sent again
        entries = [json.loads(e[b"record"]) for _, e in admin.xrange("buttress:audit")]
    finally:
        admin.close()
        server.close()
    ids = [entry["event_id"] for entry in entries]
    assert len(ids) == len(set(ids)) == 6


# ----------------------------------------------------------------------------- logging
@pytest.mark.parametrize("name", ["event", "audit"])
def test_field_names_the_log_line_uses_are_refused_whatever_logging_is_set_up(
    name: str,
) -> None:
    log = AuditLog(key=KEY)
    with pytest.raises(ValueError, match="set by the audit log"):
        log.event("user.sign_in", subject="user:1", **{name: "x"})
    with captured_logs(json=True), pytest.raises(ValueError, match="set by the audit log"):
        log.event("user.sign_in", subject="user:1", **{name: "x"})  # structlog configured
    assert not structlog.is_configured()


# ----------------------------------------------------------------------------- context
async def test_the_request_and_trace_ids_are_attached() -> None:
    records = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        records.append(audit_event("data.export", subject="tenant:acme", rows=3))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    hardened = harden(app, HardenSettings(configure_logging=False))
    with audit_log():
        transport = httpx.ASGITransport(app=hardened)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answer = await client.get(
                "/export", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
            )
    assert answer.status_code == 200
    [record] = records
    assert record.request_id == answer.headers["x-request-id"]
    assert record.trace_id == trace_id
