"""psycopg 3: the deadline in force as the timeouts of a transaction, and of pool checkouts.

`bounded(conn)` opens a transaction (``conn.transaction()``, a savepoint inside an open
one) whose first statement sets ``statement_timeout`` and ``lock_timeout`` to the time
left (``set_config(..., true)``: local to the transaction, so nothing stays on the
connection when it goes back to a pool). Inside an open transaction the values in force
before are put back when the savepoint is released (a released savepoint would keep
them until the outer transaction ends), and a rolled-back one drops them anyway: the
statements after the block run with the timeouts they had before it. A statement still
running when the time is up is cancelled by PostgreSQL; the block raises
`DeadlineExceeded` (from ``QueryCanceled``) and the transaction is rolled back, leaving
the connection idle and healthy. Without a deadline in force the block is a plain
transaction. The time left is taken when the block starts: each statement inside is
capped by it, so for long blocks of several slow statements, open one block per
statement.

`connection(pool)` checks a connection out of a psycopg_pool within the time left (at
most the pool's own ``timeout``; a checkout cut short by the deadline raises
`DeadlineExceeded`, the pool's own timeout stays ``PoolTimeout``) and runs the block in
`bounded`. `abounded` and `aconnection` are the same for ``AsyncConnection`` and
``AsyncConnectionPool``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.db._timeouts import (
    SAVE_AND_SET_LOCAL_SQL,
    SET_LOCAL_SQL,
    deadline_error,
    expired,
    is_cancellation,
    timeout_ms,
)
from buttress.errors import DeadlineExceeded
from buttress.resilience import remaining

__all__ = ["abounded", "aconnection", "bounded", "connection"]

_SLACK = 0.05  # seconds: a cancellation this close to the deadline is the deadline's


def _in_transaction(conn: Any) -> bool:
    """Whether ``conn`` is in a transaction already (a block is then only a savepoint)."""
    status = getattr(getattr(conn, "info", None), "transaction_status", 0)
    return int(status) != 0  # psycopg.pq.TransactionStatus.IDLE


def _ours(exc: BaseException, limit: int, clock: Clock) -> bool:
    """A cancellation of a statement under the timeout we set, at the deadline."""
    if not is_cancellation(exc):
        return False
    left = remaining(clock)
    return left is None or left <= max(_SLACK, limit / 1000.0 * 0.05)


@contextmanager
def bounded(conn: Any, *, clock: Clock = SYSTEM_CLOCK) -> Iterator[Any]:
    """A transaction on ``conn`` whose statements end by the deadline in force.

    Example::

        with deadline(1.0), bounded(conn):
            conn.execute("UPDATE stock SET n = n - 1 WHERE sku = %s", (sku,))
    """
    limit = timeout_ms(clock)
    nested = limit is not None and _in_transaction(conn)
    try:
        with conn.transaction():
            outer = None
            if limit is not None:
                value = f"{limit}ms"
                if nested:
                    outer = conn.execute(SAVE_AND_SET_LOCAL_SQL, (value, value)).fetchone()
                else:
                    conn.execute(SET_LOCAL_SQL, (value, value))
            yield conn
            if outer is not None:  # a released savepoint keeps SET LOCAL: put them back
                conn.execute(SET_LOCAL_SQL, (outer[0], outer[1]))
    except DeadlineExceeded:
        raise
    except Exception as exc:
        if limit is not None and _ours(exc, limit, clock):
            raise deadline_error(exc, limit) from exc
        raise


@asynccontextmanager
async def abounded(conn: Any, *, clock: Clock = SYSTEM_CLOCK) -> AsyncIterator[Any]:
    """`bounded` for a psycopg ``AsyncConnection``.

    Example::

        async with abounded(aconn):
            await aconn.execute("SELECT count(*) FROM orders")
    """
    limit = timeout_ms(clock)
    nested = limit is not None and _in_transaction(conn)
    try:
        async with conn.transaction():
            outer = None
            if limit is not None:
                value = f"{limit}ms"
                if nested:
                    cursor = await conn.execute(SAVE_AND_SET_LOCAL_SQL, (value, value))
                    outer = await cursor.fetchone()
                else:
                    await conn.execute(SET_LOCAL_SQL, (value, value))
            yield conn
            if outer is not None:
                await conn.execute(SET_LOCAL_SQL, (outer[0], outer[1]))
    except DeadlineExceeded:
        raise
    except Exception as exc:
        if limit is not None and _ours(exc, limit, clock):
            raise deadline_error(exc, limit) from exc
        raise


def _checkout_timeout(pool: Any, clock: Clock) -> tuple[float | None, bool]:
    """(the checkout's timeout, whether the deadline set it) for ``pool``."""
    own = getattr(pool, "timeout", None)
    left = remaining(clock)
    if left is None:
        return own, False
    if left <= 0:
        raise expired("before a connection was checked out")
    if own is None or left < own:
        return left, True
    return own, False


def _is_pool_timeout(exc: BaseException) -> bool:
    kind = type(exc)
    return kind.__module__.startswith("psycopg_pool") and kind.__name__ == "PoolTimeout"


@contextmanager
def connection(pool: Any, *, clock: Clock = SYSTEM_CLOCK) -> Iterator[Any]:
    """A connection from a psycopg_pool ``ConnectionPool``, checked out and used in time.

    Example::

        with deadline(1.0), connection(pool) as conn:
            conn.execute("SELECT pg_sleep(5)")   # DeadlineExceeded at ~1 s, pool healthy
    """
    timeout, by_deadline = _checkout_timeout(pool, clock)
    checkout = pool.connection(timeout=timeout)
    try:
        conn = checkout.__enter__()
    except Exception as exc:
        if by_deadline and _is_pool_timeout(exc):
            raise expired(f"while waiting {timeout:.3g} s for a pool connection") from exc
        raise
    try:  # the connection goes back through the pool's own context manager
        with bounded(conn, clock=clock):
            yield conn
    except BaseException as exc:
        if not checkout.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        checkout.__exit__(None, None, None)


@asynccontextmanager
async def aconnection(pool: Any, *, clock: Clock = SYSTEM_CLOCK) -> AsyncIterator[Any]:
    """`connection` for a psycopg_pool ``AsyncConnectionPool``.

    Example::

        async with aconnection(pool) as conn:
            await conn.execute("SELECT 1")
    """
    timeout, by_deadline = _checkout_timeout(pool, clock)
    checkout = pool.connection(timeout=timeout)
    try:
        conn = await checkout.__aenter__()
    except Exception as exc:
        if by_deadline and _is_pool_timeout(exc):
            raise expired(f"while waiting {timeout:.3g} s for a pool connection") from exc
        raise
    try:
        async with abounded(conn, clock=clock):
            yield conn
    except BaseException as exc:
        if not await checkout.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await checkout.__aexit__(None, None, None)
