"""Where the HTTP request series of `HttpMetrics` live, and the collector that exposes them.

This module replaces prometheus-client's ``Counter``, ``Histogram`` and ``Gauge`` for the
three per-request series (``http_requests_total{method,route,status}``,
``http_request_duration_seconds{method,route}``, ``http_requests_in_flight``) in one
process, the default:

* `LocalSeries` (one count, and its (method, route) histogram: per-bucket counts, a
  sum, the last exemplars) holds plain ints and floats, bumped without a lock on the
  event-loop thread (ASGI servers run one loop per process);
* `LocalCollector`, registered on the prometheus-client registry like any custom
  collector, turns them into prometheus-client's own ``CounterMetricFamily``,
  ``HistogramMetricFamily`` and ``GaugeMetricFamily`` only when someone scrapes, so the
  exposition (text and OpenMetrics, exemplars included) is prometheus-client's.

Why: prometheus-client's objects take a lock per value (``MutexValue``: five per
request), check they are observable on every call and scan the bucket bounds in a Python
loop. ``.venv/bin/python bench/run.py metrics`` (``bench/metrics.py``) records the same
requests both ways in one run. 2026-12-06, prometheus-client 0.26.0, CPython 3.11.7, a
shared 2-vCPU VM, µs per request over a no-op floor: 0.68 here against 5.5 with
prometheus-client's objects and their labelled children cached (11.5 calling
``.labels()`` per request); with exemplars 0.92 against 15.1. One scrape of 50 routes
(300 series): 25 ms against 39 ms, and prometheus-client's counters would add
``_created`` samples to the exposition. Issue 9 asks for the dependency's objects unless
the difference is real (the bar: ~0.5 µs per request); it is ~4.8 µs.

With several processes (``PROMETHEUS_MULTIPROC_DIR``) nothing is replaced: `Families`
registers prometheus-client's own ``Counter``/``Histogram``/``Gauge`` (``livesum``), whose
values live in its shared files, and `PromSeries` records through their labelled children.
`Families` also holds the shed and rate-limited counters (prometheus-client's) and the
resilience `buttress.telemetry.PrometheusHook`, shared by every `HttpMetrics` on one
registry and namespace (`acquire_families`, `release_families`).

The collector reaches into no private part of prometheus-client: it uses the metric
families, ``samples.Exemplar``, ``utils.floatToGoString`` and the custom-collector protocol
(``describe``/``collect``, ``CollectorRegistry.register``).
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any, TypeAlias

from buttress.errors import ConfigurationError

__all__ = [
    "Families",
    "LocalCollector",
    "LocalSeries",
    "PromSeries",
    "Recorder",
    "acquire_families",
    "release_families",
]


class _Hist:
    """One histogram series: per-bucket counts (not cumulative), sum, last exemplars."""

    __slots__ = ("bounds", "counts", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.exemplars: list[tuple[str, float, float] | None] = [None] * (len(bounds) + 1)


class LocalSeries:
    """One (method, route, status) count and its (method, route) histogram, in-process."""

    __slots__ = ("count", "exemplar", "hist")

    def __init__(self, hist: _Hist) -> None:
        self.count = 0
        self.hist = hist
        self.exemplar: tuple[str, float, float] | None = None

    def record(self, elapsed: float) -> None:
        self.count += 1
        hist = self.hist
        hist.counts[bisect_left(hist.bounds, elapsed)] += 1  # le: value <= bound
        hist.sum += elapsed

    def record_exemplar(self, elapsed: float, trace: str) -> None:
        now = time.time()  # exemplar timestamps are wall-clock by definition
        self.count += 1
        self.exemplar = (trace, 1.0, now)
        hist = self.hist
        index = bisect_left(hist.bounds, elapsed)
        hist.counts[index] += 1
        hist.sum += elapsed
        hist.exemplars[index] = (trace, elapsed, now)


class LocalCollector:
    """A prometheus-client collector over `LocalSeries` values (single-process mode)."""

    def __init__(self, names: dict[str, str], bounds: tuple[float, ...]) -> None:
        from prometheus_client.core import (  # noqa: PLC0415 - optional dependency
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.samples import Exemplar  # noqa: PLC0415
        from prometheus_client.utils import floatToGoString  # noqa: PLC0415

        self._counter_family = CounterMetricFamily
        self._gauge_family = GaugeMetricFamily
        self._histogram_family = HistogramMetricFamily
        self._exemplar = Exemplar
        self._names = names
        self._bounds = bounds
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, str, str], LocalSeries] = {}
        self._hists: dict[tuple[str, str], _Hist] = {}
        self._lock = threading.Lock()  # creation only; bumps run on the event-loop thread
        self.active = 0  # requests in flight

    def series(self, method: str, route: str, status: int) -> LocalSeries:
        with self._lock:
            key = (method, route, str(status))
            series = self._series.get(key)
            if series is None:
                hist = self._hists.get((method, route))
                if hist is None:
                    hist = self._hists[method, route] = _Hist(self._bounds)
                series = self._series[key] = LocalSeries(hist)
            return series

    def _families(self) -> tuple[Any, Any, Any]:
        names = self._names
        return (
            self._counter_family(
                names["requests"], _HELP["requests"], labels=("method", "route", "status")
            ),
            self._histogram_family(
                names["duration"], _HELP["duration"], labels=("method", "route")
            ),
            self._gauge_family(names["in_flight"], _HELP["in_flight"]),
        )

    def describe(self) -> Iterable[Any]:
        return self._families()

    def collect(self) -> Iterable[Any]:
        counter, histogram, gauge = self._families()
        exemplar = self._exemplar
        with self._lock:
            series_items = list(self._series.items())
            hist_items = list(self._hists.items())
        for labels, series in series_items:
            ex = series.exemplar
            counter.add_metric(
                labels,
                series.count,
                exemplar=None if ex is None else exemplar({"trace_id": ex[0]}, ex[1], ex[2]),
            )
        for hist_labels, hist in hist_items:
            cumulative = 0
            buckets: list[Any] = []
            for le, count, ex in zip(self._les, list(hist.counts), hist.exemplars, strict=True):
                cumulative += count
                if ex is None:
                    buckets.append((le, cumulative))
                else:
                    buckets.append((le, cumulative, exemplar({"trace_id": ex[0]}, ex[1], ex[2])))
            histogram.add_metric(hist_labels, buckets, hist.sum)
        gauge.add_metric((), self.active)
        return (counter, histogram, gauge)


class PromSeries:
    """One (method, route, status) series on prometheus-client metrics (multiprocess mode)."""

    __slots__ = ("counter", "histogram")

    def __init__(self, counter: Any, histogram: Any) -> None:
        self.counter = counter
        self.histogram = histogram

    def record(self, elapsed: float) -> None:
        self.counter.inc()
        self.histogram.observe(elapsed)

    def record_exemplar(self, elapsed: float, trace: str) -> None:
        del trace  # prometheus-client keeps no exemplars in multiprocess mode
        self.record(elapsed)


class _SharedActive:
    """The in-flight count written through to a ``livesum`` gauge (multiprocess mode)."""

    __slots__ = ("_gauge", "_value")

    def __init__(self, gauge: Any) -> None:
        self._gauge = gauge
        self._value = 0

    @property
    def active(self) -> int:
        return self._value

    @active.setter
    def active(self, value: int) -> None:
        self._value = value
        self._gauge.set(value)


_HELP = {
    "requests": "HTTP requests by method, route template and status",
    "duration": "HTTP request duration in seconds by method and route template",
    "in_flight": "HTTP requests being served",
    "shed": "HTTP requests refused by load shedding, by reason",
    "limited": "HTTP requests refused by a rate limit, by policy",
}


class Families:
    """The collectors of one (registry, namespace), shared by every `HttpMetrics` on it."""

    def __init__(
        self,
        prom: Any,
        registry: Any,
        namespace: str,
        buckets: tuple[float, ...],
        resilience: bool,
        multiprocess: bool,
        detail: bool = False,
    ) -> None:
        names = {
            key: f"{namespace}_{base}" if namespace else base
            for key, base in (
                ("requests", "http_requests"),
                ("duration", "http_request_duration_seconds"),
                ("in_flight", "http_requests_in_flight"),
                ("shed", "http_requests_shed"),
                ("limited", "http_requests_limited"),
            )
        }
        self.buckets = buckets
        self.resilience = resilience
        self.detail = detail
        self.meter: Any = None
        self.sizes: tuple[Any, Any] | None = None
        self.users = 0
        self.registry = registry
        self.collectors: list[Any] = []
        self.hook: Any = None
        self.local: LocalCollector | None = None
        self.active: Any
        try:
            if multiprocess:
                self.requests = self._add(
                    prom.Counter(
                        names["requests"],
                        _HELP["requests"],
                        ["method", "route", "status"],
                        registry=registry,
                    )
                )
                self.duration = self._add(
                    prom.Histogram(
                        names["duration"],
                        _HELP["duration"],
                        ["method", "route"],
                        buckets=buckets,
                        registry=registry,
                    )
                )
                gauge = self._add(
                    prom.Gauge(
                        names["in_flight"],
                        _HELP["in_flight"],
                        registry=registry,
                        multiprocess_mode="livesum",
                    )
                )
                self.active = _SharedActive(gauge)
            else:
                self.local = LocalCollector(names, buckets)
                registry.register(self.local)
                self.collectors.append(self.local)
                self.active = self.local
            self.shed = self._add(
                prom.Counter(names["shed"], _HELP["shed"], ["reason"], registry=registry)
            )
            self.limited = self._add(
                prom.Counter(names["limited"], _HELP["limited"], ["policy"], registry=registry)
            )
            if resilience:
                from buttress.telemetry import PrometheusHook  # noqa: PLC0415 - needs prom

                self.hook = PrometheusHook(registry=registry, prefix=namespace or "buttress")
                self.collectors.extend(
                    value
                    for value in vars(self.hook).values()
                    if isinstance(value, prom.metrics.MetricWrapperBase)
                )
            if detail:
                from buttress.telemetry import PrometheusMeter  # noqa: PLC0415 - needs prom

                self.meter = PrometheusMeter(registry=registry, prefix=namespace or "buttress")
                self.collectors.extend(self.meter.collectors)
                self.sizes = tuple(
                    self._add(
                        prom.Histogram(
                            f"{namespace}_http_{kind}_size_bytes"
                            if namespace
                            else f"http_{kind}_size_bytes",
                            f"HTTP {kind} body size ({how})",
                            ["method", "route"],
                            buckets=_SIZE_BUCKETS,
                            registry=registry,
                        )
                    )
                    for kind, how in (("request", "Content-Length"), ("response", "bytes sent"))
                )
        except ValueError as exc:  # DuplicateTimeseries: someone else owns these names
            self.unregister()
            raise ConfigurationError(
                f"metrics named {namespace or '(no namespace)'}_http_* or the resilience "
                f"metrics are already registered by something else ({exc}); pass another "
                "registry or namespace, or resilience=False if you add PrometheusHook yourself"
            ) from exc

    def _add(self, collector: Any) -> Any:
        self.collectors.append(collector)
        return collector

    def series(self, method: str, route: str, status: int) -> LocalSeries | PromSeries:
        """The recorder of one label set (slow path: once per route, method and status)."""
        if self.local is not None:
            return self.local.series(method, route, status)
        return PromSeries(
            self.requests.labels(method, route, str(status)),
            self.duration.labels(method, route),
        )

    def unregister(self) -> None:
        for collector in self.collectors:
            with contextlib.suppress(KeyError):  # removed behind our back
                self.registry.unregister(collector)
        self.collectors.clear()


#: body sizes, bytes: 100 B to 10 MiB by powers of ~4
_SIZE_BUCKETS = (100.0, 1_000.0, 4_000.0, 16_000.0, 64_000.0, 256_000.0, 1 << 20, 4 << 20, 10 << 20)

_families_lock = threading.Lock()
_families: weakref.WeakKeyDictionary[Any, dict[str, Families]] = weakref.WeakKeyDictionary()


def acquire_families(
    prom: Any,
    registry: Any,
    namespace: str,
    buckets: tuple[float, ...],
    resilience: bool,
    multiprocess: bool,
    detail: bool = False,
) -> Families:
    """The families of (registry, namespace), created on first use; one more user."""
    with _families_lock:
        by_namespace = _families.setdefault(registry, {})
        families = by_namespace.get(namespace)
        if families is None:
            families = Families(
                prom, registry, namespace, buckets, resilience, multiprocess, detail
            )
            if families.hook is not None:
                from buttress.telemetry import add_hook  # noqa: PLC0415

                add_hook(families.hook)
            if families.meter is not None:
                from buttress.telemetry import add_meter  # noqa: PLC0415

                add_meter(families.meter)
            by_namespace[namespace] = families
        elif (families.buckets, families.resilience, families.detail) != (
            buckets,
            resilience,
            detail,
        ):
            raise ConfigurationError(
                f"HTTP metrics for namespace {namespace!r} already exist on this registry with "
                f"buckets={families.buckets}, resilience={families.resilience} and "
                f"detail={families.detail}; use the same options or another registry"
            )
        families.users += 1
        return families


def release_families(families: Families, namespace: str) -> None:
    """One user less; the last one unregisters the collectors and removes the hook."""
    with _families_lock:
        families.users -= 1
        if families.users > 0:
            return
        if families.hook is not None:
            from buttress.telemetry import remove_hook  # noqa: PLC0415

            remove_hook(families.hook)
        if families.meter is not None:
            from buttress.telemetry import remove_meter  # noqa: PLC0415

            remove_meter(families.meter)
        families.unregister()
        by_namespace = _families.get(families.registry)
        if by_namespace is not None and by_namespace.get(namespace) is families:
            del by_namespace[namespace]


Recorder: TypeAlias = LocalSeries | PromSeries
"""What `HttpMetrics` records one (method, route, status) into: ``record(elapsed)``."""
