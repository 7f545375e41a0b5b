"""The built-in health checks and the `Check` protocol (served by `HealthMiddleware`)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import os
import re
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar, cast, runtime_checkable

from buttress.errors import ConfigurationError
from buttress.resilience._policy import check_positive
from buttress.resilience._registry import Registry, registry

__all__ = [
    "BaseCheck",
    "BreakersCheck",
    "CallableCheck",
    "Check",
    "CheckResult",
    "DiskCheck",
    "HttpCheck",
    "MemoryCheck",
    "PostgresCheck",
    "RedisCheck",
    "SQLiteCheck",
    "Status",
    "as_check",
]

# a probe without a timeout of its own: its connection never waits longer than this
_PROBE_SOCKET_TIMEOUT = 5.0


Status = Literal["pass", "warn", "fail"]
HEALTH_CONTENT_TYPE: Final = b"application/health+json"

_STATUSES: Final = frozenset({"pass", "warn", "fail"})
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_TOKEN_RE: Final = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what fits a Bearer header
_EXPOSE: Final = ("loopback", "token", "always")
_T = TypeVar("_T")


# ------------------------------------------------------------------ results and checks
@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """What one run of a check observed.

    Attributes:
        status: ``pass``, ``warn`` or ``fail``.
        observed_value: the measurement (a number or a short string), or None.
        observed_unit: its unit (``ms``, ``bytes``...), or None.
        output: a short human explanation, for ``warn`` and ``fail`` mostly (never a
            traceback, never a secret).

    Example::

        >>> CheckResult(status="warn", observed_value=812.0, observed_unit="ms").status
        'warn'
    """

    status: Status = "pass"
    observed_value: float | int | str | None = None
    observed_unit: str | None = None
    output: str | None = None

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ConfigurationError(
                f"CheckResult(status={self.status!r}): must be 'pass', 'warn' or 'fail'"
            )


@runtime_checkable
class Check(Protocol):
    """A health check: anything with these members (`BaseCheck` implements them).

    ``name`` must be unique among the checks of one middleware; the report key is
    ``"name:measurement"`` (``measurement`` is optional, ``responseTime`` in `BaseCheck`),
    ``component_id`` is optional too (defaults to ``name``). ``timeout``, when present and
    not None, overrides the middleware's ``check_timeout``.

    Example::

        class QueueDepth:
            name = "queue"
            critical = False
            component_type = "component"

            async def run(self) -> CheckResult:
                depth = await broker.depth()
                return CheckResult(status="warn" if depth > 1000 else "pass",
                                   observed_value=depth)
    """

    @property
    def name(self) -> str:
        """The component name (the first half of the report key)."""

    @property
    def critical(self) -> bool:
        """Whether a failure makes the service not ready (``/health/ready`` 503)."""

    @property
    def component_type(self) -> str:
        """``datastore``, ``component`` or ``system`` (the draft's componentType)."""

    async def run(self) -> CheckResult:
        """Observe once. May raise: the middleware turns an exception into ``fail``."""


class _StillRunning(Exception):
    """The previous probe of this check is still blocked in its thread."""


class BaseCheck:
    """Base class of the built-in checks: validated options and small helpers.

    Args:
        name: component name, unique per middleware (letters, digits, ``_ . -``).
        critical: whether a failure makes ``/health/ready`` answer 503.
        timeout: seconds this check may take (None: the middleware's ``check_timeout``).
        component_id: the draft's ``componentId`` (default: ``name``).

    Subclasses set ``component_type`` and ``measurement`` and implement `run`.

    Example::

        class Upstream(BaseCheck):
            component_type = "component"

            async def run(self) -> CheckResult:
                return await self._timed(ping_upstream)
    """

    component_type: str = "component"
    measurement: str | None = "responseTime"

    def __init__(
        self,
        *,
        name: str,
        critical: bool,
        timeout: float | None = None,
        component_id: str | None = None,
    ) -> None:
        owner = type(self).__name__
        if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
            raise ConfigurationError(
                f"{owner}(name={name!r}): must be 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        if not isinstance(critical, bool):
            raise ConfigurationError(f"{owner}(critical={critical!r}): must be True or False")
        if component_id is not None and (not isinstance(component_id, str) or not component_id):
            raise ConfigurationError(
                f"{owner}(component_id={component_id!r}): must be a non-empty string or None"
            )
        self.name = name
        self.critical = critical
        self.timeout = None if timeout is None else check_positive(owner, "timeout", timeout)
        self.component_id = component_id or name
        self._busy = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, critical={self.critical!r})"

    async def run(self) -> CheckResult:
        """Observe once (subclasses implement it)."""
        raise NotImplementedError  # pragma: no cover - every check overrides it

    @staticmethod
    async def _timed(probe: Callable[[], Awaitable[object]]) -> CheckResult:
        """Run ``probe`` and pass with its round-trip time in milliseconds."""
        start = time.perf_counter()
        await probe()
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        return CheckResult(status="pass", observed_value=round(elapsed_ms, 3), observed_unit="ms")

    async def _in_thread(self, fn: Callable[[], _T]) -> _T:
        """Run blocking ``fn`` in a daemon thread of its own, at most one per check.

        Not the default executor: a hung file system must neither queue behind the app's
        own blocking work nor pile up threads, one per refresh. While the previous probe is
        still blocked, the check fails at once with "previous probe still running".
        """
        if not self._busy.acquire(blocking=False):
            raise _StillRunning
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if not future.done():
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)

        def target() -> None:
            value: Any = None
            error: BaseException | None = None
            try:
                value = fn()
            except BaseException as exc:  # delivered to the awaiting task
                error = exc
            finally:
                self._busy.release()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, value, error)

        thread = threading.Thread(target=target, name=f"buttress-health-{self.name}")
        thread.daemon = True
        try:
            thread.start()
        except BaseException:  # pragma: no cover - cannot start a thread
            self._busy.release()
            raise
        return await future


