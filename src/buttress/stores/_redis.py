"""`RedisStore`: every store capability on a Redis server, one Lua script per decision.

Each operation is written once: pure code builds the command (script sha, keys, arguments)
and parses the reply; one sync driver (`RedisStore._run`) and one async driver
(`RedisStore._arun`) send it with ``EVALSHA``. A new client loads every script (one write),
and loads them again after ``NOSCRIPT`` (a restarted server, ``SCRIPT FLUSH``). The drivers
use redis-py's connections through lean pools and clients of their own (one packed write,
one reply read, no per-call probes: see `_Client`). Driver errors become `BackendError`.

Records:

* rate limits: one string per key holding its GCRA TAT (exact decimal text of a double),
  expiring when the key is back to a full burst; N keys are decided in one script, all or
  nothing, with exactly the arithmetic of `buttress.stores._base.gcra` (the script returns
  the TATs it read and its time, and Python replays `gcra` on them for the decisions); a
  single key, the common case, has a shorter script of its own;
* idempotency: one hash per key (fingerprint ``f``, token ``t``, lease end or expiry ``u``,
  response ``r``), expiring at the lease end, then at the stored response's end;
* breaker state: one hash per breaker, a field per instance (``published expires state``),
  expired fields dropped when read, the key expiring with the latest report.

Time: with ``clock=None`` the scripts read the server's ``TIME``, so a fleet shares one
clock; with a clock, its ``now()`` is sent with each command (deterministic tests). Keys
are `store_key` names (hashed; the hash is the cluster hash tag). Requires Redis >= 5.

Repeated requests for a key over its limit are answered locally by `LocalDenials` (no round
trip) until the key could be admitted. The sync client is created on first use; async
clients, one per event loop, likewise (a client of a closed loop is closed when noticed).
When every pooled connection is busy, a call waits up to ``timeout`` for one.

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
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import MaxConnectionsError, NoScriptError
from redis.retry import Retry

from buttress._clock import Clock
from buttress.errors import BackendError, ConfigurationError
from buttress.stores._base import (
    Begin,
    BeginOutcome,
    BreakerReport,
    Rate,
    RateDecision,
    RateRequest,
    StoredResponse,
    backend_errors,
    gcra,
    store_key,
)
from buttress.stores._denials import LocalDenials

__all__ = ["RedisStore"]

_NAMES_MAX = 10_000  # cached key -> stored name entries (cleared when full)


class _Script:
    """A Lua script and its sha1 (computed once, at import)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


def _pack(args: tuple[Any, ...]) -> bytes:
    """A command in RESP: an array of bulk strings (floats as ``repr``, like redis-py)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if type(arg) is bytes else (arg if isinstance(arg, str) else repr(arg)).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


# ARGV[1] is the time: '-' -> the server's TIME, else seconds on the caller's clock.
_NOW = """
local now
if ARGV[1] == '-' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local function fmt(x) return string.format('%.17g', x) end
"""

# KEYS: N rate keys. ARGV[1]: "now interval burst cost [interval burst cost ...]" (one
# argument is cheaper to pack than 3N+1; now is '-' for the server's TIME).
# Returns "now tat ..." ('-' for an absent key): the caller replays `gcra()` on exactly these
# numbers, so the script only decides whether to write, with gcra()'s arithmetic.
_GCRA = _Script(
    "gcra",
    """
local next_word = string.gmatch(ARGV[1], '%S+')
local now = next_word()
if now == '-' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(now)
end
local olds, news, ok = {string.format('%.17g', now)}, {}, true
for i = 1, #KEYS do
  local interval = tonumber(next_word())
  local tau = interval * tonumber(next_word())
  local stored = redis.call('GET', KEYS[i])
  local tat = now
  if stored then
    olds[i + 1] = stored
    local s = tonumber(stored)
    if s >= now then tat = s end
  else
    olds[i + 1] = '-'
  end
  local new_tat = tat + interval * tonumber(next_word())
  news[i] = new_tat
  if new_tat - tau > now + 1e-6 then ok = false end
end
if ok then
  for i = 1, #KEYS do
    local ms = math.ceil((news[i] - now) * 1000)
    if ms < 1 then ms = 1 end
    redis.call('SET', KEYS[i], news[i], 'PX', ms)  -- Redis writes numbers exactly (%.17g)
  end
