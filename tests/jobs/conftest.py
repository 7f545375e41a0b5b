"""Fixtures of the jobs tests: real brokers, real worker processes, a database of their own.

Redis DB 5 (and private redis-servers), PostgreSQL databases ``test_jobs_*``, RabbitMQ
vhosts ``buttress_test_*`` (created with rabbitmqctl, deleted after).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from tests.conftest import POSTGRES_URL, PrivateRedis

ROOT = Path(__file__).resolve().parents[2]
REDIS5 = "redis://127.0.0.1:6379/5"
RABBIT = "amqp://guest:guest@127.0.0.1:5672"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` every 50 ms until it is truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def flushed_redis(url: str) -> Iterator[redis.Redis]:
    """A client of the Redis database ``url``, emptied before and after."""
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {url} does not answer ({exc}); .ci/run starts it")
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def flags() -> Iterator[redis.Redis]:
    """Redis DB 5, emptied before and after (counters and flags of the worker app)."""
    with flushed_redis(REDIS5) as client:
        yield client


@contextlib.contextmanager
def orders_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database ``<prefix>_<random>`` with an ``orders`` table; dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=2) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} does not answer ({exc}); .ci/run starts it")
    url = f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id int NOT NULL, job_key text)")
        yield url
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_db() -> Iterator[str]:
    """A PostgreSQL database ``test_jobs_<random>`` with an ``orders`` table; dropped after."""
    with orders_database("test_jobs") as url:
        yield url


@pytest.fixture(scope="session")
def rabbit_vhost() -> Iterator[str]:
    """A RabbitMQ vhost ``buttress_test_<random>`` of this run (deleted after); its URL.

    One per session (rabbitmqctl takes seconds per call); tests use queues of their own.
    """
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is not installed; the RabbitMQ tests need it")
    vhost = f"buttress_test_{uuid.uuid4().hex[:10]}"
    for cmd in (
        ["rabbitmqctl", "-q", "add_vhost", vhost],
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({done.stderr.strip()}); .ci/run starts RabbitMQ")
    yield f"{RABBIT}/{vhost}"
    subprocess.run(
        ["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60, check=False
    )


@contextlib.contextmanager
def private_redis() -> Iterator[tuple[str, Callable[[], None]]]:
    """A durable redis-server of this test on a free port: (url, restart)."""
    workdir = tempfile.mkdtemp(prefix="jobs-redis-")
    server = PrivateRedis(Path(workdir), durable=True)  # a clean stop keeps the AOF whole
    server.start()
    try:
        yield server.url, server.restart
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


class Workers:
    """Start worker processes of ``tests.jobs.worker_app``; all stopped at the end."""

    def __init__(self, flags: redis.Redis, env: dict[str, str], tmp: Path) -> None:
        self.flags = flags
        self.env = env
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []

    def start(
        self, queue: str, *, pool: str = "solo", concurrency: int = 1, **env: str
    ) -> subprocess.Popen[bytes]:
        full = {**os.environ, **self.env, **env, "PYTHONPATH": str(ROOT)}
        log = open(self.tmp / f"worker-{len(self.procs)}.err", "wb")  # noqa: SIM115
        self.logs.append(log)
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "tests.jobs.worker_app", "worker",
                "-P", pool, "-c", str(concurrency), "-Q", queue, "-n", f"w{uuid.uuid4().hex[:6]}@%h",
                "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "warning",
            ],
            env=full, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs.append(proc)

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"worker exited: {self.errors()[-3000:]}")
            return bool(self.flags.get(f"ready:{proc.pid}"))

        wait_until(ready, 30, "a worker to be ready")
        return proc

    def errors(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.tmp.glob("worker-*.err"))
        )

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        for log in self.logs:
            log.close()


@pytest.fixture
def make_workers(flags: redis.Redis, tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    made: list[Workers] = []

    def factory(**env: str) -> Workers:
        workers = Workers(flags, {"JOBS_REDIS": REDIS5, **env}, tmp_path)
        made.append(workers)
        return workers

    yield factory
    for workers in made:
        workers.close()


@pytest.fixture
def queue_name() -> str:
    return f"q_{uuid.uuid4().hex[:10]}"
