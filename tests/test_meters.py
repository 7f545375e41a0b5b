"""Meters (issue 11): every call of a named pipeline, every store round trip and every
idempotent request measured, in Prometheus and in OpenTelemetry metrics; nothing when off."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from buttress import otel, telemetry
from buttress.asgi import HardenSettings, harden
from buttress.errors import BackendError
from buttress.resilience import Backoff, CircuitBreaker, Pipeline, Retry, Timeout
from buttress.stores import MemoryStore, MeteredStore, Rate, RateRequest, metered, open_store
from buttress.telemetry import PrometheusMeter
from buttress.testing import FakeClock
from tests.conftest import free_port


class Recorder:
    """A meter that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, str]] = []
        self.store: list[tuple[str, str, float, str]] = []
        self.idempotent: list[str] = []

    def pipeline_call(self, pipeline: str, seconds: float, outcome: str) -> None:
        self.calls.append((pipeline, seconds, outcome))

    def store_call(self, system: str, operation: str, seconds: float, outcome: str) -> None:
        self.store.append((system, operation, seconds, outcome))

    def idempotency(self, outcome: str) -> None:
        self.idempotent.append(outcome)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    meter = Recorder()
    telemetry.add_meter(meter)
    try:
        yield meter
    finally:
        telemetry.remove_meter(meter)


# --------------------------------------------------------------------------- pipelines


def test_a_named_pipeline_reports_each_call_with_its_duration_and_outcome(
    recorder: Recorder,
) -> None:
    clock = FakeClock()
    pipe = Pipeline(Retry(attempts=3, backoff=Backoff.constant(0.5), clock=clock), name="payments")
    failures = iter([ConnectionRefusedError("down"), None])

    def flaky() -> str:
        clock.advance(0.25)
        error = next(failures)
        if error is not None:
            raise error
        return "paid"

    assert pipe.call(flaky) == "paid"
    # two attempts of 0.25 s and one backoff of 0.5 s: one call of 1.0 s, on the clock
    assert recorder.calls == [("payments", 1.0, "ok")]

    def broken() -> None:
        raise ConnectionRefusedError("still down")

    with pytest.raises(ConnectionRefusedError):
        pipe.call(broken)
    assert recorder.calls[-1] == ("payments", 1.0, "upstream_unavailable")


def test_an_unnamed_pipeline_and_a_pipeline_without_meters_are_not_measured(
    recorder: Recorder,
) -> None:
    assert Pipeline(Timeout(1.0)).call(lambda: 1) == 1
    assert recorder.calls == []
    telemetry.remove_meter(recorder)
    assert Pipeline(Timeout(1.0), name="quiet").call(lambda: 1) == 1
    assert recorder.calls == []


async def test_async_calls_and_cancellations_are_measured(recorder: Recorder) -> None:
    pipe = Pipeline(Timeout(5.0), name="async-dep")

    async def ok() -> int:
        return 1

    assert await pipe.acall(ok) == 1
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(pipe.acall(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(name, outcome) for name, _, outcome in recorder.calls] == [
        ("async-dep", "ok"),
        ("async-dep", "cancelled"),
    ]


async def test_an_open_breaker_rejection_is_a_measured_call_on_every_calling_path(
    recorder: Recorder,
) -> None:
    """The up-front rejection of an open breaker skips the chain: metering must not."""
    clock = FakeClock()
    breaker = CircuitBreaker(consecutive_failures=1, break_duration=60.0, clock=clock)
    pipe = Pipeline(breaker, name="gated")

    def boom() -> None:
        raise ConnectionRefusedError("down")

    async def aboom() -> None:
        raise ConnectionRefusedError("down")

    decorated = pipe(boom)
    adecorated = pipe(aboom)
    with pytest.raises(ConnectionRefusedError):
        decorated()  # opens the breaker
    for call in (decorated, lambda: pipe.call(boom)):
        with pytest.raises(Exception, match="circuit"):
            call()
    for acall in (adecorated, lambda: pipe.acall(aboom)):
        with pytest.raises(Exception, match="circuit"):
            await acall()
    outcomes = [outcome for _, _, outcome in recorder.calls]
    assert outcomes == ["upstream_unavailable"] + ["circuit_open"] * 4


def test_prometheus_meter_exposes_counts_and_histograms() -> None:
    registry = CollectorRegistry()
    meter = PrometheusMeter(registry=registry)
    telemetry.add_meter(meter)
    try:
        clock = FakeClock()
        pipe = Pipeline(Retry(attempts=1, clock=clock), name="inventory")

        def slow() -> int:
            clock.advance(0.3)
            return 1

        pipe.call(slow)
        value = registry.get_sample_value
        labels = {"pipeline": "inventory", "outcome": "ok"}
        assert value("buttress_pipeline_calls_total", labels) == 1
        total = value("buttress_pipeline_call_duration_seconds_sum", {"pipeline": "inventory"})
        assert total == pytest.approx(0.3)
        bucket = {"pipeline": "inventory", "le": "0.25"}
        assert value("buttress_pipeline_call_duration_seconds_bucket", bucket) == 0
    finally:
        meter.unregister()
    assert telemetry.meters() == ()
    assert registry.get_sample_value("buttress_pipeline_calls_total", labels) is None


# --------------------------------------------------------------------------- stores


def test_metered_store_measures_every_round_trip(store_url: str, recorder: Recorder) -> None:
    store = open_store(store_url)
    try:
        measured = metered(store)
        if isinstance(store, MemoryStore):
            assert measured is store  # no round trip to measure
            return
        assert isinstance(measured, MeteredStore)
        assert metered(measured) is measured
        [decision] = measured.acquire([RateRequest("meter-test", Rate.parse("5/second"))])
        assert decision.allowed
        measured.ping()
        system = {"redis": "redis", "postgresql": "postgresql", "sqlite": "sqlite"}[
            store_url.split(":", 1)[0]
        ]
        assert [(s, op, outcome) for s, op, _, outcome in recorder.store] == [
            (system, "acquire", "ok"),
            (system, "ping", "ok"),
        ]
        assert all(seconds >= 0 for _, _, seconds, _ in recorder.store)
    finally:
        store.close()


def test_a_failing_round_trip_is_measured_with_its_code(recorder: Recorder) -> None:
    store = metered(open_store(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5))
    try:
        with pytest.raises(BackendError):
            store.ping()
    finally:
        store.close()
    [(system, operation, _, outcome)] = recorder.store
    assert (system, operation, outcome) == ("redis", "ping", "backend_error")


# --------------------------------------------------------------------------- harden


def _app() -> Starlette:
    async def order(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"size": len(body)}, status_code=201)

    return Starlette(routes=[Route("/orders", order, methods=["POST"])])


