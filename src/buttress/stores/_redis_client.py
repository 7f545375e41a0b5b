"""The connections under `RedisStore`: lean clients on redis-py's public connection API.

`RedisStore` sends one packed command and reads one reply. redis-py's clients and pools do
far more per call (retry closures, metrics, events, and a probe of every pooled socket for
unread data), which costs 1.3-1.5x a round trip from one caller and 2x with eight asyncio
callers (bench/README.md, "Rate-limit decision after issue 9"). So the store keeps its own
small pools of redis-py *connections*, and uses only their public API: the connection
class and keyword arguments redis-py derives from the URL (``ConnectionPool.from_url``:
URL options, TLS, AUTH, RESP parsing, connect and socket timeouts), and each connection's
``connect``, ``send_packed_command``, ``read_response``, ``disconnect`` and
``is_connected``. redis-py's read and send close a connection on any error, so a
connection comes back to a pool with its reply read in full, or closed (it reconnects on
its next use).

What redis-py's pools do and these do not: the features that act on pooled connections
(re-authentication of idle connections when a streaming credential provider refreshes its
token, maintenance notifications), and client-side caching. A connection the server closes
instead is reopened by the next call on it.

* `Client` (threads): at most ``size`` connections per process (a forked child starts
  with none); a call that finds them all busy waits up to ``wait`` seconds for one.
* `AsyncClient` (one per event loop): the same, with one deadline over the whole call
  (waiting for a connection, connecting, sending, reading). Its connections are closed by
  `AsyncClient.aclose`, and when their event loop shuts down (``asyncio.run``,
  ``asyncio.Runner``: an async generator of the client's, closed by
  ``loop.shutdown_asyncgens()``); a loop closed without shutting down leaves its sockets
  to the garbage collector.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from contextlib import suppress
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import MaxConnectionsError

__all__ = ["AsyncClient", "Client", "discard_async", "pack"]

_forks = [0]  # bumped in a forked child: connections must not cross a fork
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


def pack(args: tuple[Any, ...]) -> bytes:
    """A command in RESP: an array of bulk strings (floats as ``repr``, like redis-py)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if type(arg) is bytes else (arg if isinstance(arg, str) else repr(arg)).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _factory(pool_class: Any, url: str, options: dict[str, Any]) -> Callable[[], Any]:
    """Make redis-py connections as redis-py's own pool for ``url`` would (not connected)."""
    template = pool_class.from_url(url, **options)
    return functools.partial(template.connection_class, **template.connection_kwargs)


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


