"""`PostgresStore`: every store capability on PostgreSQL, one statement per decision.

Each operation is written once, as a script of `buttress.stores._sql` (the statements of
``buttress/stores/sql/postgres.sql``, package data, and their parameters, built by pure
code); `PostgresStore._run` sends it on a psycopg `ConnectionPool`,
`PostgresStore._arun` on a small pool of `psycopg.AsyncConnection` per event loop
(`LoopPool`: no background tasks, so a loop can end without closing it; the pool of a
previous loop is dropped and its sockets closed). Connections are in autocommit mode,
so a decision is one statement, one round trip, one implicit transaction; psycopg
prepares a statement after its fifth use on a connection. Every call is bounded by
``timeout`` (pool checkout, connect, and the server's ``statement_timeout``). Driver
errors become `BackendError`.

Tables (in ``schema``, created on first use under ``pg_advisory_xact_lock`` and versioned
in ``buttress_schema``; an older version is upgraded, a newer one refused):

* ``buttress_rate (key, tat, previous)`` - UNLOGGED. Limits are hot, tiny rows rewritten
  on every decision; an unlogged table writes no WAL for them (no WAL flush or
  replication traffic per decision). The price: a server crash or a failover empties it
  and every key starts again from a full burst - like a Redis restart, and acceptable for
  limits, which protect capacity rather than record facts;
* ``buttress_idempotency (key, fingerprint, token, expires_at, response)`` - logged:
  losing a stored response in a crash would run a payment twice;
* ``buttress_breaker (name, instance, state, published_at, expires_at)`` - UNLOGGED:
  reports expire within seconds and are republished.

Rate limits: every decision returns its time and the TATs it found, from which `gcra`
computes the decisions here (as the Redis store does; the server applies the admission
test of `buttress._gcra`, operation for operation, to decide what to write). One key, the
hot path, is one plain ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` (no plpgsql
call: half the latency); several keys call
the plpgsql ``buttress_acquire``, which locks their rows in key order with one ``INSERT ...
ON CONFLICT DO UPDATE ... WHERE false`` (it creates missing rows and locks existing ones
without writing them, so concurrent multi-key decisions queue in one order and cannot
deadlock) and writes all or nothing. Idempotency: the plpgsql ``buttress_begin`` takes a
key when absent or expired, else returns the live record; renew, complete and release are
token-checked ``UPDATE``/``DELETE``. Times are double precision seconds: the server's
``clock_timestamp()`` (one clock for the fleet) unless a ``clock`` is given, whose
``now()`` is sent instead.

Expired rows are deleted by a bounded sweep (see `buttress.stores._sql.Sweeper`): one
statement every ``sweep_every`` operations examines at most ``sweep_batch`` rows per
table and skips rows that are locked. Requires PostgreSQL 12 or newer. Behind PgBouncer
in transaction mode, let it pass the ``options`` startup parameter (the
``statement_timeout``) and use PgBouncer 1.21+ with ``max_prepared_statements``.

Example::

    from buttress.stores import Rate, RateRequest, open_store

    store = open_store("postgresql://app@db.internal/app")
    [d] = store.acquire([RateRequest("user:42", Rate.parse("100/minute"))])
"""

# SQL is built from constant table and column names (and a schema name checked against
# an identifier pattern); every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from buttress._clock import Clock
from buttress._gcra import EPSILON, RateDecision, RateRequest, gcra
from buttress.errors import BackendError, ConfigurationError
from buttress.stores._base import (
    Begin,
    BeginOutcome,
    BreakerReport,
    StoredResponse,
    backend_errors,
    store_key,
)
from buttress.stores._denials import LocalDenials
from buttress.stores._postgres_pool import AConn, LoopPool, stale
from buttress.stores._postgres_sql import Statements, ddl
from buttress.stores._sql import (
    TABLES,
    Query,
    Rows,
    Script,
    Sweeper,
    adrive,
    begin_outcome,
    check_namespace,
    check_version,
    drive,
)

__all__ = ["PostgresStore"]

T = TypeVar("T")
Conn = psycopg.Connection[TupleRow]

_log = logging.getLogger("buttress.stores")
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


#: The version of the tables and functions this code reads and writes. 2: the rate-limit
#: function runs the admission test of `buttress._gcra` (one tolerance for every store).
SCHEMA_VERSION = 2