async def test_harden_with_metrics_detail_measures_store_idempotency_and_sizes(
    redis_url: str,
) -> None:
    registry = CollectorRegistry()
    settings = HardenSettings(
        metrics_detail=True,
        idempotency="optional",
        store_url=redis_url,
        configure_logging=False,
    )
    app = harden(_app(), settings, registry=registry)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            key = {"Idempotency-Key": f"meters-{id(app)}"}
            first = await client.post("/orders", content=b"x" * 2000, headers=key)
            again = await client.post("/orders", content=b"x" * 2000, headers=key)
            assert (first.status_code, again.status_code) == (201, 201)
            text = (await client.get("/metrics")).text
        value = registry.get_sample_value
        assert value("buttress_idempotency_requests_total", {"outcome": "first"}) == 1
        assert value("buttress_idempotency_requests_total", {"outcome": "replay"}) == 1
        begin = {"system": "redis", "operation": "begin", "outcome": "ok"}
        assert value("buttress_store_calls_total", begin) == 2
        complete = {"system": "redis", "operation": "complete", "outcome": "ok"}
        assert value("buttress_store_calls_total", complete) == 1
        route = {"method": "POST", "route": "/orders"}
        assert value("buttress_http_request_size_bytes_sum", route) == 4000
        assert value("buttress_http_response_size_bytes_count", route) == 2
        assert "buttress_store_call_duration_seconds_bucket" in text
    finally:
        app.parts.metrics.close()
        if app.parts.store is not None:
            await app.parts.store.aclose()
    assert telemetry.meters() == ()  # closing the metrics removed the meter


async def test_harden_without_detail_adds_no_meter_and_no_series() -> None:
    registry = CollectorRegistry()
    app = harden(_app(), HardenSettings(configure_logging=False), registry=registry)
    try:
        assert telemetry.meters() == ()
        names = {m.name for m in registry.collect()}
        assert not names & {"buttress_pipeline_calls", "buttress_http_request_size_bytes"}
    finally:
        app.parts.metrics.close()


# --------------------------------------------------------------------------- OpenTelemetry


def _points(reader: InMemoryMetricReader) -> dict[str, list[object]]:
    data = reader.get_metrics_data()
    found: dict[str, list[object]] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def test_otel_meter_records_the_same_measurements() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel.enable_metrics(provider)
    try:
        clock = FakeClock()
        pipe = Pipeline(Retry(attempts=1, clock=clock), name="otel-dep")

        def slow() -> int:
            clock.advance(0.2)
            return 1

        def broken() -> None:
            raise ConnectionRefusedError("down")

        pipe.call(slow)
        with pytest.raises(ConnectionRefusedError):
            pipe.call(broken)
        telemetry.record_store_call("redis", "acquire", 0.001, "ok")
        telemetry.record_idempotency("replay")
    finally:
        otel.disable_metrics()
    assert not any(isinstance(m, otel.OtelMeter) for m in telemetry.meters())
    points = _points(reader)
    calls = {
        tuple(sorted(p.attributes.items())): (p.count, p.sum)  # type: ignore[attr-defined]
        for p in points["buttress.pipeline.call.duration"]
    }
    assert calls == {
        (("buttress.outcome", "ok"), ("buttress.pipeline", "otel-dep")): (1, 0.2),
        (
            ("buttress.outcome", "upstream_unavailable"),
            ("buttress.pipeline", "otel-dep"),
            ("error.type", "upstream_unavailable"),
        ): (1, 0.0),
    }
    [store] = points["db.client.operation.duration"]
    assert dict(store.attributes) == {  # type: ignore[attr-defined]
        "db.system.name": "redis",
        "db.operation.name": "acquire",
    }
    [idem] = points["buttress.idempotency.requests"]
    assert idem.value == 1  # type: ignore[attr-defined]
    assert dict(idem.attributes) == {"buttress.idempotency.outcome": "replay"}  # type: ignore[attr-defined]


def test_a_failing_meter_is_logged_not_raised(recorder: Recorder, caplog) -> None:
    class Broken(Recorder):
        def pipeline_call(self, pipeline: str, seconds: float, outcome: str) -> None:
            raise RuntimeError("meter down")

    broken = Broken()
    telemetry.add_meter(broken)
    try:
        assert Pipeline(Timeout(1.0), name="robust").call(lambda: 7) == 7
    finally:
        telemetry.remove_meter(broken)
    assert recorder.calls[-1][0] == "robust"
    assert "meter down" in caplog.text or "failed on a pipeline call" in caplog.text
