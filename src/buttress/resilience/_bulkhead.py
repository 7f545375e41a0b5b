"""`Bulkhead`: bound how many calls run at once, with an optional bounded queue.

One bulkhead may be shared by threads and asyncio tasks at the same time. Free slots are
tokens in a deque: taking one (``pop``) and giving one back (``append``) are atomic, so
the common path takes no lock. The queue of waiters is guarded by a `threading.Lock`
that is never held across an ``await``. While anyone waits, a newcomer does not take a
free slot: a freed slot goes to the oldest waiter (no barging), and a waiter that is
cancelled or times out after being handed a slot passes it on, so slots never leak.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from typing import TypeAlias

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import BulkheadFull
from buttress.resilience import _drivers_async, _drivers_sync
from buttress.resilience._deadline import _DEADLINE
from buttress.resilience._policy import (
    AsyncLink,
    BuildContext,
    Passage,
    Policy,
    SyncLink,
    check_int,
    check_positive,
)
from buttress.telemetry import CallRejectedEvent

__all__ = ["Bulkhead"]


def _time_out(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


class _ThreadWaiter:
    """A thread waiting for a slot: it blocks on a lock that `wake` releases."""

    __slots__ = ("granted", "lock")

    def __init__(self) -> None:
        self.granted = False
        self.lock = threading.Lock()
        self.lock.acquire()

    def wake(self) -> None:
        self.lock.release()

    def wait(self, seconds: float | None) -> bool:
        """Block until woken (True) or for at most ``seconds`` (False; None: no limit)."""
        return self.lock.acquire(timeout=-1 if seconds is None else seconds)


class _TaskWaiter:
    """A task waiting for a slot: it awaits a future that `wake` resolves, from any thread."""

    __slots__ = ("clock", "future", "granted", "loop")

    def __init__(self, clock: Clock) -> None:
        self.granted = False
        self.clock = clock
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[bool] = self.loop.create_future()

    def _set(self) -> None:
        if not self.future.done():
            self.future.set_result(True)

    def wake(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._set()
        else:
            self.loop.call_soon_threadsafe(self._set)

    async def wait(self, seconds: float | None) -> bool:
        """Wait until woken (True) or for at most ``seconds`` on the clock (False)."""
        if seconds is None:
            return await self.future
        timer = self.clock.call_later(seconds, functools.partial(_time_out, self.future))
        try:
            return await self.future
        finally:
            timer.cancel()


_Waiter: TypeAlias = _ThreadWaiter | _TaskWaiter


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
        "_free",
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
        self._free: deque[None] = deque([None] * self.max_concurrent)  # a token per free slot
        self._waiters: deque[_Waiter] = deque()

    def __repr__(self) -> str:
        return f"Bulkhead(max_concurrent={self.max_concurrent}, max_queued={self.max_queued})"

    @property
    def active(self) -> int:
        """Slots in use."""
        return self.max_concurrent - len(self._free)

    @property
    def queued(self) -> int:
        """Callers waiting for a slot."""
        return len(self._waiters)

    # ------------------------------------------------------------ permission protocol
    # A free token and a waiter never stay side by side: whoever brings them together (a
    # release while someone waits, a waiter queued while a slot is free) hands tokens to
    # the oldest waiters (`_hand_over`).
    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is waiting for one, without waiting."""
        if self._waiters:  # no barging past the queue
            return False
        try:
            self._free.pop()  # atomic: two callers never get the same slot
        except IndexError:
            return False
        return True

    def release(self) -> None:
        """Give a slot back; the oldest waiter, if any, gets it."""
        self._free.append(None)
        if self._waiters:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give free slots to the oldest waiters, then wake them (outside the lock)."""
        woken = []
        with self._lock:
            free, waiters = self._free, self._waiters
            while waiters:
                try:
                    free.pop()
                except IndexError:
                    break
                waiter = waiters.popleft()
                waiter.granted = True
                woken.append(waiter)
        for waiter in woken:
            waiter.wake()

    def wait_budget(self) -> float | None:
        """How long a caller may wait in the queue now (None: without limit)."""
        timeout = self.queue_timeout
        at = _DEADLINE.get()
        if at is not None:
            left = at - self.clock.now()
            timeout = left if timeout is None else min(timeout, left)
        return timeout

    def full(self, ctx: BuildContext, why: str) -> BulkheadFull:
        """The rejection to raise (``why``: the reason), reported to ``ctx``'s hooks."""
        exc = BulkheadFull(
            f"bulkhead {self.name!r} is full ({self.max_concurrent} running, "
            f"{self.max_queued} queued): {why}",
            policy=self.name,
        )
        if ctx.listening:
            ctx.emit(
                CallRejectedEvent(
                    pipeline=ctx.pipeline, policy=self.name, code=exc.code, retry_after=None
                )
            )
        return exc

    def thread_waiter(self) -> _ThreadWaiter:
        """A new queue entry for the calling thread (see `enqueue`)."""
        return _ThreadWaiter()

    def task_waiter(self) -> _TaskWaiter:
        """A new queue entry for the calling task (see `enqueue`)."""
        return _TaskWaiter(self.clock)

    def enqueue(self, waiter: _Waiter) -> bool:
        """Queue ``waiter``, or grant at once if a slot freed meanwhile; False when full."""
        with self._lock:
            if not self._waiters:
                try:
                    self._free.pop()
                except IndexError:
                    pass
                else:
                    waiter.granted = True
                    return True
            if len(self._waiters) >= self.max_queued:
                return False
            self._waiters.append(waiter)
        if self._free:  # a slot came back before we were in the queue to see it
            self._hand_over()
        return True

    def abandon(self, waiter: _Waiter) -> bool:
        """Leave the queue; True when a slot had been granted meanwhile (caller owns it)."""
        with self._lock:
            if waiter.granted:
                return True
            try:
                self._waiters.remove(waiter)
            except ValueError:  # pragma: no cover - granted is set under the same lock
                return True
            return False

    def passage(self) -> Passage:
        """A call an inner policy rejects only borrows a slot, when one is free at once."""
        return Passage(clock=self.clock, admits=self._free_now)

    def _free_now(self, now: float) -> bool:
        """Whether `try_acquire` would take a slot now (``now`` unused: slots are not timed)."""
        return not self._waiters and bool(self._free)

    def acquire_sync(self, ctx: BuildContext) -> None:
        """Take a slot for a thread, waiting in the queue if allowed."""
        _drivers_sync.bulkhead_acquire(self, ctx)

    async def acquire_async(self, ctx: BuildContext) -> None:
        """Take a slot for a task, waiting in the queue if allowed."""
        await _drivers_async.bulkhead_acquire(self, ctx)

    # ------------------------------------------------------------ drivers
    def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        """The thread link (generated from the asyncio one)."""
        return _drivers_sync.bulkhead_link(self, inner, ctx)

    def awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        """The asyncio link (see ``_drivers_async.bulkhead_link``)."""
        return _drivers_async.bulkhead_link(self, inner, ctx)
