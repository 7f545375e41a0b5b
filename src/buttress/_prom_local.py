"""Labelled Prometheus counters and histograms kept as plain numbers, exposed at scrape time.

prometheus-client's ``Counter`` and ``Histogram`` take a lock per value, check on every
call that they are observable and scan the bucket bounds in a Python loop: a few µs per
labelled update. The series here are plain ints and floats, bumped without a lock, and
turned into prometheus-client's own ``CounterMetricFamily``/``HistogramMetricFamily``
(``GaugeMetricFamily`` for the gauges a `LocalCollector` is given) only when someone
scrapes, so the exposition, text and OpenMetrics, exemplars included, is
prometheus-client's. Unlike its counters, these expose no ``_created`` samples.

A `LocalMetric` is one labelled counter and, optionally, a histogram on the counter's
leading labels (``http_requests_total{method,route,status}`` with
``http_request_duration_seconds{method,route}``, ``buttress_pipeline_calls_total{pipeline,
outcome}`` with ``buttress_pipeline_call_duration_seconds{pipeline}``): one `LocalSeries`
per counter label set holds its count and the histogram it shares with its siblings.

Never a lost update: ``x += 1`` on a number two threads share can lose one when the
interpreter switches threads between the read and the write, so every value has exactly
one writer thread. The values live in *shards*, each written by one thread and summed
when scraped:

* `LocalMetric.observe` and `LocalMetric.inc` (pipelines, stores: any thread) write to
  the calling thread's shard, created on its first use and kept in a list, so a thread's
  counts outlive it; a scrape folds the shards of finished threads into one (their
  ``threading.local`` storage is gone, which a weak reference tells);
* `LocalMetric.series` hands out a series of the *shared* shard, for a caller that
  records from one thread only (the event loop of `buttress.asgi.HttpMetrics`) and
  caches the series to skip the per-thread lookup.

The slow paths (a label set's first use in a shard, a thread's first use) and the scrape's
copy of the shards take a lock; the bumps never do. A scrape reads plain numbers a writer
may bump meanwhile: a histogram's sum may lag its count by the sample being recorded.

Nothing private of prometheus-client is used: the metric families, ``samples.Exemplar``,
``utils.floatToGoString`` and the custom-collector protocol (``describe``/``collect``,
``CollectorRegistry.register``). With ``PROMETHEUS_MULTIPROC_DIR`` these are not used:
the values must go through prometheus-client's own file-backed objects (`PromMetric`).
"""

from __future__ import annotations

import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["Hist", "LocalCollector", "LocalMetric", "LocalSeries", "PromMetric"]

Exemplar = tuple[str, float, float]
"""(trace id, value, wall-clock timestamp)."""


_FOLD_AT = 64  # shards before a new thread's first use folds the finished ones


