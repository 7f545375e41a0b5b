"""Shared state across real worker processes: uvicorn --workers 4 on one store.

* 50 concurrent duplicates of one Idempotency-Key, spread over 4 workers on new
  connections, run the handler exactly once (Redis, then PostgreSQL);
* a rate limit shared by 4 workers never admits more than GCRA allows;
* a private Redis (started and killed by the test, never the shared one) goes down in the
  middle of a bounded load: fail-open keeps answering with zero 5xx, the fallback engages,
  and the shared limiter is used again once Redis is back.

Every server listens on 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.process


@contextlib.contextmanager
def fleet(store_url: str, log: Path, workers: int = 4, **env: str) -> Iterator[str]:
    """uvicorn with ``workers`` processes serving tests/asgi/_fleet_app.py; yields its URL."""
    port = free_port()
    errors = log.with_suffix(".err")
    err_file = errors.open("wb")
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "tests.asgi._fleet_app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            # this checkout's code, whatever else the interpreter has installed
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "BUTTRESS_STORE_URL": store_url,
            "BUTTRESS_STORE_NAMESPACE": f"fleet{uuid.uuid4().hex[:10]}",
            "FLEET_LOG": str(log),
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=err_file,
        start_new_session=True,  # the workers can be stopped as one group
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = errors.read_text(errors="replace")
                pytest.fail(f"the fleet did not start: {err[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail("the fleet did not answer within 30 s")
            time.sleep(0.1)
        time.sleep(1.0)  # every worker up, so the kernel spreads connections over all
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # no worker outlives the test
        proc.wait(10)
        err_file.close()


async def _send(
    base: str, method: str, path: str, count: int, concurrency: int, **kwargs: object
) -> list[tuple[float, float, httpx.Response]]:
    """``count`` requests, each on a new connection; (sent, answered, response) each."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> tuple[float, float, httpx.Response]:
        async with gate, httpx.AsyncClient(base_url=base, timeout=15) as http:
            sent = time.monotonic()
            response = await http.request(method, path, **kwargs)  # type: ignore[arg-type]
            return sent, time.monotonic(), response

    return list(await asyncio.gather(*(one() for _ in range(count))))


def _duplicates_run_once(base: str, log: Path) -> None:
    headers = {"idempotency-key": f"order-{uuid.uuid4()}", "content-type": "application/json"}
    body = b'{"sku": "fleet", "quantity": 1}'
    results = asyncio.run(_send(base, "POST", "/orders", 50, 50, content=body, headers=headers))
    runs = log.read_text().splitlines() if log.exists() else []
    assert len(runs) == 1, f"the handler ran {len(runs)} times: {runs}"
    odd = [(r.status_code, r.text[:300]) for _, _, r in results if r.status_code not in (201, 409)]
    assert not odd, odd
    originals = [
        r for _, _, r in results if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    assert len(originals) == 1
    replays = [r for _, _, r in results if r.headers.get("idempotent-replayed") == "true"]
    assert all(r.content == originals[0].content for r in replays)
    workers = {r.json()["worker"] for _, _, r in results if r.status_code == 201}
    assert len(workers) == 1  # every replay is the original worker's answer
    # and a later duplicate, after the first finished, is a replay
    late = httpx.post(f"{base}/orders", content=body, headers=headers, timeout=10)
    assert late.headers.get("idempotent-replayed") == "true"
    assert late.content == originals[0].content
    assert len(log.read_text().splitlines()) == 1


@pytest.mark.redis
def test_duplicates_across_four_workers_run_once_on_redis(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    with fleet(redis_url, log) as base:
        _duplicates_run_once(base, log)


@pytest.mark.postgres
def test_duplicates_across_four_workers_run_once_on_postgres(
    postgres_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    with fleet(postgres_url, log) as base:
        _duplicates_run_once(base, log)


@pytest.mark.redis
def test_rate_limit_holds_across_four_workers(redis_url: str, tmp_path: Path) -> None:
    burst, rate = 10, 50.0  # the fleet app's "/limited": 50/second;burst=10
    with fleet(redis_url, tmp_path / "runs.log") as base:
        results = asyncio.run(_send(base, "GET", "/limited", 240, 12))
    statuses = [r.status_code for _, _, r in results]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0, "the load never reached the limit: the test proves nothing"
    admitted = sorted((sent, done) for sent, done, r in results if r.status_code == 200)
    workers = {r.json()["worker"] for _, _, r in results if r.status_code == 200}
    assert len(workers) >= 2, "the load did not spread over the workers"
    # admitted i..j were decided within [sent_i, done_j]: GCRA allows burst + rate * that
    for i, (sent, _) in enumerate(admitted):
        for j in range(i, len(admitted)):
            span = admitted[j][1] - sent
            assert j - i + 1 <= burst + rate * span + 1, (
                f"{j - i + 1} admitted within {span:.3f} s; GCRA allows {burst + rate * span:.1f}"
            )


def _metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextlib.contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (the fault test starts its own)")
    proc = subprocess.Popen(  # noqa: S603 - the local redis-server binary
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"private redis-server on {port} did not start")
            time.sleep(0.05)
        yield proc
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_redis_down_mid_load_fails_open_and_recovers(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with private_redis(port) as first, fleet(url, tmp_path / "runs.log", workers=1) as base:
        before = asyncio.run(_send(base, "GET", "/limited", 40, 4))
        assert _metric(base, "buttress_rate_limit_fallback_engaged") == 0
        first.kill()  # Redis dies in the middle of the run
        first.wait(10)
        during = asyncio.run(_send(base, "GET", "/limited", 60, 4))
        assert _metric(base, "buttress_rate_limit_fallbacks_total") >= 1
        assert _metric(base, "buttress_rate_limit_fallback_engaged") == 1
        with private_redis(port):
            after: list[tuple[float, float, httpx.Response]] = []
            deadline = time.monotonic() + 15  # the breaker probes again after 5 s
            while time.monotonic() < deadline:
                after += asyncio.run(_send(base, "GET", "/limited", 5, 1))
                if _metric(base, "buttress_rate_limit_fallback_engaged") == 0:
                    break
                time.sleep(0.25)
            assert _metric(base, "buttress_rate_limit_fallback_engaged") == 0, "never recovered"
            after += asyncio.run(_send(base, "GET", "/limited", 20, 4))
            keys = redis.Redis(port=port).dbsize()
    statuses = [r.status_code for _, _, r in before + during + after]
    assert not [s for s in statuses if s >= 500], statuses
    assert {200, 429} >= set(statuses)
    assert keys > 0, "the shared limiter was not used again after Redis came back"
