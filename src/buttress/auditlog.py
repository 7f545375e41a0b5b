"""A business audit log: `audit_event` for sign-ins, permission changes, breaches, exports.

Each event is one record: its ``code`` (``"user.sign_in"``, ``"quota.breach"``), the
subject's id *hashed* (HMAC-SHA256 with the audit key, 128 bits: the same subject always
gives the same id, which cannot be reversed without the key), the request id and trace id
of the request being served, the time, and your fields. It is written at once as a
structured log line (structlog once configured, else the standard library's logging;
logger ``buttress.audit``, ``audit=true``) and, when a
durable store is configured, appended to it by a background writer:

* ``redis://host:port/db``: a Redis stream (``XADD``, trimmed by ``MINID`` to the
  retention), one script per batch that skips the event ids it added in the last hour
  (a sorted set beside the stream), so a batch retried after an ambiguous failure (a
  reply lost) is not stored twice;
* ``postgresql://...``: a table (``INSERT`` only; rows older than the retention are
  deleted by the writer, at most once a minute).

While the store is down the records wait in a bounded buffer (default 10,000) and are
written when it answers again, oldest first; when the buffer is full, new records are
dropped and counted (`AuditLog.dropped`, logged), and so are records that come after
`AuditLog.close`. One record the store refuses never holds back the others: PostgreSQL
gets NUL characters and lone surrogates replaced by U+FFFD (its text and jsonb cannot
hold them), and a record it still rejects (a NaN, say) is set aside, counted in
``dropped`` and logged by event id (its log line has it whole). A durable store needs a key
(``BUTTRESS_AUDIT_KEY``, 16+ bytes): hashes that change at each restart would make the
stored log useless, so `AuditLog` refuses to start without one. Without a store, a
missing key is replaced by a random one per process (log lines still never carry a
subject in clear).

Configuration: ``BUTTRESS_AUDIT_URL``, ``BUTTRESS_AUDIT_KEY``, ``BUTTRESS_AUDIT_RETENTION``
(seconds, default 90 days), also `buttress.asgi.HardenSettings` fields (``audit_url``,
``audit_key``, ``audit_retention``); `harden` configures the log from them at start-up.

Example::

    from buttress.auditlog import audit_event

    audit_event("user.sign_in", subject=user.email, method="password")
    audit_event("data.export", subject=user.id, rows=2_500, table="invoices")
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from buttress._urls import masked
from buttress.errors import ConfigurationError

__all__ = [
    "AuditLog",
    "AuditRecord",
    "audit_event",
    "configure_audit_log",
    "get_audit_log",
]

_log = logging.getLogger("buttress")
_DEFAULT_RETENTION: Final = 90 * 86400.0
_PRUNE_EVERY: Final = 60.0  # seconds between retention deletes (PostgreSQL)
# set by the log itself; "event" and "audit" are also the log line's own keys (structlog)
_RESERVED: Final = frozenset(
    {"code", "subject", "request_id", "trace_id", "at", "event_id", "event", "audit"}
)
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit event as logged and stored (``subject`` is the HMAC, never the raw id)."""

    event_id: str
    code: str
    at: float  # Unix time, seconds
    subject: str | None
    request_id: str | None
    trace_id: str | None
    fields: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The record as one flat JSON-ready mapping (the log line's and the stream's)."""
        return {
            "event_id": self.event_id,
            "code": self.code,
            "at": self.at,
            "subject": self.subject,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            **self.fields,
        }


class _Sink(Protocol):
    def write(self, records: list[AuditRecord]) -> list[tuple[AuditRecord, str]]:
        """Store ``records``; raise when the store is down.

        Returns the records it rejected for what they hold (never retried), each with why.
        """
        ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- sinks
# KEYS: the stream, its set of recent event ids; ARGV: the stream's MINID, now (ms), the
# oldest id time kept (ms), then (event id, code, record) per record. Atomic: a batch whose
# reply was lost ran whole, and its retry finds every id already there.
_XADD_ONCE: Final = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
local added = 0
for i = 4, #ARGV, 3 do
  if redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[1], '*',
               'code', ARGV[i + 1], 'record', ARGV[i + 2])
    added = added + 1
  end
end
return added
"""
_SEEN_FOR: Final = 3600.0  # seconds an event id is remembered against a retried batch