class Client:
    """The sync client: one command, one pooled connection, one reply.

    A pooled socket the server has closed (restart, idle timeout) fails with a connection
    error on first use: the command is sent once more, on a new connection. Timeouts and
    failed connects are never repeated.
    """

    def __init__(self, url: str, options: dict[str, Any], size: int, wait: float) -> None:
        self._make = _factory(redis.ConnectionPool, url, options)
        self.size = size
        self.wait = wait
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        # the idle connections of this process; a parent's are left to the garbage
        # collector (redis-py shuts a socket down only in the process that opened it)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._idle: list[Any] = []
        self._created = 0
        self._waiting = 0
        self._fork = _forks[0]

    def __len__(self) -> int:
        """Connections made (idle or in use), at most ``size``."""
        return self._created

    def _get(self) -> Any:
        if self._fork != _forks[0]:
            self._reset()
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self._created >= self.size:
                deadline = time.monotonic() + self.wait
                self._waiting += 1
                try:
                    while not self._idle and self._created >= self.size:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise MaxConnectionsError(
                                f"all {self.size} connections busy for {self.wait} s"
                            )
                        self._cond.wait(left)
                finally:
                    self._waiting -= 1
                if self._idle:
                    return self._idle.pop()
            self._created += 1
        try:
            return self._make()  # connects on first use
        except BaseException:
            with self._lock:
                self._created -= 1
            raise

    def _put(self, connection: Any, fork: int) -> None:
        with self._lock:
            if fork != self._fork:  # made before a fork: not this process's
                return
            if not self._closed:
                self._idle.append(connection)
                if self._waiting:
                    self._cond.notify()
                return
            self._created -= 1
        connection.disconnect()

    def execute_command(self, *args: Any) -> Any:
        """Send one command; its reply."""
        return self.exchange(pack(args))

    def exchange(self, packed: bytes, replies: int = 1) -> Any:
        """Send ``packed`` (``replies`` commands); the last reply (earlier ones must succeed)."""
        fork = _forks[0]
        connection = self._get()
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
            self._put(connection, fork)

    def close(self) -> None:
        """Close the idle connections now, the busy ones when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._created -= len(idle)
        for connection in idle:
            connection.disconnect()


async def _closer(client: AsyncClient) -> AsyncGenerator[None, None]:
    """Closes ``client`` when its event loop shuts down (``loop.shutdown_asyncgens``)."""
    try:
        yield
    finally:
        await client.close_connections()


class AsyncClient:
    """The async client of one event loop; `Client`, async.

    Its connections have no socket timeout of their own (redis-py would arm one for the
    send and one for the reply): one deadline, ``timeout``, covers the whole call. On
    expiry redis-py's send and read, cancelled, close the connection.
    """

    def __init__(self, url: str, options: dict[str, Any], size: int, timeout: float) -> None:
        self._make = _factory(redis.asyncio.ConnectionPool, url, options)
        self.size = size
        self.timeout = timeout
        self._idle: list[Any] = []
        self._created = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._closer = _closer(self)
        self.ready = False  # started (`start`) in its loop

    def __len__(self) -> int:
        """Connections made (idle or in use), at most ``size``."""
        return self._created

    async def start(self) -> None:
        """Register the close at the loop's shutdown (call once, in the client's loop)."""
        await anext(self._closer)  # the loop now holds it, to close at shutdown
        self.ready = True

    def _take(self) -> Any:
        """An idle or a new connection, or None when ``size`` are busy (never suspends)."""
        if self._idle:
            return self._idle.pop()
        if self._created < self.size:
            self._created += 1
            try:
                return self._make()  # connects on first use
            except BaseException:
                self._created -= 1
                raise
        return None

    async def _get(self) -> Any:
        connection = self._take()
        while connection is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, but leaving: wake the next one instead
                else:
                    with suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            connection = self._take()
        return connection

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def execute_command(self, *args: Any) -> Any:
        """Send one command; its reply."""
        return await self.exchange(pack(args))

    async def exchange(self, packed: bytes, replies: int = 1) -> Any:
        """`Client.exchange`, async, within ``timeout``."""
        connection = self._take()
        try:
            async with asyncio.timeout(self.timeout):
                if connection is None:  # wait for one (the handshake has no timeout of
                    connection = await self._get()  # its own either)
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
            if connection is not None:
                if not self._closed:
                    self._idle.append(connection)
                    if self._waiters:
                        self._wake()
                else:
                    self._created -= 1
                    with suppress(Exception):  # best effort: the socket is closed either way
                        await connection.disconnect()

    async def close_connections(self) -> None:
        """Close the idle connections now, the busy ones when they come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        self._created -= len(idle)
        for connection in idle:
            with suppress(Exception):  # best effort: the socket is closed either way
                await connection.disconnect()

    async def aclose(self) -> None:
        """Close the client (in its own event loop)."""
        with suppress(RuntimeError):  # already closing, at the loop's shutdown
            await self._closer.aclose()  # runs `close_connections` when it was started
        await self.close_connections()


_closing: set[asyncio.Task[None]] = set()  # keeps best-effort close tasks alive


def discard_async(client: AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
    """Close an async client made on ``loop``, from wherever we are (best effort).

    On its own loop when that loop runs (here: a task; in another thread: thread-safe), or
    at once when it is idle. A closed loop that was shut down closed the client already; a
    loop that is gone otherwise leaves its sockets to the garbage collector.
    """
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop.is_closed():
        return
    if loop is running:
        task = loop.create_task(client.aclose())
        _closing.add(task)
        task.add_done_callback(_closing.discard)
    elif running is None and not loop.is_running():  # idle: run the close on it
        with suppress(Exception):  # best effort
            loop.run_until_complete(client.aclose())
    else:  # another thread's loop, or this thread runs another one: when that loop runs
        asyncio.run_coroutine_threadsafe(client.aclose(), loop)
