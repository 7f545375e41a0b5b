"""The resilience demo: a flaky local dependency, called naively and through a Pipeline.

A small HTTP server on 127.0.0.1 (an ephemeral port) plays a price service that fails a
share of requests with 503, answers some slowly, and later goes down and comes back. The
same bounded load is sent twice, naively (httpx with a timeout, nothing else) and through
a buttress `Pipeline`, and the table shows what the caller saw.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from buttress import (
    Backoff,
    Bulkhead,
    CircuitBreaker,
    CircuitOpen,
    Fallback,
    Pipeline,
    Retry,
    RetryBudget,
    Timeout,
)
from buttress.telemetry import Event

__all__ = ["DemoResult", "FlakyServer", "run_demo"]


class FlakyServer:
    """A local HTTP dependency with a failure rate, slow answers, and an off switch.

    ``GET /price`` answers ``{"price": 42}``; ``fail_rate`` of requests get a 503 (half of
    them with ``Retry-After: 0``), ``slow_rate`` are answered after ``slow_seconds``, and
    while ``down`` is set every request gets a 503.
    """

    def __init__(
        self, *, fail_rate: float, slow_rate: float, slow_seconds: float, seed: int
    ) -> None:
        self.fail_rate = fail_rate
        self.slow_rate = slow_rate
        self.slow_seconds = slow_seconds
        self.down = False
        self.requests = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests += 1
                    roll_fail = server._rng.random()
                    roll_slow = server._rng.random()
                if server.down or roll_fail < server.fail_rate:
                    self.send_response(503)
                    if roll_fail < server.fail_rate / 2:
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if roll_slow < server.slow_rate:
                    time.sleep(server.slow_seconds)
                body = b'{"price": 42}'
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client gave up on a slow answer: that is the point

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/price"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FlakyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@dataclass
class PhaseResult:
    """What the caller saw in one phase of the demo."""

    name: str
    ok: int = 0
    fallback: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Requests made."""
        return self.ok + self.fallback + self.errors

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def mean_ms(self) -> float:
        """Mean latency in milliseconds."""
        return statistics.fmean(self.latencies) * 1000 if self.latencies else 0.0


@dataclass
class DemoResult:
    """Every phase, and the resilience events the pipeline emitted."""

    phases: list[PhaseResult]
    events: dict[str, int]
    transitions: list[str]
    dependency_requests: int


async def _drive(
    name: str,
    call: Callable[[], Awaitable[str]],
    requests: int,
    concurrency: int,
    pace: float = 0.0,
) -> PhaseResult:
    result = PhaseResult(name)
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with semaphore:
            started = time.perf_counter()
            try:
                outcome = await call()
            except Exception:
                result.errors += 1
            else:
                if outcome == "fallback":
                    result.fallback += 1
                else:
                    result.ok += 1
            result.latencies.append(time.perf_counter() - started)
            if pace:
                await asyncio.sleep(pace)  # think time: spreads the phase over time

    await asyncio.gather(*(one() for _ in range(requests)))
    return result


async def run_demo(*, requests: int = 200, seed: int = 7, concurrency: int = 10) -> DemoResult:
    """Run the three phases against a local flaky server and return what was seen.

    Bounded: ``requests`` calls per phase (at most 1,000), loopback only.
    """
    requests = max(10, min(requests, 1000))
    counts: dict[str, int] = {}
    transitions: list[str] = []

    def hook(event: Event) -> None:
        counts[event.kind] = counts.get(event.kind, 0) + 1
        to_state = getattr(event, "to_state", None)
        if to_state is not None:
            transitions.append(f"{getattr(event, 'from_state', '?')} -> {to_state}")

    # 30 % of errors is a flaky dependency that retries handle, not a dead one: the breaker
    # only opens on a failure rate of 80 % (or 10 failures in a row).
    breaker = CircuitBreaker(
        failure_rate=0.8,
        minimum_calls=20,
        window=10.0,
        consecutive_failures=10,
        break_duration=0.5,
        half_open_probes=5,
        is_failure_result=lambda r: r.status_code >= 500,
        name="demo-price-service",
        hooks=[hook],
    )
    pipeline = Pipeline(
        Fallback(value="fallback", on=CircuitOpen),  # serve a cached price when it is down
        Timeout(2.0),  # total budget per call, retries included
        Retry(
            attempts=5,
            backoff=Backoff.exponential(base=0.02, cap=0.2),
            budget=RetryBudget(ratio=0.5, min_per_second=20),
            retry_on_result=lambda r: r.status_code in (429, 502, 503, 504),
        ),
        breaker,
        Timeout(0.4),  # per attempt: slow answers (0.6 s) are cut and retried
        Bulkhead(max_concurrent=concurrency * 2),
        name="demo",
        hooks=[hook],
    )
    with FlakyServer(fail_rate=0.3, slow_rate=0.05, slow_seconds=0.6, seed=seed) as server:
        async with httpx.AsyncClient(timeout=5.0) as http:

            async def naive() -> str:
                response = await http.get(server.url)
                response.raise_for_status()
                return "ok"

            async def resilient() -> str:
                outcome = await pipeline.acall(http.get, server.url)
                if isinstance(outcome, str):
                    return outcome
                outcome.raise_for_status()
                return "ok"

            phases = [
                await _drive("naive (timeout only)", naive, requests, concurrency),
                await _drive("buttress Pipeline", resilient, requests, concurrency),
            ]
            # The dependency goes down for about 1.2 s: the breaker opens, callers get the
            # fallback at once, and every 0.5 s one probe checks whether it is back.
            server.down = True
            rounds = max(1, (requests // 2) // concurrency)
            phases.append(
                await _drive(
                    "buttress, dependency down",
                    resilient,
                    requests // 2,
                    concurrency,
                    pace=1.2 / rounds,
                )
            )
            server.down = False  # ...and comes back: the next probe succeeds and it closes
            phases.append(
                await _drive(
                    "buttress, dependency back",
                    resilient,
                    requests // 2,
                    concurrency,
                    pace=3.0 / rounds,
                )
            )
        return DemoResult(phases, counts, transitions, server.requests)