class _RedisStreamSink:
    """Appends to a Redis stream, each event id once; ``MINID`` trims past the retention."""

    def __init__(self, url: str, retention: float, stream: str) -> None:
        import redis  # noqa: PLC0415 - an optional driver

        self.client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.retention = retention
        self.stream = stream
        self._add = self.client.register_script(_XADD_ONCE)

    def write(self, records: list[AuditRecord]) -> list[tuple[AuditRecord, str]]:
        now = time.time()
        args: list[str | int] = [
            int((now - self.retention) * 1000),
            int(now * 1000),
            int((now - _SEEN_FOR) * 1000),
        ]
        for record in records:
            payload = json.dumps(record.as_dict(), default=str, separators=(",", ":"))
            args += [record.event_id, record.code, payload]
        self._add(keys=[self.stream, f"{self.stream}:ids"], args=args)
        return []

    def close(self) -> None:
        self.client.close()


_PG_CREATE: Final = """
CREATE TABLE IF NOT EXISTS {table} (
    id bigserial PRIMARY KEY,
    event_id text NOT NULL UNIQUE,
    at timestamptz NOT NULL,
    code text NOT NULL,
    subject text,
    request_id text,
    trace_id text,
    fields jsonb NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS {index} ON {table} (at);
"""
_PG_INSERT: Final = (
    "INSERT INTO {table} (event_id, at, code, subject, request_id, trace_id, fields) "
    "VALUES (%s, to_timestamp(%s), %s, %s, %s, %s, %s::jsonb) ON CONFLICT (event_id) DO NOTHING"
)
_PG_PRUNE: Final = "DELETE FROM {table} WHERE at < now() - make_interval(secs => %s)"