class _LatencyCheck(BaseCheck):
    """A check that measures a round trip and may warn when it is slow."""

    def __init__(
        self,
        *,
        name: str,
        critical: bool,
        warn_ms: float | None = None,
        timeout: float | None = None,
        component_id: str | None = None,
    ) -> None:
        super().__init__(name=name, critical=critical, timeout=timeout, component_id=component_id)
        self.warn_ms = (
            None if warn_ms is None else check_positive(type(self).__name__, "warn_ms", warn_ms)
        )

    async def _measure(self, probe: Callable[[], Awaitable[object]]) -> CheckResult:
        result = await self._timed(probe)
        value = result.observed_value
        if self.warn_ms is not None and isinstance(value, float) and value > self.warn_ms:
            return CheckResult(
                status="warn",
                observed_value=value,
                observed_unit="ms",
                output=f"slow: {value:.0f} ms > {self.warn_ms:g} ms",
            )
        return result


def _exactly_one(owner: str, **options: object) -> str:
    given = [key for key, value in options.items() if value is not None]
    if len(given) != 1:
        names = ", ".join(options)
        raise ConfigurationError(
            f"{owner}({', '.join(f'{k}=...' for k in given) or 'no target'}): "
            f"pass exactly one of {names}"
        )
    return given[0]


