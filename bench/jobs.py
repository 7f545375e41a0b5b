"""Celery jobs: bare Celery vs Celery + buttress.jobs, on Redis and RabbitMQ, in one run.

Cases (each on a Redis broker and on a RabbitMQ broker; buttress's idempotency store is
Redis):

* ``noop``: a task that does nothing;
* ``pg``: a task that writes one row to PostgreSQL (``INSERT ... ON CONFLICT DO NOTHING``).

Each case pre-fills a queue with N messages, then starts one worker (solo pool, prefetch 1,
late ack, as buttress configures it; the bare case gets the same Celery settings) and
measures from the first job's start to the last job's end. Prints jobs/s, the ratio
buttress/bare, and buttress's idempotency-store round trips per job (counted by a proxy
around the store in the worker).

    .venv/bin/python bench/jobs.py [--jobs 2000] [--repeat 2]

Then, in this process, what one job costs buttress (``JobRunner.run`` of a no-op job with
the memory and the Redis store), what its two store round trips cost (``begin`` +
``complete``) and what a Redis ``PING`` costs: the saving a one-round-trip design could
at most bring (see docs/jobs.md, "Why two store round trips").

Needs Redis (DB 5 is used and emptied), PostgreSQL (a database ``test_jobs_bench`` is
created and dropped) and RabbitMQ (a vhost ``buttress_test_bench``, created and deleted).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery import Celery

from buttress.jobs import META_HEADER, new_meta

HERE = Path(__file__).resolve().parent
REDIS = "redis://127.0.0.1:6379/5"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
PG = "postgresql://postgres@127.0.0.1:5432/test_jobs_bench"
VHOST = "buttress_test_bench"
RABBIT = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"

# ------------------------------------------------------------------ the worker side
if os.environ.get("BENCH_JOBS_ROLE") == "worker":
    from buttress.jobs.celery import SAFE_DEFAULTS, CeleryJobs
    from buttress.stores import open_store

    N = int(os.environ["BENCH_JOBS_N"])
    flags = redis.Redis.from_url(REDIS)
    app = Celery("bench_jobs", broker=os.environ["BENCH_JOBS_BROKER"])
    app.conf.update(SAFE_DEFAULTS, task_ignore_result=True, worker_hijack_root_logger=False)
    conn: Any = None

    def _pg() -> Any:
        global conn
        if conn is None:
            conn = psycopg.connect(PG, autocommit=True)
        return conn

    def _mark(i: int) -> None:
        if i == 0:
            flags.set("bench:start", repr(time.perf_counter()))
        if i == N - 1:
            flags.set("bench:end", repr(time.perf_counter()))

    def noop(i: int) -> None:
        _mark(i)

    def pg(i: int) -> None:
        _pg().execute("INSERT INTO rows (id) VALUES (%s) ON CONFLICT DO NOTHING", (i,))
        _mark(i)

    if os.environ["BENCH_JOBS_VARIANT"] == "bare":
        app.task(name="b.noop")(noop)
        app.task(name="b.pg")(pg)
    else:

        class Counting:
            """The Redis store, counting round trips and the time spent in them."""

            def __init__(self, inner: Any) -> None:
                self.inner = inner
                self.calls = 0
                self.seconds = 0.0

            def __getattr__(self, name: str) -> Any:
                target = getattr(self.inner, name)

                def call(*args: Any, **kwargs: Any) -> Any:
                    self.calls += 1
                    started = time.perf_counter()
                    try:
                        return target(*args, **kwargs)
                    finally:
                        self.seconds += time.perf_counter() - started

                return call

        store = Counting(open_store(REDIS, namespace="bench"))
        jobs = CeleryJobs(app, store=store, dlq=REDIS)  # type: ignore[arg-type]
        execute = jobs._execute  # noqa: SLF001 - timed from outside, behaviour unchanged
        in_execute = [0.0]  # the adapter's task body: Job, runner, store round trips, metrics

        def timed_execute(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return execute(*args)
            finally:
                in_execute[0] += time.perf_counter() - started

        jobs._execute = timed_execute  # type: ignore[method-assign,assignment]  # noqa: SLF001

        def counted(fn: Any) -> Any:
            def run(i: int) -> None:
                fn(i)
                if i == N - 1:
                    flags.set("bench:store_calls_at_end", store.calls)
                    # inside the last job: its own `complete` and the rest of its body to come
                    flags.set("bench:store_s", repr(store.seconds))
                    flags.set("bench:execute_s", repr(in_execute[0]))

            run.__name__ = fn.__name__
            run.__qualname__ = fn.__qualname__
            run.__module__ = fn.__module__
            return run

        jobs.task(name="b.noop")(counted(noop))
        jobs.task(name="b.pg")(counted(pg))


# ------------------------------------------------------------------ the driver
def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=120)


def _setup() -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS test_jobs_bench WITH (FORCE)")
        c.execute("CREATE DATABASE test_jobs_bench")
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute("CREATE TABLE rows (id int PRIMARY KEY)")
    _sh("rabbitmqctl", "-q", "add_vhost", VHOST)
    _sh("rabbitmqctl", "-q", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")


def _teardown() -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS test_jobs_bench WITH (FORCE)")
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", VHOST], capture_output=True, timeout=120)
    redis.Redis.from_url(REDIS).flushdb()


def run_case(
    broker: str, variant: str, task: str, n: int
) -> tuple[float, float | None, tuple[float, float] | None]:
    """Jobs per second, store round trips per job, and µs per job (store, adapter body).

    The last two are None for the bare variant.
    """
    flags = redis.Redis.from_url(REDIS)
    flags.flushdb()
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute("TRUNCATE rows")
    queue = f"bench_{variant}_{task}"
    producer = Celery("bench_producer", broker=broker)
    meta_headers = (META_HEADER, new_meta) if variant == "buttress" else None
    with producer.connection_for_write() as conn:
        for i in range(n):
            headers = {meta_headers[0]: meta_headers[1](context={})} if meta_headers else {}
            producer.send_task(f"b.{task}", args=[i], queue=queue, headers=headers, connection=conn)
    producer.close()
    env = {
        **os.environ, "BENCH_JOBS_ROLE": "worker", "BENCH_JOBS_N": str(n),
        "BENCH_JOBS_BROKER": broker, "BENCH_JOBS_VARIANT": variant,
        "PYTHONPATH": f"{HERE}:{HERE.parent / 'src'}",
    }  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "jobs", "worker", "-P", "solo", "-Q", queue,
         "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "error"],
        env=env, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while flags.get("bench:end") is None:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{variant} {task} on {broker}: did not finish")
            time.sleep(0.1)
        start = float(flags.get("bench:start") or 0)
        end = float(flags.get("bench:end") or 0)
        calls = flags.get("bench:store_calls_at_end")
        store_s, execute_s = flags.get("bench:store_s"), flags.get("bench:execute_s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # counted inside the last job: its own `complete` is still to come (+1)
    per_job = None if calls is None else (int(calls) + 1) / n
    split = None
    if store_s is not None and execute_s is not None:
        split = (float(store_s) / (n - 1) * 1e6, float(execute_s) / (n - 1) * 1e6)
    return (n - 1) / (end - start), per_job, split


def _per_call(fn: Any, n: int) -> float:
    """Median over 3 runs of ``fn()``'s cost, in µs."""
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(runs)


