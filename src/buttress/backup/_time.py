"""Wall-clock time for backups (ages, retention calendars) and durations like ``24h``.

Backups are dated on the calendar, so their clock is the wall clock (Unix seconds), not the
monotonic `buttress.clock.Clock`. Anything with a ``now()`` returning Unix seconds will do:
tests pass `buttress.testing.FakeClock` started at a date.

Example::

    from buttress.testing import FakeClock
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    clock.advance(86_400)         # the next day
"""

from __future__ import annotations

import re
import time
from typing import Protocol, runtime_checkable

from buttress.errors import ConfigurationError

__all__ = [
    "CLOCK_SKEW",
    "SYSTEM_WALL_CLOCK",
    "WallClock",
    "format_duration",
    "in_the_future",
    "parse_duration",
]

#: seconds a snapshot time may be ahead of this machine's clock before it is "in the
#: future": two machines' clocks agree to a few seconds with NTP, not to hours.
CLOCK_SKEW = 300.0


@runtime_checkable
class WallClock(Protocol):
    """A clock whose ``now()`` is Unix time in seconds."""

    def now(self) -> float:
        """Seconds since the Unix epoch."""


class _SystemWallClock:
    def now(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SYSTEM_WALL_CLOCK"


SYSTEM_WALL_CLOCK: WallClock = _SystemWallClock()


def in_the_future(created_at: float, now: float) -> bool:
    """True when ``created_at`` is more than `CLOCK_SKEW` after ``now``: a clock is wrong.

    Such a backup cannot prove freshness (its age would read 0 for as long as the error
    lasts, hiding backups that stopped), so it never counts as the newest for the RPO.
    """
    return created_at - now > CLOCK_SKEW


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_duration(text: str) -> float:
    """Seconds in ``30m``, ``4h``, ``24h``, ``7d``, ``1w`` or plain seconds.

    Example::

        >>> parse_duration("4h"), parse_duration("1d12h")
        (14400.0, 129600.0)
    """
    value = text.strip().lower()
    total = 0.0
    pos = 0
    while pos < len(value):
        match = _DURATION.match(value, pos)
        if match is None:
            break
        total += float(match.group(1)) * _UNITS[match.group(2) or "s"]
        pos = match.end()
    if not value or pos != len(value) or total <= 0:
        raise ConfigurationError(f"{text!r}: not a duration (like 30m, 4h, 24h, 7d)")
    return total


def format_duration(seconds: float) -> str:
    """``3h 12m``, ``42.1 s``: a duration for people.

    Example::

        >>> format_duration(11520), format_duration(3.25)
        ('3h 12m', '3.2 s')
    """
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m {int(seconds % 60)}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m"
    return f"{hours // 24}d {hours % 24}h"