class PostgresCheck(_LatencyCheck):
    """PostgreSQL answers ``SELECT 1``; observed value: the probe's round trip in ms.

    Pass exactly one target:

    * ``dsn``: a connection string; each run opens a psycopg 3 async connection, runs the
      query and closes it (the value includes connecting).
    * ``pool``: a ``psycopg_pool.AsyncConnectionPool`` (the value includes waiting for a
      connection, so an exhausted pool shows), or, duck-typed, an asyncpg pool or
      connection (``await pool.fetchval("SELECT 1")``) or any object with an async
      ``execute(sql)`` (a psycopg ``AsyncConnection``, the ``databases`` package).
    * ``engine``: a SQLAlchemy ``AsyncEngine`` (``async with engine.connect()``, then
      ``exec_driver_sql("SELECT 1")``).

    No driver is imported unless ``dsn`` is used; nothing is added to the dependencies.

    Example::

        PostgresCheck(dsn="postgresql://app@127.0.0.1/app")
        PostgresCheck(pool=pool, name="replica", critical=False, warn_ms=200)
    """

    component_type = "datastore"

    def __init__(
        self,
        *,
        dsn: str | None = None,
        pool: Any = None,
        engine: Any = None,
        name: str = "postgres",
        critical: bool = True,
        warn_ms: float | None = None,
        timeout: float | None = None,
        component_id: str | None = None,
    ) -> None:
        super().__init__(
            name=name, critical=critical, warn_ms=warn_ms, timeout=timeout,
            component_id=component_id,
        )  # fmt: skip
        owner = "PostgresCheck"
        kind = _exactly_one(owner, dsn=dsn, pool=pool, engine=engine)
        if kind == "dsn" and (not isinstance(dsn, str) or not dsn):
            raise ConfigurationError(f"{owner}(dsn=...): must be a non-empty connection string")
        if kind == "pool":
            if hasattr(pool, "fetchval"):
                kind = "fetchval"
            elif hasattr(pool, "connection"):
                kind = "psycopg_pool"
            elif hasattr(pool, "execute"):
                kind = "execute"
            else:
                raise ConfigurationError(
                    f"{owner}(pool={type(pool).__name__}): must be a psycopg_pool."
                    "AsyncConnectionPool, an asyncpg pool or connection (fetchval), or an "
                    "object with an async execute(sql)"
                )
        if kind == "engine" and not hasattr(engine, "connect"):
            raise ConfigurationError(
                f"{owner}(engine={type(engine).__name__}): must be a SQLAlchemy AsyncEngine"
            )
        self._kind = kind
        self._dsn = dsn
        self._target = pool if pool is not None else engine

    async def run(self) -> CheckResult:
        """``SELECT 1`` on the target; pass with the round trip in ms."""
        return await self._measure(self._probe)

    async def _probe(self) -> None:
        kind, target = self._kind, self._target
        if kind == "dsn":
            import psycopg  # noqa: PLC0415 - optional dependency, imported when used

            assert self._dsn is not None  # noqa: S101 - set when kind is "dsn"
            limit = self.timeout if self.timeout is not None else _PROBE_SOCKET_TIMEOUT
            conn = await psycopg.AsyncConnection.connect(  # libpq: whole seconds, at least 2
                self._dsn, autocommit=True, connect_timeout=max(2, math.ceil(limit))
            )
            async with conn:
                await (await conn.execute("SELECT 1")).fetchone()
        elif kind == "psycopg_pool":
            async with target.connection() as conn:
                await (await conn.execute("SELECT 1")).fetchone()
        elif kind == "fetchval":
            await target.fetchval("SELECT 1")
        elif kind == "execute":
            await target.execute("SELECT 1")
        else:
            async with target.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")


class RedisCheck(_LatencyCheck):
    """Redis answers ``PING``; observed value: the round trip in ms.

    With ``url`` each run opens a ``redis.asyncio`` client, pings and closes it (the value
    includes connecting); with ``client`` it pings your ``redis.asyncio.Redis``.

    Example::

        RedisCheck(url="redis://127.0.0.1:6379/0", critical=False)
    """

    component_type = "datastore"

    def __init__(
        self,
        *,
        url: str | None = None,
        client: Any = None,
        name: str = "redis",
        critical: bool = True,
        warn_ms: float | None = None,
        timeout: float | None = None,
        component_id: str | None = None,
    ) -> None:
        super().__init__(
            name=name, critical=critical, warn_ms=warn_ms, timeout=timeout,
            component_id=component_id,
        )  # fmt: skip
        owner = "RedisCheck"
        kind = _exactly_one(owner, url=url, client=client)
        if kind == "url" and (
            not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://"))
        ):
            raise ConfigurationError(
                f"{owner}(url=...): must start with redis://, rediss:// or unix://"
            )
        if kind == "client" and not hasattr(client, "ping"):
            raise ConfigurationError(
                f"{owner}(client={type(client).__name__}): must be a redis.asyncio.Redis"
            )
        self._url = url
        self._client = client

    async def run(self) -> CheckResult:
        """``PING``; pass with the round trip in ms."""
        return await self._measure(self._probe)

    async def _probe(self) -> None:
        if self._client is not None:
            await self._client.ping()
            return
        import redis.asyncio  # noqa: PLC0415 - optional dependency, imported when used

        assert self._url is not None  # noqa: S101 - set when there is no client
        limit = self.timeout if self.timeout is not None else _PROBE_SOCKET_TIMEOUT
        client = redis.asyncio.Redis.from_url(
            self._url, socket_timeout=limit, socket_connect_timeout=limit
        )
        try:
            await client.ping()
        finally:
            await client.aclose()


