"""Freshness where operators look: a `BackupCheck` for ``/health`` and a metrics collector.

Both read a destination's manifests (`Destination.list`: a directory listing, or one S3
LIST plus a GET per backup), cached for ``cache_seconds``, so a health probe or a scrape
costs nothing most of the time.

Metrics (the names the RPO alert rule of ``buttress slo`` uses; keep them):

* ``buttress_backup_age_seconds{destination}``: seconds since the newest backup's snapshot
  (``+Inf`` when there is none, so ``> RPO`` alerts fire); a backup dated more than
  5 minutes in the future is not counted (its age would read 0 until the wrong clock's
  time arrives, hiding that backups stopped);
* ``buttress_backup_last_verified_timestamp{destination}``: Unix time of the last
  verification that passed, of any backup there (0 when none has).

Example::

    from prometheus_client import REGISTRY
    dest = open_destination("s3://backups/orders")
    REGISTRY.register(BackupCollector(dest))
    app = harden(app, checks=[BackupCheck(dest, rpo=24 * 3600)])
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from buttress.asgi._health_checks import BaseCheck, CheckResult
from buttress.backup._destination import Destination
from buttress.backup._errors import BackupError
from buttress.backup._time import SYSTEM_WALL_CLOCK, WallClock, format_duration, in_the_future
from buttress.errors import ConfigurationError

__all__ = ["AGE_METRIC", "VERIFIED_METRIC", "BackupCheck", "BackupCollector", "Freshness"]

AGE_METRIC = "buttress_backup_age_seconds"
VERIFIED_METRIC = "buttress_backup_last_verified_timestamp"


@dataclass(frozen=True, slots=True, kw_only=True)
class Freshness:
    """The newest backup's time and the last passing verification (Unix seconds or None)."""

    newest: float | None
    newest_id: str | None
    last_verified: float | None
    read_at: float

    def age(self, now: float) -> float:
        """Seconds since the newest backup; ``inf`` when there is none."""
        return math.inf if self.newest is None else max(now - self.newest, 0.0)


class _Reader:
    """`Freshness` of one destination, cached for ``cache_seconds`` (thread-safe)."""

    def __init__(self, destination: Destination, cache_seconds: float, clock: WallClock) -> None:
        if not 0 <= cache_seconds <= 86_400:
            raise ConfigurationError(f"cache_seconds={cache_seconds!r}: use 0 to 86400")
        self.destination = destination
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: Freshness | None = None

    def read(self) -> Freshness:
        now = self.clock.now()
        with self._lock:
            cached = self._cached
            if cached is not None and now - cached.read_at < self.cache_seconds:
                return cached
            entries = self.destination.list()
            verified = [e.verified_at.timestamp() for e in entries if e.verified_at is not None]
            dated = [e for e in entries if not in_the_future(e.created_at.timestamp(), now)]
            fresh = Freshness(  # a backup dated in the future would hide that backups stopped
                newest=dated[0].created_at.timestamp() if dated else None,
                newest_id=dated[0].id if dated else None,
                last_verified=max(verified) if verified else None,
                read_at=now,
            )
            self._cached = fresh
            return fresh


class BackupCheck(BaseCheck):
    """Health check: the newest backup is younger than the RPO, and one was verified lately.

    ``fail`` when there is no backup or the newest is older than ``rpo``; ``warn`` when no
    backup passed a verification within ``verified_within`` (default 31 days: the
    checklists' monthly restore test); observed value: the newest backup's age in seconds.
    Not critical by default: a stale backup should page someone, not take the service out
    of the load balancer.

    Example::

        BackupCheck(open_destination("/var/backups/orders"), rpo=24 * 3600)
    """

    component_type = "component"
    measurement = "age"

    def __init__(
        self,
        destination: Destination,
        *,
        rpo: float = 24 * 3600.0,
        verified_within: float = 31 * 86_400.0,
        name: str = "backup",
        critical: bool = False,
        timeout: float | None = None,
        cache_seconds: float = 60.0,
        clock: WallClock = SYSTEM_WALL_CLOCK,
    ) -> None:
        super().__init__(name=name, critical=critical, timeout=timeout)
        for option, value in (("rpo", rpo), ("verified_within", verified_within)):
            if not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ConfigurationError(f"BackupCheck({option}={value!r}): must be > 0 seconds")
        self.rpo = float(rpo)
        self.verified_within = float(verified_within)
        self._reader = _Reader(destination, cache_seconds, clock)

    async def run(self) -> CheckResult:
        """Read the destination (in a thread of its own) and judge the ages."""
        fresh = await self._in_thread(self._reader.read)
        return self.judge(fresh)

    def judge(self, fresh: Freshness) -> CheckResult:
        """The result for ``fresh`` at the clock's now."""
        now = self._reader.clock.now()
        age = fresh.age(now)
        if fresh.newest is None:
            return CheckResult(status="fail", output="no backup found")
        value = round(age)
        if age > self.rpo:
            return CheckResult(
                status="fail", observed_value=value, observed_unit="s",
                output=f"newest backup is {format_duration(age)} old; RPO "
                f"{format_duration(self.rpo)}",
            )  # fmt: skip
        if fresh.last_verified is None or now - fresh.last_verified > self.verified_within:
            when = (
                "never"
                if fresh.last_verified is None
                else f"{format_duration(now - fresh.last_verified)} ago"
            )
            return CheckResult(
                status="warn", observed_value=value, observed_unit="s",
                output=f"no backup verified within {format_duration(self.verified_within)} "
                f"(last: {when}); run buttress backup verify",
            )  # fmt: skip
        return CheckResult(status="pass", observed_value=value, observed_unit="s")


class BackupCollector:
    """A prometheus-client custom collector for one destination's freshness.

    Register it on a ``CollectorRegistry``; each scrape reads the cache (`cache_seconds`).
    A destination that cannot be read yields no samples (and logs nothing per scrape).

    Example::

        REGISTRY.register(BackupCollector(open_destination("/var/backups/orders")))
    """

    def __init__(
        self,
        destination: Destination,
        *,
        cache_seconds: float = 60.0,
        clock: WallClock = SYSTEM_WALL_CLOCK,
    ) -> None:
        self._reader = _Reader(destination, cache_seconds, clock)

    def describe(self) -> list[Any]:
        """No samples at registration (the destination is read at scrape time only)."""
        return []

    def collect(self) -> Iterator[Any]:
        """The two gauges, labelled with the destination."""
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415 - metrics extra

        try:
            fresh = self._reader.read()
        except (BackupError, OSError):
            return
        label = [self._reader.destination.url]
        age = GaugeMetricFamily(
            AGE_METRIC, "Seconds since the newest backup's snapshot", labels=["destination"]
        )
        age.add_metric(label, fresh.age(self._reader.clock.now()))
        verified = GaugeMetricFamily(
            VERIFIED_METRIC,
            "Unix time of the last backup verification that passed (0: never)",
            labels=["destination"],
        )
        verified.add_metric(label, fresh.last_verified or 0.0)
        yield age
        yield verified
