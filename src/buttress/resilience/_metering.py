"""Measure every call of a named pipeline for the meters of `buttress.telemetry` (opt-in).

A pipeline built while a meter is added (`buttress.telemetry.add_meter`) and that has a
name gets one outermost link more: it reads the pipeline's clock before and after the
call and gives the duration and the outcome (``ok``, the taxonomy's code, ``cancelled``)
to every meter. Unnamed pipelines are never measured (their label would be unbounded or
meaningless), and without meters nothing is added: the chain is the one it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from buttress._clock import Clock
from buttress.resilience._policy import AsyncLink, SyncLink
from buttress.telemetry import outcome_of, record_pipeline_call

__all__ = ["metered_async", "metered_sync"]


def metered_sync(link: SyncLink, pipeline: str, clock: Clock) -> SyncLink:
    """``link`` measured: one `record_pipeline_call` per call, however it ends."""
    now = clock.now

    def measured(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        start = now()
        try:
            result = link(fn, args, kwargs)
        except BaseException as exc:
            record_pipeline_call(pipeline, now() - start, outcome_of(exc))
            raise
        record_pipeline_call(pipeline, now() - start, "ok")
        return result

    return measured


def metered_async(link: AsyncLink, pipeline: str, clock: Clock) -> AsyncLink:
    """``link`` measured, for asyncio (a cancelled call counts as ``cancelled``)."""
    now = clock.now

    async def measured(
        fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        start = now()
        try:
            result = await link(fn, args, kwargs)
        except asyncio.CancelledError:
            record_pipeline_call(pipeline, now() - start, "cancelled")
            raise
        except BaseException as exc:
            record_pipeline_call(pipeline, now() - start, outcome_of(exc))
            raise
        record_pipeline_call(pipeline, now() - start, "ok")
        return result

    return measured