end
return table.concat(olds, ' ')
""",
)

# The same for one key (most decisions), with less Lua: no argument parsing, no formatting.
# KEYS: the rate key. ARGV: now ('-': the server's TIME), tau, interval x cost (all exact
# `repr`s of what `gcra` computes). Returns the stored TAT ('-' when absent), followed by
# TIME's seconds and microseconds when the server's clock was read: the caller computes
# now = seconds + microseconds / 1e6 exactly as the script did and replays `gcra()`.
_GCRA_ONE = _Script(
    "gcra1",
    """
local now, t = ARGV[1], nil
if now == '-' then
  t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(now)
end
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then
  local s = tonumber(stored)
  if s >= now then tat = s end
end
local new_tat = tat + tonumber(ARGV[3])
if new_tat - tonumber(ARGV[2]) <= now + 1e-6 then
  local ms = math.ceil((new_tat - now) * 1000)
  if ms < 1 then ms = 1 end
  redis.call('SET', KEYS[1], new_tat, 'PX', ms)
end
stored = stored or '-'
if t then return stored .. ' ' .. t[1] .. ' ' .. t[2] end
return stored
""",
)

# KEYS: record. ARGV: now, fingerprint, token, lease, lease ms.
_BEGIN = _Script(
    "begin",
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'u', 'f', 'r')
if h[1] and tonumber(h[1]) > now then
  if h[2] ~= ARGV[2] then return {'m'} end
  if h[3] then return {'r', h[3]} end
  return {'i', fmt(tonumber(h[1]) - now)}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'f', ARGV[2], 't', ARGV[3], 'u', fmt(now + tonumber(ARGV[4])))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'a'}
""",
)

