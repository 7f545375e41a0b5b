"""Deadlines that reach PostgreSQL (buttress.db), against the real server.

Each slow statement is ``pg_sleep(5)`` under a 1 s deadline. The client never cancels on
its own (psycopg's sync calls have no client timeout here), so an error at ~1 s is the
server's doing; right after it, ``pg_stat_activity`` shows the backend idle, the same
connection answers ``SELECT 1`` from the pool, and the error is ``deadline_exceeded``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from buttress import deadline
from buttress.db import abounded, aconnection, bounded, connection, install_deadlines, timeout_ms
from buttress.errors import ConfigurationError, DeadlineExceeded, ErrorCode, classify
from buttress.testing import FakeClock

pytestmark = pytest.mark.postgres

SLOW = "SELECT pg_sleep(5)"


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    """A database of our own (test_h_*), dropped after the module."""
    from tests.conftest import POSTGRES_URL as postgres_url

    name = f"test_h_db_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def backend_state(url: str, pid: int) -> tuple[str | None, str | None]:
    """(state, query) of backend ``pid`` as the server sees it now."""
    with psycopg.connect(url, autocommit=True) as watcher:
        row = watcher.execute(
            "SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def assert_deadline(error: BaseException) -> None:
    assert isinstance(error, DeadlineExceeded)
    assert error.code is ErrorCode.DEADLINE_EXCEEDED
    info = classify(error)
    assert info is not None
    assert info.code is ErrorCode.DEADLINE_EXCEEDED
    assert isinstance(error.__cause__, psycopg.errors.QueryCanceled)


# ------------------------------------------------------------------ the time left
def test_timeout_ms_is_the_time_left_and_refuses_a_spent_deadline() -> None:
    clock = FakeClock(100.0)
    assert timeout_ms(clock) is None
    with deadline(1.5, clock=clock):
        assert timeout_ms(clock) == 1500
        clock.advance(1.4996)
        assert timeout_ms(clock) == 1  # never 0: PostgreSQL reads 0 as "no timeout"
        clock.advance(0.01)
        with pytest.raises(DeadlineExceeded):
            timeout_ms(clock)


# ------------------------------------------------------------------ psycopg
def run_slow(pool: ConnectionPool, pid: int) -> None:
    with connection(pool) as conn:
        assert conn.info.backend_pid == pid
        conn.execute(SLOW)


async def arun_slow(pool: AsyncConnectionPool) -> None:
    async with aconnection(pool) as conn:
        await conn.execute(SLOW)


def test_pool_connection_cancels_on_the_server_and_comes_back_healthy(db_url: str) -> None:
    with ConnectionPool(db_url, min_size=1, max_size=1, open=True, timeout=5) as pool:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        started = time.monotonic()
        with deadline(1.0), pytest.raises(DeadlineExceeded) as caught:
            run_slow(pool, pid)
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 1.5, elapsed
        state, query = backend_state(db_url, pid)
        assert state == "idle", (state, query)  # not still sleeping: the server cancelled
        assert_deadline(caught.value)
        with pool.connection() as conn:  # the same connection, healthy, no timeout left on it
            assert conn.info.backend_pid == pid
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
        assert pool.get_stats().get("connections_lost", 0) == 0


def test_bounded_is_a_plain_transaction_without_a_deadline(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn, bounded(conn):
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
    with psycopg.connect(db_url) as conn, deadline(30.0), bounded(conn):
        shown = conn.execute("SHOW statement_timeout").fetchone()
        assert shown is not None
        assert shown[0] in ("30s", "29999ms", "29998ms")


def test_a_query_error_that_is_not_the_deadline_stays_itself(db_url: str) -> None:
    with psycopg.connect(db_url) as conn, deadline(5.0):
        with pytest.raises(psycopg.errors.DivisionByZero), bounded(conn):
            conn.execute("SELECT 1 / 0")
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_pool_checkout_waits_only_the_time_left(db_url: str) -> None:
    with ConnectionPool(db_url, min_size=1, max_size=1, open=True, timeout=10) as pool:
        with pool.connection():  # the only connection is busy
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded) as caught, deadline(0.3):
                with connection(pool):
                    pytest.fail("checked out a connection that is in use")
            assert time.monotonic() - started < 1.0  # not the pool's 10 s
            assert isinstance(caught.value.__cause__, PoolTimeout)


async def test_async_pool_cancels_on_the_server(db_url: str) -> None:
    async with AsyncConnectionPool(db_url, min_size=1, max_size=1, open=False) as pool:
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
        started = time.monotonic()
        with deadline(1.0), pytest.raises(DeadlineExceeded) as caught:
            await arun_slow(pool)
        assert 0.9 <= time.monotonic() - started < 1.5
        state, _ = await asyncio.to_thread(backend_state, db_url, pid)
        assert state == "idle"
        assert_deadline(caught.value)
        async with pool.connection() as conn, abounded(conn):
            assert conn.info.backend_pid == pid
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


# ------------------------------------------------------------------ SQLAlchemy
def test_sqlalchemy_sync_engine(db_url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(
        db_url.replace("postgresql://", "postgresql+psycopg://"), pool_size=1, max_overflow=0
    )
    install_deadlines(engine)
    install_deadlines(engine)  # twice: one set of hooks
    try:
        with engine.connect() as conn:
            pid = conn.connection.dbapi_connection.info.backend_pid
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded) as caught, deadline(1.0):
                conn.execute(text(SLOW))
            assert 0.9 <= time.monotonic() - started < 1.5
            assert backend_state(db_url, pid)[0] in ("idle in transaction (aborted)", "idle")
            assert_deadline(caught.value)
            conn.rollback()
        with engine.connect() as conn:  # the same pooled connection, still valid
            assert conn.connection.dbapi_connection.info.backend_pid == pid
            assert conn.execute(text("SELECT 1")).scalar() == 1
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "0"
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            with deadline(5.0):
                assert conn.execute(text("SHOW statement_timeout")).scalar() != "0"
            # the session value set for the deadline is undone for the next statement
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "0"
    finally:
        engine.dispose()


async def test_sqlalchemy_async_engine(db_url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(
        db_url.replace("postgresql://", "postgresql+psycopg://"), pool_size=1, max_overflow=0
    )
    install_deadlines(engine)
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            pid = raw.driver_connection.info.backend_pid  # type: ignore[union-attr]
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded) as caught, deadline(1.0):
                await conn.execute(text(SLOW))
            assert 0.9 <= time.monotonic() - started < 1.5
            state, _ = await asyncio.to_thread(backend_state, db_url, pid)
            assert state in ("idle in transaction (aborted)", "idle")
            assert_deadline(caught.value)
            await conn.rollback()
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


def test_install_refuses_another_database() -> None:
    from sqlalchemy import create_engine

    with pytest.raises(ConfigurationError, match="PostgreSQL engine"):
        install_deadlines(create_engine("sqlite://"))


def test_a_spent_deadline_sends_nothing(db_url: str) -> None:
    clock = FakeClock(10.0)
    with psycopg.connect(db_url) as conn, deadline(1.0, clock=clock):
        clock.advance(2.0)
        with pytest.raises(DeadlineExceeded), bounded(conn, clock=clock):
            pytest.fail("the block ran after its deadline")
