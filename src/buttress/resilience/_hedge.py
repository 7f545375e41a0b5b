"""`Hedge` (asyncio): start a second attempt when the first is slow; the first success wins.

Tail latency is often one slow replica or one lost packet. A hedge waits ``delay`` for the
first attempt, then starts another in parallel (up to ``max_hedges`` extra); a retriable
failure starts the next one at once. The first success is returned and every other
attempt is cancelled and awaited, so nothing is left running. Use it only for idempotent
calls; pair it with a `RetryBudget`-style limit on the caller's side if load matters.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import ConfigurationError, classify
from buttress.resilience._policy import (
    AsyncLink,
    BuildContext,
    Policy,
    SyncLink,
    check_callable,
    check_int,
    check_positive,
)
from buttress.telemetry import HedgeLaunchedEvent

__all__ = ["Hedge"]


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _retriable(exc: BaseException) -> bool:
    info = classify(exc)
    return info is not None and info.retriable


class Hedge(Policy):
    """Race extra attempts against a slow one (asyncio only).

    Args:
        delay: how long to wait for an attempt before starting the next (default 0.1 s).
        max_hedges: extra attempts at most (default 1).
        hedge_on: errors after which the next attempt starts at once (default: retriable
            errors per `buttress.errors.classify`); other errors only end that attempt.
        name: label for events and metrics.
        clock: time source.

    Example::

        pipe = Pipeline(Timeout(2.0), Hedge(delay=0.05, max_hedges=2))
        user = await pipe.acall(replica_get, user_id)
    """

    __slots__ = ("clock", "delay", "hedge_on", "max_hedges")
    kind = "hedge"

    def __init__(
        self,
        delay: float = 0.1,
        max_hedges: int = 1,
        *,
        hedge_on: Callable[[BaseException], bool] | None = None,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(name)
        self.delay = check_positive("Hedge", "delay", delay, allow_zero=True)
        self.max_hedges = check_int("Hedge", "max_hedges", max_hedges, minimum=1)
        check_callable("Hedge", "hedge_on", hedge_on)
        self.hedge_on = hedge_on or _retriable
        self.clock = clock

    def __repr__(self) -> str:
        return f"Hedge(delay={self.delay!r}, max_hedges={self.max_hedges})"

    def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        """Refused: hedging needs asyncio."""
        raise ConfigurationError(
            "Hedge races attempts and cancels the losers, which needs asyncio: "
            "use pipeline.acall() (threads cannot be cancelled safely)"
        )

    def awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        """The asyncio link: race attempts, keep the first success."""
        delay = self.delay
        max_attempts = self.max_hedges + 1
        hedge_on = self.hedge_on
        clock = self.clock
        name = self.name

        async def hedge_link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            loop = asyncio.get_running_loop()
            pending: set[asyncio.Future[Any]] = set()
            launched = 0
            last_error: BaseException | None = None

            def launch() -> None:
                nonlocal launched
                launched += 1
                if launched > 1:
                    ctx.emit(
                        HedgeLaunchedEvent(pipeline=ctx.pipeline, policy=name, attempt=launched)
                    )
                pending.add(asyncio.ensure_future(inner(fn, args, kwargs)))

            launch()
            try:
                while True:
                    wake: asyncio.Future[None] | None = None
                    timer = None
                    if launched < max_attempts:
                        wake = loop.create_future()
                        timer = clock.call_later(delay, functools.partial(_wake, wake))
                    try:
                        done, _ = await asyncio.wait(
                            pending if wake is None else (*pending, wake),
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                    finally:
                        if timer is not None:
                            timer.cancel()
                        if wake is not None and not wake.done():
                            wake.cancel()
                    hedge_now = wake is not None and wake in done
                    for task in done:
                        if task is wake:
                            continue
                        pending.discard(task)
                        if task.cancelled():
                            continue
                        error = task.exception()
                        if error is None:
                            return task.result()
                        last_error = error
                        if hedge_on(error):
                            hedge_now = True
                    if hedge_now and launched < max_attempts:
                        launch()
                    elif not pending:
                        if last_error is None:  # every attempt was cancelled from outside
                            raise asyncio.CancelledError
                        raise last_error
            finally:
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)

        return hedge_link
