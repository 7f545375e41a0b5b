"""k6-style thresholds (``p95<500ms``, ``error_rate<1%``, ``rps>50``) and the statistics they judge.

A `Threshold` is parsed from one string; `Stats` summarises `Sample` objects (one per
request: when it started, how long it took, the status or the transport error). An
*error* is a request that got no answer or a 5xx (k6's ``http_req_failed`` with 4xx
expected: a 404 or a 429 is the service answering, a 5xx or a reset is it failing).

Example::

    t = Threshold.parse("p95<500ms")
    stats = Stats.of(samples, seconds=10.0)
    ok, seen = t.check(stats)          # (True, "p95 = 12 ms")
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from buttress.errors import ConfigurationError

__all__ = ["DEFAULT_THRESHOLDS", "Sample", "Stats", "Threshold", "percentile"]

DEFAULT_THRESHOLDS = ("p95<500ms", "error_rate<1%")

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_FORM = re.compile(
    r"^\s*(?P<metric>p\d+(?:\.\d+)?|avg|med|min|max|error_rate|rps)\s*"
    r"(?P<op><=|>=|<|>)\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|us|%)?\s*$"
)
_LATENCY_UNITS = {"ms": 0.001, "s": 1.0, "us": 0.000001, None: 0.001}  # bare = ms (k6)


@dataclass(frozen=True, slots=True)
class Sample:
    """One request of a load or a watch: start (monotonic s), duration (s), outcome."""

    started: float
    elapsed: float
    status: int  # 0: no answer
    error: str = ""  # why no answer arrived

    @property
    def failed(self) -> bool:
        """No answer, or a 5xx."""
        return self.status == 0 or self.status >= 500


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted ``values``, linearly interpolated."""
    if not values:
        return math.nan
    rank = (len(values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """What a set of samples says: counts, the error rate, latency (s) and throughput."""

    requests: int
    errors: int
    statuses: dict[int, int]  # status (0: no answer) -> count
    latencies: tuple[float, ...]  # of the answered requests, sorted, seconds
    seconds: float  # the span the samples cover

    @classmethod
    def of(cls, samples: Iterable[Sample], *, seconds: float) -> Stats:
        """Summarise ``samples`` sent over ``seconds``."""
        items = list(samples)
        statuses: dict[int, int] = {}
        for s in items:
            statuses[s.status] = statuses.get(s.status, 0) + 1
        return cls(
            requests=len(items),
            errors=sum(1 for s in items if s.failed),
            statuses=dict(sorted(statuses.items())),
            latencies=tuple(sorted(s.elapsed for s in items if s.status)),
            seconds=max(seconds, 1e-9),
        )

    @property
    def error_rate(self) -> float:
        """Errors / requests (0 without requests)."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def rps(self) -> float:
        """Requests per second over the span."""
        return self.requests / self.seconds

    def value(self, metric: str) -> float:
        """The value of ``metric`` (seconds for latencies, a ratio for ``error_rate``)."""
        if metric == "error_rate":
            return self.error_rate
        if metric == "rps":
            return self.rps
        lat = self.latencies
        if not lat:
            return math.nan
        if metric == "avg":
            return sum(lat) / len(lat)
        if metric == "min":
            return lat[0]
        if metric == "max":
            return lat[-1]
        if metric == "med":
            return percentile(lat, 50)
        return percentile(lat, float(metric[1:]))

    def summary(self) -> str:
        """``412 requests in 10.0 s (41.2/s), 0 errors (0.00%), p50 3 ms p95 9 ms max 31 ms``."""
        codes = ", ".join(f"{'no answer' if k == 0 else k}: {v}" for k, v in self.statuses.items())
        head = (
            f"{self.requests} requests in {self.seconds:.1f} s ({self.rps:.1f}/s), "
            f"{self.errors} errors ({self.error_rate:.2%})"
        )
        if not self.latencies:
            return head + (f" [{codes}]" if codes else "")
        lat = " ".join(f"{m} {_ms(self.value(m))}" for m in ("p50", "p95", "p99", "max"))
        return f"{head}, {lat} [{codes}]"


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.001 else f"{seconds * 1000:.2f} ms"


@dataclass(frozen=True, slots=True)
class Threshold:
    """One pass/fail rule on the load's statistics: ``metric op limit``.

    ``metric`` is ``p50``..``p99.9``, ``med``, ``avg``, ``min``, ``max`` (a latency: the
    limit in ``ms`` (the default), ``s`` or ``us``), ``error_rate`` (``1%`` or ``0.01``)
    or ``rps`` (requests per second).
    """

    text: str
    metric: str
    op: str
    limit: float  # seconds, a ratio, or requests per second

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """Parse ``p95<500ms``; `ConfigurationError` with the accepted form otherwise."""
        m = _FORM.match(text)
        if m is None:
            raise ConfigurationError(
                f"threshold {text!r}: expected METRIC<VALUE, e.g. 'p95<500ms', "
                "'error_rate<1%', 'rps>50' (metrics: p50..p99.9, med, avg, min, max, "
                "error_rate, rps; operators < <= > >=)"
            )
        metric, op, raw, unit = m["metric"], m["op"], float(m["value"]), m["unit"]
        if metric.startswith("p") and not 0 < float(metric[1:]) < 100:
            raise ConfigurationError(f"threshold {text!r}: a percentile is between p0 and p100")
        if metric == "error_rate":
            if unit not in (None, "%"):
                raise ConfigurationError(f"threshold {text!r}: error_rate takes 1% or 0.01")
            limit = raw / 100.0 if unit == "%" else raw
            if limit > 1:
                raise ConfigurationError(f"threshold {text!r}: an error rate is at most 100%")
        elif metric == "rps":
            if unit is not None:
                raise ConfigurationError(f"threshold {text!r}: rps takes a plain number")
            limit = raw
        else:
            if unit == "%":
                raise ConfigurationError(f"threshold {text!r}: a latency takes ms, s or us")
            limit = raw * _LATENCY_UNITS[unit]
        return cls(text=text.strip(), metric=metric, op=op, limit=limit)

    @property
    def kind(self) -> str:
        """``latency``, ``errors`` or ``throughput``."""
        if self.metric == "error_rate":
            return "errors"
        return "throughput" if self.metric == "rps" else "latency"

    def show(self, value: float) -> str:
        """``value`` in this threshold's unit."""
        if math.isnan(value):
            return "n/a"
        if self.metric == "error_rate":
            return f"{value:.2%}"
        if self.metric == "rps":
            return f"{value:.1f}/s"
        return _ms(value)

    def holds(self, value: float) -> bool:
        """True when ``value`` satisfies the threshold (never for an unknown value)."""
        return not math.isnan(value) and _OPS[self.op](value, self.limit)

    def check(self, stats: Stats) -> tuple[bool, str]:
        """Whether ``stats`` satisfy the threshold, and ``p95 = 12 ms`` as evidence."""
        value = stats.value(self.metric)
        return self.holds(value), f"{self.metric} = {self.show(value)}"
