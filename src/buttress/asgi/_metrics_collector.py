"""Where the HTTP request series of `HttpMetrics` live, and the collector that exposes them.

This module replaces prometheus-client's ``Counter``, ``Histogram`` and ``Gauge`` for the
three per-request series (``http_requests_total{method,route,status}``,
``http_request_duration_seconds{method,route}``, ``http_requests_in_flight``) in one
process, the default:

* a `buttress._prom_local.LocalMetric` holds the count and the duration histogram as
  plain ints and floats; `HttpMetrics` caches one `LocalSeries` per (method, route,
  status) (its count, and its (method, route) histogram: per-bucket counts, a sum, the
  last exemplars) from the metric's shared shard, and bumps it without a lock on the
  event-loop thread (ASGI servers run one loop per process); the in-flight count is a
  plain int too (`InFlight`);
* a `buttress._prom_local.LocalCollector`, registered on the prometheus-client registry
  like any custom collector, turns them into prometheus-client's own
  ``CounterMetricFamily``, ``HistogramMetricFamily`` and ``GaugeMetricFamily`` only when
  someone scrapes, so the exposition (text and OpenMetrics, exemplars included) is
  prometheus-client's.

The same two classes hold `buttress.telemetry.PrometheusMeter`'s series, which any thread
records into (per-thread shards: `buttress._prom_local` says how no count is lost).

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

The collector (`buttress._prom_local`) reaches into no private part of prometheus-client:
it uses the metric families, ``samples.Exemplar``, ``utils.floatToGoString`` and the
custom-collector protocol (``describe``/``collect``, ``CollectorRegistry.register``).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, TypeAlias

from buttress._prom_local import LocalCollector, LocalMetric, LocalSeries
from buttress.errors import ConfigurationError

__all__ = [
    "Families",
    "InFlight",
    "LocalCollector",
    "LocalSeries",
    "PromSeries",
    "Recorder",
    "acquire_families",
    "release_families",
]


class InFlight:
    """The requests in flight of one process (single-process mode), an int ``active``."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0


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
        self.requests_local: LocalMetric | None = None
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
                self.requests_local = LocalMetric(
                    names["requests"],
                    _HELP["requests"],
                    ("method", "route", "status"),
                    histogram=names["duration"],
                    histogram_help=_HELP["duration"],
                    histogram_labels=2,
                    bounds=buckets,
                )
                in_flight = InFlight()
                self.local = LocalCollector(
                    [self.requests_local],
                    gauges=[(names["in_flight"], _HELP["in_flight"], lambda: in_flight.active)],
                )
                registry.register(self.local)
                self.collectors.append(self.local)
                self.active = in_flight
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
        if self.requests_local is not None:  # HttpMetrics records on the event-loop thread
            return self.requests_local.series((method, route, str(status)))
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
