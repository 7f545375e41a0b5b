"""`SQLiteStore`: every store capability in one SQLite file, shared by a machine's processes.

Each operation is a script of `buttress.stores._sql` run in its own ``BEGIN IMMEDIATE``
transaction (one writer at a time across processes), with the decision logic in Python
between the statements: the GCRA of `buttress._gcra.gcra` and the idempotency
rules of `buttress.stores._sql`. The file is in WAL mode (readers never block the
writer) with ``synchronous=NORMAL`` (a commit survives a crash of the process; a power
cut may lose the last few). Each thread gets its own connection (sqlite3 connections
must not be shared between threads); a forked child opens new ones.

Time: ``clock=None`` reads the wall clock (`time.time`) inside the transaction, because
the processes of one machine share it, while monotonic clocks are not comparable across
processes.

Waiting for the lock: every connection has ``busy_timeout=0`` and `SQLiteStore._retrying`
runs a transaction again after jittered naps of at most 2 ms, for up to ``timeout``
seconds. SQLite's own busy handler backs off to 100 ms naps, so a waiter under steady
contention polls ten times a second and can starve (four processes hammering one file
saw it give up after 2 s).

Async: a whole decision takes ~50-90 µs, while handing it to a worker thread costs
~200-300 µs (measured on a 2-CPU VM: ~15,000 decisions/s inline, ~4,000/s through
`asyncio.to_thread`), so the async methods run inline on the event loop - without
waiting: when another process holds the write lock, the attempt fails at once (nothing
was written) and the operation moves to a worker thread, which waits as above. The loop
never sleeps on a lock.

URLs (the path is taken literally, relative to the working directory at construction):

* ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db``;
* ``sqlite://``, ``sqlite://:memory:`` or ``sqlite:///:memory:`` - a private in-memory
  database, one connection shared by the store's threads under a lock (tests, demos).

The parent directory must exist (a mistyped path is an error, not a new directory); a
new file is created with mode 0600, and SQLite gives its ``-wal`` and ``-shm`` files the
same mode. Expired rows are deleted by the bounded sweep of `buttress.stores._sql`.

Example::

    from buttress.stores import Rate, RateRequest, open_store

    store = open_store("sqlite:////var/lib/myapp/buttress.db")
    [d] = store.acquire([RateRequest("user:42", Rate.parse("100/minute"))])
"""

