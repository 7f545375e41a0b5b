#!/usr/bin/env python3
"""What OpenTelemetry tracing costs, buttress's next to ``opentelemetry-instrumentation-asgi``.

Per request (raw ASGI messages, one asyncio loop, no server): a bare app; the same app
inside ``OpenTelemetryMiddleware`` (the peer: one server span plus its two ``http send``
spans); `harden` with tracing off; `harden` with tracing on (one server span, buttress's
HTTP attributes and decisions). The cost of tracing is ``peer - bare`` for the peer and
``harden on - harden off`` for buttress.

Per pipeline call: ``Pipeline(Retry(attempts=3))`` awaited with tracing off and on (one
``buttress.pipeline`` span and one ``buttress.attempt`` span per call), next to a
hand-written ``tracer.start_as_current_span`` around the bare call (what a service writes
without buttress: one span).

Every traced case uses the same SDK ``TracerProvider`` with a ``SimpleSpanProcessor`` to
an exporter that drops the spans, so all span work is done in the measuring thread. Times
are the thread's CPU time per call, median over repetitions; each repetition measures
every case once, in an order rotated per repetition.

Run:  .venv/bin/python bench/otel.py [--repeat 9] [--number 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from buttress import Pipeline, Retry, otel
from buttress.asgi import HardenSettings, harden

SETTINGS: dict[str, Any] = {
    "configure_logging": False,
    "access_log": False,
    "metrics": False,
    "graceful_shutdown": False,
}


class Dropped(SpanExporter):
    """Exports nothing (the spans are built and ended, as with any exporter)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/price/abc",
    "raw_path": b"/price/abc",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"bench"), (b"user-agent", b"bench")],
    "client": ("127.0.0.1", 5000),
    "server": ("127.0.0.1", 8000),
}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict[str, Any]) -> None:
    return None


def request_case(app: Any) -> Callable[[int], Awaitable[float]]:
    async def run(number: int) -> float:
        start = time.thread_time()
        for _ in range(number):
            await app(dict(SCOPE), receive, send)
        return (time.thread_time() - start) / number

    return run


def call_case(call: Callable[[], Awaitable[Any]]) -> Callable[[int], Awaitable[float]]:
    async def run(number: int) -> float:
        start = time.thread_time()
        for _ in range(number):
            await call()
        return (time.thread_time() - start) / number

    return run


async def target() -> int:
    return 42


async def main(repeat: int, number: int) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Dropped()))
    tracer = provider.get_tracer("bench")

    otel.disable()
    hardened_off = harden(bare, HardenSettings(tracing=False, **SETTINGS))
    pipe_off = Pipeline(Retry(attempts=3), name="off")
    await pipe_off.acall(target)
    otel.enable(provider)
    hardened_on = harden(bare, HardenSettings(tracing=True, **SETTINGS))
    pipe_on = Pipeline(Retry(attempts=3), name="on")
    await pipe_on.acall(target)
    peer = OpenTelemetryMiddleware(bare, tracer_provider=provider)

    async def by_hand() -> int:
        with tracer.start_as_current_span("call"):
            return await target()

    cases: dict[str, Callable[[int], Awaitable[float]]] = {
        "request: bare app": request_case(bare),
        "request: opentelemetry-instrumentation-asgi": request_case(peer),
        "request: harden, tracing off": request_case(hardened_off),
        "request: harden, tracing on": request_case(hardened_on),
        "call: bare await": call_case(target),
        "call: start_as_current_span by hand": call_case(by_hand),
        "call: Pipeline(Retry), tracing off": call_case(lambda: pipe_off.acall(target)),
        "call: Pipeline(Retry), tracing on": call_case(lambda: pipe_on.acall(target)),
    }
    names = list(cases)
    results: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm up
        await cases[name](max(number // 10, 1))
    for rep in range(repeat):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            results[name].append(await cases[name](number))
    med = {name: statistics.median(values) * 1e9 for name, values in results.items()}
    width = max(len(n) for n in names)
    print(f"{'case':<{width}}  ns/call (thread CPU, median of {repeat})")
    for name in names:
        print(f"{name:<{width}}  {med[name]:>9,.0f}")
    peer_cost = med["request: opentelemetry-instrumentation-asgi"] - med["request: bare app"]
    ours = med["request: harden, tracing on"] - med["request: harden, tracing off"]
    by_hand_cost = med["call: start_as_current_span by hand"] - med["call: bare await"]
    pipe_cost = med["call: Pipeline(Retry), tracing on"] - med["call: Pipeline(Retry), tracing off"]
    print()
    print(f"per request, the peer's tracing:      {peer_cost:>9,.0f} ns")
    print(f"per request, buttress's tracing:      {ours:>9,.0f} ns")
    print(f"ratio buttress / peer:                {ours / peer_cost:>9.2f}")
    print(f"per call, one span by hand:           {by_hand_cost:>9,.0f} ns")
    print(f"per call, pipeline + attempt spans:   {pipe_cost:>9,.0f} ns")
    print(f"ratio pipeline spans / one span:      {pipe_cost / by_hand_cost:>9.2f}")
    otel.reset()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--number", type=int, default=4000)
    args = parser.parse_args()
    asyncio.run(main(args.repeat, args.number))
