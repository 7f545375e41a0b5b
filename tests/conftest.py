"""Shared fixtures.

Tests that need Redis or PostgreSQL talk to the real servers (``.ci/run`` starts them) and
fail loudly when they do not answer: they never skip.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from buttress import telemetry
from buttress.stores import Store, open_store
from buttress.testing import FakeClock

REDIS_URL = os.environ.get("BUTTRESS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "BUTTRESS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """``response`` is problem+json with ``status`` and ``code``, and names its request."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert (body["status"], body["code"]) == (status, code)
    assert body["type"].startswith("https://")
    if "x-request-id" in response.headers:
        assert body["request_id"] == response.headers["x-request-id"]
    return body


@contextlib.contextmanager
def served(
    args: list[str],
    ready_url: str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process started from ``args``, up once ``ready_url`` answers 200; stopped after.

    Fails the test (with the end of its stderr) if it exits or does not answer in time.
    """
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally; a file, not a pipe
    proc = subprocess.Popen(  # noqa: S603 - this interpreter, a command of the tests
        args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=errors
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(ready_url, timeout=1.0).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(timeout=10)
                errors.seek(0)
                err = errors.read().decode(errors="replace")
                pytest.fail(f"{' '.join(args[:4])}... did not start: {err[-2000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # a stuck shutdown
            proc.kill()
            proc.wait(timeout=10)
        errors.close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (servers started by tests listen on loopback only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server a test owns: a free loopback port, its own directory, stopped after.

    Started daemonized from `start_argv` and stopped with `stop_argv` (``redis-cli
    shutdown nosave``, a clean stop), so a test can also hand both command lines to the
    code under test (``buttress probe --fault ... --recover ...``). ``durable``: an AOF
    written at every command, so a restart keeps every key. Whatever a test leaves
    running is killed by its pid at the end (`close`).
    """

    def __init__(self, directory: Path, *, db: int = 0, durable: bool = False) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (this test starts one of its own)")
        self.port = free_port()
        self.directory = directory
        self.db = db
        self.durable = durable
        self.pidfile = directory / f"redis-{self.port}.pid"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    def start_argv(self) -> list[str]:
        aof = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.durable
            else ["--appendonly", "no"]
        )
        return [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            *aof, "--daemonize", "yes", "--pidfile", str(self.pidfile),
            "--dir", str(self.directory),
        ]  # fmt: skip

    def stop_argv(self) -> list[str]:
        return ["redis-cli", "-p", str(self.port), "shutdown", "nosave"]

    def start(self) -> None:
        subprocess.run(self.start_argv(), check=True, timeout=10)  # noqa: S603
        if not self._wait(answering=True):
            pytest.fail(f"the private redis-server on port {self.port} did not answer")

    def stop(self) -> bool:
        """Shut it down; True once it no longer answers."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(self.stop_argv(), capture_output=True, timeout=10, check=False)  # noqa: S603
        return self._wait(answering=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def close(self) -> None:
        """Stop the server (woken first if a test froze it with SIGSTOP); kill it by its
        pid only if it still answers after that."""
        with contextlib.suppress(OSError, ValueError):
            os.kill(self.pid(), signal.SIGCONT)
        if not self.stop():
            with contextlib.suppress(OSError, ValueError):
                os.kill(self.pid(), 9)

    def _wait(self, *, answering: bool) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    if answering:
                        return True
                    time.sleep(0.05)
                    continue
            if not answering:
                return True
            time.sleep(0.05)
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A started `PrivateRedis` of this test's own (DB 3), closed after."""
    server = PrivateRedis(tmp_path, db=3)
    server.start()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def captured_logs(*, json: bool) -> Iterator[io.StringIO]:
    """buttress's logging (access lines, errors) configured into a buffer, then put back."""
    import structlog

    from buttress.asgi import _logging

    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sink, as_json = _logging._access_sink, _logging._access_json
    _logging.configure_logging(json=json, stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        root.handlers, root.level = handlers, level
        _logging._access_sink, _logging._access_json = sink, as_json


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock starting at t=1000 (away from 0 to catch 'falsy time' bugs)."""
    return FakeClock(1000.0)


class EventLog(list[telemetry.Event]):
    """Collects events; ``kinds()`` lists their kinds in order."""

    def __call__(self, event: telemetry.Event) -> None:
        self.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self]


@pytest.fixture
def events() -> Iterator[EventLog]:
    """Every event emitted during the test (a global hook, removed afterwards)."""
    log = EventLog()
    telemetry.add_hook(log)
    try:
        yield log
    finally:
        telemetry.remove_hook(log)


@pytest.fixture
def redis_url() -> str:
    """The real Redis; fails (never skips) when it does not answer."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:  # pragma: no cover - environment failure
        pytest.fail(f"Redis at {REDIS_URL} does not answer ({exc}); .ci/run starts it")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def postgres_url() -> str:
    """The real PostgreSQL; fails (never skips) when it does not answer."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:  # pragma: no cover - environment failure
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} does not answer ({exc}); .ci/run starts it")
    return POSTGRES_URL


@contextlib.contextmanager
def own_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own (``<prefix>_<random>``), dropped after; its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=2) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=2) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# ---------------------------------------------------------------- every store
StoreFactory = Callable[..., Store]

KINDS = ["memory", "sqlite", "redis", "postgres"]


@pytest.fixture(params=KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def store_url(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if store_kind == "memory":
        return "memory://"
    if store_kind == "sqlite":
        return f"sqlite:///{tmp_path / 'buttress.db'}"
    if store_kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    pg_url: str = request.getfixturevalue("postgres_url")
    return pg_url


@pytest.fixture
def make_store(store_kind: str, store_url: str) -> Iterator[StoreFactory]:
    """Open stores of the parametrised kind (closed after the test)."""
    opened: list[Store] = []
    namespace = f"t{uuid.uuid4().hex[:12]}"

    def factory(**options: object) -> Store:
        if store_kind != "memory":
            options.setdefault("namespace", namespace)
        store = open_store(store_url, **options)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()