# SQL is built from constant table and column names (and a schema name checked against
# an identifier pattern); every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import random
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from buttress._clock import Clock
from buttress._gcra import RateDecision, RateRequest, gcra
from buttress.errors import BackendError, ConfigurationError
from buttress.stores._base import (
    Begin,
    BeginOutcome,
    BreakerReport,
    StoredResponse,
    backend_errors,
    store_key,
)
from buttress.stores._sql import (
    TABLES,
    Query,
    Script,
    Sweeper,
    begin_outcome,
    check_namespace,
    check_version,
    drive,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

T = TypeVar("T")

#: The version of the tables this code reads and writes.
SCHEMA_VERSION = 1

_log = logging.getLogger("buttress.stores")
_MEMORY = {("", ""), (":memory:", ""), ("", "/:memory:")}

_DDL = [
    """CREATE TABLE IF NOT EXISTS buttress_schema (
        version INTEGER NOT NULL,
        installed_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS buttress_rate (
        key TEXT PRIMARY KEY,
        tat REAL NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS buttress_idempotency (
        key TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        token TEXT NOT NULL,
        expires_at REAL NOT NULL,
        response BLOB)""",
    """CREATE TABLE IF NOT EXISTS buttress_breaker (
        name TEXT NOT NULL,
        instance TEXT NOT NULL,
        state TEXT NOT NULL,
        published_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (name, instance)) WITHOUT ROWID""",
]
_NAP = 0.002  # the longest pause between two attempts to take the write lock
# the holder: the token, not completed, and the lease not run out
_HELD = "key = ? AND token = ? AND response IS NULL AND expires_at > ?"
_RENEW = f"UPDATE buttress_idempotency SET expires_at = ? WHERE {_HELD}"
_COMPLETE = f"UPDATE buttress_idempotency SET response = ?, expires_at = ? WHERE {_HELD}"
_RELEASE = f"DELETE FROM buttress_idempotency WHERE {_HELD}"


def _parse(url: str) -> str | None:
    """The database path of a ``sqlite:`` URL (absolute), or None for in-memory."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or parts.query or parts.fragment:
        raise ConfigurationError(
            f"SQLite URL {url!r}: expected sqlite:///relative.db, sqlite:////absolute.db "
            "or sqlite://:memory: (no query string)"
        )
    if (parts.netloc, parts.path) in _MEMORY:
        return None
    if parts.netloc or parts.path in ("", "/"):
        raise ConfigurationError(
            f"SQLite URL {url!r} names no file; a file is "
            "sqlite:///relative.db or sqlite:////absolute.db"
        )
    path = os.path.abspath(parts.path[1:])
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ConfigurationError(
            f"SQLite URL {url!r}: the directory {parent!r} does not exist (create it first)"
        )
    return path


def _busy(exc: BaseException | None) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (SQLITE_BUSY and its variants)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    if not isinstance(code, int):
        return "database is locked" in str(exc)
    return code & 0xFF == sqlite3.SQLITE_BUSY


def retry_while_locked(attempt: Callable[[], T], *, timeout: float, label: str) -> T:
    """``attempt()``, repeated while another connection holds the database's lock.

    Naps between attempts are jittered, at most 2 ms; after ``timeout`` seconds the lock
    is reported busy as a `BackendError` naming ``label``. Other errors pass through.
    Also for what SQLite's busy handler does not wait on, such as switching a new file
    to WAL (it needs the file to itself) - the one place every SQLite user in buttress
    (the store, the dead letters) waits for the lock.
    """
    deadline = 0.0
    tries = 0
    while True:
        try:
            return attempt()
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            now = time.monotonic()
            if tries == 0:
                deadline = now + timeout
            elif now >= deadline:
                raise BackendError(
                    f"{label}: the write lock stayed busy for {timeout:g} s ({exc})"
                ) from exc
            tries += 1
            time.sleep(random.uniform(0.0, min(_NAP, _NAP * tries / 8)))


# ---------------------------------------------------------------- connections
_forks = [0]  # bumped in a forked child: connections must not cross a fork
_inherited: list[sqlite3.Connection] = []  # the parent's, kept open (never used) in a child
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


class _Holder:
    """One thread's connection (weakly referenced: it closes when the thread ends)."""

    __slots__ = ("__weakref__", "conn", "fork")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn: sqlite3.Connection | None = conn
        self.fork = _forks[0]


def _close_quietly(conn: sqlite3.Connection, fork: int) -> None:
    """Close ``conn``, unless it was opened before a fork (then the parent owns it)."""
    if fork != _forks[0]:
        _inherited.append(conn)
        return
    with contextlib.suppress(sqlite3.Error):
        conn.close()


class SQLiteStore:
    """All store capabilities in one SQLite file, for the processes of one machine.

    Args:
        url: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite://:memory:``.
        clock: time source; None (default) is the wall clock, shared by local processes.
        namespace: prefix of every key (several applications can share one file).
        timeout: seconds to wait for another process's write lock.
        sweep_every: sweep expired rows after this many operations (0: never).
        sweep_batch: rows examined per table per sweep.

    Example::

        store = SQLiteStore("sqlite:////tmp/buttress.db")
        [d] = store.acquire([RateRequest("user:1", Rate.parse("5/second"))])
        d.allowed, d.remaining      # (True, 4)
    """

    def __init__(
        self,
        url: str = "sqlite://:memory:",
        *,
        clock: Clock | None = None,
        namespace: str = "buttress",
        timeout: float = 2.0,
        sweep_every: int = 100,
        sweep_batch: int = 500,
    ) -> None:
        if not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ConfigurationError(f"SQLiteStore timeout must be > 0 s, got {timeout!r}")
        self.url = url
        self.path = _parse(url)
        self.clock = clock
        self.namespace = check_namespace("SQLiteStore", namespace)
        self.timeout = float(timeout)
        self._label = f"SQLite {self.path or ':memory:'}"
        self._now: Callable[[], float] = clock.now if clock is not None else time.time
        self._sweeper = Sweeper(self.namespace, sweep_every, sweep_batch)
        self._local = threading.local()
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._lock = threading.Lock()  # guards the shared connection of :memory:
        self._memory: sqlite3.Connection | None = None
        self._ready = False  # the schema was checked by this store

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"

    # ------------------------------------------------------------ connections
    def _retrying(self, attempt: Callable[[], T], wait: bool) -> T:
        """``attempt()``, repeated while the database is locked (when ``wait``)."""
        if not wait:
            return attempt()
        return retry_while_locked(attempt, timeout=self.timeout, label=self._label)

    def _open(self, wait: bool) -> sqlite3.Connection:
        path = self.path
        if path is None:
            return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        if not os.path.exists(path):  # create it private (the -wal/-shm files follow)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            # switching a new file to WAL needs it to itself, and SQLite's busy handler
            # does not wait for that: retry like a transaction
            self._retrying(lambda: conn.execute("PRAGMA journal_mode=WAL"), wait)
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _conn(self, wait: bool) -> sqlite3.Connection:
        """This thread's connection (opened on first use, and again after a fork)."""
        if self.path is None:
            if self._memory is None:
                self._memory = self._open(wait)
            return self._memory
        holder: _Holder | None = getattr(self._local, "holder", None)
        if holder is not None and holder.conn is not None and holder.fork == _forks[0]:
            return holder.conn
        conn = self._open(wait)
        holder = self._local.holder = _Holder(conn)
        weakref.finalize(holder, _close_quietly, conn, holder.fork)
        self._holders.add(holder)
        return conn

    def _transact(self, conn: sqlite3.Connection, make: Callable[[], Script[T]], wait: bool) -> T:
        """Run ``make()`` in one ``BEGIN IMMEDIATE`` transaction (retried while locked)."""

        def attempt() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = drive(make(), lambda q: conn.execute(q.sql, q.params or ()).fetchall())
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result

        return self._retrying(attempt, wait)

    def _run(
        self, op: str, make: Callable[[], Script[T]], *, wait: bool = True, count: bool = True
    ) -> T:
        """Run the script ``make()`` in a transaction of this thread's connection."""
        guard = self._lock if self.path is None else contextlib.nullcontext()
        with backend_errors(self._label, op), guard:
            conn = self._conn(wait)
            if not self._ready:
                self._transact(conn, self._setup, wait)
                self._ready = True
            result = self._transact(conn, make, wait)
        if count and self._sweeper.due():
            try:
                self._run("sweep", self._sweep_script, wait=wait, count=False)
            except BackendError as exc:  # the decision stands; the next sweep will retry
                level = logging.DEBUG if _busy(exc.__cause__) else logging.WARNING
                _log.log(level, "%s: sweep failed: %s", self._label, exc)
        return result

    async def _arun(self, op: str, make: Callable[[], Script[T]], *, count: bool = True) -> T:
        """`_run` inline without waiting for the lock; on a worker thread when busy."""
        try:
            return self._run(op, make, wait=False, count=count)
        except BackendError as exc:
            if not _busy(exc.__cause__):
                raise
        return await asyncio.to_thread(functools.partial(self._run, op, make, count=count))

    def _setup(self) -> Script[None]:
        """Create or check the tables (``BEGIN IMMEDIATE``: one creator at a time)."""
        rows = yield Query(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
            ["buttress_schema"],
        )
        if rows[0][0]:
            rows = yield Query("SELECT max(version) FROM buttress_schema")
            found = rows[0][0]
            check_version(self._label, found, SCHEMA_VERSION)
            if found == SCHEMA_VERSION:
                return
        for statement in _DDL:
            yield Query(statement)
        yield Query(
            "INSERT INTO buttress_schema (version, installed_at) VALUES (?, ?)",
            [SCHEMA_VERSION, time.time()],
        )

    # ------------------------------------------------------------ rate limits
    def _acquire_script(self, requests: Sequence[RateRequest]) -> Script[list[RateDecision]]:
        now = self._now()
        names = [store_key(self.namespace, "rl", req.key) for req in requests]
        unique = list(dict.fromkeys(names))
        marks = ", ".join("?" for _ in unique)
        rows = yield Query(
            f"SELECT key, tat FROM buttress_rate WHERE key IN ({marks})",
            unique,
        )
        stored: dict[str, float] = dict(rows)
        decisions, new = gcra([stored.get(name) for name in names], now, requests)
        if new is not None:
            latest = dict(zip(names, new, strict=True))  # a repeated key: the last one wins
            values = ", ".join("(?, ?)" for _ in latest)
            yield Query(
                f"INSERT INTO buttress_rate (key, tat) VALUES {values} "
                "ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
                [x for item in latest.items() for x in item],
            )
        return decisions

    def acquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """Decide every limit at once, all or nothing (see `RateLimitStore`).

        Example::

            [d] = store.acquire([RateRequest("user:42", Rate.parse("10/second"))])
        """
        if not requests:
            return []
        return self._run("acquire", functools.partial(self._acquire_script, requests))

    async def aacquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """Async `acquire`."""
        if not requests:
            return []
        return await self._arun("acquire", functools.partial(self._acquire_script, requests))

    # ------------------------------------------------------------ idempotency
    def _begin_script(self, key: str, fingerprint: str, lease: float) -> Script[Begin]:
        now = self._now()
        name = store_key(self.namespace, "idem", key)
        rows = yield Query(
            "SELECT fingerprint, expires_at, response FROM buttress_idempotency WHERE key = ?",
            [name],
        )
        found = begin_outcome(rows[0] if rows else None, fingerprint, now)
        if found is not None:
            return found
        token = secrets.token_hex(8)
        yield Query(
            "INSERT OR REPLACE INTO buttress_idempotency "
            "(key, fingerprint, token, expires_at, response) VALUES (?, ?, ?, ?, NULL)",
            [name, fingerprint, token, now + lease],
        )
        return Begin(BeginOutcome.ACQUIRED, token=token)

    def begin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """Take ``key`` for ``lease`` seconds, or say why not (see `IdempotencyStore`).

        Example::

            b = store.begin("idem-key", "sha256-of-request", lease=30.0)
            if b.outcome is BeginOutcome.REPLAY: ...
        """
        return self._run("begin", functools.partial(self._begin_script, key, fingerprint, lease))

    async def abegin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """Async `begin`."""
        make = functools.partial(self._begin_script, key, fingerprint, lease)
        return await self._arun("begin", make)

    def _held_script(
        self, sql: str, key: str, token: str, response: bytes | None, duration: float | None
    ) -> Script[bool]:
        """Update or delete the record ``token`` holds; whether there was one."""
        now = self._now()
        params: list[Any] = [] if response is None else [response]
        if duration is not None:
            params.append(now + duration)
        yield Query(sql, [*params, store_key(self.namespace, "idem", key), token, now])
        rows = yield Query("SELECT changes()")
        return bool(rows[0][0])

    def _held(
        self,
        sql: str,
        key: str,
        token: str,
        response: bytes | None = None,
        duration: float | None = None,
    ) -> Callable[[], Script[bool]]:
        return functools.partial(self._held_script, sql, key, token, response, duration)

    def renew(self, key: str, token: str, lease: float) -> bool:
        """Extend the lease; False when ``token`` no longer holds the key."""
        return self._run("renew", self._held(_RENEW, key, token, duration=lease))

    async def arenew(self, key: str, token: str, lease: float) -> bool:
        """Async `renew`."""
        return await self._arun("renew", self._held(_RENEW, key, token, duration=lease))

    def complete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        """Store ``response`` for replay for ``ttl`` seconds; False when not the holder."""
        return self._run("complete", self._held(_COMPLETE, key, token, response.encode(), ttl))

    async def acomplete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        """Async `complete`."""
        make = self._held(_COMPLETE, key, token, response.encode(), ttl)
        return await self._arun("complete", make)

    def release(self, key: str, token: str) -> None:
        """Free the key when ``token`` still holds it."""
        self._run("release", self._held(_RELEASE, key, token))

    async def arelease(self, key: str, token: str) -> None:
        """Async `release`."""
        await self._arun("release", self._held(_RELEASE, key, token))

    # ------------------------------------------------------------ breaker state
    def _publish_script(self, name: str, instance: str, state: str, ttl: float) -> Script[None]:
        now = self._now()
        yield Query(
            "INSERT INTO buttress_breaker (name, instance, state, published_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name, instance) DO UPDATE SET "
            "state = excluded.state, published_at = excluded.published_at, "
            "expires_at = excluded.expires_at",
            [store_key(self.namespace, "br", name), instance, state, now, now + ttl],
        )

    def publish(self, name: str, instance: str, state: str, ttl: float) -> None:
        """Record ``instance``'s state of breaker ``name`` for ``ttl`` seconds.

        Example::

            store.publish("payments", "web-1", "open", ttl=30.0)
        """
        self._run("publish", functools.partial(self._publish_script, name, instance, state, ttl))

    async def apublish(self, name: str, instance: str, state: str, ttl: float) -> None:
        """Async `publish`."""
        make = functools.partial(self._publish_script, name, instance, state, ttl)
        await self._arun("publish", make)

    def _reports_script(self, name: str) -> Script[list[BreakerReport]]:
        now = self._now()
        rows = yield Query(
            "SELECT instance, state, ? - published_at FROM buttress_breaker "
            "WHERE name = ? AND expires_at > ? ORDER BY instance",
            [now, store_key(self.namespace, "br", name), now],
        )
        return [BreakerReport(instance, state, age) for instance, state, age in rows]

    def reports(self, name: str) -> list[BreakerReport]:
        """The unexpired reports for breaker ``name``, by instance.

        Example::

            states = {r.instance: r.state for r in store.reports("payments")}
        """
        return self._run("reports", functools.partial(self._reports_script, name))

    async def areports(self, name: str) -> list[BreakerReport]:
        """Async `reports`."""
        return await self._arun("reports", functools.partial(self._reports_script, name))

    # ------------------------------------------------------------ sweeping
    def _sweep_script(self) -> Script[int]:
        now = self._now()
        deleted = 0
        for table in TABLES:
            scan = table.scan("?", table.name)
            params = self._sweeper.params(table)
            cols = ", ".join(table.keys)
            desc = ", ".join(f"{c} DESC" for c in table.keys)
            rows = yield Query(
                f"WITH s AS ({scan}) SELECT (SELECT count(*) FROM s), {cols} "
                f"FROM s ORDER BY {desc} LIMIT 1",
                params,
            )
            if not rows:
                self._sweeper.advance(table, None, 0)
                continue
            yield Query(
                f"WITH s AS ({scan}) DELETE FROM {table.name} "
                f"WHERE ({cols}) IN (SELECT {cols} FROM s WHERE e <= ?)",
                [*params, now],
            )
            gone = yield Query("SELECT changes()")
            deleted += gone[0][0]
            self._sweeper.advance(table, rows[0][1:], rows[0][0])
        return deleted

    def sweep(self) -> int:
        """Delete expired rows among the next ``sweep_batch`` of each table; the count.

        Runs by itself every ``sweep_every`` operations; call it from a periodic job
        when ``sweep_every=0``.

        Example::

            deleted = store.sweep()
        """
        return self._run("sweep", self._sweep_script, count=False)

    async def asweep(self) -> int:
        """Async `sweep`."""
        return await self._arun("sweep", self._sweep_script, count=False)

    # ------------------------------------------------------------ lifecycle
    def _ping_script(self) -> Script[None]:
        yield Query("SELECT 1")

    def ping(self) -> None:
        """Raise `BackendError` when the file cannot be opened and written.

        Example::

            store.ping()
        """
        self._run("ping", self._ping_script, count=False)

    async def aping(self) -> None:
        """Async `ping`."""
        await self._arun("ping", self._ping_script, count=False)

    def close(self) -> None:
        """Close every connection (idempotent; the store reopens if used again).

        Example::

            store.close()
        """
        with self._lock:
            memory, self._memory = self._memory, None
            holders = list(self._holders)
            self._holders.clear()
            self._ready = self.path is not None and self._ready  # :memory: is gone
        if memory is not None:
            _close_quietly(memory, _forks[0])
        for holder in holders:
            conn, holder.conn = holder.conn, None
            if conn is not None:
                _close_quietly(conn, holder.fork)

    async def aclose(self) -> None:
        """Async `close`."""
        self.close()
