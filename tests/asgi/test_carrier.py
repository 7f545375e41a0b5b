"""The request's id and trace context, carried into threads, jobs and other tasks."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from buttress.asgi import HardenSettings, current_request_id, harden
from buttress.asgi.context import (
    bound_context,
    context_carrier,
    current_trace,
    parse_traceparent,
    with_context,
)
from tests.conftest import captured_logs

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_outside_a_request_the_carrier_is_empty_and_binding_it_binds_nothing() -> None:
    assert context_carrier() == {}
    with bound_context({}) as trace:
        assert trace is None
        assert current_request_id() is None
        assert current_trace() is None
    with bound_context(None) as trace:
        assert trace is None


def test_a_carrier_continues_the_trace_with_a_span_of_its_own() -> None:
    with bound_context({"traceparent": CALLER, "x-request-id": "req-7"}) as trace:
        assert trace is not None
        assert current_request_id() == "req-7"
        assert current_trace() == trace
        assert (trace.trace_id, trace.parent_id, trace.flags) == (
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
            1,
        )
        assert trace.span_id != "00f067aa0ba902b7"
        # what this work sends on names the same trace, this span as the parent
        carried = context_carrier()
        assert carried["x-request-id"] == "req-7"
        assert parse_traceparent(carried["traceparent"]) == (trace.trace_id, trace.span_id, 1)
        with bound_context({"x-request-id": "inner"}):  # nested: restored afterwards
            assert (current_request_id(), current_trace()) == ("inner", None)
        assert current_request_id() == "req-7"
    assert (current_request_id(), current_trace()) == (None, None)


def test_a_bad_carrier_binds_no_trace_and_no_unreasonable_id() -> None:
    bad: list[dict[str, Any]] = [
        {"traceparent": "garbage", "x-request-id": "x" * 201},
        {"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "x-request-id": "a\nb"},
        {"traceparent": 7, "x-request-id": ""},
        {"x-request-id": "é"},
    ]
    for carrier in bad:
        with bound_context(carrier) as trace:
            assert (trace, current_request_id(), current_trace()) == (None, None, None)


def test_with_context_carries_the_context_into_a_thread_pool_even_concurrently() -> None:
    seen: list[str | None] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait(timeout=10)  # four runs of the same wrapped function at once
        seen.append(current_request_id())

    with bound_context({"x-request-id": "req-pool"}):
        wrapped = with_context(work)
        plain = work
    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(wrapped) for _ in range(4)]:
            future.result(timeout=10)
        barrier.reset()
        for future in [pool.submit(plain) for _ in range(4)]:
            future.result(timeout=10)
    assert sorted(seen, key=str) == [None] * 4 + ["req-pool"] * 4


async def test_a_job_started_by_a_request_logs_the_requests_id_and_trace() -> None:
    jobs: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=10)
    log = logging.getLogger("tests.carrier.worker")

    async def create(request: Request) -> JSONResponse:
        jobs.put_nowait({"order": 42, "context": context_carrier()})
        return JSONResponse({"queued": True}, status_code=202)

    app = harden(
        Starlette(routes=[Route("/orders", create, methods=["POST"])]),
        HardenSettings(configure_logging=False, access_log=False, metrics=False),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(
            "/orders", headers={"traceparent": CALLER, "x-request-id": "req-job-1"}
        )
    assert response.status_code == 202
    job = jobs.get_nowait()
    request_span = response.headers["traceresponse"].split("-")[2]

    def worker() -> dict[str, Any]:  # another thread, no context of the request
        assert current_request_id() is None
        with bound_context(job["context"]) as trace:
            log.warning("charging order %s", job["order"])
            assert trace is not None
            return {"trace": trace, "carried": context_carrier()}

    with captured_logs(json=True) as out:
        result = await asyncio.to_thread(worker)
    [line] = [json.loads(x) for x in out.getvalue().splitlines() if "charging" in x]
    trace = result["trace"]
    assert line["request_id"] == "req-job-1"
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" == trace.trace_id
    assert trace.parent_id == request_span  # the job's span is a child of the request's
    assert result["carried"]["x-request-id"] == "req-job-1"
