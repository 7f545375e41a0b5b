"""Clocks: the one place buttress reads time, sleeps and arms timers.

Every time-dependent piece takes a `Clock`; tests pass `buttress.testing.FakeClock`
and never sleep. `SYSTEM_CLOCK` is the monotonic clock of the process.

Async timers on the system clock are coalesced on a per-event-loop timer wheel: a
timeout of ``d`` seconds is armed in a bucket of width at most ``d / 64`` (~1 ms at
least), so it fires at most ~1.6 % late and never early, and thousands of calls per
second share one loop timer instead of pushing one heap entry each (``asyncio.timeout``
costs ~5 µs per call on a small VM; a wheel slot costs well under 1 µs).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "SYSTEM_CLOCK",
    "Clock",
    "SystemClock",
    "Timer",
    "Wheel",
    "current_task",
    "tick_width",
    "wheel_for",
]


@runtime_checkable
class Timer(Protocol):
    """A scheduled callback that can be cancelled."""

    def cancel(self) -> None:
        """Stop the callback from running (no-op if it ran already)."""


@runtime_checkable
class Clock(Protocol):
    """Monotonic time, sleeping, and async timers.

    Example::

        from buttress.testing import FakeClock
        clock = FakeClock()
        clock.sleep(5)          # returns at once, time moves on
        assert clock.now() == 5.0
    """

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Run ``callback`` on the running event loop after ``delay`` seconds."""


_MIN_TICK = 2.0**-10  # ~1 ms; powers of two keep bucket arithmetic exact
_MAX_TICK = 1.0
_LATENESS_DIVISOR = 64.0


def tick_width(delay: float) -> float:
    """The bucket width for a timer of ``delay`` seconds: a power of two, 1 ms to 1 s."""
    width = delay / _LATENESS_DIVISOR
    if width <= _MIN_TICK:
        return _MIN_TICK
    if width >= _MAX_TICK:
        return _MAX_TICK
    # round down to a power of two so that buckets are shared across timeouts
    return float(2.0 ** math.floor(math.log2(width)))


_ids = itertools.count(1)
next_id = _ids.__next__


class _WheelTimer:
    __slots__ = ("bucket", "key")

    def __init__(self, bucket: dict[int, Any], key: int) -> None:
        self.bucket = bucket
        self.key = key

    def cancel(self) -> None:
        self.bucket.pop(self.key, None)


class Wheel:
    """Coalesces the timers of one event loop into buckets that share one loop timer each.

    A bucket is a dict ``{id: entry}``: an entry is a zero-argument callable, or an
    `asyncio.Task` to cancel (then its id is added to `fired`, so that a timeout can tell
    its own cancellation from anyone else's). Removing the id cancels the entry. Times are
    on the `time.monotonic` scale (loops with a clock of their own get a measured offset).

    Attributes:
        last_start, last_end: the bounds of the bucket `bucket` returned last: it holds
            the entries due in ``(last_start, last_end]`` and fires at ``last_end``.
    """

    __slots__ = (
        "__weakref__",
        "_last",
        "_last_width",
        "buckets",
        "fired",
        "last_end",
        "last_start",
        "loop",
        "offset",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buckets: dict[tuple[float, int], dict[int, Any]] = {}
        self.fired: set[int] = set()
        # asyncio's own loops read time.monotonic(); others (uvloop) get a measured offset
        same_clock = getattr(type(loop), "time", None) is asyncio.BaseEventLoop.time
        self.offset = 0.0 if same_clock else loop.time() - time.monotonic()
        # one-entry cache: calls in a burst land in the same bucket
        self._last: dict[int, Any] | None = None
        self.last_start = self.last_end = self._last_width = 0.0

    def bucket(self, when: float, width: float) -> dict[int, Any]:
        """The bucket of entries due at monotonic time ``when``, ``width`` s wide."""
        if self.last_start < when <= self.last_end and width == self._last_width:
            return self._last  # type: ignore[return-value]
        tick = math.ceil((when + self.offset) / width)
        key = (width, tick)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = {}
            self.loop.call_at(tick * width, self._fire, key)
        self._last = bucket
        self.last_end = tick * width - self.offset
        self.last_start = self.last_end - width
        self._last_width = width
        return bucket

    def schedule(self, delay: float, callback: Callable[[], object]) -> _WheelTimer:
        """Run ``callback`` after ``delay`` seconds (at most ~1.6 % late)."""
        bucket = self.bucket(time.monotonic() + delay, tick_width(delay))
        key = next_id()
        bucket[key] = callback
        return _WheelTimer(bucket, key)

    def _fire(self, key: tuple[float, int]) -> None:
        bucket = self.buckets.pop(key, None)
        if bucket is not None and bucket is self._last:
            self._last = None
            self.last_start = self.last_end = 0.0
        if not bucket:
            return
        entries = list(bucket.items())
        bucket.clear()
        for ident, entry in entries:
            if isinstance(entry, asyncio.Future):
                if not entry.done():
                    self.fired.add(ident)
                    entry.cancel()
            else:
                entry()


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wheel] = weakref.WeakKeyDictionary()
_last_wheel: Wheel | None = None


def wheel_for(loop: asyncio.AbstractEventLoop) -> Wheel:
    """The timer wheel of ``loop`` (created on first use)."""
    global _last_wheel
    last = _last_wheel
    if last is not None and last.loop is loop:
        return last
    wheel = _wheels.get(loop)
    if wheel is None:
        wheel = _wheels[loop] = Wheel(loop)
    _last_wheel = wheel
    return wheel


if sys.version_info < (3, 12):  # pragma: no cover - depends on the interpreter
    # 3.11's asyncio.current_task() asks get_running_loop(), which makes a getpid() system
    # call every time (3.12 no longer does). The loop last seen is remembered instead: a
    # stdlib loop keeps the id of the thread running it in ``_thread_id`` (None when
    # stopped), and one thread runs at most one loop, so "that loop runs in this thread"
    # is exact; the task is then read from the dict current_task() itself consults. About
    # 110 ns less per call on the 2-vCPU VM of bench/README.md (asgi: once per request).
    _tasks_of: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
        asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]  # noqa: SLF001
    )
    _get_ident = threading.get_ident
    _std_loop = asyncio.BaseEventLoop
    _seen: list[asyncio.AbstractEventLoop | None] = [None]  # replaced whole: threads race

    def current_task() -> asyncio.Task[Any] | None:
        """`asyncio.current_task` of the running loop (RuntimeError: no running loop)."""
        loop = _seen[0]
        if loop is None or loop._thread_id != _get_ident():  # type: ignore[attr-defined]  # noqa: SLF001
            loop = asyncio.get_running_loop()
            if isinstance(loop, _std_loop):
                _seen[0] = loop
        return _tasks_of(loop)

else:  # pragma: no cover - depends on the interpreter
    current_task = asyncio.current_task


class SystemClock:
    """The process's monotonic clock (`time.monotonic`), real sleeps and loop timers."""

    __slots__ = ()

    now = staticmethod(time.monotonic)

    def sleep(self, seconds: float) -> None:
        """Block the calling thread."""
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task."""
        await asyncio.sleep(max(seconds, 0.0))

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Arm a coalesced timer on the running event loop."""
        return wheel_for(asyncio.get_running_loop()).schedule(delay, callback)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()
