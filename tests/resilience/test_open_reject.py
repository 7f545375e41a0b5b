"""An open breaker's rejection answered up front behaves as the chain would have.

A pipeline whose policies outside its first `CircuitBreaker` all have a `Passage` checks
that breaker before entering any link (`Pipeline` docstring). The property test builds
the same random pipeline twice on two `FakeClock`s: once as is, once behind a policy
without a passage (so every call runs through the whole chain), drives both through the
same random calls, deadlines and breaker states, threads and asyncio, and compares every
outcome (result, or error type, message, notes and ``retry_after``), every event, the
retry budgets, the breaker, the bulkheads, the clock and how often the function ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buttress import (
    Bulkhead,
    CircuitBreaker,
    CircuitOpen,
    Fallback,
    Pipeline,
    Retry,
    RetryBudget,
    Timeout,
    deadline,
)
from buttress.resilience import AsyncLink, BuildContext, Passage, Policy, SyncLink
from buttress.telemetry import Event
from buttress.testing import FakeClock

OUTER = ["timeout", "retry", "retry_no_budget", "retry_custom", "bulkhead", "bulkhead_full"]
OUTER += ["fallback", "probe"]
INNER = ["timeout", "bulkhead", "retry"]
STATES = ["closed", "open", "elapsed", "probes_taken"]
DEADLINES = [None, "ahead", "passed"]

configs = st.fixed_dictionaries(
    {
        "outer": st.lists(st.sampled_from(OUTER), max_size=3),
        "inner": st.lists(st.sampled_from(INNER), max_size=2, unique=True),
        "state": st.sampled_from(STATES),
        "hooks": st.booleans(),
    }
)
calls = st.lists(
    st.tuples(
        st.sampled_from(["ok", "fail", "fatal"]),  # what the function does
        st.sampled_from([0.0, 0.5, 3.0]),  # clock advance before the call
        st.sampled_from(DEADLINES),  # the deadline in force around the call
    ),
    min_size=1,
    max_size=12,
)


class Opaque(Policy):
    """Does nothing, has no passage: a pipeline starting with it never answers up front."""

    kind = "opaque"

    def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        return inner

    def awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        return inner


class Probe(Policy):
    """Counts the calls entering its link; has a passage (a custom policy may)."""

    kind = "probe"

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.entered = 0
        self.counted = 0

    def passage(self) -> Passage:
        return Passage(clock=self.clock, count=self.count)

    def count(self, now: float) -> None:
        self.counted += 1

    def wrap(self, inner: SyncLink, ctx: BuildContext) -> SyncLink:
        def link(fn: Any, args: Any, kwargs: Any) -> Any:
            self.entered += 1
            self.counted += 1
            return inner(fn, args, kwargs)

        return link

    def awrap(self, inner: AsyncLink, ctx: BuildContext) -> AsyncLink:
        async def link(fn: Any, args: Any, kwargs: Any) -> Any:
            self.entered += 1
            self.counted += 1
            return await inner(fn, args, kwargs)

        return link


class Rig:
    """One pipeline on its own clock, recording everything it reports."""

    def __init__(self, cfg: dict[str, Any], *, opaque: bool) -> None:
        self.clock = clock = FakeClock(1000.0)
        self.events: list[Event] = []
        self.budgets: list[RetryBudget] = []
        self.bulkheads: list[Bulkhead] = []
        self.probes: list[Probe] = []
        self.timeouts = 0
        self.breaker = CircuitBreaker(
            minimum_calls=2,
            window=100.0,
            consecutive_failures=2,
            break_duration=2.0,
            clock=clock,
            hooks=[self.events.append],
        )
        outer = [self._policy(kind) for kind in cfg["outer"]]
        inner = [self._policy("inner_" + kind) for kind in cfg["inner"]]
        self.pipeline = Pipeline(
            *([Opaque()] if opaque else []),
            *outer,
            self.breaker,
            *inner,
            hooks=[self.events.append] if cfg["hooks"] else [],
        )
        self.ran = 0
        self.what = "ok"
        if cfg["state"] != "closed":
            self.breaker.force_open(2.0)
        if cfg["state"] in ("elapsed", "probes_taken"):
            clock.advance(3.0)
        if cfg["state"] == "probes_taken":
            self.breaker.acquire()  # the one half-open probe, never returned

    def _policy(self, kind: str) -> Policy:
        clock = self.clock
        if kind in ("timeout", "inner_timeout"):  # each shorter than the ones outside it
            self.timeouts += 1
            return Timeout(30.0 / self.timeouts, clock=clock)
        if kind in ("retry", "inner_retry"):
            budget = RetryBudget(0.5, 1.0, clock=clock)
            self.budgets.append(budget)
            return Retry(3, budget=budget, clock=clock, rng=random.Random(1))
        if kind == "retry_no_budget":
            return Retry(2, budget=None, clock=clock, rng=random.Random(2))
        if kind == "retry_custom":  # retries everything, an open circuit included
            budget = RetryBudget(0.5, 1.0, clock=clock)
            self.budgets.append(budget)
            return Retry(2, budget=budget, retry_on=Exception, clock=clock, rng=random.Random(3))
        if kind in ("bulkhead", "inner_bulkhead", "bulkhead_full"):
            bulkhead = Bulkhead(1, clock=clock)
            if kind == "bulkhead_full":
                assert bulkhead.try_acquire()  # its one slot, held for good
            self.bulkheads.append(bulkhead)
            return bulkhead
        if kind == "fallback":
            return Fallback(value="fallback", on=CircuitOpen)
        assert kind == "probe"
        probe = Probe(clock)
        self.probes.append(probe)
        return probe

    def function(self) -> str:
        self.ran += 1
        if self.what == "fail":
            raise ConnectionError("connection refused")
        if self.what == "fatal":
            raise KeyError("no such order")
        return "ok"

    async def afunction(self) -> str:
        return self.function()

    def scope(self, which: str | None) -> contextlib.AbstractContextManager[Any]:
        if which is None:
            return contextlib.nullcontext()
        block = deadline(100.0 if which == "ahead" else 1.0, clock=self.clock)
        block.__enter__()
        if which == "passed":
            self.clock.advance(1.5)
        return _Exit(block)

    def observe(self, outcome: tuple[Any, ...]) -> tuple[Any, ...]:
        now = self.clock.now()
        return (
            outcome,
            now,
            tuple(self.clock.sleeps),
            self.breaker.snapshot(),
            tuple(round(b.balance(now), 9) for b in self.budgets),
            tuple((b.active, b.queued) for b in self.bulkheads),
            tuple(p.counted for p in self.probes),
            self.ran,
        )


class _Exit:
    def __init__(self, block: deadline) -> None:
        self.block = block

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.block.__exit__(None, None, None)


def _outcome_of(error: BaseException) -> tuple[Any, ...]:
    return (
        "error",
        type(error).__name__,
        str(error),
        tuple(getattr(error, "__notes__", ())),
        getattr(error, "retry_after", None),
        getattr(error, "policy", None),
    )


def _event(event: Event) -> tuple[Any, ...]:
    values = {f.name: getattr(event, f.name) for f in fields(event) if f.name != "error"}
    error = getattr(event, "error", None)
    return (event.kind, tuple(sorted(values.items())), type(error).__name__)


Plan = list[tuple[str, float, str | None]]


def run_sync(cfg: dict[str, Any], plan: Plan, *, opaque: bool) -> tuple[Any, Rig]:
    rig = Rig(cfg, opaque=opaque)
    seen = []
    for what, gap, which in plan:
        rig.clock.advance(gap)
        rig.what = what
        with rig.scope(which):
            try:
                outcome: tuple[Any, ...] = ("ok", rig.pipeline.call(rig.function))
            except Exception as exc:
                outcome = _outcome_of(exc)
        seen.append(rig.observe(outcome))
    return [seen, [_event(e) for e in rig.events], rig.clock.pending_timers], rig


def run_async(cfg: dict[str, Any], plan: Plan, *, opaque: bool) -> tuple[Any, Rig]:
    async def main() -> tuple[Any, Rig]:
        rig = Rig(cfg, opaque=opaque)
        decorated = rig.pipeline(rig.afunction)
        seen = []
        for i, (what, gap, which) in enumerate(plan):
            rig.clock.advance(gap)
            rig.what = what
            with rig.scope(which):
                try:  # acall and the decorator take turns
                    result = await (rig.pipeline.acall(rig.afunction) if i % 2 else decorated())
                    outcome: tuple[Any, ...] = ("ok", result)
                except Exception as exc:
                    outcome = _outcome_of(exc)
            seen.append(rig.observe(outcome))
        return [seen, [_event(e) for e in rig.events], rig.clock.pending_timers], rig

    return asyncio.run(main())


@settings(max_examples=200, deadline=None)
@given(cfg=configs, plan=calls)
def test_up_front_rejection_matches_the_chain_threads(cfg: dict[str, Any], plan: Plan) -> None:
    fast, _ = run_sync(cfg, plan, opaque=False)
    slow, _ = run_sync(cfg, plan, opaque=True)
    assert fast == slow


@settings(max_examples=120, deadline=None)
@given(cfg=configs, plan=calls)
def test_up_front_rejection_matches_the_chain_asyncio(cfg: dict[str, Any], plan: Plan) -> None:
    fast, _ = run_async(cfg, plan, opaque=False)
    slow, _ = run_async(cfg, plan, opaque=True)
    assert fast == slow


@pytest.mark.parametrize("runner", [run_sync, run_async])
def test_an_open_breaker_rejects_before_the_outer_links(runner: Any) -> None:
    """The README pipeline's shape: nothing outside the breaker is entered; budget counts."""
    cfg = {"outer": ["timeout", "probe", "retry"], "inner": ["timeout"], "state": "open"}
    cfg["hooks"] = True
    plan: Plan = [("ok", 0.0, None), ("ok", 0.5, "ahead")]
    fast, rig = runner(cfg, plan, opaque=False)
    slow, reference = runner(cfg, plan, opaque=True)
    assert fast == slow
    assert rig.probes[0].entered == 0  # answered up front
    assert reference.probes[0].entered == 2  # through the chain
    assert rig.probes[0].counted == 2  # the passage's count ran instead
    kinds = [kind for kind, _, _ in fast[1]]
    assert kinds == ["circuit_state_changed", "call_rejected", "call_rejected"]  # forced open
    assert rig.budgets[0].balance(rig.clock.now()) == reference.budgets[0].balance(
        reference.clock.now()
    )


