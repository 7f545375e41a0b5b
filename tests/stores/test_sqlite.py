"""SQLiteStore beyond the contract: URLs, the file, schema, sweeps, locks, processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from buttress.errors import BackendError, ConfigurationError
from buttress.stores import Rate, RateRequest, open_store
from buttress.stores._sqlite import SCHEMA_VERSION, SQLiteStore
from buttress.testing import FakeClock

Factory = Callable[..., SQLiteStore]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "buttress.db"


@pytest.fixture
def make(db: Path) -> Iterator[Factory]:
    stores: list[SQLiteStore] = []

    def factory(url: str = f"sqlite:///{db}", **options: object) -> SQLiteStore:
        store = SQLiteStore(url, **options)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield factory
    for store in stores:
        store.close()


def one(key: str, rate: Rate = Rate(1, 60.0)) -> list[RateRequest]:
    return [RateRequest(key, rate)]


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------- URLs and the file
def test_relative_and_absolute_paths(
    make: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = make("sqlite:///rel.db")
    assert relative.path == str(tmp_path / "rel.db")
    monkeypatch.chdir("/")  # fixed at construction
    relative.ping()
    assert (tmp_path / "rel.db").exists()
    absolute = make(f"sqlite:///{tmp_path / 'abs.db'}")  # sqlite:////tmp/.../abs.db
    assert absolute.path == str(tmp_path / "abs.db")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite://:memory:", "sqlite:///:memory:"])
def test_memory_urls_share_one_database_between_threads(make: Factory, url: str) -> None:
    store = make(url, clock=FakeClock(1000.0))
    assert store.path is None
    admitted = []

    def worker() -> None:
        admitted.append(sum(store.acquire(one("k", Rate(10, 60.0)))[0].allowed for _ in range(5)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 10
    store.close()  # a memory database is gone with its connection
    assert store.acquire(one("k", Rate(10, 60.0)))[0].remaining == 9


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://host/x.db", "names no file"),
        ("sqlite:///", "names no file"),
        ("sqlite:///x.db?mode=ro", "no query string"),
        ("sqlite:////no/such/dir/x.db", "does not exist"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SQLiteStore(url)


@pytest.mark.parametrize(
    "options", [{"namespace": "a}"}, {"timeout": -1}, {"sweep_batch": 0}, {"sweep_every": 1.5}]
)
def test_bad_options_are_configuration_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteStore("sqlite://", **options)  # type: ignore[arg-type]


def test_a_new_file_is_private_and_in_wal_mode(make: Factory, db: Path) -> None:
    make().acquire(one("k"))
    for path in (db, db.with_name(db.name + "-wal")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert query(db, "PRAGMA journal_mode") == [("wal",)]


def test_open_store_builds_it() -> None:
    store = open_store("sqlite://", namespace="x")
    assert isinstance(store, SQLiteStore)
    store.close()


# ---------------------------------------------------------------- schema
def test_schema_is_created_once_under_concurrent_first_use(make: Factory, db: Path) -> None:
    stores = [make() for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def first_use(store: SQLiteStore) -> None:
        barrier.wait()
        try:
            store.acquire(one("k"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first_use, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert query(db, "SELECT version FROM buttress_schema") == [(SCHEMA_VERSION,)]


async def test_a_newer_schema_is_refused(make: Factory, db: Path) -> None:
    make().ping()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO buttress_schema VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    newcomer = make()
    with pytest.raises(BackendError, match=rf"schema version {SCHEMA_VERSION + 1}, newer"):
        newcomer.acquire(one("k"))
    with pytest.raises(BackendError, match="newer than this buttress knows"):
        await newcomer.aacquire(one("k"))


# ---------------------------------------------------------------- sweeps
def counts(db: Path) -> list[int]:
    return [
        int(query(db, f"SELECT count(*) FROM {table}")[0][0])  # type: ignore[call-overload]
        for table in ("buttress_rate", "buttress_idempotency", "buttress_breaker")
    ]


def test_the_sweep_deletes_expired_rows_in_bounded_batches(make: Factory, db: Path) -> None:
    clock = FakeClock(1000.0)
    store = make(clock=clock, sweep_every=0, sweep_batch=10)
    neighbour = make(clock=FakeClock(10**9), namespace="other", sweep_every=0)
    neighbour.acquire(one("theirs"))  # another namespace, another clock: never swept
    for i in range(25):
        store.acquire(one(f"k{i}"))
        store.begin(f"i{i}", "fp", lease=10.0)
        store.publish("svc", f"instance-{i}", "open", ttl=10.0)
    clock.advance(3600.0)
    store.acquire(one("live"))
    assert counts(db) == [27, 25, 25]
    deleted = []
    for _ in range(8):
        deleted.append(store.sweep())
        assert deleted[-1] <= 3 * 10  # at most a batch per table
    assert sum(deleted) == 75
    assert counts(db) == [2, 0, 0]
    assert not store.acquire(one("live"))[0].allowed
    assert not neighbour.acquire(one("theirs"))[0].allowed


async def test_the_sweep_runs_every_n_operations(make: Factory, db: Path) -> None:
    clock = FakeClock(1000.0)
    store = make(clock=clock, sweep_every=4, sweep_batch=100)
    for i in range(3):
        store.acquire(one(f"k{i}"))
    clock.advance(120.0)
    assert counts(db)[0] == 3
    await store.aacquire(one("fresh"))  # the 4th operation sweeps
    for _ in range(4):
        await store.areports("nothing")
    assert counts(db)[0] == 1
    assert await store.asweep() == 0


# ---------------------------------------------------------------- the write lock
def hold_the_lock(db: Path, seconds: float) -> threading.Thread:
    """Take the write lock from another connection, release it after ``seconds``."""
    ready = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        ready.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait()
    return thread


def test_a_busy_lock_is_waited_for_up_to_the_timeout(make: Factory, db: Path) -> None:
    store = make(timeout=0.2)
    store.ping()
    holder = hold_the_lock(db, 0.6)
    started = time.monotonic()
    with pytest.raises(BackendError, match="write lock stayed busy for 0.2 s"):
        store.acquire(one("k"))
    assert 0.15 < time.monotonic() - started < 0.5
    holder.join()
    patient = make(timeout=2.0)
    holder = hold_the_lock(db, 0.1)
    assert patient.acquire(one("k"))[0].allowed
    holder.join()


async def test_async_moves_to_a_thread_while_the_lock_is_busy(make: Factory, db: Path) -> None:
    store = make()
    await store.aping()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    holder = hold_the_lock(db, 0.2)
    started = time.monotonic()
    decision = (await store.aacquire(one("k")))[0]
    waited = time.monotonic() - started
    task.cancel()
    holder.join()
    assert decision.allowed
    assert waited >= 0.1
    assert ticks >= 5  # the loop kept running while the thread waited


# ---------------------------------------------------------------- processes
def _spend(url: str, count: int, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = open_store(url, namespace="procs")
    admitted = sum(store.acquire(one("shared", Rate(10, 3600.0)))[0].allowed for _ in range(count))
    store.close()
    queue.put(admitted)


@pytest.mark.process
def test_two_processes_never_admit_more_than_the_burst(db: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_spend, args=(f"sqlite:///{db}", 15, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    admitted = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0
    assert sum(admitted) == 10  # one token per 6 minutes: exactly the burst


@pytest.mark.process
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads (3.12+)
def test_a_forked_child_opens_its_own_connection(make: Factory) -> None:
    store = make(clock=FakeClock(1000.0))
    assert store.acquire(one("k", Rate(3, 60.0)))[0].remaining == 2
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            remaining = store.acquire(one("k", Rate(3, 60.0)))[0].remaining
            os.write(write, bytes([remaining]))
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert child == bytes([1])
    assert store.acquire(one("k", Rate(3, 60.0)))[0].remaining == 0  # the parent's still works
