"""A bounded load on one route: concurrency, an optional rate, a duration; samples out.

Not a load-testing tool (``--emit locust`` or ``--emit k6`` writes one for that): one
machine, one route, at most `MAX_CONCURRENCY` requests in flight, `MAX_RATE` a second and
`MAX_DURATION` seconds, every request cut at the client's timeout. ``rate`` paces the
*starts* (an open model, as k6's ``constant-arrival-rate``): a slow service does not slow
the arrivals down, it collects requests in flight up to ``concurrency``.

Example::

    plan = LoadPlan(path="/orders", concurrency=8, rate=50, duration=10)
    samples = await run_load(client, plan)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from buttress.errors import ConfigurationError
from buttress.probe._http import Client
from buttress.probe._threshold import Sample, Stats, Threshold

__all__ = [
    "MAX_CONCURRENCY",
    "MAX_DURATION",
    "MAX_RATE",
    "LoadPlan",
    "Progress",
    "run_load",
]

MAX_CONCURRENCY = 256
MAX_RATE = 5000.0
MAX_DURATION = 600.0
PROGRESS_EVERY = 0.25  # seconds between progress callbacks


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadPlan:
    """The scenario: ``method path`` by ``concurrency`` workers at ``rate``/s for ``duration`` s.

    ``rate`` None sends as fast as the workers can (a closed model, as k6's
    ``constant-vus``). ``thresholds`` are judged on the whole run.
    """

    path: str = "/"  # "": the probe picks a route (`buttress.probe` load_route)
    method: str = "GET"
    concurrency: int = 8
    rate: float | None = None
    duration: float = 10.0
    thresholds: tuple[Threshold, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ConfigurationError(f"concurrency {self.concurrency}: use 1 to {MAX_CONCURRENCY}")
        if self.rate is not None and not 0.1 <= self.rate <= MAX_RATE:
            raise ConfigurationError(f"rate {self.rate:g}: use 0.1 to {MAX_RATE:g} a second")
        if not 0.2 <= self.duration <= MAX_DURATION:
            raise ConfigurationError(f"duration {self.duration:g} s: use 0.2 to {MAX_DURATION:g}")
        if self.path and not self.path.startswith("/"):  # "": the probe picks one
            raise ConfigurationError(f"load route {self.path!r}: a path starts with /")

    @property
    def max_requests(self) -> int:
        """The most requests the plan may send (a hard bound whatever the service does)."""
        ceiling = self.rate if self.rate is not None else MAX_RATE
        return max(1, int(ceiling * self.duration) + self.concurrency)

    def describe(self) -> str:
        """``GET /orders, 8 at a time, 50/s, 10 s``."""
        pace = f"{self.rate:g}/s" if self.rate is not None else "as fast as they answer"
        return (
            f"{self.method} {self.path}, {self.concurrency} at a time, {pace}, {self.duration:g} s"
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot while the load runs (for a live display)."""

    elapsed: float
    duration: float
    stats: Stats
    in_flight: int


async def run_load(
    client: Client,
    plan: LoadPlan,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    stop: asyncio.Event | None = None,
    into: list[Sample] | None = None,
) -> list[Sample]:
    """Run ``plan`` against ``client``'s origin; one `Sample` per request sent.

    Ends after ``plan.duration``, after ``plan.max_requests``, or when ``stop`` is set;
    requests in flight then finish (each is bounded by the client's timeout). Samples are
    appended to ``into`` as they come (a watcher reads them live), else to a new list.
    """
    started = time.monotonic()
    end = started + plan.duration
    samples: list[Sample] = into if into is not None else []
    state = {"next": 0, "in_flight": 0}
    limit = plan.max_requests
    stopping = stop or asyncio.Event()

    async def worker() -> None:
        while not stopping.is_set() and state["next"] < limit:
            index = state["next"]
            state["next"] += 1
            if plan.rate is not None:
                due = started + index / plan.rate
                delay = due - time.monotonic()
                if delay > 0:
                    if due >= end:
                        return
                    await _sleep_unless(stopping, delay)
                    if stopping.is_set():
                        return
            now = time.monotonic()
            if now >= end:
                return
            state["in_flight"] += 1
            try:
                seen = await client.send(plan.method, plan.path)
            finally:
                state["in_flight"] -= 1
            if seen.sent:
                samples.append(Sample(now, seen.elapsed, seen.status, seen.error))

    async def reporter() -> None:
        assert on_progress is not None  # noqa: S101 - only started with a callback
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            elapsed = time.monotonic() - started
            stats = Stats.of(samples, seconds=min(elapsed, plan.duration))
            on_progress(Progress(elapsed, plan.duration, stats, state["in_flight"]))

    shown = asyncio.ensure_future(reporter()) if on_progress is not None else None
    try:
        await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    finally:
        if shown is not None:
            shown.cancel()
    if on_progress is not None:
        elapsed = time.monotonic() - started
        on_progress(Progress(elapsed, plan.duration, Stats.of(samples, seconds=elapsed), 0))
    return samples


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return
