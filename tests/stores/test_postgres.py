"""PostgresStore beyond the contract: schema, sweeps, bounded calls, event loops, denials.

Tests that look at the tables use a schema of their own (dropped afterwards), so they
never see the rows of tests running at the same time.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from buttress.errors import BackendError, ConfigurationError
from buttress.stores import MemoryStore, Rate, RateRequest, store_key
from buttress.stores._postgres import SCHEMA_VERSION, PostgresStore
from buttress.testing import FakeClock

pytestmark = pytest.mark.postgres

Factory = Callable[..., PostgresStore]


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
def make(postgres_url: str) -> Iterator[Factory]:
    stores: list[PostgresStore] = []

    def factory(url: str = postgres_url, **options: object) -> PostgresStore:
        options.setdefault("namespace", f"t{uuid.uuid4().hex[:12]}")
        store = PostgresStore(url, **options)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield factory
    for store in stores:
        store.close()


def query(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params or None)
        return cur.fetchall() if cur.description else []


def one(key: str, rate: Rate = Rate(1, 60.0), cost: int = 1) -> list[RateRequest]:
    return [RateRequest(key, rate, cost)]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---------------------------------------------------------------- schema
def test_schema_is_created_once_under_concurrent_first_use(
    make: Factory, schema: str, postgres_url: str
) -> None:
    stores = [make(schema=schema) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def first_use(store: PostgresStore) -> None:
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
    assert query(postgres_url, f"SELECT version FROM {schema}.buttress_schema") == [
        (SCHEMA_VERSION,)
    ]
    persistence = dict(
        query(
            postgres_url,
            "SELECT relname, relpersistence FROM pg_class WHERE relnamespace = %s::regnamespace "
            "AND relkind = 'r'",
            schema,
        )
    )
    assert persistence == {
        "buttress_schema": "p",
        "buttress_rate": "u",  # limits: no WAL
        "buttress_idempotency": "p",  # stored responses survive a crash
        "buttress_breaker": "u",
    }


async def test_a_newer_schema_is_refused(make: Factory, schema: str, postgres_url: str) -> None:
    make(schema=schema).ping()  # ping does not create anything
    make(schema=schema).acquire(one("k"))
    query(
        postgres_url,
        f"INSERT INTO {schema}.buttress_schema (version) VALUES (%s)",
        SCHEMA_VERSION + 1,
    )
    newcomer = make(schema=schema)
    with pytest.raises(BackendError, match=rf"schema version {SCHEMA_VERSION + 1}, newer"):
        newcomer.acquire(one("k"))
    with pytest.raises(BackendError, match="newer than this buttress knows"):
        await newcomer.abegin("k", "fp", 10.0)


def test_a_version_1_schema_is_upgraded(make: Factory, schema: str, postgres_url: str) -> None:
    """Version 2 replaced the multi-key function (the tolerance of `buttress._gcra`)."""
    make(schema=schema).acquire(one("k"))
    query(postgres_url, f"UPDATE {schema}.buttress_schema SET version = 1")
    query(  # a stand-in for the version 1 function
        postgres_url,
        f"CREATE OR REPLACE FUNCTION {schema}.buttress_acquire(p_keys text[], "
        "p_intervals float8[], p_bursts integer[], p_costs integer[], p_now float8, "
        "OUT o_now float8, OUT o_tats float8[]) LANGUAGE sql AS $$ SELECT 0::float8, "
        "'{}'::float8[] $$",
    )
    clock = FakeClock(1000.0)
    store = make(schema=schema, clock=clock)
    both = [RateRequest("a", Rate(1, 60.0)), RateRequest("b", Rate(1, 60.0))]
    assert [d.allowed for d in store.acquire(both)] == [True, True]
    assert [d.allowed for d in store.acquire(both)] == [False, False]
    versions = query(postgres_url, f"SELECT version FROM {schema}.buttress_schema ORDER BY 1")
    assert versions == [(1,), (SCHEMA_VERSION,)]
    [(source,)] = query(
        postgres_url,
        "SELECT prosrc FROM pg_proc WHERE proname = 'buttress_acquire' "
        "AND pronamespace = %s::regnamespace",
        schema,
    )
    assert "1.0000000000000018" in str(source)


# ---------------------------------------------------------------- sweeps
def rows_of(url: str, schema: str) -> dict[str, int]:
    counts = {}
    for table in ("buttress_rate", "buttress_idempotency", "buttress_breaker"):
        counts[table] = query(url, f"SELECT count(*) FROM {schema}.{table}")[0][0]
    return counts


def fill(store: PostgresStore, n: int) -> None:
    for i in range(n):
        store.acquire(one(f"k{i}"))
        store.begin(f"i{i}", "fp", lease=10.0)
        store.publish("svc", f"instance-{i}", "open", ttl=10.0)


def test_the_sweep_deletes_expired_rows_in_bounded_batches(
    make: Factory, schema: str, postgres_url: str
) -> None:
    clock = FakeClock(1000.0)
    store = make(schema=schema, clock=clock, sweep_every=0, sweep_batch=10)
    neighbour = make(schema=schema, clock=FakeClock(10**9), sweep_every=0)
    neighbour.acquire(one("theirs"))  # another namespace on another clock: never swept
    fill(store, 25)
    clock.advance(3600.0)
    store.acquire(one("live"))  # still within its period: kept
    assert rows_of(postgres_url, schema) == {
        "buttress_rate": 27,
        "buttress_idempotency": 25,
        "buttress_breaker": 25,
    }
    deleted = []
    for _ in range(8):
        deleted.append(store.sweep())
        assert deleted[-1] <= 3 * 10  # at most a batch per table
    assert sum(deleted) == 75
    assert rows_of(postgres_url, schema) == {
        "buttress_rate": 2,
        "buttress_idempotency": 0,
        "buttress_breaker": 0,
    }
    assert store.acquire(one("live"))[0].allowed is False  # its state survived
    assert neighbour.acquire(one("theirs"))[0].allowed is False


async def test_the_sweep_runs_every_n_operations(
    make: Factory, schema: str, postgres_url: str
) -> None:
    clock = FakeClock(1000.0)
    store = make(schema=schema, clock=clock, sweep_every=4, sweep_batch=100)
    for i in range(3):
        store.acquire(one(f"k{i}"))
    clock.advance(120.0)
    assert rows_of(postgres_url, schema)["buttress_rate"] == 3
    await store.aacquire(one("fresh"))  # the 4th operation sweeps (the cursor wraps)
    for _ in range(4):
        await store.areports("nothing")
    assert rows_of(postgres_url, schema)["buttress_rate"] == 1


# ---------------------------------------------------------------- bounded calls
def test_an_unreachable_server_is_a_quick_backend_error(make: Factory) -> None:
    port = closed_port()
    store = make(f"postgresql://postgres@127.0.0.1:{port}/test", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(
        BackendError, match=rf"127\.0\.0\.1:{port}/test: no connection within 0\.3 s"
    ):
        store.acquire(one("k"))
    assert time.monotonic() - started < 1.5


async def test_an_unreachable_server_is_a_quick_backend_error_async(make: Factory) -> None:
    port = closed_port()
    store = make(f"postgresql://postgres@127.0.0.1:{port}/test", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(BackendError, match=rf"127\.0\.0\.1:{port}/test ping failed: .*refused"):
        await store.aping()
    assert time.monotonic() - started < 1.5
    await store.aclose()


async def test_async_checkout_waits_at_most_the_timeout(make: Factory) -> None:
    store = make(timeout=0.3, max_connections=1)
    await store.aping()
    pool = store._aconnect(asyncio.get_running_loop())
    held = await pool.get()  # the only connection is busy
    started = time.monotonic()
    with pytest.raises(BackendError, match="no connection within 0.3 s"):
        await store.aping()
    assert 0.25 < time.monotonic() - started < 1.5
    pool.put(held)
    await store.aping()


def test_a_blocked_statement_times_out(make: Factory, postgres_url: str) -> None:
    clock = FakeClock(1000.0)
    store = make(clock=clock, timeout=0.3)
    store.acquire(one("k"))
    with psycopg.connect(postgres_url) as blocker:  # holds the row lock until rollback
        blocker.execute(
            "SELECT 1 FROM buttress_rate WHERE key = %s FOR UPDATE",
            [store_key(store.namespace, "rl", "k")],
        )
        started = time.monotonic()
        with pytest.raises(BackendError, match="statement timeout"):
            store.acquire(one("k"))
        assert time.monotonic() - started < 1.5
        blocker.rollback()
    clock.advance(60.0)
    assert store.acquire(one("k"))[0].allowed  # the pool recovered


# ---------------------------------------------------------------- event loops
def test_the_async_pool_survives_event_loops(make: Factory) -> None:
    store = make(clock=FakeClock(1000.0))
    first = asyncio.run(store.aacquire(one("k")))[0]
    second = asyncio.run(store.aacquire(one("k")))[0]  # a new loop: a new pool
    assert (first.allowed, second.allowed) == (True, False)

    async def on_a_third_loop() -> bool:
        allowed = (await store.aacquire(one("j")))[0].allowed
        await store.aclose()
        return allowed

    assert asyncio.run(on_a_third_loop())
    store.close()


# ---------------------------------------------------------------- decisions
def test_local_denials_skip_the_round_trip(make: Factory) -> None:
    clock = FakeClock(1000.0)
    store = make(clock=clock)
    assert store.acquire(one("k"))[0].allowed
    first = store.acquire(one("k"))[0]  # denied by the server: remembered
    store._run = None  # type: ignore[assignment,method-assign]  # no more round trips
    again = store.acquire(one("k"))[0]
    assert again == first
    clock.advance(59.0)
    assert store.acquire(one("k"))[0].retry_after == pytest.approx(1.0)


def test_without_local_denials_every_decision_asks(make: Factory) -> None:
    clock = FakeClock(1000.0)
    store = make(clock=clock, local_denials=False)
    store.acquire(one("k"))
    store.acquire(one("k"))
    store._run = None  # type: ignore[assignment,method-assign]
    with pytest.raises(TypeError):
        store.acquire(one("k"))


def test_repeated_and_several_keys_match_the_memory_store(make: Factory) -> None:
    clock = FakeClock(1000.0)
    store = make(clock=clock)
    model = MemoryStore(clock=clock)
    rng = random.Random(3)
    rates = [Rate(3, 1.0), Rate(5, 10.0, burst=2)]
    for _ in range(60):
        clock.advance(rng.choice([0.0, 0.1, 0.7]))
        keys = [rng.choice("abc") for _ in range(rng.randint(1, 3))]
        batch = [RateRequest(k, rates[ord(k) % 2], rng.choice([1, 2])) for k in keys]
        for got, want in zip(store.acquire(batch), model.acquire(batch), strict=True):
            assert (got.allowed, got.remaining) == (want.allowed, want.remaining)
            assert got.retry_after == pytest.approx(want.retry_after, abs=1e-9)
            assert got.reset_after == pytest.approx(want.reset_after, abs=1e-9)


def test_opposite_key_orders_do_not_deadlock(make: Factory) -> None:
    clock = FakeClock(1000.0)
    namespace = f"deadlock{uuid.uuid4().hex[:6]}"
    stores = [make(clock=clock, namespace=namespace) for _ in range(4)]
    rate = Rate(10**6, 1.0)
    errors: list[BaseException] = []

    def worker(store: PostgresStore, keys: str) -> None:
        try:
            for _ in range(40):
                store.acquire([RateRequest(k, rate) for k in keys])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(s, keys))
        for s, keys in zip(stores, ["abc", "cba", "bca", "acb"], strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------- options
@pytest.mark.parametrize(
    "options",
    [
        {"schema": "Bad-Name"},
        {"namespace": "a{b}"},
        {"namespace": ""},
        {"timeout": 0},
        {"max_connections": 0},
        {"sweep_batch": 0},
        {"sweep_every": -1},
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        PostgresStore("postgresql://u@localhost/db", **options)  # type: ignore[arg-type]


def test_repr_hides_the_password() -> None:
    store = PostgresStore("postgresql://app:s3cret@db.internal:6543/app")
    assert "s3cret" not in repr(store)
    assert "db.internal:6543/app" in repr(store)
