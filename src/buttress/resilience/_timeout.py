"""`Timeout`: bound a call (and everything it calls) in time.

Placed before `Retry` it is the total budget; placed after, the per-attempt budget. It
narrows the `deadline` in force, so nested timeouts, retry backoff, bulkhead queues and
`buttress.http` timeouts all take ``min(own, remaining)``.

* asyncio: the call is cancelled when the time is up and `DeadlineExceeded` is raised.
  Timers are coalesced on a per-loop wheel (see `buttress._clock`).
* threads: a running thread cannot be interrupted safely, so a sync timeout is
  cooperative: it refuses to start when the deadline has already passed, and it sets the
  deadline that cooperating code reads (`buttress.http` clients, `deadline.remaining()`,
  `deadline.check()`, retry backoff, bulkhead queues). An overrun is reported as a
  `TimeoutEvent`; the result is kept.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeAlias

from buttress import telemetry
from buttress._clock import SYSTEM_CLOCK, Clock, Wheel, next_id, tick_width, wheel_for
from buttress.errors import DeadlineExceeded, ErrorCode
from buttress.resilience._deadline import _DEADLINE
from buttress.resilience._policy import (
    AsyncLink,
    BuildContext,
    Passage,
    Policy,
    SyncLink,
    call_terminal,
    check_positive,
)
from buttress.telemetry import TimeoutEvent

__all__ = ["Timeout"]


def _expired(policy: str) -> DeadlineExceeded:
    return DeadlineExceeded(
        "the deadline passed before the call could start",
        code=ErrorCode.DEADLINE_EXCEEDED,
        policy=policy,
    )


def _deadline_ahead(now: float) -> bool:
    """Whether the deadline in force, if any, is still ahead at ``now``."""
    at = _DEADLINE.get()
    return at is None or at > now


if sys.version_info < (3, 12):  # pragma: no cover - depends on the interpreter
    # 3.11's asyncio.current_task() calls get_running_loop(), which makes a getpid()
    # system call every time (3.12 no longer does): ~0.9 µs per call on the 2-vCPU VM of
    # bench/README.md, where a getpid() costs ~1 µs, against ~40 ns for a read of the
    # dict it consults, the C module's own, so the read is exact. Measured with
    # bench/outbound.py (README pipeline, asyncio): a private access the numbers justify.
    _task_of_loop: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
        asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]  # noqa: SLF001
    )
    # For the same getpid(), "the loop this link used last runs in this thread" is tested
    # with the id of the thread a stdlib loop keeps in ``_thread_id`` (None when stopped):
    # exact, one thread runs at most one loop at a time; ~50 ns against ~0.65 µs for
    # get_running_loop() (bench/outbound.py, README pipeline, asyncio).
    _BY_THREAD = True
else:  # pragma: no cover - depends on the interpreter
    _task_of_loop = asyncio.current_task
    _BY_THREAD = False

# A bucket of the wheel fires when the loop's time reaches its end; a link reuses the
# bucket it used last while its call starts at least this long before that end.
_BUCKET_MARGIN = 0.001

# what an asyncio timeout link remembers: wheel, loop, bucket, bucket start, end, end - margin
_Located: TypeAlias = tuple[Wheel, asyncio.AbstractEventLoop, dict[int, Any], float, float, float]


class _Expiry:
    """Timer target on clocks other than the system clock: cancels the task, remembers it."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        if not self.task.done():
            self.fired = True
            self.task.cancel()


