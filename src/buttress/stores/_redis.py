"""`RedisStore`: every store capability on a Redis server, one Lua script per decision.

Each operation is written once: pure code builds the command (script sha, keys, arguments)
and parses the reply; one sync driver (`RedisStore._run`) and one async driver
(`RedisStore._arun`) send it with ``EVALSHA``. The scripts are the files of
``buttress/stores/lua/`` (package data). A new client loads every script (one write), and
loads them again after ``NOSCRIPT`` (a restarted server, ``SCRIPT FLUSH``). The drivers
use redis-py's connections, through its public API, in lean clients of their own (one
packed write, one reply read: see `buttress.stores._redis_client`). Driver errors become
`BackendError`.

Records:

* rate limits: one string per key holding its GCRA TAT (exact decimal text of a double),
  expiring when the key is back to a full burst; N keys are decided in one script
  (``gcra.lua``), all or nothing, with exactly the admission test of `buttress._gcra` (the
  script returns the TATs it read and its time, and Python replays `gcra` on them for the
  decisions); a single key, the common case, has a shorter script (``gcra_one.lua``);
* idempotency: one hash per key (fingerprint ``f``, token ``t``, lease end or expiry ``u``,
  response ``r``), expiring at the lease end, then at the stored response's end;
* breaker state: one hash per breaker, a field per instance (``published expires state``),
  expired fields dropped when read, the key expiring with the latest report.

Time: with ``clock=None`` the scripts read the server's ``TIME``, so a fleet shares one
clock; with a clock, its ``now()`` is sent with each command (deterministic tests). Keys
are `store_key` names (hashed; the hash is the cluster hash tag). Requires Redis >= 5.

Repeated requests for a key over its limit are answered locally by `LocalDenials` (no round
trip) until the key could be admitted. The sync client is created on first use; async
clients, one per event loop, likewise (closed with their loop when it shuts down, or by
`RedisStore.close`). When every pooled connection is busy, a call waits up to ``timeout``
for one.

Redis Cluster is not supported yet: a multi-key decision spans keys in different slots,
which one script cannot touch on a cluster (single-key calls would work).

Example::

    from buttress.stores import Rate, RateRequest, open_store

    store = open_store("redis://127.0.0.1:6379/0")
    [d] = store.acquire([RateRequest("user:42", Rate.parse("100/minute"))])
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import threading
import time
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from buttress._clock import Clock
from buttress._gcra import EPSILON, Rate, RateDecision, RateRequest, gcra
from buttress._urls import masked
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
from buttress.stores._redis_client import AsyncClient, Client, discard_async, pack

__all__ = ["RedisStore"]

_NAMES_MAX = 10_000  # cached key -> stored name entries (cleared when full)
_LUA = files("buttress.stores") / "lua"


def _lua(name: str) -> str:
    return (_LUA / f"{name}.lua").read_text(encoding="utf-8")


class _Script:
    """A Lua script of ``lua/`` and its sha1 (both computed once, at import)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, *, timed: bool = False) -> None:
        self.name = name
        # a timed script runs after now.lua, which reads the time from ARGV[1]
        self.source = _lua("now") + _lua(name) if timed else _lua(name)
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


_GCRA_ONE = _Script("gcra_one")  # KEYS: the key. ARGV: now ('-': TIME), tau + EPSILON, step
_GCRA = _Script("gcra")  # KEYS: N keys. ARGV: "now interval burst cost ..."
_BEGIN = _Script("begin", timed=True)  # KEYS: record. ARGV: now, fp, token, lease, lease ms
_RENEW = _Script("renew", timed=True)  # KEYS: record. ARGV: now, token, lease, lease ms
_COMPLETE = _Script("complete", timed=True)  # KEYS: record. ARGV: now, token, body, ttl, ms
_RELEASE = _Script("release")  # KEYS: record. ARGV: token
_PUBLISH = _Script("publish", timed=True)  # KEYS: breaker. ARGV: now, instance, state, ttl, ms
_REPORTS = _Script("reports", timed=True)  # KEYS: breaker. ARGV: now