def in_process(n: int = 5000) -> None:
    """The core's own cost per job, and the store round trips', in this process."""
    from buttress.jobs import Job, JobRunner  # noqa: PLC0415
    from buttress.stores import open_store  # noqa: PLC0415
    from buttress.stores._base import StoredResponse  # noqa: PLC0415

    ping = redis.Redis.from_url(REDIS)
    print(f"\nin process, {n} no-op jobs per case (median of 3), µs per job:")
    for url in ("memory://", REDIS):
        store = open_store(url, namespace=f"bench-inproc-{time.time_ns()}")
        runner = JobRunner(store=store, dlq=None)
        seq = iter(range(1 << 30))

        def one(runner: Any = runner, seq: Any = seq) -> None:
            runner.run(Job(id="j", name="b.noop", args=(next(seq),)), _noop)

        def pair(store: Any = store, seq: Any = seq) -> None:
            key = f"pair:{next(seq)}"
            begun = store.begin(key, "fp", 60.0)
            store.complete(key, begun.token, StoredResponse(200, (), b"null"), 60.0)

        run_cost = _per_call(one, n)
        pair_cost = _per_call(pair, n)
        name = url.split(":", 1)[0]
        print(
            f"  {name:7} JobRunner.run {run_cost:6.1f}   begin+complete {pair_cost:6.1f}   "
            f"buttress's own {run_cost - pair_cost:5.1f}"
        )
    rtt = _per_call(ping.ping, n)
    print(
        f"  redis   PING {rtt:5.1f}: one round trip instead of two would save at most "
        "~one script call per job (the begin+complete pair / 2)"
    )
    ping.flushdb()


def _noop(i: int) -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", default="", help="run the cases whose 'broker job' has this")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} at the start")
    _setup()
    try:
        print(
            f"{'broker':9} {'job':5} {'bare/s':>9} {'buttress/s':>11} {'ratio':>6} "
            f"{'cost':>6} {'store trips/job':>15} {'gap µs':>7} {'body µs':>8} {'store µs':>9}"
        )
        for broker_name, broker in (("redis", REDIS), ("rabbitmq", RABBIT)):
            for task in ("noop", "pg"):
                if args.only not in f"{broker_name} {task}":
                    continue
                bare: list[float] = []
                ours: list[float] = []
                trips: list[float] = []
                splits: list[tuple[float, float]] = []
                for rep in range(args.repeat):
                    order = ("bare", "buttress") if rep % 2 == 0 else ("buttress", "bare")
                    for variant in order:
                        rate, per_job, split = run_case(broker, variant, task, args.jobs)
                        (bare if variant == "bare" else ours).append(rate)
                        if per_job is not None:
                            trips.append(per_job)
                        if split is not None:
                            splits.append(split)
                b, o = statistics.median(bare), statistics.median(ours)
                print(
                    f"{broker_name:9} {task:5} {b:9.0f} {o:11.0f} {o / b:6.2f} "
                    f"{(1 - o / b) * 100:5.1f}% {statistics.median(trips):15.2f} "
                    f"{1e6 / o - 1e6 / b:7.0f} {statistics.median(s[1] for s in splits):8.0f} "
                    f"{statistics.median(s[0] for s in splits):9.0f}"
                )
        in_process()
        print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} at the end")
    finally:
        _teardown()


if __name__ == "__main__" and os.environ.get("BENCH_JOBS_ROLE") != "worker":
    main()