class Timeout(Policy):
    """Bound a call to ``seconds`` (and never beyond the deadline already in force).

    Args:
        seconds: the budget, > 0.
        name: label for events and metrics.
        clock: time source (`buttress.testing.FakeClock` in tests).

    Example::

        pipe = Pipeline(Timeout(10.0), Retry(attempts=3), Timeout(2.0))
        await pipe.acall(fetch_user, 42)   # 2 s per attempt, 10 s in all
    """

    __slots__ = ("clock", "seconds")
    kind = "timeout"

    def __init__(
        self, seconds: float, *, name: str | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        super().__init__(name)
        self.seconds = check_positive("Timeout", "seconds", seconds)
        self.clock = clock

    def __repr__(self) -> str:
        return f"Timeout({self.seconds!r})"

    def passage(self) -> Passage:
        """A call an inner policy rejects only crosses the link, unless the deadline passed."""
        return Passage(clock=self.clock, admits=_deadline_ahead)

    def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        """The thread link: a cooperative deadline (a thread cannot be interrupted)."""
        seconds = self.seconds
        now = self.clock.now
        var = _DEADLINE
        name = self.name
        direct = inner is call_terminal  # innermost: call fn here, one frame fewer
        pipeline_hooks = bool(ctx.hooks)

        def timeout_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            start = now()
            at = start + seconds
            outer = var.get()
            if outer is not None and outer < at:
                if outer <= start:
                    raise _expired(name)
                at = outer
            token = var.set(at)
            try:
                result = fn(*args, **kwargs) if direct else inner(fn, args, kwargs)
            finally:
                var.reset(token)
            # nobody listens for overruns: skip the clock read. The module global, not
            # telemetry.global_hooks(): a call costs ~40 ns, twice per call of the README
            # pipeline (bench/outbound.py, sync).
            if not (pipeline_hooks or telemetry._global_hooks):  # noqa: SLF001
                return result
            end = now()
            if end > at:
                ctx.emit(
                    TimeoutEvent(
                        pipeline=ctx.pipeline, policy=name, timeout=seconds, elapsed=end - start
                    )
                )
            return result

        return timeout_link

    def awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        """The asyncio link: the call is cancelled when the time is up."""
        if self.clock is not SYSTEM_CLOCK:
            return self._awrap_clock(inner, ctx)
        seconds = self.seconds
        now = self.clock.now
        var = _DEADLINE
        name = self.name
        running_loop = asyncio.get_running_loop
        task_of = _task_of_loop
        get_ident = threading.get_ident
        by_thread = _BY_THREAD
        std_loop = asyncio.BaseEventLoop
        margin = _BUCKET_MARGIN
        cancelled = asyncio.CancelledError
        own_width = tick_width(seconds)
        direct = inner is call_terminal  # innermost: call fn here, one frame fewer
        # (wheel, loop, bucket, its start, its end, its end - margin) this link used last:
        # nested timeouts have buckets of different widths, which the wheel's one-entry
        # cache cannot hold; a call that starts before the margin reuses the bucket
        cache: list[_Located | None] = [None]  # one slot, replaced whole: threads may race

        def locate(
            at: float, width: float
        ) -> tuple[Wheel, asyncio.AbstractEventLoop, dict[int, Any]]:
            """The running loop, its wheel and the bucket for ``at`` (remembered if ours)."""
            loop = running_loop()
            wheel = wheel_for(loop)
            bucket = wheel.bucket(at, width)
            if width == own_width and (not by_thread or isinstance(loop, std_loop)):
                high = wheel.last_end
                cache[0] = (wheel, loop, bucket, wheel.last_start, high, high - margin)
            return wheel, loop, bucket

        # The task itself goes into a bucket of the loop's timer wheel under a fresh id;
        # the wheel cancels it when the bucket comes due and notes the id in wheel.fired.
        async def timeout_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            start = now()
            at = start + seconds
            outer = var.get()
            if outer is not None and outer < at:
                if outer <= start:
                    raise _expired(name)
                at = outer
                wheel, loop, bucket = locate(at, tick_width(at - start))
            else:
                cached = cache[0]
                if cached is None:
                    wheel, loop, bucket = locate(at, own_width)
                else:
                    wheel, loop, bucket, low, high, safe = cached
                    if not (
                        low < at <= high
                        and start < safe  # so the bucket has not fired
                        and (
                            # see _BY_THREAD
                            loop._thread_id  # type: ignore[attr-defined]  # noqa: SLF001
                            == get_ident()
                            if by_thread
                            else loop is running_loop()
                        )
                    ):
                        wheel, loop, bucket = locate(at, own_width)
            task = task_of(loop)
            if task is None:  # pragma: no cover - acall always runs inside a task
                return await inner(fn, args, kwargs)
            cancelling = task.cancelling()
            ident = next_id()
            bucket[ident] = task
            token = var.set(at)
            try:
                return await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
            except cancelled as exc:
                fired = wheel.fired
                if fired and ident in fired:
                    fired.discard(ident)
                    if task.uncancel() <= cancelling:
                        raise self._timed_out(ctx, start, at, at == start + seconds) from exc
                raise
            finally:
                bucket.pop(ident, None)
                var.reset(token)
                fired = wheel.fired
                if fired and ident in fired:  # the call swallowed our cancellation: undo it
                    fired.discard(ident)
                    task.uncancel()

        return timeout_link

    def _awrap_clock(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        """The async driver on an injected clock (`FakeClock`): a timer per call."""
        seconds = self.seconds
        clock = self.clock
        now = clock.now
        var = _DEADLINE
        name = self.name

        async def timeout_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            start = now()
            at = start + seconds
            outer = var.get()
            if outer is not None and outer < at:
                if outer <= start:
                    raise _expired(name)
                at = outer
            task = asyncio.current_task()
            if task is None:  # pragma: no cover - acall always runs inside a task
                return await inner(fn, args, kwargs)
            cancelling = task.cancelling()
            expiry = _Expiry(task)
            timer = clock.call_later(at - start, expiry)
            token = var.set(at)
            try:
                return await inner(fn, args, kwargs)
            except asyncio.CancelledError as exc:
                if expiry.fired:
                    expiry.fired = False
                    if task.uncancel() <= cancelling:
                        raise self._timed_out(ctx, start, at, at == start + seconds) from exc
                raise
            finally:
                timer.cancel()
                var.reset(token)
                if expiry.fired:  # the call swallowed our cancellation: undo it
                    task.uncancel()

        return timeout_link

    def expired(self, elapsed: float, own: bool) -> tuple[ErrorCode, str]:
        """What running out means: the code and the message of the `DeadlineExceeded`.

        ``own``: this timeout's budget ran out (else the deadline in force, shorter, did).
        By default its own is ``upstream_timeout`` (what it bounds was slow); a subclass
        may say otherwise (the inbound request deadline says ``deadline_exceeded``).
        """
        if own:
            return ErrorCode.UPSTREAM_TIMEOUT, (
                f"timed out after {elapsed:.3g} s (timeout {self.seconds:g} s)"
            )
        return ErrorCode.DEADLINE_EXCEEDED, (
            f"timed out after {elapsed:.3g} s (timeout {self.seconds:g} s, cut short by "
            "the deadline in force)"
        )

    def _timed_out(self, ctx: BuildContext, start: float, at: float, own: bool) -> DeadlineExceeded:
        elapsed = self.clock.now() - start
        code, message = self.expired(elapsed, own)
        ctx.emit(
            TimeoutEvent(
                pipeline=ctx.pipeline,
                policy=self.name,
                timeout=self.seconds,
                elapsed=elapsed,
                code=code,
            )
        )
        return DeadlineExceeded(
            message,
            code=code,
            policy=self.name,
        )