_SCRIPTS = (_GCRA_ONE, _GCRA, _BEGIN, _RENEW, _COMPLETE, _RELEASE, _PUBLISH, _REPORTS)
# SCRIPT LOAD of every script, one write: sent by a new client, and after NOSCRIPT
_LOAD_ALL = b"".join(pack(("SCRIPT", "LOAD", script.source)) for script in _SCRIPTS)
_GCRA_SHA = _GCRA.sha.encode()
_GCRA_ONE_SHA = _GCRA_ONE.sha.encode()


def _ms(seconds: float) -> int:
    """A key lifetime in whole milliseconds (at least 1: PEXPIRE 0 deletes the key)."""
    return max(1, math.ceil(seconds * 1000))


# ---------------------------------------------------------------- pure reply parsers
def _begin_result(reply: list[bytes], token: str) -> Begin:
    kind = reply[0]
    if kind == b"a":
        return Begin(BeginOutcome.ACQUIRED, token=token)
    if kind == b"r":
        return Begin(BeginOutcome.REPLAY, response=StoredResponse.decode(reply[1]))
    if kind == b"i":
        return Begin(BeginOutcome.IN_FLIGHT, retry_after=float(reply[1]))
    if kind == b"m":
        return Begin(BeginOutcome.MISMATCH)
    raise BackendError(f"unexpected reply to begin: {reply!r}")


def _reports_result(reply: list[bytes]) -> list[BreakerReport]:
    reports = [
        BreakerReport(reply[i].decode(), reply[i + 1].decode(), float(reply[i + 2]))
        for i in range(0, len(reply), 3)
    ]
    reports.sort(key=lambda r: r.instance)
    return reports


