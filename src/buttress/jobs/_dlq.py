"""The dead-letter store: jobs that will not run again by themselves, kept to read and replay.

A new capability of `buttress.jobs` (not of `buttress.stores`): `DeadLetterStore`, with
one implementation per store flavour, opened by URL with `open_dlq`:

* ``memory://`` - this process only (tests);
* ``sqlite:///path.db`` - one machine (a table ``buttress_dead_letters``);
* ``redis://host:port/db`` - a hash of records plus a sorted set by failure time;
* ``postgresql://...`` - a table ``buttress_dead_letters`` (created when missing).

Records are JSON (`DeadLetter.to_json`); every operation is one statement or one
MULTI/EXEC, and driver errors become `BackendError`. Dead letters are rare: the store is
off the hot path, and its async methods run the sync ones in a thread.
"""

# ruff: noqa: S608 - SQL built from a constant table name, never from input
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from buttress.errors import BackendError, ConfigurationError
from buttress.stores._base import backend_errors
from buttress.stores._sqlite import retry_while_locked

__all__ = ["DeadLetter", "DeadLetterStore", "open_dlq"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A job that exhausted its retries, failed for good, ran out of time or reused a key.

    Attributes:
        id: the record's id (what ``buttress jobs dlq show ID`` takes).
        job_id: the engine's id of its last message.
        name, queue, engine: the job (task) name, its queue, the adapter.
        args, kwargs: its arguments.
        key: its idempotency key as given (None: derived from the arguments).
        attempts: executions so far.
        reason: ``non_retriable``, ``exhausted``, ``deadline`` or ``key_reused``.
        error_type, error, error_code: the last error (type name, message, taxonomy code).
        trace_id, request_id: of the request that enqueued it.
        context: its full context carrier (``traceparent``, ``x-request-id``).
        enqueued_at, failed_at: wall-clock times (seconds since the epoch).
    """

    id: str
    job_id: str
    name: str
    queue: str
    engine: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    attempts: int = 0
    reason: str = ""
    error_type: str = ""
    error: str = ""
    error_code: str = ""
    trace_id: str | None = None
    request_id: str | None = None
    context: dict[str, str] = field(default_factory=dict)
    enqueued_at: float = 0.0
    failed_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``--format json`` prints)."""
        return asdict(self)

    def to_json(self) -> str:
        """The stored form (arguments that are not JSON are kept as their ``repr``)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), default=repr)

    @classmethod
    def from_json(cls, text: str | bytes) -> DeadLetter:
        """The inverse of `to_json`; `BackendError` on a damaged record."""
        try:
            data = json.loads(text)
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError, AttributeError) as exc:
            raise BackendError(f"damaged dead-letter record: {exc}") from exc


@runtime_checkable
class DeadLetterStore(Protocol):
    """Where dead letters are kept (see the module docstring)."""

    url: str

    def put(self, record: DeadLetter) -> None:
        """Keep ``record`` (replacing one with the same id)."""
        ...

    async def aput(self, record: DeadLetter) -> None:
        """Async `put`."""
        ...

    def get(self, record_id: str) -> DeadLetter | None:
        """The record with ``record_id``, or None."""
        ...

    def list(self, *, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        """The newest ``limit`` records (of ``queue`` only, when given), newest first."""
        ...

    def remove(self, record_id: str) -> bool:
        """Delete one record; False when it was not there."""
        ...

    def purge(self, *, before: float) -> int:
        """Delete the records that failed before wall-clock time ``before``; how many."""
        ...

    def count(self) -> int:
        """How many records are kept."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class _Async:
    """The async methods, as the sync ones in a thread (dead letters are rare)."""

    def put(self, record: DeadLetter) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def aput(self, record: DeadLetter) -> None:
        """Async `put`."""
        await asyncio.to_thread(self.put, record)


class MemoryDeadLetters(_Async):
    """Dead letters in this process only (tests, and the demo without a store)."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._records: dict[str, DeadLetter] = {}
        self._lock = threading.Lock()

    def put(self, record: DeadLetter) -> None:
        """Keep ``record``."""
        with self._lock:
            self._records[record.id] = record

    def get(self, record_id: str) -> DeadLetter | None:
        """The record, or None."""
        return self._records.get(record_id)

    def list(self, *, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        """Newest first."""
        with self._lock:
            found = [r for r in self._records.values() if queue is None or r.queue == queue]
        found.sort(key=lambda r: r.failed_at, reverse=True)
        return found[:limit]

    def remove(self, record_id: str) -> bool:
        """Delete one."""
        with self._lock:
            return self._records.pop(record_id, None) is not None

    def purge(self, *, before: float) -> int:
        """Delete the old ones."""
        with self._lock:
            old = [k for k, r in self._records.items() if r.failed_at < before]
            for k in old:
                del self._records[k]
        return len(old)

    def count(self) -> int:
        """How many."""
        return len(self._records)

    def close(self) -> None:
        """Nothing to release."""


_TABLE = "buttress_dead_letters"
_CREATE = (
    f"CREATE TABLE IF NOT EXISTS {_TABLE} (id TEXT PRIMARY KEY, namespace TEXT NOT NULL, "
    "queue TEXT NOT NULL, failed_at DOUBLE PRECISION NOT NULL, record TEXT NOT NULL)"
)
_INDEX = f"CREATE INDEX IF NOT EXISTS {_TABLE}_failed ON {_TABLE} (namespace, failed_at)"


class _SQLDeadLetters(_Async):
    """The SQL both SQLite and PostgreSQL run (``?`` or ``%s`` placeholders)."""

    flavour = "sql"
    mark = "?"

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError  # pragma: no cover - each flavour sends it

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self.mark)

    def put(self, record: DeadLetter) -> None:
        """Keep ``record``."""
        self._exec(
            self._sql(
                f"INSERT INTO {_TABLE} (id, namespace, queue, failed_at, record) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET record = excluded.record"
            ),
            (record.id, self.namespace, record.queue, record.failed_at, record.to_json()),
        )

    def get(self, record_id: str) -> DeadLetter | None:
        """The record, or None."""
        rows = self._exec(
            self._sql(f"SELECT record FROM {_TABLE} WHERE id = ? AND namespace = ?"),
            (record_id, self.namespace),
        )
        return DeadLetter.from_json(rows[0][0]) if rows else None

    def list(self, *, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        """Newest first."""
        if queue is None:
            sql = f"SELECT record FROM {_TABLE} WHERE namespace = ? ORDER BY failed_at DESC LIMIT ?"
            params: tuple[Any, ...] = (self.namespace, int(limit))
        else:
            sql = (
                f"SELECT record FROM {_TABLE} WHERE namespace = ? AND queue = ? "
                "ORDER BY failed_at DESC LIMIT ?"
            )
            params = (self.namespace, queue, int(limit))
        return [DeadLetter.from_json(row[0]) for row in self._exec(self._sql(sql), params)]

    def remove(self, record_id: str) -> bool:
        """Delete one."""
        rows = self._exec(
            self._sql(f"DELETE FROM {_TABLE} WHERE id = ? AND namespace = ? RETURNING id"),
            (record_id, self.namespace),
        )
        return bool(rows)

    def purge(self, *, before: float) -> int:
        """Delete the old ones."""
        rows = self._exec(
            self._sql(f"DELETE FROM {_TABLE} WHERE namespace = ? AND failed_at < ? RETURNING id"),
            (self.namespace, before),
        )
        return len(rows)

    def count(self) -> int:
        """How many."""
        rows = self._exec(
            self._sql(f"SELECT count(*) FROM {_TABLE} WHERE namespace = ?"), (self.namespace,)
        )
        return int(rows[0][0])


class SQLiteDeadLetters(_SQLDeadLetters):
    """Dead letters in an SQLite file (every process on one machine)."""

    def __init__(self, url: str, *, namespace: str = "buttress", timeout: float = 5.0) -> None:
        super().__init__(url, namespace)
        path = urlsplit(url).path[1:]  # sqlite:///relative.db, sqlite:////absolute.db
        if not path:
            raise ConfigurationError(f"dead-letter URL {url!r}: name a file, sqlite:///path.db")
        self.path = os.path.abspath(path)
        self.timeout = timeout
        self._local = threading.local()
        with backend_errors("SQLite dead letters", "setup"):
            conn = self._conn()
            with conn:
                conn.execute(_CREATE)
                conn.execute(_INDEX)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            # switching a new file to WAL needs it to itself (SQLite's busy handler
            # does not wait for that): every worker opening the file at once races here
            try:
                retry_while_locked(
                    lambda: conn.execute("PRAGMA journal_mode=WAL"),
                    timeout=self.timeout,
                    label="SQLite dead letters",
                )
            except BaseException:
                conn.close()
                raise
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with backend_errors("SQLite dead letters", sql.split(None, 1)[0].lower()):
            return list(self._conn().execute(sql, params).fetchall())

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class PostgresDeadLetters(_SQLDeadLetters):
    """Dead letters in a PostgreSQL table (a fleet)."""

    mark = "%s"

    def __init__(self, url: str, *, namespace: str = "buttress", timeout: float = 5.0) -> None:
        super().__init__(url, namespace)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = 0
        self._exec(_CREATE)
        self._exec(_INDEX)

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed or self._pid != os.getpid():
            import psycopg  # noqa: PLC0415 - the postgres extra

            self._conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, int(self.timeout)),
                options=f"-c statement_timeout={int(self.timeout * 1000)}",
            )
            self._pid = os.getpid()
        return self._conn

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock, backend_errors("PostgreSQL dead letters", sql.split(None, 1)[0].lower()):
            try:
                cur = self._connection().execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
            except Exception:
                self._conn = None  # reconnect next time
                raise

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class RedisDeadLetters(_Async):
    """Dead letters in Redis: a hash ``{ns}:dlq:records`` and a sorted set by failure time."""

    def __init__(self, url: str, *, namespace: str = "buttress", timeout: float = 2.0) -> None:
        import redis  # noqa: PLC0415 - the redis extra

        self.url = url
        self.records = f"{namespace}:dlq:{{records}}"
        self.index = f"{namespace}:dlq:{{records}}:by_time"
        self.queues = f"{namespace}:dlq:{{records}}:queue"
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def put(self, record: DeadLetter) -> None:
        """Keep ``record`` (one MULTI/EXEC)."""
        with backend_errors("Redis dead letters", "put"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(self.records, record.id, record.to_json())
            pipe.zadd(self.index, {record.id: record.failed_at})
            pipe.hset(self.queues, record.id, record.queue)
            pipe.execute()

    def get(self, record_id: str) -> DeadLetter | None:
        """The record, or None."""
        with backend_errors("Redis dead letters", "get"):
            raw = self._redis.hget(self.records, record_id)
        return None if raw is None else DeadLetter.from_json(raw)

    def list(self, *, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        """Newest first."""
        with backend_errors("Redis dead letters", "list"):
            found: Any = self._redis.zrevrange(self.index, 0, -1 if queue else max(0, limit - 1))
            ids: list[bytes] = list(found)
            if not ids:
                return []
            if queue is not None:
                names: Any = self._redis.hmget(self.queues, ids)
                ids = [i for i, q in zip(ids, names, strict=True) if q == queue.encode()][:limit]
                if not ids:
                    return []
            raws: Any = self._redis.hmget(self.records, ids)
        return [DeadLetter.from_json(raw) for raw in raws if raw is not None]

    def remove(self, record_id: str) -> bool:
        """Delete one."""
        with backend_errors("Redis dead letters", "remove"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.hdel(self.records, record_id)
            pipe.zrem(self.index, record_id)
            pipe.hdel(self.queues, record_id)
            removed, _, _ = pipe.execute()
        return bool(removed)

    def purge(self, *, before: float) -> int:
        """Delete the old ones."""
        with backend_errors("Redis dead letters", "purge"):
            ids = self._redis.zrangebyscore(self.index, "-inf", f"({before}")
            if not ids:
                return 0
            pipe = self._redis.pipeline(transaction=True)
            pipe.hdel(self.records, *ids)
            pipe.zrem(self.index, *ids)
            pipe.hdel(self.queues, *ids)
            removed, _, _ = pipe.execute()
        return int(removed)

    def count(self) -> int:
        """How many."""
        with backend_errors("Redis dead letters", "count"):
            return int(self._redis.zcard(self.index))

    def close(self) -> None:
        """Close the connections."""
        self._redis.close()


_KINDS: Mapping[str, type] = {
    "memory": MemoryDeadLetters,
    "sqlite": SQLiteDeadLetters,
    "redis": RedisDeadLetters,
    "rediss": RedisDeadLetters,
    "unix": RedisDeadLetters,
    "postgresql": PostgresDeadLetters,
    "postgres": PostgresDeadLetters,
}


def open_dlq(url: str | None = None, *, namespace: str | None = None) -> DeadLetterStore:
    """The dead-letter store at ``url``.

    Default URL: ``$BUTTRESS_JOBS_DLQ_URL``, else ``$BUTTRESS_STORE_URL``; namespace:
    ``$BUTTRESS_STORE_NAMESPACE``, else ``buttress`` (one table or key set, many services).

    Example::

        dlq = open_dlq("redis://127.0.0.1:6379/0")
        for record in dlq.list(limit=10):
            print(record.id, record.name, record.reason, record.error)
    """
    if url is None:
        url = os.environ.get("BUTTRESS_JOBS_DLQ_URL") or os.environ.get("BUTTRESS_STORE_URL")
    if not url:
        raise ConfigurationError(
            "no dead-letter store: pass --dlq URL or set BUTTRESS_JOBS_DLQ_URL "
            "(sqlite:///path.db, redis://..., postgresql://...)"
        )
    scheme = urlsplit(url).scheme.lower()
    kind = _KINDS.get(scheme)
    if kind is None:
        known = ", ".join(f"{s}://" for s in sorted(_KINDS))
        raise ConfigurationError(f"dead-letter URL {url!r}: unknown scheme; use one of {known}")
    if kind is MemoryDeadLetters:
        store: DeadLetterStore = MemoryDeadLetters(url)
        return store
    ns = namespace or os.environ.get("BUTTRESS_STORE_NAMESPACE") or "buttress"
    try:
        store = kind(url, namespace=ns)
    except ImportError as exc:
        raise ConfigurationError(
            f"dead-letter URL {url!r} needs a driver that is not installed ({exc.name})"
        ) from exc
    return store
