#!/usr/bin/env python3
"""Success-path overhead of buttress pipelines vs the peer libraries, in one run.

Every case wraps the same trivial target (returns 42) and nothing ever fails, so what is
measured is the cost a resilience wrapper adds to every healthy call. Each repetition
measures every case once (floors included) in an order rotated per repetition; the median
over repetitions is reported. Sync cases run in a `timeit` loop (gc enabled), async cases
in an ``await`` loop inside one asyncio loop (stdlib loop). ``overhead`` = case - bare
call of the same kind (sync / async), both medians of the same run.

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
import gc
import os
import time
import timeit
from dataclasses import dataclass, field
from typing import Any

import _buttress_cases as bc
import _common as cm
import backoff
import pybreaker
import stamina
from aiolimiter import AsyncLimiter
from circuitbreaker import circuit
from pyresilience import CircuitBreakerConfig, RetryConfig, resilient
from tenacity import retry, stop_after_attempt, wait_exponential_jitter

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
]


# ---------------------------------------------------------------- measurement
def measure_sync(f, number: int) -> float:
    t = timeit.Timer("f()", setup="gc.enable()", globals={"f": f, "gc": gc})
    return t.timeit(number) * 1e9 / number


async def measure_async(f, number: int) -> float:
    rng = range(number)
    t0 = time.perf_counter_ns()
    for _ in rng:
        await f()
    return (time.perf_counter_ns() - t0) / number


async def measure(c: Case, number: int) -> float:
    if c.kind == "sync":
        return measure_sync(c.fn, number)
    return await measure_async(c.fn, number)


async def run(args) -> dict[str, Any]:
    cases = all_cases()
    if args.only:
        keep = [s.lower() for s in args.only]
        cases = [c for c in cases if c.floor or any(s in c.name.lower() for s in keep)]
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
            if ref in overhead and not c.floor and c.name != ref and overhead[ref] > 0
            else float("nan")
        )
        r = {
            "name": c.name,
            "kind": c.kind,
            "lib": c.lib,
            "version": vers.get(c.lib, "-"),
            "floor": c.floor,
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
    return results, (headers, rows), (pair_headers, pair_rows), overhead


def targets(overhead: dict[str, float]) -> list[dict[str, Any]]:
    out = []

    def add(label, ok, detail):
        out.append({"target": label, "pass": ok, "detail": detail})

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
    args = cm.parser(
        __doc__,
        name="outbound",
        number=300_000,
        min_number=5_000,
        max_seconds=0.5,
        warmup=2_000,
        unit="calls",
    ).parse_args()
    env = cm.start("outbound", args)
    t0 = time.time()
    res = asyncio.run(run(args))
    wall = time.time() - t0
    env["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    vers = cm.versions(DISTS)
    results, (h, rows), (ph, prows), overhead = analyse(res["cases"], res["samples"], vers)
    tgts = targets(overhead)

    md = args.markdown
    main_table = cm.table(h, rows, markdown=md)
    pair_table = cm.table(ph, prows, markdown=md)
    print(
        f"\nSuccess-path cost per call, median of {args.repeat} (overhead = minus bare, same kind)"
    )
    print(main_table)
    print("\nLike for like (overhead ratio > 1: buttress adds less)")
    print(pair_table)
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
        },
    }
    path = cm.write_json(args.out, payload)
    print(f"\nwrote {path} (wall {wall:.0f} s)")


if __name__ == "__main__":
    main()