def _execute(conn: Conn, query: Query) -> Rows:
    cur = conn.execute(query.sql, query.params)
    return cur.fetchall() if cur.description is not None else []


async def _aexecute(conn: AConn, query: Query) -> Rows:
    cur = await conn.execute(query.sql, query.params)
    return await cur.fetchall() if cur.description is not None else []


class PostgresStore:
    """All store capabilities on PostgreSQL, for a fleet of processes and machines.

    Args:
        url: ``postgresql://user:password@host:port/dbname?...`` (libpq URI; ``postgres://``
            works too).
        clock: time source; None (default) uses the server's clock, shared by the fleet.
        namespace: prefix of every key (several applications can share the tables).
        timeout: seconds any call may take: connection checkout, connect, and the
            server-side ``statement_timeout`` (default 2).
        schema: the PostgreSQL schema holding the tables (created if missing).
        max_connections: connections per pool (one for threads, one per event loop).
        local_denials: answer repeated denials from a local cache without a round trip
            (`buttress.stores._denials.LocalDenials`).
        sweep_every: sweep expired rows after this many operations (0: never).
        sweep_batch: rows examined per table per sweep.

    Example::

        store = PostgresStore("postgresql://app@127.0.0.1/app", namespace="api")
        [d] = store.acquire([RateRequest("user:1", Rate.parse("5/second"))])
        d.allowed, d.remaining      # (True, 4)
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        namespace: str = "buttress",
        timeout: float = 2.0,
        schema: str = "public",
        max_connections: int = 10,
        local_denials: bool = True,
        sweep_every: int = 100,
        sweep_batch: int = 500,
    ) -> None:
        if not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ConfigurationError(f"PostgresStore timeout must be > 0 s, got {timeout!r}")
        if not isinstance(schema, str) or not _SCHEMA_RE.match(schema):
            raise ConfigurationError(
                f"PostgresStore schema must be a lowercase identifier, got {schema!r}"
            )
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigurationError(
                f"PostgresStore max_connections must be >= 1, got {max_connections!r}"
            )
        self.url = url
        self.clock = clock
        self.namespace = check_namespace("PostgresStore", namespace)
        self.timeout = float(timeout)
        self.schema = schema
        self.max_connections = max_connections
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise ConfigurationError(f"PostgresStore URL is not valid: {exc}") from exc
        where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
        self._label = f"PostgreSQL {where}/{params.get('dbname') or ''}".rstrip("/")
        options = f"{params.get('options') or ''} -c statement_timeout={int(timeout * 1000)}"
        # a dead peer is noticed within ~timeout too (keepalives, unacknowledged writes);
        # the URL's own settings win
        defaults: dict[str, str | int] = {
            "connect_timeout": max(2, math.ceil(timeout)),  # libpq's minimum is 2 s
            "application_name": "buttress",
            "keepalives": 1,
            "keepalives_idle": max(1, math.ceil(timeout)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": int(timeout * 1000),
        }
        self._conninfo = make_conninfo(
            url,
            **{name: value for name, value in defaults.items() if name not in params},
            options=options.strip(),
        )
        self._sql = Statements(schema)
        self._sweeper = Sweeper(self.namespace, sweep_every, sweep_batch)
        # local time: the clock's, else the monotonic system clock (for local denials)
        self._now = clock.now if clock is not None else time.monotonic
        self._denials = LocalDenials() if local_denials else None
        self._lock = threading.Lock()
        self._ready = False  # the schema was checked by this store
        self._pool: ConnectionPool[Conn] | None = None
        self._apool: LoopPool | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self._label}, schema={self.schema!r})"

    # ------------------------------------------------------------ drivers
    def _connect(self) -> ConnectionPool[Conn]:
        with self._lock:
            if self._pool is None:
                pool: ConnectionPool[Conn] = ConnectionPool(
                    self._conninfo,
                    kwargs={"autocommit": True},
                    min_size=1,
                    max_size=self.max_connections,
                    timeout=self.timeout,
                    open=False,
                    num_workers=2,
                )
                pool.open()
                self._pool = pool
            return self._pool

    def _aconnect(self, loop: asyncio.AbstractEventLoop) -> LoopPool:
        """The connections of ``loop`` (a pool of another loop is closed)."""
        with self._lock:
            old = self._apool
            if old is not None and old.loop is loop:
                return old
            pool = self._apool = LoopPool(self._conninfo, self.max_connections, self.timeout, loop)
        if old is not None:
            self._drop(old)
        return pool

    @staticmethod
    def _drop(pool: LoopPool) -> None:
        """Close ``pool``: in its loop's thread when that loop runs elsewhere, else here."""
        loop = pool.loop
        if loop.is_running():
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                with suppress(RuntimeError):  # RuntimeError: it closed meanwhile
                    loop.call_soon_threadsafe(pool.close)
                    return
        pool.close()

    def _unreachable(self, exc: Exception) -> BackendError:
        return BackendError(
            f"{self._label}: no connection within {self.timeout:g} s (is the server up "
            f"and reachable, and are connections left?): {type(exc).__name__}: {exc}"
        )

    def _setup(self) -> Script[None]:
        """Create or check the tables (in a transaction, one creator at a time)."""
        s = self.schema
        yield Query("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"buttress {s}"])
        rows = yield Query(
            "SELECT to_regnamespace(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
            [s, f"{s}.buttress_schema"],
        )
        has_schema, has_table = rows[0]
        if has_table:
            rows = yield Query(f"SELECT max(version) FROM {s}.buttress_schema")
            found = rows[0][0]
            check_version(self._label, found, SCHEMA_VERSION)
            if found == SCHEMA_VERSION:
                return
        if not has_schema:
            yield Query(f"CREATE SCHEMA {s}")
        for statement in ddl(s):
            yield Query(statement)
        yield Query(
            f"INSERT INTO {s}.buttress_schema (version) VALUES (%s)",
            [SCHEMA_VERSION],
        )

    def _run(self, op: str, script: Script[T], *, setup: bool = True, count: bool = True) -> T:
        """Send ``script``'s statements on a pooled connection (each one autocommits)."""
        with backend_errors(self._label, op):
            try:
                pool = self._pool or self._connect()
                conn = self._checkout(pool)
                try:
                    if setup and not self._ready:
                        with conn.transaction():
                            drive(self._setup(), lambda q: _execute(conn, q))
                        self._ready = True
                    result = drive(script, lambda q: _execute(conn, q))
                finally:
                    pool.putconn(conn)
            except PoolTimeout as exc:
                raise self._unreachable(exc) from exc
        if count and self._sweeper.due():
            self._sweep_quietly()
        return result

    def _checkout(self, pool: ConnectionPool[Conn]) -> Conn:
        """A pooled connection that is not `stale` (a restart leaves the pool full of them)."""
        for _ in range(self.max_connections):
            conn = pool.getconn()
            if not stale(conn):
                return conn
            conn.close()  # the pool drops a closed connection and opens another
            pool.putconn(conn)
        return pool.getconn()

    async def _arun(
        self, op: str, script: Script[T], *, setup: bool = True, count: bool = True
    ) -> T:
        """`_run` on the connections of the running event loop."""
        with backend_errors(self._label, op):
            loop = asyncio.get_running_loop()
            pool = self._apool
            if pool is None or pool.loop is not loop:
                pool = self._aconnect(loop)
            try:
                conn = await pool.get()
            except TimeoutError as exc:
                raise self._unreachable(exc) from exc
            try:
                if setup and not self._ready:
                    async with conn.transaction():
                        await adrive(self._setup(), lambda q: _aexecute(conn, q))
                    self._ready = True
                result = await adrive(script, lambda q: _aexecute(conn, q))
            finally:
                pool.put(conn)
        if count and self._sweeper.due():
            await self._asweep_quietly()
        return result

    def _time(self) -> float | None:
        """The time parameter: None lets the server's clock decide."""
        return None if self.clock is None else self.clock.now()

    # ------------------------------------------------------------ rate limits
    def _acquire_script(
        self, requests: Sequence[RateRequest], now: float
    ) -> Script[tuple[float, list[float | None]]]:
        time_param = None if self.clock is None else now
        if len(requests) == 1:
            req = requests[0]
            step = req.rate.interval * req.cost  # the very doubles `gcra` computes
            tau_eps = req.rate.interval * req.rate.burst + EPSILON
            key = store_key(self.namespace, "rl", req.key)
            params = [time_param, key, step, tau_eps, step, step, tau_eps, step]
            rows = yield Query(self._sql.acquire_one, params)
            server_now, previous = rows[0]
            return server_now, [None if previous in (None, -math.inf) else previous]
        keys, intervals, bursts, costs = [], [], [], []
        for req in requests:
            keys.append(store_key(self.namespace, "rl", req.key))
            intervals.append(req.rate.interval)
            bursts.append(req.rate.burst)
            costs.append(req.cost)
        rows = yield Query(self._sql.acquire, [keys, intervals, bursts, costs, time_param])
        server_now, tats = rows[0]
        return server_now, tats

    def _decide(
        self, requests: Sequence[RateRequest], read: tuple[float, list[float | None]], sent: float
    ) -> list[RateDecision]:
        server_now, tats = read
        decisions, new = gcra(tats, server_now, requests)
        denials = self._denials
        if denials is not None:
            if new is None:
                denials.record(requests, tats, server_now, sent)
            else:
                denials.refresh(requests, new, server_now, sent)
        return decisions

    def _local(self, requests: Sequence[RateRequest], now: float) -> list[RateDecision] | None:
        if not requests:
            return []
        return None if self._denials is None else self._denials.check(requests, now)

    def acquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """Decide every limit at once, all or nothing (see `RateLimitStore`).

        Example::

            [d] = store.acquire([RateRequest("user:42", Rate.parse("10/second"))])
        """
        now = self._now()
        local = self._local(requests, now)
        if local is not None:
            return local
        read = self._run("acquire", self._acquire_script(requests, now))
        return self._decide(requests, read, now)

    async def aacquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """Async `acquire`."""
        now = self._now()
        local = self._local(requests, now)
        if local is not None:
            return local
        read = await self._arun("acquire", self._acquire_script(requests, now))
        return self._decide(requests, read, now)

    # ------------------------------------------------------------ idempotency
    def _begin_script(self, key: str, fingerprint: str, lease: float) -> Script[Begin]:
        token = secrets.token_hex(8)
        name = store_key(self.namespace, "idem", key)
        params = [name, fingerprint, token, lease, self._time()]
        rows = yield Query(self._sql.begin, params)
        now, acquired, *stored = rows[0]
        if acquired:
            return Begin(BeginOutcome.ACQUIRED, token=token)
        begin = begin_outcome((stored[0], stored[1], stored[2]), fingerprint, now)
        if begin is None:  # pragma: no cover - the function returns live records only
            raise BackendError(f"{self._label}: begin returned an expired record")
        return begin

    def begin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """Take ``key`` for ``lease`` seconds, or say why not (see `IdempotencyStore`).

        Example::

            b = store.begin("idem-key", "sha256-of-request", lease=30.0)
            if b.outcome is BeginOutcome.REPLAY: ...
        """
        return self._run("begin", self._begin_script(key, fingerprint, lease))

    async def abegin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """Async `begin`."""
        return await self._arun("begin", self._begin_script(key, fingerprint, lease))

    def _held_script(self, sql: str, head: list[Any], key: str, token: str) -> Script[bool]:
        name = store_key(self.namespace, "idem", key)
        rows = yield Query(sql, [*head, name, token])
        return bool(rows)

    def renew(self, key: str, token: str, lease: float) -> bool:
        """Extend the lease; False when ``token`` no longer holds the key."""
        head = [self._time(), lease]
        return self._run("renew", self._held_script(self._sql.renew, head, key, token))

    async def arenew(self, key: str, token: str, lease: float) -> bool:
        """Async `renew`."""
        head = [self._time(), lease]
        return await self._arun("renew", self._held_script(self._sql.renew, head, key, token))

    def complete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        """Store ``response`` for replay for ``ttl`` seconds; False when not the holder."""
        head = [self._time(), response.encode(), ttl]
        return self._run("complete", self._held_script(self._sql.complete, head, key, token))

    async def acomplete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        """Async `complete`."""
        head = [self._time(), response.encode(), ttl]
        script = self._held_script(self._sql.complete, head, key, token)
        return await self._arun("complete", script)

    def release(self, key: str, token: str) -> None:
        """Free the key when ``token`` still holds it."""
        self._run("release", self._held_script(self._sql.release, [self._time()], key, token))

    async def arelease(self, key: str, token: str) -> None:
        """Async `release`."""
        await self._arun(
            "release", self._held_script(self._sql.release, [self._time()], key, token)
        )

    # ------------------------------------------------------------ breaker state
    def _publish_script(self, name: str, instance: str, state: str, ttl: float) -> Script[None]:
        params = [self._time(), store_key(self.namespace, "br", name), instance, state, ttl]
        yield Query(self._sql.publish, params)

    def publish(self, name: str, instance: str, state: str, ttl: float) -> None:
        """Record ``instance``'s state of breaker ``name`` for ``ttl`` seconds.

        Example::

            store.publish("payments", "web-1", "open", ttl=30.0)
        """
        self._run("publish", self._publish_script(name, instance, state, ttl))

    async def apublish(self, name: str, instance: str, state: str, ttl: float) -> None:
        """Async `publish`."""
        await self._arun("publish", self._publish_script(name, instance, state, ttl))

    def _reports_script(self, name: str) -> Script[list[BreakerReport]]:
        params = [self._time(), store_key(self.namespace, "br", name)]
        rows = yield Query(self._sql.reports, params)
        return [BreakerReport(instance, state, age) for instance, state, age in rows]

    def reports(self, name: str) -> list[BreakerReport]:
        """The unexpired reports for breaker ``name``, by instance.

        Example::

            states = {r.instance: r.state for r in store.reports("payments")}
        """
        return self._run("reports", self._reports_script(name))

    async def areports(self, name: str) -> list[BreakerReport]:
        """Async `reports`."""
        return await self._arun("reports", self._reports_script(name))

    # ------------------------------------------------------------ sweeping
    def _sweep_script(self) -> Script[int]:
        params: list[Any] = [self._time()]
        for table in TABLES:
            params += self._sweeper.params(table)
        rows = yield Query(self._sql.sweep, params)
        deleted = 0
        for i, table in enumerate(TABLES):
            scanned, last, gone = rows[0][3 * i : 3 * i + 3]
            self._sweeper.advance(table, last, scanned)
            deleted += gone
        return deleted

    def sweep(self) -> int:
        """Delete expired rows among the next ``sweep_batch`` of each table; the count.

        Runs by itself every ``sweep_every`` operations; call it from a periodic job
        when ``sweep_every=0``.

        Example::

            deleted = store.sweep()
        """
        return self._run("sweep", self._sweep_script(), count=False)

    async def asweep(self) -> int:
        """Async `sweep`."""
        return await self._arun("sweep", self._sweep_script(), count=False)

    def _sweep_quietly(self) -> None:
        try:
            self.sweep()
        except BackendError as exc:  # the decision stands; the next sweep will retry
            _log.warning("%s: sweep failed: %s", self._label, exc)

    async def _asweep_quietly(self) -> None:
        try:
            await self.asweep()
        except BackendError as exc:
            _log.warning("%s: sweep failed: %s", self._label, exc)

    # ------------------------------------------------------------ lifecycle
    def _ping_script(self) -> Script[None]:
        yield Query("SELECT 1")

    def ping(self) -> None:
        """Raise `BackendError` when the server does not answer (``SELECT 1``).

        Example::

            store.ping()
        """
        self._run("ping", self._ping_script(), setup=False, count=False)

    async def aping(self) -> None:
        """Async `ping`."""
        await self._arun("ping", self._ping_script(), setup=False, count=False)

    def _take_pools(self) -> tuple[ConnectionPool[Conn] | None, LoopPool | None]:
        with self._lock:
            taken = self._pool, self._apool
            self._pool = self._apool = None
        if self._denials is not None:
            self._denials.clear()
        return taken

    def close(self) -> None:
        """Close the connections (idempotent; the store reconnects if used again).

        Example::

            store.close()
        """
        pool, apool = self._take_pools()
        with backend_errors(self._label, "close"):
            if pool is not None:
                pool.close(timeout=self.timeout)
            if apool is not None:
                self._drop(apool)

    async def aclose(self) -> None:
        """Async `close` (the threads' pool is closed on a worker thread)."""
        pool, apool = self._take_pools()
        with backend_errors(self._label, "close"):
            if apool is not None:
                self._drop(apool)
            if pool is not None:
                await asyncio.to_thread(pool.close, self.timeout)
