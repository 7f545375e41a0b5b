"""The SLO spec as frozen dataclasses: what `buttress.slo._spec` reads and the generators use.

Durations keep both their seconds (for arithmetic) and their Prometheus text (``30d``),
objectives are ratios (``0.999``), and SLI queries are templates with ``{{window}}``
where the range goes (`Sli.errors_query` fills it in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "HTTP_LATENCY_BUCKETS",
    "Backups",
    "Duration",
    "Probes",
    "Sli",
    "Slo",
    "Spec",
    "Thresholds",
    "parse_duration",
]

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_WINDOW = re.compile(r"\{\{\s*\.?window\s*\}\}")

#: The ``le`` boundaries of ``buttress_http_request_duration_seconds`` (the latency SLI's
#: threshold must be one of them: a histogram can only count below its own boundaries).
HTTP_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Duration:
    """A Prometheus duration: its text (``1h30m``) and its length in seconds."""

    text: str
    seconds: float

    def __str__(self) -> str:
        return self.text


def parse_duration(text: str) -> Duration | None:
    """The `Duration` written as ``text`` (Prometheus syntax: ``5m``, ``1h30m``), else None.

    Example::

        >>> parse_duration("1h30m").seconds
        5400.0
    """
    text = text.strip()
    if not _DURATION.fullmatch(text):
        return None
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(text))
    return Duration(text, float(seconds)) if seconds > 0 else None


def fill_window(template: str, window: str) -> str:
    """``template`` with every ``{{window}}`` (or Sloth's ``{{.window}}``) replaced."""
    return _WINDOW.sub(window, template)


def has_window(template: str) -> bool:
    """True when ``template`` has a ``{{window}}`` placeholder."""
    return _WINDOW.search(template) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Sli:
    """What counts as an error, as two PromQL templates (``{{window}}`` is the range).

    ``kind`` is ``availability`` or ``latency`` for the SLIs built from buttress's own
    metrics, ``ratio`` for a query given in the spec (or an OpenSLO ratioMetric).
    Exactly one of ``errors`` and ``good`` is set.
    """

    kind: Literal["availability", "latency", "ratio"]
    total: str
    errors: str | None = None
    good: str | None = None
    latency_threshold: float | None = None  # seconds, for kind == "latency"

    def errors_query(self, window: str) -> str:
        """The PromQL of the error rate over ``window``."""
        total = fill_window(self.total, window)
        if self.errors is not None:
            return fill_window(self.errors, window)
        good = self.good or ""  # the reader sets exactly one of the two
        return f"({total}) - ({fill_window(good, window)})"

    def ratio_query(self, window: str) -> str:
        """The PromQL of the error ratio (errors / total) over ``window``."""
        total = fill_window(self.total, window)
        return f"({self.errors_query(window)})\n/\n({total})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Slo:
    """One objective: ``objective`` (a ratio, 0.999) of events good over ``window``."""

    name: str
    objective: float
    window: Duration
    sli: Sli
    description: str = ""

    @property
    def budget(self) -> float:
        """The error budget: the share of events allowed to fail (0.001 for 99.9 %)."""
        return round(1.0 - self.objective, 12)


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """The checklists' simple alerts: 5xx share above ``error_ratio`` for ``error_for``..."""

    error_ratio: float | None = None
    error_for: Duration = Duration("2m", 120.0)
    p95_seconds: float | None = None
    p95_for: Duration = Duration("5m", 300.0)
    rate_window: Duration = Duration("1m", 60.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Probes:
    """Synthetic checks: blackbox_exporter probes ``paths`` of each base URL in ``targets``."""

    targets: tuple[str, ...]
    paths: tuple[str, ...] = ("/health/live", "/health/ready")
    exporter: str = "127.0.0.1:9115"
    interval: Duration = Duration("1m", 60.0)
    timeout: Duration = Duration("5s", 5.0)
    for_: Duration = Duration("2m", 120.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Backups:
    """Backup alerts on ``buttress_backup_age_seconds`` and its last verification time."""

    rpo: Duration
    verify_within: Duration | None = None
    selector: str = ""
    for_: Duration = Duration("5m", 300.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec:
    """A whole spec: the service, how to select its series, and what to generate."""

    service: str
    selector: str
    slos: tuple[Slo, ...] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)
    probes: Probes | None = None
    backups: Backups | None = None
    labels: tuple[tuple[str, str], ...] = ()
    runbook_base_url: str = ""
    source: str = ""

    @property
    def metric_selector(self) -> str:
        """The label matchers (without braces) that pick the service's buttress series."""
        return self.selector
