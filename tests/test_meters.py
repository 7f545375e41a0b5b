"""Meters (issue 11): every call of a named pipeline, every store round trip and every
idempotent request measured, in Prometheus and in OpenTelemetry metrics; nothing when off."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from buttress import _prom_local, otel, telemetry
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


def _drive(meter: PrometheusMeter | _PromClientMeter) -> None:
    """Every bucket edge: on a bound (le is inclusive), between, above the last."""
    for i in range(60):
        outcome = "ok" if i % 5 else "upstream_timeout"
        meter.pipeline_call("payments" if i % 3 else "inventory", 0.0025 * i, outcome)
        meter.store_call("redis", "acquire" if i % 2 else "ping", 0.0001 * i, "ok")
        meter.idempotency("first" if i % 4 else "replay")
    for seconds in (0.005, 10.0, 100.0):
        meter.pipeline_call("edge", seconds, "ok")
    meter.store_call("postgresql", "begin", 1.0, "backend_error")


class _PromClientMeter:
    """The same series on prometheus-client's own Counter and Histogram (the reference)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.calls = Counter(
            "buttress_pipeline_calls",
            "Calls through a named pipeline",
            ["pipeline", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "buttress_pipeline_call_duration_seconds",
            "Duration of calls through a named pipeline (retries and waits included)",
            ["pipeline"],
            registry=r,
        )
        self.store = Counter(
            "buttress_store_calls",
            "Round trips to the shared store",
            ["system", "operation", "outcome"],
            registry=r,
        )
        self.store_duration = Histogram(
            "buttress_store_call_duration_seconds",
            "Duration of round trips to the shared store",
            ["system", "operation"],
            buckets=telemetry._STORE_BUCKETS,
            registry=r,
        )
        self.idempotent = Counter(
            "buttress_idempotency_requests",
            "Requests with an Idempotency-Key, by outcome",
            ["outcome"],
            registry=r,
        )

    def pipeline_call(self, pipeline: str, seconds: float, outcome: str) -> None:
        self.calls.labels(pipeline, outcome).inc()
        self.duration.labels(pipeline).observe(seconds)

    def store_call(self, system: str, operation: str, seconds: float, outcome: str) -> None:
        self.store.labels(system, operation, outcome).inc()
        self.store_duration.labels(system, operation).observe(seconds)

    def idempotency(self, outcome: str) -> None:
        self.idempotent.labels(outcome).inc()


def test_prometheus_meter_exposition_is_prometheus_clients_without_created_samples() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    _drive(PrometheusMeter(registry=ours))
    _drive(_PromClientMeter(theirs))

    def lines(text: bytes) -> list[str]:
        return [line for line in text.decode().splitlines() if "_created" not in line]

    for encode in (generate_latest, openmetrics_latest):
        exposed = lines(encode(ours))
        assert exposed == lines(encode(theirs))
        assert not [line for line in encode(ours).decode().splitlines() if "_created" in line]
    assert 'buttress_pipeline_call_duration_seconds_bucket{le="0.005",pipeline="edge"} 1.0' in (
        generate_latest(ours).decode()
    )


def test_prometheus_meter_names_taken_are_a_value_error_as_with_prometheus_client() -> None:
    registry = CollectorRegistry()
    PrometheusMeter(registry=registry)
    with pytest.raises(ValueError, match="buttress_pipeline_calls"):
        PrometheusMeter(registry=registry)
    PrometheusMeter(registry=registry, prefix="other")  # another prefix: other names


def _switch_at_every_opcode(frame: FrameType, event: str, arg: object) -> Any:
    """A thread tracer: in `buttress._prom_local`, give the GIL away before every opcode,
    so another thread runs between the read and the write of every ``x += 1`` (which
    CPython 3.11 otherwise never interrupts: a shared count would look safe here)."""
    if frame.f_code.co_filename != _prom_local.__file__:
        return None
    frame.f_trace_opcodes = True
    frame.f_trace_lines = False

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            time.sleep(0)  # releases the GIL: a waiting thread takes it
        return local

    return local