# KEYS: record. ARGV: now, token, lease, lease ms.
_RENEW = _Script(
    "renew",
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 't', 'r', 'u')
if h[1] ~= ARGV[2] or h[2] or tonumber(h[3]) <= now then return 0 end
redis.call('HSET', KEYS[1], 'u', fmt(now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
""",
)

# KEYS: record. ARGV: now, token, response, ttl, ttl ms.
_COMPLETE = _Script(
    "complete",
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 't', 'r', 'u')
if h[1] ~= ARGV[2] or h[2] or tonumber(h[3]) <= now then return 0 end
redis.call('HSET', KEYS[1], 'r', ARGV[3], 'u', fmt(now + tonumber(ARGV[4])))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
""",
)

# KEYS: record. ARGV: token.
_RELEASE = _Script(
    "release",
    """
local h = redis.call('HMGET', KEYS[1], 't', 'r')
if h[1] == ARGV[1] and not h[2] then redis.call('DEL', KEYS[1]) end
return 0
""",
)

# KEYS: breaker. ARGV: now, instance, state, ttl, ttl ms.
_PUBLISH = _Script(
    "publish",
    _NOW
    + """
local value = fmt(now) .. ' ' .. fmt(now + tonumber(ARGV[4])) .. ' ' .. ARGV[3]
redis.call('HSET', KEYS[1], ARGV[2], value)
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return 0
""",
)

# KEYS: breaker. ARGV: now. Returns {instance, state, age, ...} of the live reports.
_REPORTS = _Script(
    "reports",
    _NOW
    + """
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local a = string.find(v, ' ', 1, true)
  local b = string.find(v, ' ', a + 1, true)
  local at = tonumber(string.sub(v, 1, a - 1))
  if tonumber(string.sub(v, a + 1, b - 1)) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    out[#out + 1] = all[i]
    out[#out + 1] = string.sub(v, b + 1)
    out[#out + 1] = fmt(now - at)
  end
end
return out
""",
)

_SCRIPTS = (_GCRA_ONE, _GCRA, _BEGIN, _RENEW, _COMPLETE, _RELEASE, _PUBLISH, _REPORTS)
# SCRIPT LOAD of every script, one write: sent by a new client, and after NOSCRIPT
_LOAD_ALL = b"".join(_pack(("SCRIPT", "LOAD", script.source)) for script in _SCRIPTS)
_GCRA_SHA = _GCRA.sha.encode()
_GCRA_ONE_SHA = _GCRA_ONE.sha.encode()


def _ms(seconds: float) -> int:
    """A key lifetime in whole milliseconds (at least 1: PEXPIRE 0 deletes the key)."""
    return max(1, math.ceil(seconds * 1000))


def _redacted(url: str) -> str:
    """``url`` for messages: no password, no query string (it may hold one too)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    return f"{parts.scheme}://{netloc}{parts.path}"


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


# ---------------------------------------------------------------- lean pools and clients
# The store sends one packed command and reads one reply; redis-py's client and pools do
# far more per call (retry closures, metrics, events, and a probe of every pooled socket
# for unread data: a non-blocking recv and two settimeout syscalls). On a loopback round
# trip that was a third of the time. These keep redis-py's connections (URL options, TLS,
# AUTH, RESP parsing, connect and timeouts), and its pools for creating connections, but
# hand idle ones out and take them back with a list operation. That is safe because only
# `_Client`/`_AsyncClient` use these pools, through redis-py's ``send_packed_command`` and
# ``read_response``, which disconnect on any error: a connection comes back either with its
# reply read in full or closed (it reconnects on next use). redis-py's pool metrics and
# release events are skipped on that path, except the one that matters (re-AUTH after a
# credentials refresh, and reconnect requests, go through redis-py's own release).
#
# redis-py's pools also raise MaxConnectionsError the moment every connection is busy;
# these wait (up to the store's timeout) instead: a burst queues for a connection.
def _idle_safe(connection: Any) -> bool:
    """True when releasing ``connection`` needs nothing beyond putting it back."""
    return not getattr(connection, "_should_reconnect", False) and (
        getattr(connection, "_re_auth_token", None) is None
    )


class _WaitingPool(redis.ConnectionPool):
    def __init__(self, *, wait: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wait = wait
        self._freed = threading.Condition()
        self._waiting = 0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self.pid == os.getpid():  # else redis-py resets the pool (a forked child)
            with self._lock:
                if self._available_connections:
                    connection = self._available_connections.pop()
                    self._in_use_connections.add(connection)
                    return connection
        take: Any = super().get_connection  # untyped in redis-py
        try:
            return take(*args, **kwargs)
        except MaxConnectionsError:
            pass
        deadline = time.monotonic() + self._wait
        with self._freed:
            self._waiting += 1
            try:
                while (left := deadline - time.monotonic()) > 0:
                    self._freed.wait(min(left, 0.01))  # short slices: a missed notify is harmless
                    with suppress(MaxConnectionsError):
                        return take(*args, **kwargs)
            finally:
                self._waiting -= 1
        raise MaxConnectionsError(f"all connections busy for {self._wait} s")

    def release(self, connection: Any) -> None:
        if self.pid == os.getpid() == connection.pid and _idle_safe(connection):
            with self._lock:
                if connection in self._in_use_connections:
                    self._in_use_connections.remove(connection)
                    self._available_connections.append(connection)
        else:
            super().release(connection)
        if self._waiting:
            with self._freed:
                self._freed.notify()


class _AsyncWaitingPool(redis.asyncio.ConnectionPool):
    def __init__(self, *, wait: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wait = wait
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_idle(self) -> Any:
        """An idle connection, or None (then await `get_connection`); never suspends."""
        if self._available_connections:
            connection = self._available_connections.pop()
            self._in_use_connections.add(connection)
            return connection
        return None

    def put_back(self, connection: Any) -> bool:
        """Return ``connection`` without suspending; False: await `release` instead."""
        if not _idle_safe(connection):
            return False
        if connection in self._in_use_connections:  # else not ours (any more): dropped
            self._in_use_connections.remove(connection)
            self._available_connections.append(connection)
            self._wake()
        return True

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        take: Any = super().get_connection  # untyped in redis-py
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while True:
            if self.can_get_connection():
                with suppress(MaxConnectionsError):
                    return await take(*args, **kwargs)
            left = deadline - loop.time()
            if left <= 0:
                raise MaxConnectionsError(f"all connections busy for {self._wait} s")
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                with suppress(TimeoutError):
                    async with asyncio.timeout(min(left, 0.05)):  # slices: a missed wake-up
                        await waiter  # only delays
            finally:
                with suppress(ValueError):
                    self._waiters.remove(waiter)

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break


def _read(connection: Any, replies: int) -> Any:
    """Read ``replies`` replies, return the last; an earlier error closes the connection."""
    if replies > 1:
        try:
            for _ in range(replies - 1):
                connection.read_response()
        except redis.ResponseError:
            connection.disconnect()  # replies left unread: never pool it like this
            raise
    return connection.read_response()


async def _aread(connection: Any, replies: int) -> Any:
    """`_read`, async."""
    if replies > 1:
        try:
            for _ in range(replies - 1):
                await connection.read_response()
        except redis.ResponseError:
            await connection.disconnect()
            raise
    return await connection.read_response()


class _Client:
    """The sync client: one command, one pooled connection, one reply.

    A pooled socket the server has closed (restart, idle timeout) fails with a connection
    error on first use: the command is sent once more, on a new connection. Timeouts and
    failed connects are never repeated.
    """

    def __init__(self, pool: _WaitingPool) -> None:
        self.connection_pool = pool

    def execute_command(self, *args: Any) -> Any:
        return self.exchange(_pack(args))

    def exchange(self, packed: bytes, replies: int = 1) -> Any:
        """Send ``packed`` (``replies`` commands); the last reply (earlier ones must succeed)."""
        pool = self.connection_pool
        connection: Any = pool.get_connection()
        try:
            connection.connect()  # when it is not: a failed connect is not repeated
            try:
                connection.send_packed_command([packed])
                return _read(connection, replies)
            except redis.ConnectionError:
                pass  # a socket the server closed; the failure disconnected it
            connection.send_packed_command([packed])  # so this reconnects
            return _read(connection, replies)
        finally:
            pool.release(connection)

    def close(self) -> None:
        self.connection_pool.disconnect()


class _AsyncClient:
    """The async client of one event loop; `_Client`, async.

    Its connections have no socket timeout of their own: redis-py would arm one for the
    send (a task, on Python 3.11) and one for the reply; one deadline covers the whole call
    here (waiting for a connection, connecting, sending, reading). On expiry redis-py's
    send and read, cancelled, close the connection.
    """

    def __init__(self, pool: _AsyncWaitingPool, timeout: float | None) -> None:
        self.connection_pool = pool
        self.timeout = timeout
        self.loaded = False  # the scripts, by this client

    async def execute_command(self, *args: Any) -> Any:
        return await self.exchange(_pack(args))

    async def exchange(self, packed: bytes, replies: int = 1) -> Any:
        """`_Client.exchange`, async."""
        pool = self.connection_pool
        connection: Any = pool.take_idle()
        try:
            async with asyncio.timeout(self.timeout):
                if connection is None:  # wait for one, or connect a new one (the handshake
                    connection = await pool.get_connection()  # has no timeout of its own)
                reused = connection.is_connected  # else a failed connect is not repeated
                try:
                    await connection.send_packed_command([packed])
                    return await _aread(connection, replies)
                except redis.ConnectionError:
                    if not reused:
                        raise
                await connection.send_packed_command([packed])  # reconnects
                return await _aread(connection, replies)
        except TimeoutError as exc:  # redis-py closed the connection on the cancellation
            raise redis.TimeoutError(f"Timeout after {self.timeout} s") from exc
        finally:
            if connection is not None and not pool.put_back(connection):
                await pool.release(connection)

    async def aclose(self) -> None:
        await self.connection_pool.disconnect()


# ---------------------------------------------------------------- async client hand-over
_closing: set[asyncio.Task[None]] = set()  # keeps best-effort close tasks alive


def _discard_async(client: _AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
    """Close an async client created on ``loop``, from wherever we are (best effort)."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        task = loop.create_task(client.aclose())
        _closing.add(task)
        task.add_done_callback(_closing.discard)
        return
    if not loop.is_closed():
        if loop.is_running():  # another thread's loop
            asyncio.run_coroutine_threadsafe(client.aclose(), loop)
            return
        if running is None:  # idle: run the close on it
            try:
                loop.run_until_complete(client.aclose())
            except Exception:  # noqa: S110 - best effort; the sockets are closed below
                pass
            else:
                return
    _close_sockets(client, loop)


def _close_sockets(client: _AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
    """Close the sockets of a client whose event loop cannot run any more.

    asyncio offers no public way to close a transport without its loop; without this the
    sockets would leak until garbage collection (with a ``ResourceWarning``).
    """
    pool = client.connection_pool
    connections = [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
    ]
    for conn in connections:
        writer = getattr(conn, "_writer", None)
        if writer is None:
            continue
        conn._reader = conn._writer = None
        _close_transport(writer.transport, loop)


def _close_transport(transport: Any, loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_closed():
        transport.close()  # the close runs on its loop, if that ever runs again
        return
    with suppress(RuntimeError):  # marks it closing, then fails to schedule the close
        transport.close()
    inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    if inner is not None:  # TLS: close the socket transport under it
        _close_transport(inner, loop)
    with suppress(Exception):
        transport._call_connection_lost(None)  # what the loop would have run: closes the socket


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
        **redis_options: passed to the redis-py connection pools (``ssl_ca_certs=``, ...).

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
        self._label = f"RedisStore({_redacted(url)})"
        self._options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "max_connections": max_connections,
            "retry": Retry(NoBackoff(), 0),  # connect once; `_Client` resends on a stale socket
            **redis_options,
        }
        # local time: the clock's, else the monotonic system clock (for local denials)
        self._now = clock.now if clock is not None else time.monotonic
        self._server_time = clock is None
        self._denials = LocalDenials() if local_denials else None
        self._names: dict[str, bytes] = {}
        self._specs: dict[int, tuple[Rate, bytes, bytes, bytes]] = {}
        self._lock = threading.Lock()
        self._client: _Client | None = None
        # one async client per event loop (pytest-asyncio runs a loop per test); the hot path
        # reads the last one used as one (loop, client) pair
        self._aclients: dict[asyncio.AbstractEventLoop, _AsyncClient] = {}
        self._acurrent: tuple[asyncio.AbstractEventLoop | None, Any] = (None, None)

    def __repr__(self) -> str:
        return self._label

    # ------------------------------------------------------------ drivers
    def _connect(self) -> _Client:
        with self._lock:
            if self._client is None:
                pool = _WaitingPool.from_url(self.url, wait=self.timeout, **self._options)
                self._client = _Client(pool)
            return self._client

    def _aconnect(self, loop: asyncio.AbstractEventLoop) -> _AsyncClient:
        """The async client of ``loop`` (made on first use); clients of closed loops go."""
        with self._lock:
            client = self._aclients.get(loop)
            if client is None:
                options = {**self._options, "socket_timeout": None}  # see `_AsyncClient`
                if isinstance(options["retry"], Retry):  # the asyncio client has its own
                    options["retry"] = AsyncRetry(NoBackoff(), 0)
                pool = _AsyncWaitingPool.from_url(self.url, wait=self.timeout, **options)
                timeout = self._options["socket_timeout"]
                client = self._aclients[loop] = _AsyncClient(pool, timeout)
            stale = [(old, c) for old, c in self._aclients.items() if old.is_closed()]
            for old, _ in stale:
                del self._aclients[old]
            self._acurrent = (loop, client)
        for old, c in stale:
            _discard_async(c, old)
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
                if not client.loaded:
                    await client.exchange(_LOAD_ALL, len(_SCRIPTS))
                    client.loaded = True
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
        """Per `Rate`, cached: (rate, " interval burst ", tau, interval) for the scripts."""
        entry = self._specs.get(id(rate))
        if entry is None or entry[0] is not rate:  # the entry holds the rate: ids stay unique
            if len(self._specs) >= _NAMES_MAX:
                self._specs.clear()
            interval = rate.interval
            entry = self._specs[id(rate)] = (
                rate,
                f" {interval!r} {rate.burst} ".encode(),
                repr(interval * rate.burst).encode(),
                repr(interval).encode(),
            )
        return entry

    def _gcra_command(self, requests: Sequence[RateRequest], now: float) -> tuple[Any, ...]:
        time_arg = b"-" if self._server_time else repr(now).encode()
        if len(requests) == 1:
            req = requests[0]
            _, _, tau, interval = self._rate_args(req.rate)
            step = interval if req.cost == 1 else repr(req.rate.interval * req.cost).encode()
            return (b"EVALSHA", _GCRA_ONE_SHA, b"1", self._rl_name(req.key), time_arg, tau, step)
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
    ) -> tuple[_Client | None, list[tuple[asyncio.AbstractEventLoop, _AsyncClient]]]:
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
                _discard_async(aclient, loop)

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
                    _discard_async(aclient, loop)
