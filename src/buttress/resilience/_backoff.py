"""`Backoff`: the delay schedules between retry attempts.

Exponential, linear, constant or decorrelated, with full, equal or no jitter (AWS,
"Exponential Backoff and Jitter").

A schedule is frozen configuration; the state of one call (the attempt number, the
previous delay) is passed in by the caller, never kept on the schedule.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from buttress.errors import ConfigurationError
from buttress.resilience._policy import check_positive

__all__ = ["Backoff", "Jitter"]

Jitter = Literal["full", "equal", "none", "decorrelated"]
_JITTERS = ("full", "equal", "none", "decorrelated")


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """A delay schedule between attempts. Build one with the class methods.

    ``attempt`` counts retries from 1 (the delay before the second call is
    ``delay(1, ...)``).

    Example::

        Backoff.exponential(base=0.2, cap=5.0, jitter="full")   # 0-0.2, 0-0.4, 0-0.8 ... <= 5 s
        Backoff.constant(0.5, jitter="none")                     # 0.5, 0.5, ...
        Backoff.decorrelated(base=0.1, cap=10.0)                 # AWS decorrelated jitter
    """

    base: float = 0.2
    cap: float = 5.0
    multiplier: float = 2.0
    increment: float = 0.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        check_positive("Backoff", "base", self.base, allow_zero=True)
        check_positive("Backoff", "cap", self.cap, allow_zero=True)
        if self.cap < self.base:
            raise ConfigurationError(f"Backoff(cap={self.cap!r}): must be >= base ({self.base!r})")
        if (
            isinstance(self.multiplier, bool)
            or not isinstance(self.multiplier, int | float)
            or not (1.0 <= self.multiplier <= 100.0)
        ):
            raise ConfigurationError(
                f"Backoff(multiplier={self.multiplier!r}): must be a number in [1, 100]"
            )
        check_positive("Backoff", "increment", self.increment, allow_zero=True)
        if self.jitter not in _JITTERS:
            raise ConfigurationError(
                f"Backoff(jitter={self.jitter!r}): must be one of {', '.join(_JITTERS)}"
            )

    @classmethod
    def exponential(
        cls,
        base: float = 0.2,
        cap: float = 5.0,
        *,
        multiplier: float = 2.0,
        jitter: Jitter = "full",
    ) -> Backoff:
        """``base * multiplier ** (attempt - 1)``, capped, then jittered."""
        return cls(base=base, cap=cap, multiplier=multiplier, jitter=jitter)

    @classmethod
    def constant(cls, delay: float, *, jitter: Jitter = "none") -> Backoff:
        """The same delay every time."""
        return cls(base=delay, cap=delay, multiplier=1.0, jitter=jitter)

    @classmethod
    def linear(
        cls, base: float = 0.2, increment: float = 0.2, cap: float = 5.0, *, jitter: Jitter = "full"
    ) -> Backoff:
        """``base + increment * (attempt - 1)``, capped, then jittered."""
        return cls(base=base, cap=cap, multiplier=1.0, increment=increment, jitter=jitter)

    @classmethod
    def decorrelated(cls, base: float = 0.2, cap: float = 5.0) -> Backoff:
        """AWS decorrelated jitter: ``min(cap, uniform(base, previous * 3))``."""
        return cls(base=base, cap=cap, multiplier=3.0, jitter="decorrelated")

    def nominal(self, attempt: int) -> float:
        """The un-jittered delay before retry number ``attempt`` (the upper bound)."""
        if self.jitter == "decorrelated":
            return self.cap
        if self.multiplier == 1.0:
            value = self.base + self.increment * (attempt - 1)
        else:
            exponent = min(attempt - 1, 1024)
            try:
                value = self.base * self.multiplier**exponent + self.increment * (attempt - 1)
            except OverflowError:
                value = math.inf
        return min(value, self.cap)

    def minimum(self, attempt: int) -> float:
        """The smallest delay the schedule can produce before retry ``attempt``."""
        if self.jitter == "full":
            return 0.0
        if self.jitter == "equal":
            return self.nominal(attempt) / 2
        if self.jitter == "decorrelated":
            return self.base
        return self.nominal(attempt)

    def delay(self, attempt: int, previous: float, rng: random.Random | None = None) -> float:
        """The delay before retry ``attempt``; ``previous`` is the last delay (0 at first)."""
        uniform = (rng or random).uniform
        if self.jitter == "decorrelated":
            low = self.base
            high = max(low, (previous or low) * self.multiplier)
            return min(self.cap, uniform(low, high))
        nominal = self.nominal(attempt)
        if self.jitter == "full":
            return uniform(0.0, nominal)
        if self.jitter == "equal":
            half = nominal / 2
            return half + uniform(0.0, half)
        return nominal