@pytest.mark.parametrize(
    "outer",
    [["fallback"], ["retry_custom"], ["bulkhead_full"], ["timeout", "fallback", "retry"]],
)
def test_policies_that_see_the_rejection_keep_the_chain(outer: list[str]) -> None:
    """A Fallback, a Retry that retries rejections, a full bulkhead: the chain runs."""
    cfg = {"outer": [*outer, "probe"], "inner": [], "state": "open", "hooks": True}
    plan: Plan = [("ok", 0.0, None)]
    fast, rig = run_sync(cfg, plan, opaque=False)
    slow, _ = run_sync(cfg, plan, opaque=True)
    assert fast == slow
    if outer != ["bulkhead_full"]:
        assert rig.probes[0].entered >= 1  # (twice when the Retry retries the rejection)


def test_a_passed_deadline_still_wins_over_the_open_breaker() -> None:
    cfg = {"outer": ["timeout"], "inner": [], "state": "open", "hooks": True}
    fast, _ = run_sync(cfg, [("ok", 0.0, "passed")], opaque=False)
    assert fast[0][0][0][1] == "DeadlineExceeded"
    assert fast == run_sync(cfg, [("ok", 0.0, "passed")], opaque=True)[0]


def test_no_up_front_answer_across_clocks() -> None:
    """A policy on another clock than the breaker's: the chain decides, as before."""
    clock, other = FakeClock(), FakeClock(10_000.0)
    breaker = CircuitBreaker(clock=clock)
    breaker.force_open(5.0)
    probe = Probe(other)
    pipe = Pipeline(probe, breaker)
    with pytest.raises(CircuitOpen):
        pipe.call(lambda: 1)
    assert probe.entered == 1