# ---------------------------------------------------------------- the store
class RedisStore:
    """All store capabilities on Redis (``redis://``, ``rediss://``, ``unix://`` URLs).

    Args:
        url: the server, as redis-py's ``from_url`` reads it.
        clock: None (the default) uses the server's clock; a `Clock` sends its time.
        namespace: prefix of every key (tests use a fresh one each).
        timeout: seconds for connecting and for each reply (default 1: a busy event loop
            reads a reply late, and a false timeout costs more than a slow answer).
        local_denials: answer repeated requests for a denied key locally, without a
            round trip, until it could be admitted (see `LocalDenials`).
        max_connections: per connection pool (one sync, one per event loop); when all are
            busy, a call waits up to ``timeout`` for one, then raises `BackendError`.
        **redis_options: options of redis-py's connections, as its
            ``ConnectionPool.from_url`` takes them (``ssl_ca_certs=``, ...).

    Example::

        store = RedisStore("redis://127.0.0.1:6379/0", timeout=0.25)
        store.ping()
        begin = store.begin("idem-key", "fingerprint", lease=30.0)
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        clock: Clock | None = None,
        namespace: str = "buttress",
        timeout: float = 1.0,
        local_denials: bool = True,
        max_connections: int = 64,
        **redis_options: Any,
    ) -> None:
        if not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ConfigurationError(f"RedisStore timeout must be seconds > 0, got {timeout!r}")
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigurationError(
                f"RedisStore max_connections must be >= 1, got {max_connections!r}"
            )
        if not namespace or "{" in namespace or "}" in namespace:
            raise ConfigurationError(
                f"RedisStore namespace must be non-empty, without braces, got {namespace!r}"
            )
        self.url = url
        self.clock = clock
        self.namespace = namespace
        self.timeout = float(timeout)
        self._label = f"RedisStore({masked(url)})"
        self.max_connections = max_connections
        self._options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),  # connect once; `Client` resends on a stale socket
            **redis_options,
        }
        # local time: the clock's, else the monotonic system clock (for local denials)
        self._now = clock.now if clock is not None else time.monotonic
        self._server_time = clock is None
        self._denials = LocalDenials() if local_denials else None
        self._names: dict[str, bytes] = {}
        self._specs: dict[int, tuple[Rate, bytes, bytes, bytes]] = {}
        self._lock = threading.Lock()
        self._client: Client | None = None
        # one async client per event loop (pytest-asyncio runs a loop per test); the hot path
        # reads the last one used as one (loop, client) pair
        self._aclients: dict[asyncio.AbstractEventLoop, AsyncClient] = {}
        self._acurrent: tuple[asyncio.AbstractEventLoop | None, Any] = (None, None)

    def __repr__(self) -> str:
        return self._label

    # ------------------------------------------------------------ drivers
    def _connect(self) -> Client:
        with self._lock:
            if self._client is None:
                self._client = Client(self.url, self._options, self.max_connections, self.timeout)
            return self._client

    def _aconnect(self, loop: asyncio.AbstractEventLoop) -> AsyncClient:
        """The async client of ``loop`` (made on first use); clients of closed loops go."""
        with self._lock:
            client = self._aclients.get(loop)
            if client is None:
                options = {**self._options, "socket_timeout": None}  # see `AsyncClient`
                if isinstance(options["retry"], Retry):  # the asyncio client has its own
                    options["retry"] = AsyncRetry(NoBackoff(), 0)
                client = self._aclients[loop] = AsyncClient(
                    self.url, options, self.max_connections, self.timeout
                )
            stale = [(old, c) for old, c in self._aclients.items() if old.is_closed()]
            for old, _ in stale:
                del self._aclients[old]
            self._acurrent = (loop, client)
        for old, c in stale:
            discard_async(c, old)
        return client

    def _run(self, op: str, command: tuple[Any, ...], script: _Script | None = None) -> Any:
        """Send ``command`` on the sync client (after NOSCRIPT, with a ``script``: reload)."""
        client = self._client
        try:
            if client is None:
                client = self._connect()
                client.exchange(_LOAD_ALL, len(_SCRIPTS))
            try:
                return client.execute_command(*command)
            except NoScriptError:
                if script is None:
                    raise
                client.exchange(_LOAD_ALL, len(_SCRIPTS))  # a restart or a flush lost them all
                return client.execute_command(*command)
        except Exception:
            with backend_errors(self._label, op):
                raise
            raise  # pragma: no cover - backend_errors always raises

    async def _arun(self, op: str, command: tuple[Any, ...], script: _Script | None = None) -> Any:
        """Send ``command`` on the async client of the running loop; `_run`, async."""
        loop = asyncio.get_running_loop()
        current_loop, client = self._acurrent
        try:
            if current_loop is not loop:
                client = self._aconnect(loop)
                if not client.ready:
                    await client.start()
                    await client.exchange(_LOAD_ALL, len(_SCRIPTS))
            try:
                return await client.execute_command(*command)
            except NoScriptError:
                if script is None:
                    raise
                await client.exchange(_LOAD_ALL, len(_SCRIPTS))
                return await client.execute_command(*command)
        except Exception:
            with backend_errors(self._label, op):
                raise
            raise  # pragma: no cover - backend_errors always raises

    def _rl_name(self, key: str) -> bytes:
        """The stored name of a rate key, encoded (cached: the hot path hashes nothing)."""
        name = self._names.get(key)
        if name is None:
            if len(self._names) >= _NAMES_MAX:
                self._names.clear()
            name = self._names[key] = store_key(self.namespace, "rl", key).encode()
        return name

    def _name(self, kind: str, key: str) -> str:
        return store_key(self.namespace, kind, key)

    def _time_arg(self, now: float) -> float | bytes:
        return b"-" if self._server_time else now

    # ------------------------------------------------------------ rate limits
    def _rate_args(self, rate: Rate) -> tuple[Rate, bytes, bytes, bytes]:
        """Per `Rate`, cached: (rate, " interval burst ", tau + EPSILON, interval), as text."""
        entry = self._specs.get(id(rate))
        if entry is None or entry[0] is not rate:  # the entry holds the rate: ids stay unique
            if len(self._specs) >= _NAMES_MAX:
                self._specs.clear()
            interval = rate.interval
            entry = self._specs[id(rate)] = (
                rate,
                f" {interval!r} {rate.burst} ".encode(),
                repr(interval * rate.burst + EPSILON).encode(),  # exactly `decide`'s
                repr(interval).encode(),
            )
        return entry

    def _gcra_command(self, requests: Sequence[RateRequest], now: float) -> tuple[Any, ...]:
        time_arg = b"-" if self._server_time else repr(now).encode()
        if len(requests) == 1:
            req = requests[0]
            _, _, tau_eps, interval = self._rate_args(req.rate)
            step = interval if req.cost == 1 else repr(req.rate.interval * req.cost).encode()
            name = self._rl_name(req.key)
            return (b"EVALSHA", _GCRA_ONE_SHA, b"1", name, time_arg, tau_eps, step)
        names = [self._rl_name(req.key) for req in requests]
        specs = [self._rate_args(req.rate)[1] + str(req.cost).encode() for req in requests]
        return (b"EVALSHA", _GCRA_SHA, len(names), *names, b"".join([time_arg, *specs]))

    def _gcra_result(
        self, requests: Sequence[RateRequest], reply: bytes, sent: float
    ) -> list[RateDecision]:
        words = reply.split()
        tats: list[float | None]
        if len(requests) == 1:  # "tat [seconds microseconds]"
            server_now = int(words[1]) + int(words[2]) / 1_000_000 if len(words) == 3 else sent
            tats = [None if words[0] == b"-" else float(words[0])]
        else:  # "now tat ..."
            server_now = float(words[0])
            tats = [None if t == b"-" else float(t) for t in words[1:]]
        decisions, new = gcra(tats, server_now, requests)
        denials = self._denials
        if denials is not None:
            if new is None:
                denials.record(requests, tats, server_now, sent)
            else:
                denials.refresh(requests, new, server_now, sent)
        return decisions

    def acquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """Decide every limit at once, all or nothing (see `RateLimitStore`).

        Example::

            [d] = store.acquire([RateRequest("user:42", Rate.parse("10/second"))])
        """
        now = self._now()
        if self._denials is not None:
            local = self._denials.check(requests, now)
            if local is not None:
                return local
        script = _GCRA_ONE if len(requests) == 1 else _GCRA
        reply = self._run("acquire", self._gcra_command(requests, now), script)
        return self._gcra_result(requests, reply, now)

    async def aacquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """Async `acquire`."""
        now = self._now()
        if self._denials is not None:
            local = self._denials.check(requests, now)
            if local is not None:
                return local
        script = _GCRA_ONE if len(requests) == 1 else _GCRA
        reply = await self._arun("acquire", self._gcra_command(requests, now), script)
        return self._gcra_result(requests, reply, now)

    # ------------------------------------------------------------ idempotency
    def _begin_command(
        self, key: str, fingerprint: str, lease: float, token: str
    ) -> tuple[Any, ...]:
        name = self._name("idem", key)
        now = self._time_arg(self._now())
        return ("EVALSHA", _BEGIN.sha, 1, name, now, fingerprint, token, lease, _ms(lease))

    def begin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """Take ``key`` for ``lease`` seconds, or say why not (see `IdempotencyStore`).

        Example::

            b = store.begin("idem-key", "sha256-of-request", lease=30.0)
            if b.outcome is BeginOutcome.REPLAY: ...
        """
        token = secrets.token_hex(8)
        reply = self._run("begin", self._begin_command(key, fingerprint, lease, token), _BEGIN)
        return _begin_result(reply, token)

    async def abegin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """Async `begin`."""
        token = secrets.token_hex(8)
        command = self._begin_command(key, fingerprint, lease, token)
        return _begin_result(await self._arun("begin", command, _BEGIN), token)

    def _renew_command(self, key: str, token: str, lease: float) -> tuple[Any, ...]:
        now = self._time_arg(self._now())
        return ("EVALSHA", _RENEW.sha, 1, self._name("idem", key), now, token, lease, _ms(lease))

    def renew(self, key: str, token: str, lease: float) -> bool:
        """Extend the lease; False when ``token`` no longer holds the key."""
        return bool(self._run("renew", self._renew_command(key, token, lease), _RENEW))

    async def arenew(self, key: str, token: str, lease: float) -> bool:
        """Async `renew`."""
        return bool(await self._arun("renew", self._renew_command(key, token, lease), _RENEW))

    def _complete_command(
        self, key: str, token: str, response: StoredResponse, ttl: float
    ) -> tuple[Any, ...]:
        name = self._name("idem", key)
        now = self._time_arg(self._now())
        return ("EVALSHA", _COMPLETE.sha, 1, name, now, token, response.encode(), ttl, _ms(ttl))

    def complete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        """Store ``response`` for replay for ``ttl`` seconds; False when not the holder."""
        command = self._complete_command(key, token, response, ttl)
        return bool(self._run("complete", command, _COMPLETE))

    async def acomplete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        """Async `complete`."""
        command = self._complete_command(key, token, response, ttl)
        return bool(await self._arun("complete", command, _COMPLETE))

    def _release_command(self, key: str, token: str) -> tuple[Any, ...]:
        return ("EVALSHA", _RELEASE.sha, 1, self._name("idem", key), token)

    def release(self, key: str, token: str) -> None:
        """Free the key when ``token`` still holds it."""
        self._run("release", self._release_command(key, token), _RELEASE)

    async def arelease(self, key: str, token: str) -> None:
        """Async `release`."""
        await self._arun("release", self._release_command(key, token), _RELEASE)

    # ------------------------------------------------------------ breaker state
    def _publish_command(self, name: str, instance: str, state: str, ttl: float) -> tuple[Any, ...]:
        key = self._name("br", name)
        now = self._time_arg(self._now())
        return ("EVALSHA", _PUBLISH.sha, 1, key, now, instance, state, ttl, _ms(ttl))

    def publish(self, name: str, instance: str, state: str, ttl: float) -> None:
        """Record ``instance``'s state of breaker ``name`` for ``ttl`` seconds.

        Example::

            store.publish("payments", "web-1", "open", ttl=30.0)
        """
        self._run("publish", self._publish_command(name, instance, state, ttl), _PUBLISH)

    async def apublish(self, name: str, instance: str, state: str, ttl: float) -> None:
        """Async `publish`."""
        await self._arun("publish", self._publish_command(name, instance, state, ttl), _PUBLISH)

    def _reports_command(self, name: str) -> tuple[Any, ...]:
        now = self._time_arg(self._now())
        return ("EVALSHA", _REPORTS.sha, 1, self._name("br", name), now)

    def reports(self, name: str) -> list[BreakerReport]:
        """The unexpired reports for breaker ``name``, by instance.

        Example::

            states = {r.instance: r.state for r in store.reports("payments")}
        """
        return _reports_result(self._run("reports", self._reports_command(name), _REPORTS))

    async def areports(self, name: str) -> list[BreakerReport]:
        """Async `reports`."""
        return _reports_result(await self._arun("reports", self._reports_command(name), _REPORTS))

    # ------------------------------------------------------------ lifecycle
    def ping(self) -> None:
        """Raise `BackendError` when the server does not answer (``PING``).

        Example::

            store.ping()
        """
        self._run("ping", ("PING",))

    async def aping(self) -> None:
        """Async `ping`."""
        await self._arun("ping", ("PING",))

    def _take_clients(
        self,
    ) -> tuple[Client | None, list[tuple[asyncio.AbstractEventLoop, AsyncClient]]]:
        with self._lock:
            client, self._client = self._client, None
            aclients = list(self._aclients.items())
            self._aclients.clear()
            self._acurrent = (None, None)
        if self._denials is not None:
            self._denials.clear()
        return client, aclients

    def close(self) -> None:
        """Close the connections (idempotent; the store reconnects if used again).

        Example::

            store.close()
        """
        client, aclients = self._take_clients()
        with backend_errors(self._label, "close"):
            if client is not None:
                client.close()
            for loop, aclient in aclients:
                discard_async(aclient, loop)

    async def aclose(self) -> None:
        """Async `close`."""
        client, aclients = self._take_clients()
        running = asyncio.get_running_loop()
        with backend_errors(self._label, "close"):
            if client is not None:
                client.close()
            for loop, aclient in aclients:
                if loop is running:
                    await aclient.aclose()
                else:
                    discard_async(aclient, loop)
