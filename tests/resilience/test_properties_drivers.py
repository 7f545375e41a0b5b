"""Property tests (hypothesis): the generated thread drivers behave as the asyncio ones.

The same pipeline (`Fallback`, total `Timeout`, `Retry` with a budget and result
predicate, `CircuitBreaker` with slow-call tracking, `Bulkhead`) is built twice on two
`FakeClock`s, then driven once with ``call`` and once with ``acall`` through the same
random sequence of calls. Each attempt of a call succeeds, fails with a retriable error,
a retriable error carrying a ``Retry-After`` hint, a non-retriable error, returns a result
that ``retry_on_result`` rejects, or succeeds slowly; between calls the clock moves on.
Every call's outcome (result, or error type, message and notes), the clock, the sleeps,
the breaker's snapshot, the bulkhead and every event must be the same.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import fields
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from buttress import (
    Backoff,
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Pipeline,
    RateLimited,
    Retry,
    RetryBudget,
    Timeout,
)
from buttress.telemetry import Event
from buttress.testing import FakeClock

ATTEMPTS = ["ok", "retriable", "hinted", "fatal", "bad_result", "slow", "slow_failure"]

calls = st.lists(
    st.tuples(
        st.lists(st.sampled_from(ATTEMPTS), min_size=1, max_size=4),  # attempt outcomes
        st.sampled_from([0.0, 0.05, 0.5, 3.0, 20.0]),  # clock advance before the call
    ),
    min_size=1,
    max_size=25,
)
configs = st.fixed_dictionaries(
    {
        "attempts": st.integers(1, 4),
        "jitter": st.sampled_from(["full", "none", "decorrelated"]),
        "ratio": st.sampled_from([0.0, 0.2, 1.0]),
        "per_second": st.sampled_from([0.0, 1.0, 10.0]),
        "consecutive": st.sampled_from([None, 2, 5]),
        "minimum_calls": st.integers(1, 6),
        "probes": st.integers(1, 2),
        "seed": st.integers(0, 2**16),
    }
)


class Rig:
    """One pipeline on its own clock, recording everything it reports."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.clock = FakeClock(1000.0)
        self.events: list[Event] = []
        self.breaker = CircuitBreaker(
            failure_rate=0.5,
            minimum_calls=cfg["minimum_calls"],
            window=10.0,
            consecutive_failures=cfg["consecutive"],
            slow_call_duration=0.1,
            slow_call_rate=0.5,
            break_duration=2.0,
            half_open_probes=cfg["probes"],
            clock=self.clock,
            hooks=[self.events.append],
        )
        self.bulkhead = Bulkhead(2, clock=self.clock)
        backoff = (
            Backoff.decorrelated(base=0.05, cap=1.0)
            if cfg["jitter"] == "decorrelated"
            else Backoff.exponential(base=0.05, cap=1.0, jitter=cfg["jitter"])
        )
        self.pipeline = Pipeline(
            Fallback(value="fallback", on=LookupError),
            Timeout(30.0, clock=self.clock),
            Retry(
                attempts=cfg["attempts"],
                backoff=backoff,
                budget=RetryBudget(cfg["ratio"], cfg["per_second"], clock=self.clock),
                retry_on_result=lambda result: result == "bad",
                clock=self.clock,
                rng=random.Random(cfg["seed"]),
            ),
            self.breaker,
            self.bulkhead,
            hooks=[self.events.append],
        )
        self.script: list[str] = []

    def attempt(self) -> str:
        """What the called function does on this attempt (ok once the script runs out)."""
        what = self.script.pop(0) if self.script else "ok"
        if what.startswith("slow"):
            self.clock.advance(0.2)  # within the timeouts: only the breaker notices
        if what in ("retriable", "slow_failure"):
            raise ConnectionError("connection refused")
        if what == "hinted":
            raise RateLimited("429 from upstream", retry_after=0.3)
        if what == "fatal":
            raise KeyError("no such order")
        return "bad" if what == "bad_result" else "ok"

    async def aattempt(self) -> str:
        await asyncio.sleep(0)
        return self.attempt()

    def observe(self, outcome: tuple[Any, ...]) -> tuple[Any, ...]:
        snap = self.breaker.snapshot()
        return (
            outcome,
            self.clock.now(),
            tuple(self.clock.sleeps),
            snap,
            self.bulkhead.active,
            self.bulkhead.queued,
        )


def _outcome_of(error: BaseException) -> tuple[Any, ...]:
    return ("error", type(error).__name__, str(error), tuple(getattr(error, "__notes__", ())))


def _event(event: Event) -> tuple[Any, ...]:
    values = {f.name: getattr(event, f.name) for f in fields(event) if f.name != "error"}
    error = getattr(event, "error", None)
    return (event.kind, tuple(sorted(values.items())), type(error).__name__)


def run_sync(cfg: dict[str, Any], plan: list[tuple[list[str], float]]) -> list[Any]:
    rig = Rig(cfg)
    seen = []
    for script, gap in plan:
        rig.clock.advance(gap)
        rig.script = list(script)
        try:
            outcome: tuple[Any, ...] = ("ok", rig.pipeline.call(rig.attempt))
        except Exception as exc:
            outcome = _outcome_of(exc)
        seen.append(rig.observe(outcome))
    return [seen, [_event(e) for e in rig.events], rig.clock.pending_timers]


def run_async(cfg: dict[str, Any], plan: list[tuple[list[str], float]]) -> list[Any]:
    async def main() -> list[Any]:
        rig = Rig(cfg)
        seen = []
        for script, gap in plan:
            rig.clock.advance(gap)
            rig.script = list(script)
            try:
                outcome: tuple[Any, ...] = ("ok", await rig.pipeline.acall(rig.aattempt))
            except Exception as exc:
                outcome = _outcome_of(exc)
            seen.append(rig.observe(outcome))
        return [seen, [_event(e) for e in rig.events], rig.clock.pending_timers]

    return asyncio.run(main())


@settings(max_examples=150, deadline=None)
@given(cfg=configs, plan=calls)
def test_thread_and_asyncio_drivers_agree(
    cfg: dict[str, Any], plan: list[tuple[list[str], float]]
) -> None:
    assert run_sync(cfg, plan) == run_async(cfg, plan)


def test_the_rig_reaches_every_branch() -> None:
    """A fixed plan that retries, gives up, falls back, opens and probes the breaker."""
    cfg = {
        "attempts": 3,
        "jitter": "full",
        "ratio": 1.0,
        "per_second": 10.0,
        "consecutive": 2,
        "minimum_calls": 2,
        "probes": 1,
        "seed": 7,
    }
    plan = [
        (["retriable", "hinted", "ok"], 0.0),
        (["bad_result", "ok"], 0.0),
        (["fatal"], 0.0),
        (["retriable", "retriable", "retriable"], 0.0),
        (["ok"], 0.0),  # open: rejected without a call
        (["slow", "ok"], 3.0),  # half-open probe: slow counts as failed
        (["ok"], 3.0),
    ]
    synced = run_sync(cfg, plan)
    assert synced == run_async(cfg, plan)
    kinds = {kind for kind, _, _ in synced[1]}
    assert {
        "retry_scheduled",
        "retry_gave_up",
        "fallback_used",
        "circuit_state_changed",
        "call_rejected",
    } <= kinds
