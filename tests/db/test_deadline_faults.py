"""buttress.db under faults: slow statements, outer transactions, locks, cancelled callers.

Against the real PostgreSQL, in a database of our own (``rh_<random>``, dropped at the
end). For each fault: the statement past the deadline is cancelled *on the server*
(``pg_stat_activity`` shows nothing still running), the error is ``DeadlineExceeded``,
the connection answers afterwards, and the next statement run without a deadline on the
same connection does not inherit the timeout (``SHOW statement_timeout`` is what it was).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from buttress import Pipeline, Timeout, deadline
from buttress.db import abounded, aconnection, bounded, connection, install_deadlines
from buttress.errors import DeadlineExceeded, ErrorCode

pytestmark = pytest.mark.postgres

SLOW = "SELECT pg_sleep(5)"
BOUND = 4.0  # seconds: a generous upper bound for a statement under a 1 s deadline


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    from tests.conftest import POSTGRES_URL as postgres_url

    name = f"rh_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_url.rpartition("/")
    try:
        with psycopg.connect(f"{base}/{name}", autocommit=True) as setup:
            setup.execute("CREATE TABLE stock (sku int PRIMARY KEY, n int NOT NULL)")
            setup.execute("INSERT INTO stock VALUES (1, 10)")
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def running(url: str, pid: int) -> str | None:
    """The query backend ``pid`` is running right now, or None when it runs nothing."""
    with psycopg.connect(url, autocommit=True) as watcher:
        row = watcher.execute(
            "SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    return row[1] if row is not None and row[0] == "active" else None


def wait_running(url: str, pid: int) -> None:
    """Until backend ``pid`` runs a statement (a bounded poll of the server's own view)."""
    for _ in range(500):
        if running(url, pid) is not None:
            return
    pytest.fail(f"backend {pid} never started its statement")


def timeouts(conn: Any) -> tuple[str, str]:
    row = conn.execute(
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"
    ).fetchone()
    return row[0], row[1]


def assert_deadline(error: BaseException) -> None:
    assert isinstance(error, DeadlineExceeded), repr(error)
    assert error.code is ErrorCode.DEADLINE_EXCEEDED


# ---------------------------------------------------------------- psycopg, outer transaction
def test_a_bounded_block_inside_a_transaction_leaves_no_timeout_behind(db_url: str) -> None:
    """The savepoint is released, but SET LOCAL lasts to the end of the outer transaction."""
    with psycopg.connect(db_url) as conn, conn.transaction():
        with deadline(5.0), bounded(conn):
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert timeouts(conn) == ("0", "0")  # the next statement has no deadline


def test_a_bounded_block_in_an_implicit_transaction_leaves_no_timeout_behind(
    db_url: str,
) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("SELECT 1")  # psycopg began a transaction
        with deadline(5.0), bounded(conn):
            conn.execute("SELECT 2")
        assert timeouts(conn) == ("0", "0")
        conn.commit()


def test_nested_bounded_blocks_restore_the_outer_deadline(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        with deadline(30.0), bounded(conn):
            outer = timeouts(conn)
            with deadline(5.0), bounded(conn):
                assert timeouts(conn) != outer
            assert timeouts(conn) == outer
        assert timeouts(conn) == ("0", "0")


def test_a_session_timeout_of_the_app_is_kept(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("SET statement_timeout = '45s'")
        with conn.transaction():
            with deadline(5.0), bounded(conn):
                conn.execute("SELECT 1")
            assert timeouts(conn)[0] == "45s"


def test_a_statement_cancelled_inside_a_transaction_leaves_it_usable(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        pid = conn.info.backend_pid
        with conn.transaction():
            conn.execute("UPDATE stock SET n = n - 1 WHERE sku = 1")
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded) as caught, deadline(1.0), bounded(conn):
                conn.execute(SLOW)
            assert time.monotonic() - started < BOUND
            assert_deadline(caught.value)
            assert running(db_url, pid) is None  # cancelled on the server
            assert timeouts(conn) == ("0", "0")
            assert conn.execute("SELECT n FROM stock WHERE sku = 1").fetchone() == (9,)
            conn.execute("UPDATE stock SET n = n + 1 WHERE sku = 1")


def test_a_lock_wait_ends_at_the_deadline(db_url: str) -> None:
    with psycopg.connect(db_url) as holder, psycopg.connect(db_url) as waiter:
        holder.execute("SELECT * FROM stock WHERE sku = 1 FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as caught, deadline(1.0), bounded(waiter):
            waiter.execute("UPDATE stock SET n = n WHERE sku = 1")
        assert time.monotonic() - started < BOUND
        assert_deadline(caught.value)
        assert running(db_url, waiter.info.backend_pid) is None
        holder.rollback()
        assert waiter.execute("SELECT n FROM stock WHERE sku = 1").fetchone() == (10,)
        assert timeouts(waiter) == ("0", "0")
        waiter.rollback()


def test_a_pool_connection_after_a_deadline_runs_a_slow_statement(db_url: str) -> None:
    """No timeout left on the pooled connection: a 1.5 s statement without a deadline runs."""
    with ConnectionPool(db_url, min_size=1, max_size=1, open=True, timeout=5) as pool:
        with pytest.raises(DeadlineExceeded), deadline(1.0), connection(pool) as conn:
            conn.execute(SLOW)
        with pool.connection() as conn:
            conn.execute("SELECT pg_sleep(1.5)")
            assert timeouts(conn) == ("0", "0")


# ---------------------------------------------------------------- asyncio: cancelled callers
async def test_cancelling_the_caller_cancels_the_statement_on_the_server(db_url: str) -> None:
    async with AsyncConnectionPool(db_url, min_size=1, max_size=1, open=False) as pool:
        async with pool.connection() as conn:
            pid = conn.info.backend_pid

        async def slow() -> None:
            async with aconnection(pool) as conn:
                await conn.execute(SLOW)

        with deadline(30.0):
            task = asyncio.create_task(slow())
            await asyncio.to_thread(wait_running, db_url, pid)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await asyncio.to_thread(running, db_url, pid) is None
        async with pool.connection() as conn:
            assert conn.info.backend_pid == pid
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
            cur = await conn.execute("SELECT current_setting('statement_timeout')")
            assert await cur.fetchone() == ("0",)


async def test_a_timeout_policy_racing_the_server_leaves_nothing_running(db_url: str) -> None:
    """``Timeout(1)`` cancels the task at the moment the server cancels the statement."""
    async with AsyncConnectionPool(db_url, min_size=1, max_size=1, open=False) as pool:
        async with pool.connection() as conn:
            pid = conn.info.backend_pid

        async def slow() -> None:
            async with aconnection(pool) as conn:
                await conn.execute(SLOW)

        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await Pipeline(Timeout(1.0)).acall(slow)
        assert time.monotonic() - started < BOUND
        assert await asyncio.to_thread(running, db_url, pid) is None
        async with pool.connection() as conn, abounded(conn):
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


async def test_async_bounded_inside_a_transaction_leaves_no_timeout_behind(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        async with conn.transaction():
            with deadline(5.0):
                async with abounded(conn):
                    await conn.execute("SELECT 1")
            cur = await conn.execute("SELECT current_setting('statement_timeout')")
            assert await cur.fetchone() == ("0",)


# ---------------------------------------------------------------- SQLAlchemy
@pytest.fixture
def engine(db_url: str) -> Iterator[Any]:
    from sqlalchemy import create_engine

    made = create_engine(
        db_url.replace("postgresql://", "postgresql+psycopg://"), pool_size=1, max_overflow=0
    )
    install_deadlines(made)
    try:
        yield made
    finally:
        made.dispose()


def show(conn: Any) -> str:
    from sqlalchemy import text

    return str(conn.execute(text("SHOW statement_timeout")).scalar())


def test_sqlalchemy_no_timeout_for_the_next_statement_of_the_transaction(engine: Any) -> None:
    from sqlalchemy import text

    with engine.connect() as conn:
        with deadline(5.0):
            conn.execute(text("SELECT 1"))
        assert show(conn) == "0"  # same transaction, no deadline: no timeout
        conn.commit()


def test_sqlalchemy_a_deadline_after_a_statement_without_one(engine: Any) -> None:
    from sqlalchemy import text

    with engine.connect() as conn:
        assert show(conn) == "0"
        with deadline(5.0):
            assert show(conn) != "0"
            conn.execute(text("SELECT 1"))
        assert show(conn) == "0"
        with deadline(5.0):
            assert show(conn) != "0"
        conn.rollback()
        assert show(conn) == "0"


def test_sqlalchemy_savepoint_leaves_no_timeout_behind(engine: Any) -> None:
    from sqlalchemy import text

    with engine.connect() as conn:
        with conn.begin():
            with conn.begin_nested(), deadline(5.0):
                conn.execute(text("SELECT 1"))
            assert show(conn) == "0"


def test_sqlalchemy_cancelled_statement_in_a_transaction(engine: Any, db_url: str) -> None:
    from sqlalchemy import text

    with engine.connect() as conn:
        pid = conn.connection.dbapi_connection.info.backend_pid
        conn.execute(text("UPDATE stock SET n = n WHERE sku = 1"))
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as caught, deadline(1.0):
            conn.execute(text(SLOW))
        assert time.monotonic() - started < BOUND
        assert_deadline(caught.value)
        assert running(db_url, pid) is None
        conn.rollback()
        assert show(conn) == "0"
    with engine.connect() as conn:  # the pooled connection is the same, and healthy
        assert conn.connection.dbapi_connection.info.backend_pid == pid
        conn.execute(text("SELECT pg_sleep(1.5)"))  # no timeout inherited


def test_sqlalchemy_autocommit_keeps_the_apps_session_timeout(engine: Any) -> None:
    from sqlalchemy import text

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SET statement_timeout = '45s'"))
        with deadline(5.0):
            conn.execute(text("SELECT 1"))
        assert show(conn) == "45s"
        conn.execute(text("RESET statement_timeout"))
