"""Issue 8's reproduction against the real demo: a deadline during a keyed POST.

``buttress demo`` (1 worker on memory; 4 workers on SQLite, Redis and PostgreSQL) gets
``POST /orders`` with an ``Idempotency-Key`` and a client deadline so short
(``x-request-timeout``, 1 to 30 ms) that it fires anywhere: before the key is taken,
during the insert (which runs in a thread and cannot be cancelled), during the record,
while the response is sent. The client then retries with the same key, without the
header, until it has a final answer. Every key must end with exactly one order, every
answer must be whole (httpx reads each to its Content-Length), and no key may be held by
nobody (a retry never gets 409 once the first request's work is over).

Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.process

KEYS = 15  # keys per store; each gets its deadline from a spread of 1 to 30 ms


@contextlib.contextmanager
def demo(workers: int, store_url: str, tmp: Path) -> Iterator[str]:
    """``buttress demo`` on a free loopback port; yields its base URL."""
    port = free_port()
    errors = tmp / "demo.err"
    with errors.open("wb") as err:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter
            [
                sys.executable,
                "-c",
                "import sys; from buttress.cli import main; sys.exit(main())",
                "demo",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--store-url",
                store_url,
            ],
            env={
                **os.environ,
                "BUTTRESS_STORE_NAMESPACE": f"demo{uuid.uuid4().hex[:10]}",
                "BUTTRESS_DEMO_DB": str(tmp / "orders.sqlite3"),
            },
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the demo did not start: {errors.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            if time.monotonic() > give_up:
                pytest.fail("the demo did not answer within 30 s")
            time.sleep(0.1)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck demo
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _post(http: httpx.Client, base: str, key: str, sku: str, timeout: str | None) -> httpx.Response:
    headers = {"idempotency-key": key}
    if timeout is not None:
        headers["x-request-timeout"] = timeout
    return http.post(f"{base}/orders", json={"sku": sku, "quantity": 1}, headers=headers)


@pytest.mark.parametrize(
    ("workers", "store"),
    [(1, "memory"), (4, "sqlite"), (4, "redis"), (4, "postgres")],
    ids=["1-memory", "4-sqlite", "4-redis", "4-postgres"],
)
def test_a_deadline_during_a_keyed_post_never_creates_a_second_order(
    workers: int, store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    urls = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path / 'buttress.db'}"}
    url = urls.get(store) or request.getfixturevalue(f"{store}_url")
    run = uuid.uuid4().hex[:8]
    statuses: list[int] = []
    with demo(workers, url, tmp_path) as base, httpx.Client(timeout=10) as http:
        for i in range(KEYS):
            key, sku = f"{run}-{i}", f"s{run}{i}"
            first = _post(http, base, key, sku, f"{0.001 + 0.029 * i / (KEYS - 1):.4f}")
            statuses.append(first.status_code)
            assert first.status_code in (201, 504), first.text
            final = None
            for _ in range(50):  # the first request's handler may still be running
                retry = _post(http, base, key, sku, None)
                if retry.status_code == 409:
                    assert retry.json()["idempotency_error"] == "in_flight", retry.text
                    time.sleep(0.05)
                    continue
                if retry.status_code == 503:  # a store slow under load: retry, as clients do
                    assert retry.headers.get("retry-after"), retry.text
                    time.sleep(0.2)
                    continue
                final = retry
                break
            assert final is not None, f"key {key} stayed in flight"
            assert final.status_code == 201, final.text
            orders = http.get(f"{base}/orders", params={"sku": sku}).json()
            assert len(orders) == 1, (key, orders)
            assert final.json()["id"] == orders[0]["id"]
    assert 504 in statuses  # the deadline did fire during some of them
