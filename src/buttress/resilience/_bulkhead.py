"""`Bulkhead`: bound how many calls run at once, with an optional bounded queue.

One bulkhead may be shared by threads and asyncio tasks at the same time: the slot count
is guarded by a `threading.Lock` that is never held across an ``await``. A freed slot is
handed directly to the oldest waiter (no barging), and a waiter that is cancelled or
times out after being handed a slot passes it on, so slots never leak.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from typing import Any

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import BulkheadFull
from buttress.resilience._deadline import _DEADLINE
from buttress.resilience._policy import (
    AsyncLink,
    BuildContext,
    Policy,
    SyncLink,
    call_terminal,
    check_int,
    check_positive,
)
from buttress.telemetry import CallRejectedEvent

__all__ = ["Bulkhead"]


def _time_out(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class _ThreadWaiter:
    __slots__ = ("granted", "lock")

    def __init__(self) -> None:
        self.granted = False
        self.lock = threading.Lock()
        self.lock.acquire()

    def wake(self) -> None:
        self.lock.release()


class _TaskWaiter:
    __slots__ = ("future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.granted = False
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def _set(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def wake(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._set()
        else:
            self.loop.call_soon_threadsafe(self._set)


class Bulkhead(Policy):
    """At most ``max_concurrent`` calls at once; up to ``max_queued`` more wait for a slot.

    Args:
        max_concurrent: slots (default 25).
        max_queued: callers allowed to wait for a slot (default 0: reject at once).
        queue_timeout: the longest a caller waits (default None: until the deadline in
            force, or forever without one).
        name: label for events and metrics.
        clock: time source (for queue timeouts).

    Raises `BulkheadFull` (code ``overloaded``) when the slots and the queue are taken, or
    when a queued caller's wait runs out.

    Example::

        db = Bulkhead(max_concurrent=10, max_queued=50, queue_timeout=1.0)
        Pipeline(db).call(run_query)
    """

    __slots__ = (
        "_active",
        "_lock",
        "_waiters",
        "clock",
        "max_concurrent",
        "max_queued",
        "queue_timeout",
    )
    kind = "bulkhead"

    def __init__(
        self,
        max_concurrent: int = 25,
        max_queued: int = 0,
        *,
        queue_timeout: float | None = None,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(name)
        self.max_concurrent = check_int("Bulkhead", "max_concurrent", max_concurrent, minimum=1)
        self.max_queued = check_int("Bulkhead", "max_queued", max_queued, minimum=0)
        self.queue_timeout = (
            None
            if queue_timeout is None
            else check_positive("Bulkhead", "queue_timeout", queue_timeout)
        )
        self.clock = clock
        self._lock = threading.Lock()
        self._active = 0
        self._waiters: deque[_ThreadWaiter | _TaskWaiter] = deque()

    def __repr__(self) -> str:
        return f"Bulkhead(max_concurrent={self.max_concurrent}, max_queued={self.max_queued})"

    @property
    def active(self) -> int:
        """Slots in use."""
        return self._active

    @property
    def queued(self) -> int:
        """Callers waiting for a slot."""
        return len(self._waiters)

    # ------------------------------------------------------------ permission protocol
    def try_acquire(self) -> bool:
        """Take a slot if one is free, without waiting."""
        lock = self._lock
        lock.acquire()
        if self._active < self.max_concurrent and not self._waiters:
            self._active += 1
            lock.release()
            return True
        lock.release()
        return False

    def release(self) -> None:
        """Give a slot back; the oldest waiter, if any, gets it."""
        lock = self._lock
        lock.acquire()
        if not self._waiters:
            self._active -= 1
            lock.release()
            return
        waiter = self._waiters.popleft()
        waiter.granted = True  # the slot moves to the waiter: _active unchanged
        lock.release()
        waiter.wake()

    def _wait_budget(self) -> float | None:
        timeout = self.queue_timeout
        at = _DEADLINE.get()
        if at is not None:
            left = at - self.clock.now()
            timeout = left if timeout is None else min(timeout, left)
        return timeout

    def _full(self, ctx: BuildContext, why: str) -> BulkheadFull:
        exc = BulkheadFull(
            f"bulkhead {self.name!r} is full ({self.max_concurrent} running, "
            f"{self.max_queued} queued): {why}",
            policy=self.name,
        )
        ctx.emit(
            CallRejectedEvent(
                pipeline=ctx.pipeline, policy=self.name, code=exc.code, retry_after=None
            )
        )
        return exc

    def _enqueue(self, waiter: _ThreadWaiter | _TaskWaiter) -> bool:
        """Queue ``waiter``, or grant at once if a slot freed meanwhile; False when full."""
        with self._lock:
            if self._active < self.max_concurrent and not self._waiters:
                self._active += 1
                waiter.granted = True
                return True
            if len(self._waiters) >= self.max_queued:
                return False
            self._waiters.append(waiter)
            return True

    def _abandon(self, waiter: _ThreadWaiter | _TaskWaiter) -> bool:
        """Leave the queue; True when a slot had been granted meanwhile (caller owns it)."""
        with self._lock:
            if waiter.granted:
                return True
            try:
                self._waiters.remove(waiter)
            except ValueError:  # pragma: no cover - granted is set under the same lock
                return True
            return False

    def acquire_sync(self, ctx: BuildContext) -> None:
        """Take a slot for a thread, waiting in the queue if allowed."""
        if self.try_acquire():
            return
        if self.max_queued == 0:
            raise self._full(ctx, "no queue")
        timeout = self._wait_budget()
        if timeout is not None and timeout <= 0:
            raise self._full(ctx, "no time left to wait")
        waiter = _ThreadWaiter()
        if not self._enqueue(waiter):
            raise self._full(ctx, "queue full")
        if waiter.granted:
            return
        got = waiter.lock.acquire(timeout=-1 if timeout is None else timeout)
        if got or self._abandon(waiter):
            return
        raise self._full(ctx, f"waited {timeout:.3g} s for a slot")

    async def acquire_async(self, ctx: BuildContext) -> None:
        """Take a slot for a task, waiting in the queue if allowed."""
        if self.try_acquire():
            return
        if self.max_queued == 0:
            raise self._full(ctx, "no queue")
        timeout = self._wait_budget()
        if timeout is not None and timeout <= 0:
            raise self._full(ctx, "no time left to wait")
        waiter = _TaskWaiter(asyncio.get_running_loop())
        if not self._enqueue(waiter):
            raise self._full(ctx, "queue full")
        if waiter.granted:
            return
        timer = None
        if timeout is not None:
            fut = waiter.future
            timer = self.clock.call_later(timeout, functools.partial(_time_out, fut))
        try:
            await waiter.future
        except TimeoutError:
            if self._abandon(waiter):
                return
            raise self._full(ctx, f"waited {timeout:.3g} s for a slot") from None
        except BaseException:
            if self._abandon(waiter):
                self.release()  # granted while we were being cancelled: pass it on
            raise
        finally:
            if timer is not None:
                timer.cancel()

    # ------------------------------------------------------------ drivers
    def _wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        direct = inner is call_terminal  # innermost: call fn here, one frame fewer
        lock = self._lock
        limit = self.max_concurrent
        release = self.release
        acquire_sync = self.acquire_sync

        def bulkhead_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            lock.acquire()
            if self._active < limit and not self._waiters:
                self._active += 1
                lock.release()
            else:
                lock.release()
                acquire_sync(ctx)
            try:
                return fn(*args, **kwargs) if direct else inner(fn, args, kwargs)
            finally:
                lock.acquire()  # release(), inlined for the no-waiter case
                if self._waiters:
                    lock.release()
                    release()
                else:
                    self._active -= 1
                    lock.release()

        return bulkhead_link

    def _awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        direct = inner is call_terminal  # innermost: call fn here, one frame fewer
        lock = self._lock
        limit = self.max_concurrent
        release = self.release
        acquire_async = self.acquire_async

        async def bulkhead_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            lock.acquire()
            if self._active < limit and not self._waiters:
                self._active += 1
                lock.release()
            else:
                lock.release()
                await acquire_async(ctx)
            try:
                return await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
            finally:
                lock.acquire()  # release(), inlined for the no-waiter case
                if self._waiters:
                    lock.release()
                    release()
                else:
                    self._active -= 1
                    lock.release()

        return bulkhead_link