@pytest.mark.parametrize(
    ("switches", "rounds"), [("every microsecond", 20_000), ("every opcode", 60)]
)
def test_prometheus_meter_loses_no_count_across_threads(switches: str, rounds: int) -> None:
    """8 threads hammer one meter, switching every µs (or before every opcode of the
    recording code, where a count shared by the threads loses about half of them), while
    another scrapes: exact totals, never a counter going down, and the totals stay once
    the threads are over."""
    registry = CollectorRegistry()
    meter = PrometheusMeter(registry=registry)
    threads = 8
    start = threading.Barrier(threads + 1)
    done = threading.Event()
    seen: list[float] = []
    value = registry.get_sample_value
    shared = {"pipeline": "shared", "outcome": "ok"}

    def hammer(index: int) -> None:
        start.wait()
        for i in range(rounds):
            meter.pipeline_call("shared", 0.25, "ok")  # the same series from every thread
            meter.pipeline_call(f"own-{index}", 0.5 if i % 2 else 4.0, "ok")
            meter.store_call("redis", "acquire", 0.0005, "ok")
            meter.idempotency("first")

    def scrape() -> None:
        start.wait()
        while not done.is_set():
            seen.append(value("buttress_pipeline_calls_total", shared) or 0.0)

    interval, tracer = sys.getswitchinterval(), threading.gettrace()
    sys.setswitchinterval(1e-6)
    scraper = threading.Thread(target=scrape)
    scraper.start()  # before the tracer: only the recording threads are slowed down
    if switches == "every opcode":
        threading.settrace(_switch_at_every_opcode)
    try:
        workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    finally:
        threading.settrace(tracer)
        sys.setswitchinterval(interval)
        done.set()
        scraper.join()

    assert seen == sorted(seen)  # a counter never goes down, scraped mid-flight
    total = threads * rounds
    for _ in range(2):  # the first scrape folds the finished threads' shards, the next reads it
        assert value("buttress_pipeline_calls_total", shared) == total
        hist = {"pipeline": "shared"}
        assert value("buttress_pipeline_call_duration_seconds_count", hist) == total
        assert value("buttress_pipeline_call_duration_seconds_sum", hist) == 0.25 * total
        for index in range(threads):
            own = {"pipeline": f"own-{index}"}
            assert value("buttress_pipeline_calls_total", {**own, "outcome": "ok"}) == rounds
            bucket = {**own, "le": "0.5"}
            assert value("buttress_pipeline_call_duration_seconds_bucket", bucket) == rounds // 2
            assert value("buttress_pipeline_call_duration_seconds_sum", own) == rounds // 2 * 4.5
        store = {"system": "redis", "operation": "acquire", "outcome": "ok"}
        assert value("buttress_store_calls_total", store) == total
        bucket = {"system": "redis", "operation": "acquire", "le": "0.0005"}
        assert value("buttress_store_call_duration_seconds_bucket", bucket) == total
        assert value("buttress_idempotency_requests_total", {"outcome": "first"}) == total
    meter.pipeline_call("shared", 0.25, "ok")  # this thread's shard joins the sum
    assert value("buttress_pipeline_calls_total", shared) == total + 1


_MULTIPROCESS_METER = textwrap.dedent(
    """
    import sys
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    from buttress.telemetry import PrometheusMeter

    meter = PrometheusMeter(registry=CollectorRegistry())
    assert type(meter.collectors[0]).__name__ == "Counter", meter.collectors
    for _ in range(int(sys.argv[1])):
        meter.pipeline_call("payments", 0.3, "ok")
        meter.store_call("redis", "ping", 0.001, "ok")
        meter.idempotency("replay")
    if sys.argv[2] == "scrape":
        exposition = CollectorRegistry()
        MultiProcessCollector(exposition)
        print(generate_latest(exposition).decode())
    """
)


def test_prometheus_meter_shards_stay_bounded_with_a_thread_per_request_and_no_scrape() -> None:
    """A server that starts a thread per request, never scraped: the finished threads'
    shards are folded as new ones come, so they stay bounded; and no count is lost."""
    registry = CollectorRegistry()
    meter = PrometheusMeter(registry=registry)
    for _ in range(500):
        thread = threading.Thread(target=meter.idempotency, args=("first",))
        thread.start()
        thread.join()
    [collector] = meter.collectors
    for metric in collector.metrics:
        assert len(metric._shards) <= 64  # noqa: SLF001 - the bound is the point of the test
    assert (
        registry.get_sample_value("buttress_idempotency_requests_total", {"outcome": "first"})
        == 500
    )


@pytest.mark.process
def test_prometheus_meter_in_multiprocess_mode_uses_prometheus_clients_files(
    tmp_path: Path,
) -> None:
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}

    def run(n: int, mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", _MULTIPROCESS_METER, str(n), mode],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    run(2, "no")
    text = run(3, "scrape")
    assert 'buttress_pipeline_calls_total{outcome="ok",pipeline="payments"} 5.0' in text
    assert 'buttress_pipeline_call_duration_seconds_bucket{le="0.5",pipeline="payments"} 5.0' in (
        text
    )
    assert 'buttress_store_calls_total{operation="ping",outcome="ok",system="redis"} 5.0' in text
    assert 'buttress_idempotency_requests_total{outcome="replay"} 5.0' in text
    assert sum(name.startswith("counter_") for name in os.listdir(mp_dir)) == 2  # 2 processes


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
        assert app.parts.metrics is not None
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
        assert app.parts.metrics is not None
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


def test_a_failing_meter_is_logged_not_raised(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
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
