"""The deploy gate (``--watch 5m``): judge the thresholds for a while; roll back when one breaks.

Two sources, one verdict:

- **the service** (default): a light, steady load on one route (``rate`` a second, 2 at a
  time); every ``interval`` the thresholds are judged on the samples of the last
  ``window`` seconds (once it holds at least `MIN_SAMPLES`);
- **Prometheus** (``--prometheus URL``): every ``interval`` each threshold becomes a
  PromQL query over buttress's metrics (`promql`, a ``[window]`` range) sent to the HTTP
  API's ``/api/v1/query``; an empty answer (no traffic) judges nothing.

The first broken threshold ends the watch and runs the ``--on-fail`` command (no shell,
time-limited): PRB090 fails with what broke and when, PRB091 says how the command ended.
The watch is bounded by its duration (at most `MAX_WATCH`), every request by its timeout.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

from buttress._urls import redacted as redact
from buttress.clock import SYSTEM_CLOCK, Clock
from buttress.errors import ConfigurationError
from buttress.probe._http import Client
from buttress.probe._lifecycle import CommandResult, run_command
from buttress.probe._load import LoadPlan, run_load
from buttress.probe._threshold import Sample, Stats, Threshold
from buttress.report import CheckStatus

__all__ = ["MAX_WATCH", "MIN_SAMPLES", "WatchOptions", "judge", "promql", "watch"]

PASS, FAIL, NA, WARN = (
    CheckStatus.PASS,
    CheckStatus.FAIL,
    CheckStatus.NOT_APPLICABLE,
    CheckStatus.WARN,
)
MAX_WATCH = 6 * 3600.0
MIN_SAMPLES = 5
REQUESTS = "buttress_http_requests_total"
DURATION = "buttress_http_request_duration_seconds"

Outcomes = dict[str, tuple[CheckStatus, str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchOptions:
    """What the deploy gate watches, for how long, and what it runs when a threshold breaks."""

    url: str
    duration: float
    thresholds: tuple[Threshold, ...]
    path: str = "/health/ready"  # the route polled (service mode)
    rate: float = 5.0  # requests a second (service mode)
    window: float = 60.0  # seconds the thresholds look back
    interval: float = 1.0  # seconds between judgements (and Prometheus queries)
    on_fail: tuple[str, ...] = ()
    on_fail_timeout: float = 300.0
    prometheus: str | None = None  # the Prometheus base URL
    selector: str = ""  # extra label matchers: 'job="orders"'
    timeout: float = 5.0  # per request

    def __post_init__(self) -> None:
        if not 0.2 <= self.duration <= MAX_WATCH:
            raise ConfigurationError(f"--watch {self.duration:g} s: use 0.2 s to 6 h")
        if not 0.1 <= self.interval <= self.duration:
            raise ConfigurationError("--interval: between 0.1 s and the watch's duration")
        if not 0.1 <= self.window <= 86400:
            raise ConfigurationError("--window: between 0.1 s and one day")
        if not self.thresholds:
            raise ConfigurationError("--watch needs at least one --threshold")
        if self.prometheus:
            for t in self.thresholds:
                if t.metric in ("min", "max"):
                    raise ConfigurationError(
                        f"threshold {t.text!r}: Prometheus histograms have no {t.metric}; "
                        "use a percentile (p99)"
                    )


def _range(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds))}s"


def promql(t: Threshold, window: float, selector: str = "") -> str:
    """The PromQL for threshold ``t`` over buttress's metrics, ``window`` seconds back.

    Example: ``p95`` -> ``histogram_quantile(0.95, sum by (le)
    (rate(buttress_http_request_duration_seconds_bucket[60s])))``.
    """
    w = _range(window)
    sel = f"{{{selector}}}" if selector else ""
    errors_sel = "{" + ", ".join(x for x in (selector, 'status=~"5.."') if x) + "}"
    if t.metric == "error_rate":
        return f"sum(rate({REQUESTS}{errors_sel}[{w}])) / sum(rate({REQUESTS}{sel}[{w}]))"
    if t.metric == "rps":
        return f"sum(rate({REQUESTS}{sel}[{w}]))"
    if t.metric == "avg":
        return f"sum(rate({DURATION}_sum{sel}[{w}])) / sum(rate({DURATION}_count{sel}[{w}]))"
    q = 0.5 if t.metric == "med" else float(t.metric[1:]) / 100
    return f"histogram_quantile({q:g}, sum by (le) (rate({DURATION}_bucket{sel}[{w}])))"


def judge(
    samples: Iterable[Sample], thresholds: Iterable[Threshold], *, now: float, window: float
) -> tuple[list[str], Stats | None]:
    """The thresholds broken by the samples started in ``(now - window, now]``.

    ([], None) while the window holds fewer than `MIN_SAMPLES` samples.
    """
    recent = [s for s in samples if now - window < s.started <= now]
    if len(recent) < MIN_SAMPLES:
        return [], None
    first = min(s.started for s in recent)
    stats = Stats.of(recent, seconds=min(window, max(now - first, 1e-3)))
    broken = []
    for t in thresholds:
        ok, seen = t.check(stats)
        if not ok:
            broken.append(f"{t.text} broken: {seen}")
    return broken, stats


async def _query(http: httpx.AsyncClient, base: str, expr: str, limit: float) -> float | str:
    """One instant query: its value, or why there is none (a string)."""
    try:
        response = await asyncio.wait_for(
            http.get(base.rstrip("/") + "/api/v1/query", params={"query": expr}), limit
        )
    except (httpx.HTTPError, TimeoutError) as exc:
        return f"Prometheus did not answer ({type(exc).__name__})"
    try:
        doc = response.json()
    except ValueError:
        return f"Prometheus answered {response.status_code}, not JSON"
    if not isinstance(doc, dict) or doc.get("status") != "success":
        error = doc.get("error") if isinstance(doc, dict) else None
        return f"Prometheus answered {response.status_code}: {error or 'not a success'}"
    data = doc.get("data")
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, list) or not result:
        return "no data"
    value = result[0].get("value") if isinstance(result[0], dict) else None
    try:
        number = float(value[1]) if isinstance(value, list) and len(value) == 2 else math.nan
    except (TypeError, ValueError):
        number = math.nan
    return "no data" if math.isnan(number) else number


async def _watch_prometheus(
    opts: WatchOptions, clock: Clock, tick: Callable[[str], None]
) -> tuple[list[str], float, int, list[str]]:
    """(broken, when, judgements, notes) from Prometheus."""
    assert opts.prometheus is not None  # noqa: S101 - this mode only
    queries = [(t, promql(t, opts.window, opts.selector)) for t in opts.thresholds]
    started = clock.now()
    judged = 0
    notes: list[str] = []
    async with httpx.AsyncClient(
        timeout=opts.timeout, trust_env=False, follow_redirects=False
    ) as http:
        while clock.now() - started < opts.duration:
            broken = []
            for t, expr in queries:
                value = await _query(http, opts.prometheus, expr, opts.timeout)
                if isinstance(value, str):
                    if len(notes) < 3 and value not in notes:
                        notes.append(f"{t.text}: {value}")
                    continue
                judged += 1
                if not t.holds(value):
                    broken.append(f"{t.text} broken: {t.metric} = {t.show(value)} ({expr})")
            if broken:
                return broken, clock.now() - started, judged, notes
            tick(f"watch: {clock.now() - started:.0f} s: thresholds hold")
            await clock.asleep(opts.interval)
    return [], clock.now() - started, judged, notes


async def _watch_service(
    opts: WatchOptions, clock: Clock, tick: Callable[[str], None]
) -> tuple[list[str], float, int, list[str]]:
    """(broken, when, judgements, notes) from a light load on the service.

    The samples are stamped with the monotonic clock: ``clock`` is the system's here.
    """
    samples: list[Sample] = []
    client = Client(
        opts.url,
        timeout=opts.timeout,
        budget=opts.duration + opts.timeout + 5,
        give_up=0,
        connections=2,
    )
    plan = LoadPlan(path=opts.path, concurrency=2, rate=opts.rate, duration=opts.duration)
    stop = asyncio.Event()
    load = asyncio.ensure_future(run_load(client, plan, stop=stop, into=samples))
    started = clock.now()
    judged = 0
    broken: list[str] = []
    last: Stats | None = None
    try:
        while clock.now() - started < opts.duration and not load.done():
            await clock.asleep(opts.interval)
            broken, stats = judge(samples, opts.thresholds, now=clock.now(), window=opts.window)
            if stats is None:
                continue
            judged += 1
            last = stats
            tick(f"watch: {clock.now() - started:.0f} s: {stats.summary()}")
            if broken:
                window = f"over the last {opts.window:g} s ({stats.summary()})"
                broken = [f"{b} {window}" for b in broken]
                break
    finally:
        stop.set()
        await load
        await client.aclose()
    notes = [f"last window: {last.summary()}"] if last is not None else []
    return broken, clock.now() - started, judged, notes


async def watch(
    opts: WatchOptions,
    *,
    clock: Clock = SYSTEM_CLOCK,
    on_phase: Callable[[str], None] | None = None,
    on_tick: Callable[[str], None] | None = None,
) -> Outcomes:
    """Watch ``opts.url`` (or its Prometheus); PRB090 and PRB091.

    ``on_phase`` is told when the rollback starts, ``on_tick`` each judgement.
    """
    tell = on_phase or (lambda _: None)
    tick = on_tick or (lambda _: None)
    source = f"Prometheus {redact(opts.prometheus)}" if opts.prometheus else f"GET {opts.path}"
    every = ", ".join(t.text for t in opts.thresholds)
    if opts.prometheus:
        broken, when, judged, notes = await _watch_prometheus(opts, clock, tick)
    else:
        broken, when, judged, notes = await _watch_service(opts, clock, tick)
    note = f"; {'; '.join(notes)}" if notes else ""
    if not broken:
        if judged == 0:
            text = f"{source} for {when:.1f} s: nothing to judge{note}"
            return {"PRB090": (WARN, text), "PRB091": (NA, "no threshold broke")}
        text = f"{every} held for {when:.1f} s ({judged} judgements of {source}){note}"
        return {"PRB090": (PASS, text), "PRB091": (NA, "no threshold broke: no rollback")}
    text = f"at {when:.1f} s of {source}: " + "; ".join(broken)
    if not opts.on_fail:
        return {"PRB090": (FAIL, text), "PRB091": (FAIL, "no --on-fail command given")}
    tell(f"threshold broken: running {' '.join(opts.on_fail)}")
    result: CommandResult = await run_command(opts.on_fail, limit=opts.on_fail_timeout)
    verdict = PASS if result.ok else FAIL
    return {"PRB090": (FAIL, text), "PRB091": (verdict, f"rollback: {result.short()}")}