def _text(value: str) -> str:
    """``value`` as PostgreSQL can hold it: NUL and lone surrogates become U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return _SURROGATE.sub("\ufffd", value)


def _clean(value: Any) -> Any:
    """A JSON-ready value whose strings PostgreSQL's jsonb can hold (see `_text`)."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, Mapping):
        return {_clean(k) if isinstance(k, str) else k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _pg_row(r: AuditRecord) -> tuple[Any, ...]:
    fields = json.dumps(_clean(dict(r.fields)), default=lambda o: _text(str(o)))
    return (
        r.event_id,
        r.at,
        _text(r.code),
        r.subject,
        None if r.request_id is None else _text(r.request_id),
        None if r.trace_id is None else _text(r.trace_id),
        fields,
    )


def _why(exc: BaseException) -> str:
    """What a store said about a record, first line only (later ones quote the data)."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


class _PostgresSink:
    """Appends rows to a table (created when missing); deletes rows past the retention."""

    def __init__(self, url: str, retention: float, table: str) -> None:
        import psycopg  # noqa: PLC0415 - an optional driver
        from psycopg import sql  # noqa: PLC0415

        self._psycopg = psycopg
        names = {"table": sql.Identifier(table), "index": sql.Identifier(f"{table}_at")}
        self._create = sql.SQL(_PG_CREATE).format(**names)
        self._insert = sql.SQL(_PG_INSERT).format(**names)
        self._prune = sql.SQL(_PG_PRUNE).format(**names)
        self.url = url
        self.retention = retention
        self.table = table
        self._conn: Any = None
        self._pruned = 0.0

    def _connection(self) -> Any:
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=2)
            conn.execute(self._create)
            self._conn = conn
        return conn

    def write(self, records: list[AuditRecord]) -> list[tuple[AuditRecord, str]]:
        rejected: list[tuple[AuditRecord, str]] = []
        try:
            conn = self._connection()
            rows = [_pg_row(r) for r in records]
            try:
                with conn.cursor() as cur:
                    cur.executemany(self._insert, rows)
            except self._psycopg.DataError:
                # one record the table refuses (what it holds, not the store being down)
                # must not hold back the others: one at a time, and set those aside
                if len(records) == 1:
                    raise
                for record, row in zip(records, rows, strict=True):
                    try:
                        with conn.cursor() as cur:
                            cur.execute(self._insert, row)
                    except self._psycopg.DataError as exc:
                        rejected.append((record, _why(exc)))
            now = time.monotonic()
            if now - self._pruned >= _PRUNE_EVERY:
                conn.execute(self._prune, (self.retention,))
                self._pruned = now
        except self._psycopg.DataError as exc:
            if len(records) == 1:
                return [(records[0], _why(exc))]
            self.close()
            raise
        except Exception:
            self.close()  # a broken connection: the next attempt opens a new one
            raise
        return rejected

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def _sink(url: str, retention: float, name: str) -> _Sink:
    scheme = urlsplit(url).scheme.lower()
    if scheme in {"redis", "rediss", "unix"}:
        return _RedisStreamSink(url, retention, name.replace("_", ":"))
    if scheme in {"postgresql", "postgres"}:
        return _PostgresSink(url, retention, name)
    raise ConfigurationError(
        f"AuditLog(url={masked(url)!r}): a durable audit store is redis://... (a stream) "
        "or postgresql://... (a table)"
    )


# ----------------------------------------------------------------------------- the log
class AuditLog:
    """Audit events: hashed subjects, request context, log lines and a durable store.

    Args:
        url: the durable store (``redis://...`` or ``postgresql://...``), or None for log
            lines only.
        key: the HMAC key for subject ids (16+ bytes); required with ``url``.
        retention: seconds records are kept in the store (default 90 days).
        buffer: records held at most while the store is down (default 10,000).
        batch: records written per round trip at most (default 200).
        name: the stream (``buttress:audit``) or table (``buttress_audit``) name.
        logger: the structlog/logging logger name of the log lines.
        retry_max: seconds between attempts at most while the store is down (the wait
            doubles from 0.1 s up to this).

    Example::

        log = AuditLog(url="postgresql://app@db/app", key=os.environ["AUDIT_KEY"])
        log.event("permission.grant", subject="user:42", role="admin", actor_id="ops-7")
        log.flush(5.0)        # at shutdown: wait until what is buffered is stored
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        key: bytes | str | None = None,
        retention: float = _DEFAULT_RETENTION,
        buffer: int = 10_000,
        batch: int = 200,
        name: str = "buttress_audit",
        logger: str = "buttress.audit",
        retry_max: float = 5.0,
    ) -> None:
        owner = "AuditLog"
        if key is None or key in ("", b""):
            if url is not None:
                raise ConfigurationError(
                    f"{owner}(url={masked(url)!r}): a durable audit log needs a key "
                    "(key=... or BUTTRESS_AUDIT_KEY, 16+ bytes), or the subject ids it "
                    "stores change at every restart"
                )
            key = secrets.token_bytes(32)
        raw = key.encode("utf-8") if isinstance(key, str) else key
        if not isinstance(raw, bytes) or len(raw) < 16:
            raise ConfigurationError(f"{owner}(key=...): at least 16 bytes of secret")
        self._key = raw
        if isinstance(retention, bool) or not isinstance(retention, int | float) or retention <= 0:
            raise ConfigurationError(f"{owner}(retention={retention!r}): seconds > 0")
        for option, value in (("buffer", buffer), ("batch", batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{owner}({option}={value!r}): an integer >= 1")
        if not name.replace("_", "").isalnum() or not name[:1].isalpha() or len(name) > 48:
            raise ConfigurationError(f"{owner}(name={name!r}): letters, digits and '_'")
        if isinstance(retry_max, bool) or not isinstance(retry_max, int | float) or retry_max <= 0:
            raise ConfigurationError(f"{owner}(retry_max={retry_max!r}): seconds > 0")
        self.retry_max = float(retry_max)
        self.url = url
        self.retention = float(retention)
        self.buffer = buffer
        self.batch = batch
        self.logger = logger
        self.dropped = 0
        self.written = 0
        self.failures = 0
        self._late = 0  # records that came after close (counted in dropped too)
        self._pending: deque[AuditRecord] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False
        self._sink: _Sink | None = None if url is None else _sink(url, self.retention, name)
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = "log lines only" if self.url is None else masked(self.url)
        return f"AuditLog({where}, pending={len(self._pending)}, dropped={self.dropped})"

    # ------------------------------------------------------------ events
    def hash_subject(self, subject: object) -> str:
        """The id stored for ``subject``: HMAC-SHA256 with the audit key, 32 hex digits.

        Example::

            log.hash_subject("alice@example.com")   # find her events without storing her
        """
        text = str(subject).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, text, hashlib.sha256).hexdigest()[:32]

    def event(self, code: str, subject: object = None, **fields: Any) -> AuditRecord:
        """Record one event: logged now, stored by the writer (see the module doc)."""
        if not isinstance(code, str) or not code:
            raise ValueError(
                f"audit_event(code={code!r}): a non-empty string such as 'user.sign_in'"
            )
        clash = _RESERVED.intersection(fields)
        if clash:
            raise ValueError(f"audit_event(...): {sorted(clash)} are set by the audit log itself")
        request_id, trace_id = _current_ids()
        record = AuditRecord(
            event_id=uuid.uuid4().hex,
            code=code,
            at=time.time(),
            subject=None if subject is None else self.hash_subject(subject),
            request_id=request_id,
            trace_id=trace_id,
            fields=fields,
        )
        self._log_line(record)
        if self._sink is not None:
            self._enqueue(record)
        return record

    def _log_line(self, record: AuditRecord) -> None:
        data = record.as_dict()
        data.pop("at")
        code = data.pop("code")
        if _structlog_configured():
            import structlog  # noqa: PLC0415 - there: just checked

            structlog.get_logger(self.logger).info(code, audit=True, **data)
            return
        # structlog left to its defaults would print to stdout: the standard library's
        # logging decides instead (configure_logging routes it to the same JSON lines)
        detail = " ".join(f"{k}={v}" for k, v in data.items() if v is not None)
        logging.getLogger(self.logger).info(
            "%s audit=true %s", code, detail, extra={"buttress_audit": {"code": code, **data}}
        )

    def _enqueue(self, record: AuditRecord) -> None:
        with self._cond:
            if self._closed:  # nothing will write it: counted, and said once
                self.dropped += 1
                late = True
            elif len(self._pending) >= self.buffer:
                self.dropped += 1
                dropped = self.dropped
                late = False
            else:
                dropped = 0
                late = False
                self._pending.append(record)
                self._cond.notify()
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="buttress-audit-writer", daemon=True
                )
                self._thread.start()
        if late:
            self._late += 1
            if self._late == 1 or self._late % 1000 == 0:
                _log.error(
                    "audit log: %d records came after it was closed and were dropped (only "
                    "their log lines remain); close the audit log after the last event",
                    self._late,
                )
            return
        if dropped == 1 or (dropped and dropped % 1000 == 0):
            _log.error(
                "audit log: the store has not answered and %d records wait; %d dropped so "
                "far (raise buffer=, or restore %s)",
                self.buffer,
                dropped,
                masked(self.url or ""),
            )

    # ------------------------------------------------------------ the writer
    def _run(self) -> None:
        delay = min(0.1, self.retry_max)
        sink = self._sink
        assert sink is not None  # noqa: S101 - started only with a sink
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait(5.0)
                if not self._pending:
                    return  # closed and nothing left
                chunk = [self._pending[i] for i in range(min(self.batch, len(self._pending)))]
                self._busy = True
            try:
                rejected = sink.write(chunk)
            except Exception as exc:
                with self._cond:
                    self._busy = False
                    self.failures += 1
                    closed = self._closed
                    if self.failures == 1 or self.failures % 100 == 0:
                        _log.warning(
                            "audit log: the store failed (%s: %s); %d records wait, retrying",
                            type(exc).__name__,
                            exc,
                            len(self._pending),
                        )
                    self._cond.wait(delay)  # woken early by close()
                if closed:
                    return
                delay = min(self.retry_max, delay * 2)
                continue
            delay = min(0.1, self.retry_max)
            with self._cond:
                pending = self._pending
                for record in chunk:  # close() may have counted and cleared them meanwhile
                    if pending and pending[0] is record:
                        pending.popleft()
                self.written += len(chunk) - len(rejected)
                self.dropped += len(rejected)
                self._busy = False
                self._cond.notify_all()
            for record, why in rejected:
                _log.error(
                    "audit log: the store rejected record %s (%r): %s; dropped (its log line "
                    "has it)",
                    record.event_id,
                    record.code,
                    why,
                )

    @property
    def pending(self) -> int:
        """Records waiting for the store."""
        return len(self._pending)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every buffered record is stored; False if ``timeout`` passed first.

        Example::

            assert log.flush(2.0), "the audit store did not answer"
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Flush for up to ``timeout`` seconds, stop the writer and close the store."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:  # what the store never took is lost: count it
            self.dropped += len(self._pending)
            self._pending.clear()
        if self._sink is not None:
            self._sink.close()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AuditLog:
        """An audit log from ``BUTTRESS_AUDIT_URL``, ``_KEY`` and ``_RETENTION`` (seconds).

        Example::

            AuditLog.from_env({"BUTTRESS_AUDIT_KEY": "0123456789abcdef0123"})
        """
        env = os.environ if environ is None else environ
        retention = env.get("BUTTRESS_AUDIT_RETENTION")
        try:
            seconds = float(retention) if retention else _DEFAULT_RETENTION
        except ValueError:
            raise ConfigurationError(
                f"BUTTRESS_AUDIT_RETENTION={retention!r}: seconds, such as 7776000 (90 days)"
            ) from None
        return cls(
            url=env.get("BUTTRESS_AUDIT_URL") or None,
            key=env.get("BUTTRESS_AUDIT_KEY") or None,
            retention=seconds,
        )


def _structlog_configured() -> bool:
    try:
        import structlog  # noqa: PLC0415 - optional: plain logging without it
    except ImportError:
        return False
    return bool(structlog.is_configured())


def _current_ids() -> tuple[str | None, str | None]:
    from buttress.asgi._context import current_request_id, current_trace  # noqa: PLC0415

    trace = current_trace()
    return current_request_id(), None if trace is None else trace.trace_id


# ----------------------------------------------------------------------------- the default
_current: AuditLog | None = None
_lock = threading.Lock()


def configure_audit_log(log: AuditLog | None) -> AuditLog | None:
    """Make ``log`` the one `audit_event` writes to; returns the previous one (not closed).

    Example::

        configure_audit_log(AuditLog(url="redis://127.0.0.1:6379/0", key=AUDIT_KEY))
    """
    global _current
    with _lock:
        previous, _current = _current, log
    return previous


def get_audit_log() -> AuditLog:
    """The configured audit log (built from the environment on first use)."""
    global _current
    log = _current
    if log is None:
        with _lock:
            if _current is None:
                _current = AuditLog.from_env()
            log = _current
    return log


def audit_event(code: str, subject: object = None, **fields: Any) -> AuditRecord:
    """Record a business audit event (see the module doc): ``code``, a hashed ``subject``.

    Example::

        audit_event("permission.change", subject="user:42", role="admin", granted=True)
    """
    return get_audit_log().event(code, subject, **fields)