class Hist:
    """One histogram series: per-bucket counts (not cumulative), sum, last exemplars."""

    __slots__ = ("bounds", "counts", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.exemplars: list[Exemplar | None] = [None] * (len(bounds) + 1)


_NO_HIST = Hist(())  # the histogram of a counter without one: never bumped, never exposed


class LocalSeries:
    """One counter label set's count, and the histogram of its leading labels."""

    __slots__ = ("count", "exemplar", "hist", "labels")

    def __init__(self, labels: tuple[str, ...], hist: Hist) -> None:
        self.labels = labels
        self.count = 0
        self.hist = hist
        self.exemplar: Exemplar | None = None

    def record(self, value: float) -> None:
        """Count one and observe ``value`` (only from the thread that owns the series)."""
        self.count += 1
        hist = self.hist
        hist.counts[bisect_left(hist.bounds, value)] += 1  # le: value <= bound
        hist.sum += value

    def record_exemplar(self, value: float, trace: str) -> None:
        """`record`, with ``trace`` as the exemplar of the count and of the bucket."""
        now = time.time()  # exemplar timestamps are wall-clock by definition
        self.count += 1
        self.exemplar = (trace, 1.0, now)
        hist = self.hist
        index = bisect_left(hist.bounds, value)
        hist.counts[index] += 1
        hist.sum += value
        hist.exemplars[index] = (trace, value, now)


class _Owner:
    """Held by one thread's ``threading.local`` only: dead once the thread is over."""

    __slots__ = ("__weakref__",)


class _Shard:
    """The series one thread writes (``owner``: a weak reference to its `_Owner`)."""

    __slots__ = ("hists", "owner", "series")

    def __init__(self, owner: weakref.ref[_Owner] | None) -> None:
        self.owner = owner
        self.series: dict[tuple[str, ...], LocalSeries] = {}
        self.hists: dict[tuple[str, ...], Hist] = {}

    def add(self, key: tuple[Any, ...], metric: LocalMetric) -> LocalSeries:
        labels = tuple(str(value) for value in key)
        if len(labels) != len(metric.labels):
            raise ValueError(
                f"{metric.counter} takes {len(metric.labels)} label values "
                f"({', '.join(metric.labels)}), got {len(labels)}: {labels!r}"
            )
        hist = _NO_HIST
        if metric.histogram is not None:
            hist_labels = labels[: metric.histogram_labels]
            found = self.hists.get(hist_labels)
            if found is None:
                found = self.hists[hist_labels] = Hist(metric.bounds)
            hist = found
        series = self.series[key] = LocalSeries(labels, hist)
        return series


def _newer(a: Exemplar | None, b: Exemplar | None) -> Exemplar | None:
    if a is None or (b is not None and b[2] >= a[2]):
        return b
    return a


class LocalMetric:
    """A labelled counter, and optionally a histogram on the counter's leading labels.

    ``counter`` is the counter's name without ``_total``; when ``histogram`` is named,
    the histogram keeps the first ``histogram_labels`` labels and buckets ``bounds``.
    """

    def __init__(
        self,
        counter: str,
        counter_help: str,
        labels: Sequence[str],
        *,
        histogram: str | None = None,
        histogram_help: str = "",
        histogram_labels: int = 0,
        bounds: tuple[float, ...] = (),
    ) -> None:
        from prometheus_client.utils import floatToGoString  # noqa: PLC0415 - optional

        self.counter = counter
        self.counter_help = counter_help
        self.labels = tuple(labels)
        self.histogram = histogram
        self.histogram_help = histogram_help
        self.histogram_labels = histogram_labels
        self.bounds = tuple(float(b) for b in bounds)
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._lock = threading.Lock()  # the slow paths and the scrape's copy; never a bump
        self._local = threading.local()  # per thread: ``owner``, ``series`` (its shard's)
        self._shards: list[_Shard] = []  # the threads' shards, finished ones until a scrape
        self._shared: _Shard | None = None  # `series`: one writer thread, chosen by the caller
        self._retired = _Shard(None)  # the shards of finished threads, summed
        self._fold_at = _FOLD_AT  # fold finished threads' shards when a new one makes this many

    # ----------------------------------------------------------------- recording

    def observe(self, key: tuple[Any, ...], value: float) -> None:
        """Count one under ``key`` (the label values) and observe ``value``; any thread."""
        try:
            series = self._local.series[key]
        except (AttributeError, KeyError):
            series = self._thread_series(key)
        series.count += 1
        hist = series.hist
        hist.counts[bisect_left(hist.bounds, value)] += 1  # le: value <= bound
        hist.sum += value

    def inc(self, key: tuple[Any, ...]) -> None:
        """Count one under ``key`` (the label values); any thread."""
        try:
            series = self._local.series[key]
        except (AttributeError, KeyError):
            series = self._thread_series(key)
        series.count += 1

    def _thread_series(self, key: tuple[Any, ...]) -> LocalSeries:
        """Slow path: the calling thread's series of ``key`` (and its shard) created."""
        local = self._local
        with self._lock:
            series: dict[tuple[str, ...], LocalSeries] | None = getattr(local, "series", None)
            if series is None:
                owner = _Owner()
                shard = _Shard(weakref.ref(owner))
                if len(self._shards) >= self._fold_at:
                    self._fold_finished()
                self._shards.append(shard)
                local.owner = owner
                local.shard = shard
                local.series = series = shard.series
            found = series.get(key)
            if found is None:
                found = local.shard.add(key, self)
            return found

    def series(self, key: tuple[Any, ...]) -> LocalSeries:
        """The series of ``key`` in the shared shard, to record into from one thread only."""
        with self._lock:
            shard = self._shared
            if shard is None:
                shard = self._shared = _Shard(None)
            found = shard.series.get(key)
            return found if found is not None else shard.add(key, self)

    # ----------------------------------------------------------------- scraping

    def _fold_finished(self) -> None:
        """Under the lock: the shards of finished threads summed into the retired one."""
        live: list[_Shard] = []
        retired = self._retired
        for shard in self._shards:
            if shard.owner is not None and shard.owner() is None:  # its thread is over
                for hist_labels, hist in shard.hists.items():
                    into = retired.hists.get(hist_labels)
                    if into is None:
                        into = retired.hists[hist_labels] = Hist(self.bounds)
                    into.counts = [a + b for a, b in zip(into.counts, hist.counts, strict=True)]
                    into.sum += hist.sum
                    into.exemplars = [
                        _newer(a, b) for a, b in zip(into.exemplars, hist.exemplars, strict=True)
                    ]
                for dead in shard.series.values():
                    kept = retired.series.get(dead.labels)
                    if kept is None:
                        kept = retired.add(dead.labels, self)
                    kept.count += dead.count
                    kept.exemplar = _newer(kept.exemplar, dead.exemplar)
            else:
                live.append(shard)
        self._shards = live
        # a thread-per-request server that is never scraped: fold again when the list has
        # doubled, so the shards stay bounded by twice the live threads (amortised O(1))
        self._fold_at = max(_FOLD_AT, 2 * len(live))

    def _snapshot(self) -> list[_Shard]:
        """Under the lock: finished threads' shards folded, the shards to read."""
        self._fold_finished()
        shards = [] if self._shared is None else [self._shared]
        shards.append(self._retired)
        shards.extend(self._shards)
        return shards

    def collect(self, families: tuple[Any, Any], exemplar: Any) -> None:
        """Add every label set's values, summed over the shards, to ``families``.

        ``families``: the counter's and the histogram's (None without one), empty, as
        `LocalCollector` builds them; ``exemplar``: prometheus-client's ``Exemplar``.
        """
        counter, histogram = families
        # the numbers are copied under the lock: a concurrent scrape folding a finished
        # thread's shard must not make this one count it twice (a counter going down)
        with self._lock:
            copies = [
                (
                    [(s.labels, s.count, s.exemplar) for s in list(shard.series.values())],
                    [
                        (labels, list(h.counts), h.sum, list(h.exemplars))
                        for labels, h in list(shard.hists.items())
                    ],
                )
                for shard in self._snapshot()
            ]
        counts: dict[tuple[str, ...], list[Any]] = {}  # labels -> [count, exemplar]
        hists: dict[tuple[str, ...], list[Any]] = {}  # labels -> [counts, sum, exemplars]
        for series_list, hist_list in copies:
            for labels, count, ex in series_list:
                entry = counts.get(labels)
                if entry is None:
                    counts[labels] = [count, ex]
                else:
                    entry[0] += count
                    entry[1] = _newer(entry[1], ex)
            for labels, buckets, total, exemplars in hist_list:
                entry = hists.get(labels)
                if entry is None:
                    hists[labels] = [buckets, total, exemplars]
                else:
                    entry[0] = [a + b for a, b in zip(entry[0], buckets, strict=True)]
                    entry[1] += total
                    entry[2] = [_newer(a, b) for a, b in zip(entry[2], exemplars, strict=True)]

        def as_exemplar(ex: Exemplar) -> Any:
            return exemplar({"trace_id": ex[0]}, ex[1], ex[2])

        # floats, as prometheus-client's own values (``registry.get_sample_value`` shows them)
        for labels, (count, ex) in counts.items():
            value = float(count)
            counter.add_metric(labels, value, exemplar=None if ex is None else as_exemplar(ex))
        if histogram is None:
            return
        for hist_labels, (bucket_counts, total, exemplars) in hists.items():
            cumulative = 0.0
            out: list[Any] = []
            for le, n, ex in zip(self._les, bucket_counts, exemplars, strict=True):
                cumulative += n
                out.append((le, cumulative) if ex is None else (le, cumulative, as_exemplar(ex)))
            histogram.add_metric(hist_labels, out, total)


Gauge = tuple[str, str, Callable[[], float]]
"""(name, help, the value now): an unlabelled gauge read at scrape time."""


class LocalCollector:
    """A prometheus-client collector over `LocalMetric` values and gauges."""

    def __init__(self, metrics: Sequence[LocalMetric], gauges: Sequence[Gauge] = ()) -> None:
        from prometheus_client.core import (  # noqa: PLC0415 - optional dependency
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.samples import Exemplar as PromExemplar  # noqa: PLC0415

        self._counter_family = CounterMetricFamily
        self._gauge_family = GaugeMetricFamily
        self._histogram_family = HistogramMetricFamily
        self._exemplar = PromExemplar
        self.metrics = tuple(metrics)
        self.gauges = tuple(gauges)

    def _families(self) -> list[tuple[Any, Any]]:
        return [
            (
                self._counter_family(metric.counter, metric.counter_help, labels=metric.labels),
                None
                if metric.histogram is None
                else self._histogram_family(
                    metric.histogram,
                    metric.histogram_help,
                    labels=metric.labels[: metric.histogram_labels],
                ),
            )
            for metric in self.metrics
        ]

    def _gauges(self) -> list[Any]:
        return [self._gauge_family(name, doc) for name, doc, _ in self.gauges]

    def describe(self) -> Iterable[Any]:
        """The families, empty: the registry checks their names (no duplicates)."""
        out = [f for pair in self._families() for f in pair if f is not None]
        return out + self._gauges()

    def collect(self) -> Iterable[Any]:
        """The families with their values, built now (a scrape)."""
        out: list[Any] = []
        for metric, pair in zip(self.metrics, self._families(), strict=True):
            metric.collect(pair, self._exemplar)
            out.extend(f for f in pair if f is not None)
        for (_, _, value), family in zip(self.gauges, self._gauges(), strict=True):
            family.add_metric((), float(value()))
            out.append(family)
        return out


class PromMetric:
    """`LocalMetric`'s recording calls on prometheus-client's own objects.

    A ``Counter`` and an optional ``Histogram``: multiprocess mode, where their values
    live in prometheus-client's files.

    The labelled children are cached per key; two threads creating the same one get the
    same child (prometheus-client's ``labels`` is thread-safe), so the cache needs no lock.
    """

    def __init__(self, counter: Any, histogram: Any = None, histogram_labels: int = 0) -> None:
        self.counter = counter
        self.histogram = histogram
        self.histogram_labels = histogram_labels
        self._children: dict[tuple[Any, ...], tuple[Any, Any]] = {}

    def _child(self, key: tuple[Any, ...]) -> tuple[Any, Any]:
        found = self._children.get(key)
        if found is None:
            hist = None
            if self.histogram is not None:
                hist = self.histogram.labels(*key[: self.histogram_labels])
            found = self._children[key] = (self.counter.labels(*key), hist)
        return found

    def observe(self, key: tuple[Any, ...], value: float) -> None:
        """Count one under ``key`` and observe ``value``."""
        counter, hist = self._child(key)
        counter.inc()
        hist.observe(value)

    def inc(self, key: tuple[Any, ...]) -> None:
        """Count one under ``key``."""
        self._child(key)[0].inc()
