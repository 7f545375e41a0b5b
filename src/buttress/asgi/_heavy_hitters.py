"""Noisy neighbours: the heaviest keys per rate-limit policy, in bounded memory.

`SpaceSaving` is Metwally, Agrawal and El Abbadi's heavy-hitters sketch ("Efficient
computation of frequent and top-k elements in data streams", 2005): ``capacity`` counters
whatever the number of distinct keys. After a stream of ``N`` items, each monitored key's
``count`` over-estimates its true count by at most its ``error``, and ``error <= N /
capacity``; every key seen more than ``N / capacity`` times is monitored. Counting is O(1)
amortized per item, whatever the capacity (see `SpaceSaving`), which is what lets the
rate limits of `harden` track their heaviest keys by default.

`SlidingTopKeys` keeps one sketch per slice of a sliding window (``buckets`` slices of
``window / buckets`` seconds, the oldest dropped as time moves on), and merges them when
asked: the bounds add up slice by slice, so the guarantee holds over the window (with the
granularity of one slice). `NoisyNeighbours` keeps one of those per policy and outcome
(admitted, refused); `buttress.asgi._noisy` exposes it as metrics and an admin view with
hashed key ids only.

No locks: one event loop records (the rate-limit middleware's); readers work on copies
(`SpaceSaving.snapshot`), so a scrape from another thread never sees a dictionary change
under it. Time is passed in (tests use a FakeClock).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.asgi._limit_algorithms import check_integer, check_number
from buttress.errors import ConfigurationError

__all__ = ["NoisyNeighbours", "SlidingTopKeys", "SpaceSaving", "TopKey"]

_MAX_POLICIES: Final = 256  # policy x outcome sketches at most (policies come from config)


@dataclass(frozen=True, slots=True)
class TopKey:
    """One heavy key: ``count`` over-estimates its true count by at most ``error``."""

    key: str
    count: int
    error: int

    @property
    def guaranteed(self) -> int:
        """A lower bound of the true count (``count - error``)."""
        return self.count - self.error


class SpaceSaving:
    """The Space-Saving sketch: ``capacity`` counters for a stream of any number of keys.

    Each offer is O(1) amortized, whatever the capacity: the sketch keeps the keys at the
    smallest count (``_low``, valid while not empty) so that a new key replaces one of them
    without a scan. When the last of them leaves (replaced or counted up), one scan finds
    the next smallest count, which is then at least one more than the last: since the
    smallest count never exceeds ``total / capacity``, a stream of ``N`` items costs at most
    ``N / capacity + 1`` scans of ``capacity`` counters, ``O(N)`` in all (the same bound as
    the bucket list of the paper's "stream summary", with plain dictionaries).

    Example::

        >>> sketch = SpaceSaving(2)
        >>> for key in "aabac":
        ...     sketch.offer(key)
        >>> [(t.key, t.count, t.error) for t in sketch.top(2)]
        [('a', 3, 0), ('c', 2, 1)]
    """

    __slots__ = ("_low", "_min", "capacity", "counts", "errors", "scans", "total")

    def __init__(self, capacity: int) -> None:
        self.capacity = check_integer("SpaceSaving", "capacity", capacity, 1, 1 << 16)
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.total = 0
        self.scans = 0  # scans for the smallest count (at most total / capacity + 1)
        # the keys whose count is ``_min``, the smallest (valid while not empty)
        self._low: dict[str, None] = {}
        self._min = 0

    def offer(self, key: str, weight: int = 1) -> None:
        """Count ``weight`` more for ``key`` (a new key takes a smallest counter when full)."""
        self.total += weight
        counts = self.counts
        count = counts.get(key)
        if count is not None:
            counts[key] = count + weight
            if count == self._min:  # no longer among the smallest
                self._low.pop(key, None)
            return
        if len(counts) < self.capacity:
            counts[key] = weight
            self.errors[key] = 0
            return
        low = self._low
        if not low:
            low = self._scan()
        victim, _ = low.popitem()
        floor = counts.pop(victim)
        del self.errors[victim]
        counts[key] = floor + weight
        self.errors[key] = floor

    def _scan(self) -> dict[str, None]:
        """The keys at the smallest count, found by one pass over the counters."""
        self.scans += 1
        counts = self.counts
        floor = self._min = min(counts.values())
        low = self._low = dict.fromkeys([k for k, c in counts.items() if c == floor])
        return low

    @property
    def floor(self) -> int:
        """What an unmonitored key may have been counted at most (0 while not full)."""
        if len(self.counts) < self.capacity:
            return 0
        return self._min if self._low else min(self.counts.values())

    def snapshot(self) -> tuple[dict[str, int], dict[str, int], int]:
        """Copies of the counts and errors, and the floor of those counts.

        What readers use: a scrape on another thread than the one that records reads a
        consistent copy, never a dictionary that changes while it is read (a key counted
        between the two copies gets its whole count as error: a safe bound).
        """
        counts = self.counts.copy()
        errors = self.errors.copy()
        floor = min(counts.values()) if len(counts) >= self.capacity else 0
        return counts, errors, floor

    def top(self, n: int) -> list[TopKey]:
        """The ``n`` keys with the highest counts, highest first."""
        counts, errors, _ = self.snapshot()
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]
        return [TopKey(key, count, errors.get(key, count)) for key, count in ranked]

    def __len__(self) -> int:
        return len(self.counts)


class SlidingTopKeys:
    """The heaviest keys of the last ``window`` seconds, one `SpaceSaving` per slice.

    Args:
        window: seconds covered (default 60).
        buckets: slices of the window (default 6: the window slides by 10 s steps).
        capacity: counters per slice (default 64): memory is ``buckets * capacity`` keys.

    Example::

        top = SlidingTopKeys(window=60, buckets=6, capacity=64)
        top.offer("ip:203.0.113.9", now=clock.now())
        top.top(10, now=clock.now())
    """

    __slots__ = ("_newest", "_next", "_slices", "_start", "buckets", "capacity", "span", "window")

    def __init__(self, *, window: float = 60.0, buckets: int = 6, capacity: int = 64) -> None:
        owner = "SlidingTopKeys"
        self.window = check_number(owner, "window", window)
        if self.window <= 0:
            raise ConfigurationError(f"{owner}(window={window!r}): seconds > 0")
        self.buckets = check_integer(owner, "buckets", buckets, 1, 3600)
        self.capacity = check_integer(owner, "capacity", capacity, 1, 1 << 16)
        self.span = self.window / self.buckets
        self._newest = SpaceSaving(self.capacity)
        self._slices: list[SpaceSaving] = [self._newest]
        self._start = -math.inf  # start of the newest slice
        self._next = -math.inf  # when the newest slice ends (the first offer starts one)

    def _rotate(self, now: float) -> None:
        slices = self._slices
        steps = (
            self.buckets
            if self._start == -math.inf
            else math.floor((now - self._start) / self.span)
        )
        for _ in range(min(steps, self.buckets)):
            slices.append(SpaceSaving(self.capacity))
        del slices[: max(0, len(slices) - self.buckets)]
        self._start = now if self._start == -math.inf else self._start + steps * self.span
        self._next = self._start + self.span
        self._newest = slices[-1]

    def offer(self, key: str, now: float, weight: int = 1) -> None:
        """Count ``weight`` (at least 1) for ``key`` at time ``now``."""
        if now >= self._next:
            self._rotate(now)
        self._newest.offer(key, weight)

    def counter(self, now: Callable[[], float]) -> Callable[[str], None]:
        """``count(key)``: `offer` of one for ``key`` at ``now()``, in one frame.

        Example::

            count = top.counter(clock.now)
            count("ip:203.0.113.9")
        """

        def count(key: str) -> None:
            at = now()
            if at >= self._next:
                self._rotate(at)
            self._newest.offer(key)

        return count

    def top(self, n: int, now: float) -> list[TopKey]:
        """The ``n`` heaviest keys over the window ending at ``now``, heaviest first.

        A key's ``count`` sums its counts per slice plus, for a full slice that does not
        monitor it, that slice's floor (what it may have had there); ``error`` is what
        those add beyond its true count at most.
        """
        slices = list(self._slices) if now < self._next else self._visible(now)
        views = [sketch.snapshot() for sketch in slices]
        keys = {key for counts, _, _ in views for key in counts}
        merged = []
        for key in keys:
            count = error = 0
            for counts, errors, floor in views:
                found = counts.get(key)
                if found is None:
                    count += floor
                    error += floor
                else:
                    count += found
                    error += errors.get(key, found)
            merged.append(TopKey(key, count, error))
        merged.sort(key=lambda t: (-t.count, t.key))
        return merged[:n]

    def _visible(self, now: float) -> list[SpaceSaving]:
        if self._start == -math.inf:  # nothing offered yet
            return []
        steps = math.floor((now - self._start) / self.span)
        keep = max(0, self.buckets - steps)
        return self._slices[len(self._slices) - keep :] if keep else []

    @property
    def total(self) -> int:
        """Items counted in the slices kept."""
        return sum(sketch.total for sketch in self._slices)

    def __len__(self) -> int:
        return sum(len(sketch) for sketch in self._slices)


class NoisyNeighbours:
    """The heaviest keys per rate-limit policy, admitted and refused, over a sliding window.

    Args:
        window: seconds covered (default 60).
        buckets: slices of the window (default 6).
        capacity: counters per slice and sketch (default 64).
        top: keys reported per policy and outcome (default 10; at most ``capacity``).
        clock: time source (tests pass a FakeClock).

    Example::

        noisy = NoisyNeighbours(top=5)
        RateLimitMiddleware(app, rules, top_keys=noisy)
        noisy.report(hash_key)      # {"burst": {"admitted": [...], "refused": [...]}}
    """

    __slots__ = ("_sketches", "buckets", "capacity", "clock", "top", "window")

    def __init__(
        self,
        *,
        window: float = 60.0,
        buckets: int = 6,
        capacity: int = 64,
        top: int = 10,
        clock: Clock | None = None,
    ) -> None:
        SlidingTopKeys(window=window, buckets=buckets, capacity=capacity)  # validates
        self.window = float(window)
        self.buckets = buckets
        self.capacity = capacity
        self.top = check_integer("NoisyNeighbours", "top", top, 1, capacity)
        self.clock = clock or SYSTEM_CLOCK
        self._sketches: dict[tuple[str, bool], SlidingTopKeys] = {}

    def _sketch(self, policy: str, admitted: bool) -> SlidingTopKeys | None:
        """The window of one policy and outcome (made on first use; None past the bound)."""
        sketch = self._sketches.get((policy, admitted))
        if sketch is None:
            if len(self._sketches) >= _MAX_POLICIES:
                return None
            sketch = self._sketches[policy, admitted] = SlidingTopKeys(
                window=self.window, buckets=self.buckets, capacity=self.capacity
            )
        return sketch

    def record(self, policy: str, key: str, admitted: bool, weight: int = 1) -> None:
        """Count one decision of ``policy`` for ``key`` (``weight``: at least 1)."""
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ConfigurationError(f"NoisyNeighbours.record(weight={weight!r}): an integer >= 1")
        sketch = self._sketch(policy, admitted)
        if sketch is not None:
            sketch.offer(key, self.clock.now(), weight)

    def counter(self, policy: str, admitted: bool) -> Callable[[str], None]:
        """``count(key)``: `record` of one decision, bound once (the middleware's hot path).

        Example::

            count = noisy.counter("burst", admitted=True)
            count("ip:203.0.113.9")
        """
        sketch = self._sketch(policy, admitted)
        if sketch is None:
            return _ignore
        return sketch.counter(self.clock.now)

    def heaviest(self, policy: str, admitted: bool) -> list[TopKey]:
        """The top keys of one policy and outcome, raw (for tests and in-process use)."""
        sketch = self._sketches.get((policy, admitted))
        return [] if sketch is None else sketch.top(self.top, self.clock.now())

    def report(self, hash_key: object) -> dict[str, dict[str, list[dict[str, object]]]]:
        """Per policy, the top keys admitted and refused, keys replaced by ``hash_key(key)``.

        Example::

            noisy.report(middleware.key_hash)
            # {"daily": {"admitted": [{"id": "3f0c...", "count": 912, "error": 0}],
            #            "refused": []}}
        """
        if not callable(hash_key):
            raise ConfigurationError("NoisyNeighbours.report(hash_key=...): a callable")
        out: dict[str, dict[str, list[dict[str, object]]]] = {}
        for policy, admitted in sorted(self._sketches):
            entry = out.setdefault(policy, {"admitted": [], "refused": []})
            entry["admitted" if admitted else "refused"] = [
                {"id": hash_key(t.key), "count": t.count, "error": t.error}
                for t in self.heaviest(policy, admitted)
            ]
        return out


def _ignore(key: str) -> None:
    """A counter past the bound of sketches: counts nothing."""
