#!/usr/bin/env python3
"""Per-call cost of buttress pipelines vs the peer libraries, in one run.

Success path: every case wraps the same trivial target (returns 42) and nothing ever
fails, so what is measured is the cost a resilience wrapper adds to every healthy call.
Failure path (an outage): the target fails twice with a retriable `ConnectionError`, then
returns 42; every library's retry sleeps are removed (buttress ``instant_retries()``,
pyresilience and tenacity with a no-op sleep), so only CPU is measured; the reference is a
hand-written three-attempt loop. Open breaker: the breaker is open and every call is
rejected and caught (the same ``except`` for every library). Each repetition
measures every case once (floors included) in an order rotated per repetition; the median
over repetitions is reported. Sync cases run in a `timeit` loop (gc enabled), async cases
in an ``await`` loop inside one asyncio loop (stdlib loop). ``overhead`` = case - bare
call of the same kind (sync / async), both medians of the same run. Times are the thread's
CPU time (``--clock cpu``, the default; ``--clock wall`` for elapsed time).

Peers are configured exactly as in the shared peer harness (tenacity
``retry(stop=stop_after_attempt(3), wait=wait_exponential_jitter())``, stamina, backoff,
pybreaker, circuitbreaker, aiolimiter), plus pyresilience ``@resilient(retry=...,
circuit_breaker=...)``.

Calls per measurement: ``--number``, lowered for slow cases so that one measurement takes
about ``--max-seconds`` (at least ``--min-number`` calls): tenacity at ~16 µs/call gets
~31,000 calls instead of 300,000; the per-case count is in the JSON.

Run:  .venv/bin/python bench/outbound.py [--repeat 11] [--number 300000] [--markdown]
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
import timeit
import types
from dataclasses import dataclass, field
from typing import Any

import _buttress_cases as bc
import _common as cm
import backoff
import pybreaker
import stamina
from aiolimiter import AsyncLimiter
from circuitbreaker import CircuitBreaker, CircuitBreakerError, circuit
from pyresilience import CircuitBreakerConfig, RetryConfig, resilient
from pyresilience import _executor as pyresilience_executor
from tenacity import retry, stop_after_attempt, wait_exponential_jitter

from buttress.testing import set_instant_retries

DISTS = [
    "buttress",
    "tenacity",
    "stamina",
    "backoff",
    "pybreaker",
    "circuitbreaker",
    "pyresilience",
    "aiolimiter",
]

target = bc.target
atarget = bc.atarget


@dataclass
class Case:
    name: str
    kind: str  # "sync" | "async"
    lib: str  # distribution for the version column, "-" for floors and controls
    build: Any
    note: str = ""
    floor: bool = False
    group: str = "success"  # "success" | "failure" (fails twice) | "open" (breaker open)
    fn: Any = field(default=None, repr=False)
    number: int = 0


# ---------------------------------------------------------------- floors and controls
def b_bare():
    return target


def b_wrapper():
    def wrapper(*args, **kwargs):
        return target(*args, **kwargs)

    return wrapper


def a_bare():
    return atarget


def a_wrapper():
    async def wrapper(*args, **kwargs):
        return await atarget(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------- peers (harness configs)
def b_tenacity():
    return retry(stop=stop_after_attempt(3), wait=wait_exponential_jitter())(target)


def a_tenacity():
    return retry(stop=stop_after_attempt(3), wait=wait_exponential_jitter())(atarget)


def b_stamina():
    return stamina.retry(on=Exception, attempts=3)(target)


def a_stamina():
    return stamina.retry(on=Exception, attempts=3)(atarget)


def b_backoff():
    return backoff.on_exception(backoff.expo, Exception, max_tries=3)(target)


def a_backoff():
    return backoff.on_exception(backoff.expo, Exception, max_tries=3)(atarget)


def b_pybreaker():
    return pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)(target)


def b_circuitbreaker():
    return circuit(failure_threshold=5, recovery_timeout=30)(target)


def a_circuitbreaker():
    return circuit(failure_threshold=5, recovery_timeout=30)(atarget)


def a_aiolimiter():
    lim = AsyncLimiter(max_rate=1e9, time_period=1)  # never throttles at these rates

    async def limited():
        async with lim:
            return await atarget()

    return limited


def _pyresilience():
    # retry + breaker; breaker thresholds as the other breakers (5 failures, 30 s)
    return resilient(
        retry=RetryConfig(max_attempts=3),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=5, recovery_timeout=30.0),
    )


def b_pyresilience():
    return _pyresilience()(target)


def a_pyresilience():
    return _pyresilience()(atarget)


# ---------------------------------------------------------------- failure path peers
fail_twice = bc.fail_twice
afail_twice = bc.afail_twice


def _no_sleep(_seconds):
    return None


async def _ano_sleep(_seconds):
    return None


def _pyresilience_without_sleeps() -> None:
    """pyresilience sleeps with ``time.sleep`` / ``asyncio.sleep``: give it copies without."""
    for name, sleep in (("time", _no_sleep), ("asyncio", _ano_sleep)):
        real = getattr(pyresilience_executor, name)
        if getattr(real, "__buttress_bench__", False):
            continue
        copy = types.ModuleType(real.__name__)
        copy.__dict__.update(vars(real))
        copy.sleep = sleep
        copy.__buttress_bench__ = True
        setattr(pyresilience_executor, name, copy)


def b_hand_loop():
    flaky = fail_twice()

    def call():
        for attempt in (1, 2, 3):
            try:
                return flaky()
            except ConnectionError:
                if attempt == 3:
                    raise
        return None

    return call


def a_hand_loop():
    flaky = afail_twice()

    async def call():
        for attempt in (1, 2, 3):
            try:
                return await flaky()
            except ConnectionError:
                if attempt == 3:
                    raise
        return None

    return call


def _pyresilience_retry():
    _pyresilience_without_sleeps()
    return resilient(retry=RetryConfig(max_attempts=3))


def b_fail_pyresilience():
    return _pyresilience_retry()(fail_twice())


def a_fail_pyresilience():
    return _pyresilience_retry()(afail_twice())


def b_fail_pyresilience_cb():
    _pyresilience_without_sleeps()
    return _pyresilience()(fail_twice())


def a_fail_pyresilience_cb():
    _pyresilience_without_sleeps()
    return _pyresilience()(afail_twice())


def b_fail_tenacity():
    return retry(stop=stop_after_attempt(3), wait=wait_exponential_jitter(), sleep=_no_sleep)(
        fail_twice()
    )


def a_fail_tenacity():
    return retry(stop=stop_after_attempt(3), wait=wait_exponential_jitter(), sleep=_ano_sleep)(
        afail_twice()
    )


# ---------------------------------------------------------------- open breaker peers
LONG = 3600.0  # the breakers stay open for the whole run


def b_open_pybreaker():
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=LONG)
    breaker.open()
    guarded = breaker(target)

    def call():
        try:
            return guarded()
        except pybreaker.CircuitBreakerError:
            return 42

    return call


def _tripped_circuitbreaker():
    """A circuitbreaker ``CircuitBreaker`` opened by five failures (one object: sync and async)."""
    breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=LONG)

    @breaker
    def failing():
        raise ConnectionError("down")

    for _ in range(5):
        with contextlib.suppress(ConnectionError):
            failing()
    return breaker


def b_open_circuitbreaker():
    guarded = _tripped_circuitbreaker()(target)

    def call():
        try:
            return guarded()
        except CircuitBreakerError:
            return 42

    return call


def a_open_circuitbreaker():
    guarded = _tripped_circuitbreaker()(atarget)

    async def call():
        try:
            return await guarded()
        except CircuitBreakerError:
            return 42

    return call


BARE_SYNC = "bare sync function [floor]"
BARE_ASYNC = "bare coroutine [floor]"
TENACITY_SYNC = "tenacity @retry(stop_after_attempt(3), wait_exponential_jitter)"
TENACITY_ASYNC = "tenacity @retry(...) async"
PYRES_SYNC = "pyresilience @resilient(retry, circuit_breaker)"
PYRES_ASYNC = "pyresilience @resilient(retry, circuit_breaker) async"
STAMINA_SYNC = "stamina.retry(on=Exception, attempts=3)"
STAMINA_ASYNC = "stamina.retry async"
BACKOFF_SYNC = "backoff.on_exception(expo, Exception, max_tries=3)"
BACKOFF_ASYNC = "backoff.on_exception async"
PYBREAKER_SYNC = "pybreaker.CircuitBreaker(fail_max=5)"
CB_SYNC = "circuitbreaker @circuit(failure_threshold=5)"
CB_ASYNC = "circuitbreaker @circuit async"
HAND_SYNC = "hand-written loop, 3 attempts, fails twice"
HAND_ASYNC = "hand-written loop, 3 attempts, fails twice async"
FAIL_PYRES_SYNC = "pyresilience @resilient(retry), fails twice"
FAIL_PYRES_ASYNC = "pyresilience @resilient(retry), fails twice async"
FAIL_PYRES_CB_SYNC = "pyresilience @resilient(retry, circuit_breaker), fails twice"
FAIL_PYRES_CB_ASYNC = "pyresilience @resilient(retry, circuit_breaker), fails twice async"
FAIL_TENACITY_SYNC = "tenacity @retry(...), fails twice"
FAIL_TENACITY_ASYNC = "tenacity @retry(...), fails twice async"
OPEN_PYBREAKER_SYNC = "pybreaker.CircuitBreaker open, rejects"
OPEN_CB_SYNC = "circuitbreaker @circuit open, rejects"
OPEN_CB_ASYNC = "circuitbreaker @circuit open, rejects async"


def all_cases() -> list[Case]:
    cs = [
        Case(BARE_SYNC, "sync", "-", b_bare, floor=True),
        Case(
            "plain wrapper (*a, **kw) [control]", "sync", "-", b_wrapper, "floor of any decorator"
        ),
    ]
    cs += [Case(n, k, "buttress", b, note) for n, k, b, note in bc.OUTBOUND if k == "sync"]
    cs += [
        Case(TENACITY_SYNC, "sync", "tenacity", b_tenacity),
        Case(PYRES_SYNC, "sync", "pyresilience", b_pyresilience, "RetryConfig(max_attempts=3)"),
        Case(STAMINA_SYNC, "sync", "stamina", b_stamina),
        Case(BACKOFF_SYNC, "sync", "backoff", b_backoff),
        Case(PYBREAKER_SYNC, "sync", "pybreaker", b_pybreaker),
        Case(CB_SYNC, "sync", "circuitbreaker", b_circuitbreaker),
        Case(BARE_ASYNC, "async", "-", a_bare, floor=True),
        Case("plain async wrapper [control]", "async", "-", a_wrapper, "floor of any decorator"),
    ]
    cs += [Case(n, k, "buttress", b, note) for n, k, b, note in bc.OUTBOUND if k == "async"]
    cs += [
        Case(TENACITY_ASYNC, "async", "tenacity", a_tenacity),
        Case(PYRES_ASYNC, "async", "pyresilience", a_pyresilience, "RetryConfig(max_attempts=3)"),
        Case(STAMINA_ASYNC, "async", "stamina", a_stamina),
        Case(BACKOFF_ASYNC, "async", "backoff", a_backoff),
        Case(CB_ASYNC, "async", "circuitbreaker", a_circuitbreaker),
        Case("aiolimiter AsyncLimiter(1e9/s) async with", "async", "aiolimiter", a_aiolimiter),
    ]
    no_sleep = "no-op sleep"
    for kind in ("sync", "async"):
        sync = kind == "sync"
        cs += [
            Case(
                HAND_SYNC if sync else HAND_ASYNC,
                kind,
                "-",
                b_hand_loop if sync else a_hand_loop,
                "no sleep; the floor of any retry",
                group="failure",
            )
        ]
        cs += [
            Case(n, k, "buttress", b, note, group="failure")
            for n, k, b, note in bc.FAILURE
            if k == kind
        ]
        cs += [
            Case(
                FAIL_PYRES_SYNC if sync else FAIL_PYRES_ASYNC,
                kind,
                "pyresilience",
                b_fail_pyresilience if sync else a_fail_pyresilience,
                no_sleep,
                group="failure",
            ),
            Case(
                FAIL_PYRES_CB_SYNC if sync else FAIL_PYRES_CB_ASYNC,
                kind,
                "pyresilience",
                b_fail_pyresilience_cb if sync else a_fail_pyresilience_cb,
                no_sleep,
                group="failure",
            ),
            Case(
                FAIL_TENACITY_SYNC if sync else FAIL_TENACITY_ASYNC,
                kind,
                "tenacity",
                b_fail_tenacity if sync else a_fail_tenacity,
                "sleep=no-op",
                group="failure",
            ),
        ]
        cs += [
            Case(n, k, "buttress", b, note, group="open")
            for n, k, b, note in bc.REJECTION
            if k == kind
        ]
        if sync:
            cs.append(Case(OPEN_PYBREAKER_SYNC, kind, "pybreaker", b_open_pybreaker, group="open"))
        cs.append(
            Case(
                OPEN_CB_SYNC if sync else OPEN_CB_ASYNC,
                kind,
                "circuitbreaker",
                b_open_circuitbreaker if sync else a_open_circuitbreaker,
                group="open",
            )
        )
    return cs


# like-for-like comparisons: (buttress case, peer case)
PAIRS = [
    (bc.FULL_SYNC, TENACITY_SYNC),
    (bc.FULL_SYNC, PYRES_SYNC),
    (bc.RETRY_SYNC, TENACITY_SYNC),
    (bc.RETRY_SYNC, STAMINA_SYNC),
    (bc.RETRY_SYNC, BACKOFF_SYNC),
    (bc.BREAKER_SYNC, PYBREAKER_SYNC),
    (bc.BREAKER_SYNC, CB_SYNC),
    (bc.FULL_ASYNC, TENACITY_ASYNC),
    (bc.FULL_ASYNC, PYRES_ASYNC),
    (bc.RETRY_ASYNC, TENACITY_ASYNC),
    (bc.RETRY_ASYNC, STAMINA_ASYNC),
    (bc.RETRY_ASYNC, BACKOFF_ASYNC),
    (bc.BREAKER_ASYNC, CB_ASYNC),
    (bc.DESIGN_SYNC, TENACITY_SYNC),
    (bc.DESIGN_SYNC, PYRES_SYNC),
    (bc.DESIGN_ASYNC, TENACITY_ASYNC),
    (bc.DESIGN_ASYNC, PYRES_ASYNC),
]

# failure path and open breaker: compared by ns/call (what the caller pays), paired per rep
FAIL_PAIRS = [
    (bc.FAIL_RETRY_SYNC, FAIL_PYRES_SYNC),
    (bc.FAIL_RETRY_SYNC, HAND_SYNC),
    (bc.FAIL_RETRY_SYNC, FAIL_TENACITY_SYNC),
    (bc.FAIL_BREAKER_SYNC, FAIL_PYRES_CB_SYNC),
    (bc.FAIL_BREAKER_SYNC, HAND_SYNC),
    (bc.FAIL_RETRY_ASYNC, FAIL_PYRES_ASYNC),
    (bc.FAIL_RETRY_ASYNC, HAND_ASYNC),
    (bc.FAIL_RETRY_ASYNC, FAIL_TENACITY_ASYNC),
    (bc.FAIL_BREAKER_ASYNC, FAIL_PYRES_CB_ASYNC),
    (bc.FAIL_BREAKER_ASYNC, HAND_ASYNC),
    (bc.OPEN_SYNC, OPEN_CB_SYNC),
    (bc.OPEN_SYNC, OPEN_PYBREAKER_SYNC),
    (bc.OPEN_DESIGN_SYNC, OPEN_CB_SYNC),
    (bc.OPEN_DESIGN_SYNC, OPEN_PYBREAKER_SYNC),
    (bc.OPEN_ASYNC, OPEN_CB_ASYNC),
    (bc.OPEN_DESIGN_ASYNC, OPEN_CB_ASYNC),
]


# ---------------------------------------------------------------- measurement
# --clock: "cpu" (the default) reads this thread's CPU time, which a busy shared machine
# does not inflate with the time the thread waits for a core; "wall" the elapsed time
CLOCKS = {
    "cpu": (time.thread_time, time.thread_time_ns),
    "wall": (time.perf_counter, time.perf_counter_ns),
}
_clock_s, _clock_ns = CLOCKS["cpu"]


def measure_sync(f, number: int) -> float:
    t = timeit.Timer("f()", setup="gc.enable()", timer=_clock_s, globals={"f": f, "gc": gc})
    return t.timeit(number) * 1e9 / number


async def measure_async(f, number: int) -> float:
    rng = range(number)
    clock = _clock_ns
    t0 = clock()
    for _ in rng:
        await f()
    return (clock() - t0) / number


async def measure(c: Case, number: int) -> float:
    if c.kind == "sync":
        return measure_sync(c.fn, number)
    return await measure_async(c.fn, number)


async def run(args) -> dict[str, Any]:
    cases = all_cases()
    if args.only:
        keep = [s.lower() for s in args.only]
        cases = [c for c in cases if c.floor or any(s in c.name.lower() for s in keep)]
    set_instant_retries(True)  # the failure-path cases measure CPU, not backoff sleeps
    for c in cases:  # build, check, warm up, size the measurement
        c.fn = c.build()
        assert (c.fn() if c.kind == "sync" else await c.fn()) == 42, c.name
        await measure(c, args.warmup)
        est = await measure(c, args.warmup)
        fit = int(args.max_seconds * 1e9 / max(est, 1.0))
        c.number = max(args.min_number, min(args.number, fit // 1000 * 1000))

    samples: dict[str, list[float]] = {c.name: [] for c in cases}
    gc.enable()
    for rep in range(args.repeat):
        k = rep % len(cases)
        for c in cases[k:] + cases[:k]:  # rotate: drift does not always hit the same case
            samples[c.name].append(await measure(c, c.number))
        print(f"  rep {rep + 1}/{args.repeat} done", flush=True)
    for c in cases:  # still succeeding after the runs
        assert (c.fn() if c.kind == "sync" else await c.fn()) == 42, c.name
    return {"cases": cases, "samples": samples}


# ---------------------------------------------------------------- report
def analyse(cases: list[Case], samples: dict[str, list[float]], vers: dict[str, str]):
    floors = {c.kind: c.name for c in cases if c.floor}
    med = {name: cm.median(xs) for name, xs in samples.items()}
    overhead = {c.name: med[c.name] - med[floors[c.kind]] for c in cases}
    full = {"sync": bc.FULL_SYNC, "async": bc.FULL_ASYNC}
    rows, results = [], []
    for c in cases:
        xs, fl = samples[c.name], samples[floors[c.kind]]
        ref = full[c.kind]
        vs_full = (
            overhead[c.name] / overhead[ref]
            if ref in overhead
            and not c.floor
            and c.group == "success"
            and c.name != ref
            and overhead[ref] > 0
            else float("nan")
        )
        r = {
            "name": c.name,
            "kind": c.kind,
            "lib": c.lib,
            "version": vers.get(c.lib, "-"),
            "floor": c.floor,
            "group": c.group,
            "note": c.note,
            "number": c.number,
            "ns_per_call_median": med[c.name],
            "ns_per_call_min": min(xs),
            "ns_per_call_max": max(xs),
            "overhead_ns": overhead[c.name],
            "overhead_ns_paired": cm.paired_median(xs, fl, ratio=False),
            "x_bare": med[c.name] / med[floors[c.kind]],
            "overhead_vs_buttress_full": vs_full,
            "samples_ns": [round(x, 1) for x in xs],
        }
        results.append(r)
        rows.append(
            [
                c.name,
                c.kind,
                r["version"],
                r["ns_per_call_median"],
                f"{r['ns_per_call_min']:,.0f}–{r['ns_per_call_max']:,.0f}",
                r["overhead_ns"],
                f"{r['x_bare']:.1f}x",
                "-" if vs_full != vs_full else f"{vs_full:.1f}x",
            ]
        )
    headers = [
        "case",
        "kind",
        "version",
        "ns/call",
        "min–max",
        "overhead ns",
        "x bare",
        "overhead / buttress full",
    ]
    pair_rows = []
    for b, p in PAIRS:
        if b in med and p in med:
            pair_rows.append(
                [
                    b.removeprefix("buttress "),
                    p,
                    overhead[b],
                    overhead[p],
                    f"{overhead[p] / overhead[b]:.1f}x" if overhead[b] > 0 else "-",
                    f"{med[p] / med[b]:.1f}x",
                ]
            )
    pair_headers = [
        "buttress",
        "peer",
        "buttress overhead ns",
        "peer overhead ns",
        "peer/buttress (overhead)",
        "peer/buttress (ns/call)",
    ]
    fail_rows = []
    for b, p in FAIL_PAIRS:
        if b in med and p in med:
            fail_rows.append(
                [
                    b.removeprefix("buttress "),
                    p,
                    med[b],
                    med[p],
                    f"{med[b] / med[p]:.2f}x",
                    f"{cm.paired_median(samples[b], samples[p], ratio=True):.2f}x",
                ]
            )
    fail_headers = [
        "buttress",
        "peer",
        "buttress ns/call",
        "peer ns/call",
        "buttress/peer",
        "buttress/peer (paired)",
    ]
    return results, (headers, rows), (pair_headers, pair_rows), (fail_headers, fail_rows), overhead


def targets(
    overhead: dict[str, float], med: dict[str, float], samples: dict[str, list[float]]
) -> list[dict[str, Any]]:
    out = []

    def add(label, ok, detail):
        out.append({"target": label, "pass": ok, "detail": detail})

    # issue 9: the pipeline users are shown (README "Sixty seconds")
    for kind, name, limit, ten in (
        ("sync", bc.DESIGN_SYNC, 2000.0, TENACITY_SYNC),
        ("async", bc.DESIGN_ASYNC, 3000.0, TENACITY_ASYNC),
    ):
        if name not in overhead:
            continue
        o = overhead[name]
        add(
            f"{kind}: README pipeline overhead <= {limit:,.0f} ns",
            o <= limit,
            f"{o:,.0f} ns ({o / limit:.0%} of the limit, margin {limit - o:+,.0f} ns)",
        )
        if ten in overhead:
            ratio = overhead[ten] / o if o > 0 else float("inf")
            add(
                f"{kind}: README pipeline at least 10x less overhead than tenacity @retry",
                ratio >= 10,
                f"tenacity {overhead[ten]:,.0f} ns / buttress {o:,.0f} ns = {ratio:.1f}x",
            )
    # issue 9: the failure path (fails twice, then succeeds) at most 2x pyresilience
    for b, p in (
        (bc.FAIL_RETRY_SYNC, FAIL_PYRES_SYNC),
        (bc.FAIL_BREAKER_SYNC, FAIL_PYRES_CB_SYNC),
        (bc.FAIL_RETRY_ASYNC, FAIL_PYRES_ASYNC),
        (bc.FAIL_BREAKER_ASYNC, FAIL_PYRES_CB_ASYNC),
    ):
        if b in med and p in med:
            ratio = med[b] / med[p]
            paired = cm.paired_median(samples[b], samples[p], ratio=True)
            add(
                f"failure path: {b.removeprefix('buttress ')} <= 2x {p}",
                ratio <= 2.0,
                f"{med[b]:,.0f} ns / {med[p]:,.0f} ns = {ratio:.2f}x (paired {paired:.2f}x)",
            )
    # issue 9: an open breaker rejects in at most 1.5 µs, alone and through the pipeline
    for name in (bc.OPEN_SYNC, bc.OPEN_DESIGN_SYNC, bc.OPEN_ASYNC, bc.OPEN_DESIGN_ASYNC):
        if name in med:
            add(
                f"open breaker: {name.removeprefix('buttress ')} <= 1,500 ns/call",
                med[name] <= 1500.0,
                f"{med[name]:,.0f} ns/call (the except clause included)",
            )

    for kind, name, limit, ten, pyr in (
        ("sync", bc.FULL_SYNC, 2000.0, TENACITY_SYNC, PYRES_SYNC),
        ("async", bc.FULL_ASYNC, 3000.0, TENACITY_ASYNC, PYRES_ASYNC),
    ):
        if name not in overhead:
            continue
        o = overhead[name]
        add(
            f"{kind}: Pipeline(Timeout, Retry, CircuitBreaker, Bulkhead) overhead "
            f"<= {limit:,.0f} ns",
            o <= limit,
            f"{o:,.0f} ns ({o / limit:.0%} of the limit, margin {limit - o:+,.0f} ns)",
        )
        if ten in overhead:
            ratio = overhead[ten] / o if o > 0 else float("inf")
            add(
                f"{kind}: at least 10x less overhead than tenacity @retry alone",
                ratio >= 10,
                f"tenacity {overhead[ten]:,.0f} ns / buttress {o:,.0f} ns = {ratio:.1f}x",
            )
        if pyr in overhead:
            ratio = overhead[pyr] / o if o > 0 else float("inf")
            add(
                f"{kind}: less overhead than pyresilience retry + circuit breaker",
                o < overhead[pyr],
                f"pyresilience {overhead[pyr]:,.0f} ns / buttress {o:,.0f} ns = {ratio:.2f}x",
            )
    return out


def main() -> None:
    global _clock_s, _clock_ns
    ap = cm.parser(
        __doc__,
        name="outbound",
        number=300_000,
        min_number=5_000,
        max_seconds=0.5,
        warmup=2_000,
        unit="calls",
    )
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: this thread's CPU time (default; robust on a shared machine); wall",
    )
    args = ap.parse_args()
    _clock_s, _clock_ns = CLOCKS[args.clock]
    env = cm.start("outbound", args)
    t0 = time.time()
    res = asyncio.run(run(args))
    wall = time.time() - t0
    env["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    vers = cm.versions(DISTS)
    results, (h, rows), (ph, prows), (fh, frows), overhead = analyse(
        res["cases"], res["samples"], vers
    )
    med = {name: cm.median(xs) for name, xs in res["samples"].items()}
    tgts = targets(overhead, med, res["samples"])

    md = args.markdown
    main_table = cm.table(h, rows, markdown=md)
    pair_table = cm.table(ph, prows, markdown=md)
    fail_table = cm.table(fh, frows, markdown=md)
    print(
        f"\nCost per call ({args.clock} time), median of {args.repeat} "
        "(overhead = minus bare, same kind)"
    )
    print(main_table)
    print("\nLike for like (overhead ratio > 1: buttress adds less)")
    print(pair_table)
    print(
        "\nFailure path (fails twice, then succeeds; no sleeps) and open breaker "
        "(ratio < 1: buttress costs less)"
    )
    print(fail_table)
    print("\nTargets")
    for t in tgts:
        print(f"  {cm.verdict(t['pass'])}  {t['target']}: {t['detail']}")
    print("\nversions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))

    payload = {
        "benchmark": "outbound",
        "env": env,
        "params": {
            "repeat": args.repeat,
            "number_max": args.number,
            "number_min": args.min_number,
            "max_seconds": args.max_seconds,
            "warmup": args.warmup,
            "gc": "enabled",
            "clock": args.clock,
            "event_loop": "asyncio default (stdlib)",
            "pinned_cpus": env["pinned_cpus"],
        },
        "wall_s": round(wall, 1),
        "versions": vers,
        "cases": results,
        "targets": tgts,
        "tables": {
            "main": cm.table(h, rows, markdown=True),
            "pairs": cm.table(ph, prows, markdown=True),
            "failure_and_open": cm.table(fh, frows, markdown=True),
        },
    }
    path = cm.write_json(args.out, payload)
    print(f"\nwrote {path} (wall {wall:.0f} s)")


if __name__ == "__main__":
    main()