class HttpCheck(_LatencyCheck):
    """An HTTP URL answers ``GET`` with an expected status; value: the round trip in ms.

    A plain ``httpx.AsyncClient`` per run, no retries (a health check reports, it does not
    insist), redirects not followed. Any other status fails with "unexpected status 500".

    Example::

        HttpCheck("http://127.0.0.1:9000/ping", name="search", critical=False)
    """

    component_type = "component"

    def __init__(
        self,
        url: str,
        *,
        expect_status: Container[int] = range(200, 400),
        headers: dict[str, str] | None = None,
        name: str = "http",
        critical: bool = True,
        warn_ms: float | None = None,
        timeout: float | None = None,
        component_id: str | None = None,
    ) -> None:
        super().__init__(
            name=name, critical=critical, warn_ms=warn_ms, timeout=timeout,
            component_id=component_id,
        )  # fmt: skip
        owner = "HttpCheck"
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"{owner}(url={url!r}): must start with http:// or https://")
        if (
            not isinstance(expect_status, Container)
            or isinstance(expect_status, str | bytes)
            or not any(code in expect_status for code in range(100, 600))
        ):
            raise ConfigurationError(
                f"{owner}(expect_status={expect_status!r}): must be a container of HTTP "
                "status codes (100-599) with at least one member, e.g. range(200, 400)"
            )
        self.url = url
        self.expect_status = expect_status
        self._headers = dict(headers or {})

    async def run(self) -> CheckResult:
        """``GET`` the URL; pass with the round trip in ms when the status is expected."""
        import httpx  # noqa: PLC0415 - optional dependency, imported when used

        status = 0

        async def probe() -> None:
            nonlocal status
            # The middleware's timeout is the real bound; httpx's is a backstop.
            async with httpx.AsyncClient(timeout=30.0, follow_redirects=False) as client:
                response = await client.get(self.url, headers=self._headers)
                status = response.status_code

        result = await self._measure(probe)
        if status not in self.expect_status:
            return CheckResult(
                status="fail",
                observed_value=result.observed_value,
                observed_unit="ms",
                output=f"unexpected status {status}",
            )
        return result


class SQLiteCheck(_LatencyCheck):
    """An SQLite database file opens and answers; value: the round trip in ms.

    Opens the file (``mode=rw``: a missing file fails instead of being created; pass
    ``readonly=True`` for ``mode=ro``) and reads the schema (``SELECT count(*) FROM
    sqlite_master``): a bare ``SELECT 1`` never touches the file, so it would pass on a
    corrupt or locked database. Runs in a thread (see `BaseCheck._in_thread`).

    Example::

        SQLiteCheck("/var/lib/app/app.db")
    """

    component_type = "datastore"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        name: str = "sqlite",
        critical: bool = True,
        warn_ms: float | None = None,
        timeout: float | None = None,
        component_id: str | None = None,
    ) -> None:
        super().__init__(
            name=name, critical=critical, warn_ms=warn_ms, timeout=timeout,
            component_id=component_id,
        )  # fmt: skip
        if not isinstance(path, str | os.PathLike) or str(path) in {"", ":memory:"}:
            raise ConfigurationError(
                f"SQLiteCheck(path={path!r}): must be the path of a database file"
            )
        self.path = Path(path)
        self._uri = self.path.absolute().as_uri() + ("?mode=ro" if readonly else "?mode=rw")

    async def run(self) -> CheckResult:
        """Open the database and read its schema; pass with the round trip in ms."""
        return await self._measure(lambda: self._in_thread(self._query))

    def _query(self) -> None:
        conn = sqlite3.connect(self._uri, uri=True, timeout=1.0)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()


def _mib(value: float) -> str:
    return f"{value / 2**20:.0f} MiB"


