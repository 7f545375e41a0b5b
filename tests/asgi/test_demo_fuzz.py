"""Schemathesis against the demo service's OpenAPI, over real HTTP: no server errors.

The demo runs under uvicorn on 127.0.0.1 (an ephemeral port). ``/boom`` (fails on purpose)
and ``/slow`` (sleeps into the deadline on purpose) are excluded; everything else is fuzzed
with bounded examples and must never answer 5xx.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import free_port

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "buttress.demo.app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env={**os.environ, "BUTTRESS_LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("the demo service did not start: " + proc.stderr.read().decode()[-500:])  # type: ignore[union-attr]
        yield base
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture(scope="module")
def demo_schema(demo_url: str) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{demo_url}/openapi.json")
    return schema.exclude(path_regex="^/(boom|slow)$")


def test_no_server_errors(demo_schema: schemathesis.BaseSchema) -> None:
    """Every operation, bounded examples each (schemathesis's strategies driven directly)."""
    seen = 0
    for result in demo_schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(timeout=10)
            assert response.status_code < 500, (
                case.method,
                case.formatted_path,
                response.status_code,
                response.text[:300],
            )
            if response.status_code >= 400:
                assert response.headers.get("content-type") in (
                    ["application/problem+json"],
                    "application/problem+json",
                ), response.headers

        check()
        seen += 1
    assert seen >= 4  # the orders API and the price route were all exercised
