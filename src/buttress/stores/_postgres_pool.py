"""The PostgreSQL store's async connections: one small pool per event loop, with no tasks."""

from __future__ import annotations

import asyncio
import select

import psycopg
from psycopg.rows import TupleRow

__all__ = ["AConn", "LoopPool", "finish", "stale"]

AConn = psycopg.AsyncConnection[TupleRow]


def finish(conn: AConn) -> None:
    """Close ``conn`` now, from any thread, without its event loop (closing is sync)."""
    conn.pgconn.finish()


def stale(conn: psycopg.Connection[TupleRow] | AConn) -> bool:
    """Whether an *idle* connection is unusable: broken, closed, or spoken to while idle.

    A server ending a backend (``pg_terminate_backend``, a restart, an idle timeout) sends
    a FATAL message and closes the socket; psycopg notices only when it next uses the
    connection, and that statement fails. An idle autocommit connection expects nothing
    from the server, so a readable socket means it is gone (or, rarely, a parameter
    report after a reload: reconnecting then costs one connect). One ``select`` with no
    wait, no round trip.
    """
    if conn.closed or conn.broken:
        return True
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


class LoopPool:
    """The async connections of one event loop: reused, at most ``size`` at once.

    Not psycopg_pool's `AsyncConnectionPool`: its maintenance tasks treat cancellation as
    a task failure and keep running, so a pool left open when its loop ends makes
    ``asyncio.run()`` hang at exit. This pool has no tasks at all: a connection is opened
    by the caller that needs it, and a loop that is gone leaves only idle sockets, which
    `close` shuts from anywhere.
    """

    __slots__ = ("closed", "conninfo", "idle", "loop", "slots", "timeout")

    def __init__(
        self, conninfo: str, size: int, timeout: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.conninfo = conninfo
        self.timeout = timeout
        self.loop = loop
        self.idle: list[AConn] = []
        self.slots = asyncio.Semaphore(size)
        self.closed = False

    async def get(self) -> AConn:
        """An idle connection (not `stale`), or a new one; `TimeoutError` after ``timeout`` s."""
        if self.idle and not self.slots.locked():  # the common case: no wait, no timer
            await self.slots.acquire()
            conn = self.idle.pop()
            if not stale(conn):
                return conn
            finish(conn)
            self.slots.release()
        async with asyncio.timeout(self.timeout):
            await self.slots.acquire()
            try:
                while self.idle:
                    conn = self.idle.pop()
                    if not stale(conn):
                        return conn
                    finish(conn)
                return await AConn.connect(self.conninfo, autocommit=True)
            except BaseException:
                self.slots.release()
                raise

    def put(self, conn: AConn) -> None:
        """Take ``conn`` back; close it when it is broken or mid-statement (cancelled)."""
        self.slots.release()
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if self.closed or conn.broken or not idle:
            finish(conn)
        else:
            self.idle.append(conn)

    def close(self) -> None:
        """Close the idle connections (those in use close when they come back)."""
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            finish(conn)