def _check_bytes(owner: str, option: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{owner}({option}={value!r}): must be an integer >= 0 or None")
    return value


class DiskCheck(BaseCheck):
    """Free space on the file system holding ``path``; value: free bytes.

    ``fail`` below ``min_free_bytes``, ``warn`` below ``warn_free_bytes``. Not critical by
    default (a full disk rarely makes another replica any better); ``statvfs`` runs in a
    thread, so a hung network file system times out instead of blocking the loop.

    Example::

        DiskCheck("/var/lib/app", min_free_bytes=500 * 2**20, warn_free_bytes=2 * 2**30)
    """

    component_type = "system"
    measurement = "free"

    def __init__(
        self,
        path: str | os.PathLike[str] = "/",
        *,
        min_free_bytes: int | None = 100 * 2**20,
        warn_free_bytes: int | None = 1 * 2**30,
        name: str = "disk",
        critical: bool = False,
        timeout: float | None = None,
        component_id: str | None = None,
    ) -> None:
        super().__init__(name=name, critical=critical, timeout=timeout, component_id=component_id)
        owner = "DiskCheck"
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise ConfigurationError(f"DiskCheck(path={path!r}): must be a path")
        self.path = os.fspath(path)
        self.min_free_bytes = _check_bytes(owner, "min_free_bytes", min_free_bytes)
        self.warn_free_bytes = _check_bytes(owner, "warn_free_bytes", warn_free_bytes)
        if (
            self.min_free_bytes is not None
            and self.warn_free_bytes is not None
            and self.warn_free_bytes < self.min_free_bytes
        ):
            raise ConfigurationError(
                f"{owner}(warn_free_bytes={warn_free_bytes!r}): must be >= min_free_bytes "
                f"({min_free_bytes!r})"
            )

    async def run(self) -> CheckResult:
        """Free bytes: fail under ``min_free_bytes``, warn under ``warn_free_bytes``."""
        usage = await self._in_thread(lambda: shutil.disk_usage(self.path))
        free = usage.free
        status: Status = "pass"
        output = None
        if self.min_free_bytes is not None and free < self.min_free_bytes:
            status, output = "fail", f"{_mib(free)} free < {_mib(self.min_free_bytes)}"
        elif self.warn_free_bytes is not None and free < self.warn_free_bytes:
            status, output = "warn", f"{_mib(free)} free < {_mib(self.warn_free_bytes)}"
        return CheckResult(status=status, observed_value=free, observed_unit="bytes", output=output)


def _rss_bytes() -> int:
    """Resident set size of this process (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource  # noqa: PLC0415 - POSIX only; Windows has neither source

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes; else KiB


class MemoryCheck(BaseCheck):
    """Resident memory of this process; value: bytes.

    Current RSS from ``/proc/self/statm`` on Linux; elsewhere the *peak* RSS from
    ``resource.getrusage`` (the only portable reading). ``fail`` above ``max_rss_bytes``,
    ``warn`` above ``warn_rss_bytes``; both None (the default) just reports.

    Example::

        MemoryCheck(max_rss_bytes=2 * 2**30, warn_rss_bytes=1536 * 2**20)
    """

    component_type = "system"
    measurement = "rss"

    def __init__(
        self,
        *,
        max_rss_bytes: int | None = None,
        warn_rss_bytes: int | None = None,
        name: str = "memory",
        critical: bool = False,
        timeout: float | None = None,
        component_id: str | None = None,
    ) -> None:
        super().__init__(name=name, critical=critical, timeout=timeout, component_id=component_id)
        owner = "MemoryCheck"
        self.max_rss_bytes = _check_bytes(owner, "max_rss_bytes", max_rss_bytes)
        self.warn_rss_bytes = _check_bytes(owner, "warn_rss_bytes", warn_rss_bytes)
        if (
            self.max_rss_bytes is not None
            and self.warn_rss_bytes is not None
            and self.warn_rss_bytes > self.max_rss_bytes
        ):
            raise ConfigurationError(
                f"{owner}(warn_rss_bytes={warn_rss_bytes!r}): must be <= max_rss_bytes "
                f"({max_rss_bytes!r})"
            )

    async def run(self) -> CheckResult:
        """RSS: fail above ``max_rss_bytes``, warn above ``warn_rss_bytes``."""
        rss = _rss_bytes()
        status: Status = "pass"
        output = None
        if self.max_rss_bytes is not None and rss > self.max_rss_bytes:
            status, output = "fail", f"{_mib(rss)} resident > {_mib(self.max_rss_bytes)}"
        elif self.warn_rss_bytes is not None and rss > self.warn_rss_bytes:
            status, output = "warn", f"{_mib(rss)} resident > {_mib(self.warn_rss_bytes)}"
        return CheckResult(status=status, observed_value=rss, observed_unit="bytes", output=output)


class BreakersCheck(BaseCheck):
    """Named circuit breakers that are not closed, as a ``warn``; never critical.

    An open breaker already protects the service (calls fail fast), so readiness does not
    depend on it; the report shows it so that people see it. Observed value: the number
    of open or half-open breakers; output: their names and states.

    Example::

        BreakersCheck()                    # buttress.resilience.registry
        BreakersCheck(registry=my_registry)
    """

    component_type = "component"
    measurement = "open"

    def __init__(self, *, registry: Registry = registry, name: str = "circuitBreakers") -> None:
        super().__init__(name=name, critical=False)
        if not isinstance(registry, Registry):
            raise ConfigurationError(
                f"BreakersCheck(registry={registry!r}): must be a buttress.resilience.Registry"
            )
        self.registry = registry

    async def run(self) -> CheckResult:
        """Warn when any registered breaker is open or half-open."""
        troubled = []
        for breaker in self.registry.breakers():
            snap = breaker.snapshot()
            if snap.state == "open":
                troubled.append(f"{snap.name} open ({snap.open_remaining:.1f} s left)")
            elif snap.state != "closed":
                troubled.append(f"{snap.name} {snap.state}")
        if not troubled:
            return CheckResult(status="pass", observed_value=0)
        return CheckResult(status="warn", observed_value=len(troubled), output="; ".join(troubled))


class CallableCheck(BaseCheck):
    """A plain function as a check: the start-up checks' usual shape.

    ``fn`` takes no argument; it may be async (awaited on the loop) or sync (run in a
    daemon thread of its own, so a slow one never blocks the loop: ``alembic`` asking the
    database for its revision). It passes when it returns None or a true value, fails
    with output ``"returned False"`` when it returns a false one, and fails with the
    exception's type when it raises (the message may hold a secret, so it is not shown).

    Args:
        fn: the function.
        name: component name (default: the function's name).
        critical: whether a failure counts (default True).
        timeout: seconds it may take (None: the middleware's ``check_timeout``).

    Example::

        async def caches_warm() -> bool:
            return catalog.loaded

        CallableCheck(caches_warm)              # name "caches_warm"
    """

    component_type = "component"
    measurement = None

    def __init__(
        self,
        fn: Callable[[], object],
        *,
        name: str | None = None,
        critical: bool = True,
        timeout: float | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"CallableCheck(fn={fn!r}): must be a function")
        if name is None:
            raw = str(getattr(fn, "__name__", "") or type(fn).__name__)
            name = re.sub(r"[^A-Za-z0-9_.\-]", "_", raw).strip("_.-")[:64] or "startup"
        super().__init__(name=name, critical=critical, timeout=timeout)
        self.fn = fn
        self._async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - instances with an async __call__
        )

    async def run(self) -> CheckResult:
        """Call the function; its answer (or exception) is the result."""
        if self._async:
            answer = await cast("Awaitable[object]", self.fn())
        else:
            answer = await self._in_thread(self.fn)
            if inspect.isawaitable(answer):  # a sync function that returned a coroutine
                answer = await answer
        if answer is None or answer:
            return CheckResult(status="pass")
        return CheckResult(status="fail", output="returned False")


def as_check(item: object, owner: str) -> Check:
    """``item`` as a `Check`: a check stays itself; a function becomes a `CallableCheck`."""
    if isinstance(item, Check):
        return item
    if callable(item):
        return CallableCheck(item)
    raise ConfigurationError(
        f"{owner}: {item!r} is neither a check (name, critical, component_type, async run()) "
        "nor a function to call"
    )
