#!/usr/bin/env python3
"""Cost of one in-memory rate-limit decision: buttress `RateLimiter` vs the peers, one run.

Scenarios (fresh limiter state for every measurement, as in the shared peer harness):
  allow : 1,000 keys round-robin, per-key limit 1,000,000/hour: every decision admits.
          pyrate-limiter and aiolimiter have no per-key routing in their simple API: one
          shared bucket / limiter (1e9/hour; aiolimiter 1e9/s).
  deny  : one key, 10/hour, exhausted before timing: every decision rejects.
          aiolimiter has no non-blocking try-acquire: its deny row times has_capacity().
Admit counts are checked (all / none) or the run fails.

Groups, each with its own no-op floor measured in the same run:
  memory-sync   no-op decide() | buttress RateLimiter.allow, MemoryStore.acquire (the
                store under RateLimitMiddleware) | limits MemoryStorage FixedWindow /
                MovingWindow / SlidingWindowCounter (hit) | pyrate-limiter
  memory-async  no-op coroutine | buttress allow() in a coroutine, MemoryStore.aacquire |
                aiolimiter | limits.aio MemoryStorage x 3

Peers are configured exactly as in the harness: limits ``strategies.<X>RateLimiter(
MemoryStorage()).hit(RateLimitItemPerHour(n), prefix, key)``; aiolimiter
``AsyncLimiter(1e9, 1).acquire()`` (allow) / ``AsyncLimiter(10, 3600).has_capacity()`` (deny).
buttress: ``RateLimiter(n, per=3600)`` (GCRA, burst = n).

Decisions per measurement: ``--number``, lowered for slow cases so that one measurement
takes about ``--max-seconds`` (at least ``--min-number``).

Run:  .venv/bin/python bench/ratelimit.py [--repeat 11] [--number 200000] [--markdown]
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import _buttress_cases as bc
import _common as cm
import limits.aio.storage
import limits.aio.strategies
import limits.storage
import limits.strategies
from aiolimiter import AsyncLimiter
from limits import RateLimitItemPerHour
from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate, StateBucket, TokenBucket

from buttress.stores import MemoryStore, RateRequest
from buttress.stores import Rate as StoreRate

DISTS = ["buttress", "limits", "aiolimiter", "pyrate-limiter"]
ALLOW_KEYS = 1000
PER_KEY_LIMIT = bc.PER_KEY_LIMIT
DENY_LIMIT = bc.DENY_LIMIT


@dataclass
class Case:
    name: str
    group: str  # memory-sync | memory-async
    lib: str
    make: Any  # make(scenario, ctx) -> (decide, close); may be async
    note: str = ""
    floor: bool = False


async def _maybe_await(x):
    if inspect.isawaitable(x):
        return await x
    return x


def _item(scenario):
    return RateLimitItemPerHour(PER_KEY_LIMIT if scenario == "allow" else DENY_LIMIT)


def _exhaust_sync(decide, key):
    for _ in range(DENY_LIMIT):
        assert decide(key), "pre-exhaust: expected admits"
    assert not decide(key), "pre-exhaust: expected a deny"


async def _exhaust_async(decide, key):
    for _ in range(DENY_LIMIT):
        assert await decide(key), "pre-exhaust: expected admits"
    assert not await decide(key), "pre-exhaust: expected a deny"


# ---------------------------------------------------------------- memory, sync
def m_bare(scenario, ctx):
    ok = scenario == "allow"

    def decide(key):
        return ok

    return decide, None


def _memory_store(scenario):
    """A `MemoryStore` and ``requests(key)``: the one-element request list of each key, made
    once and reused, as `RateLimitMiddleware` keeps them."""
    store = MemoryStore()
    rate = StoreRate(PER_KEY_LIMIT if scenario == "allow" else DENY_LIMIT, 3600.0)
    kept: dict[str, list[RateRequest]] = {}

    def requests(key):
        found = kept.get(key)
        if found is None:
            found = kept[key] = [RateRequest(key, rate)]
        return found

    return store, requests


def m_store(scenario, ctx):
    """`MemoryStore.acquire([request])[0].allowed`: the store under `RateLimitMiddleware`."""
    store, requests = _memory_store(scenario)
    acquire = store.acquire

    def decide(key):
        return acquire(requests(key))[0].allowed

    if scenario == "deny":
        _exhaust_sync(decide, ctx.deny_key)
    return decide, None


async def ma_store(scenario, ctx):
    """`(await MemoryStore.aacquire([request]))[0].allowed`."""
    store, requests = _memory_store(scenario)
    aacquire = store.aacquire

    async def decide(key):
        return (await aacquire(requests(key)))[0].allowed

    if scenario == "deny":
        await _exhaust_async(decide, ctx.deny_key)
    return decide, None


def _limits_sync(strategy_name):
    def make(scenario, ctx):
        strat = getattr(limits.strategies, strategy_name)(limits.storage.MemoryStorage())
        item = _item(scenario)
        hit = strat.hit
        prefix = ctx.prefix

        def decide(key):
            return hit(item, prefix, key)

        if scenario == "deny":
            _exhaust_sync(decide, ctx.deny_key)
        return decide, None

    return make


def _pyrate_sync(kind):
    def make(scenario, ctx):
        limit = 10**9 if scenario == "allow" else DENY_LIMIT
        rates = [Rate(limit, Duration.HOUR)]
        if kind == "log":
            bucket = InMemoryBucket(rates)
        else:
            bucket = StateBucket(rates, algorithm=TokenBucket())
        lim = Limiter(bucket)
        acq = lim.try_acquire

        def decide(key):
            return acq(key, blocking=False)

        if scenario == "deny":
            _exhaust_sync(decide, ctx.deny_key)
        return decide, lim.close

    return make


# ---------------------------------------------------------------- memory, async
def ma_bare(scenario, ctx):
    ok = scenario == "allow"

    async def decide(key):
        return ok

    return decide, None


async def ma_aiolimiter(scenario, ctx):
    if scenario == "allow":
        lim = AsyncLimiter(max_rate=1e9, time_period=1)
        acquire = lim.acquire

        async def decide(key):
            await acquire()
            return True

        return decide, None
    lim = AsyncLimiter(max_rate=DENY_LIMIT, time_period=3600)
    for _ in range(DENY_LIMIT):
        await lim.acquire()
    has_capacity = lim.has_capacity

    async def decide(key):
        return has_capacity()

    assert not await decide(ctx.deny_key)
    return decide, None


def _limits_async(strategy_name):
    async def make(scenario, ctx):
        strat = getattr(limits.aio.strategies, strategy_name)(limits.aio.storage.MemoryStorage())
        item = _item(scenario)
        hit = strat.hit
        prefix = ctx.prefix

        async def decide(key):
            return await hit(item, prefix, key)

        if scenario == "deny":
            await _exhaust_async(decide, ctx.deny_key)
        return decide, None

    return make


FLOOR_SYNC = "no-op decide() [floor]"
FLOOR_ASYNC = "no-op coroutine [floor]"
LIMITS_FW = "limits MemoryStorage FixedWindow"
LIMITS_AIO_FW = "limits.aio MemoryStorage FixedWindow"
AIOLIMITER = "aiolimiter AsyncLimiter"
STORE_SYNC = "buttress MemoryStore.acquire (GCRA)"
STORE_ASYNC = "buttress MemoryStore.aacquire (GCRA)"
STRATS = [
    ("FixedWindow", "FixedWindowRateLimiter"),
    ("MovingWindow", "MovingWindowRateLimiter"),
    ("SlidingWindowCounter", "SlidingWindowCounterRateLimiter"),
]


def all_cases() -> list[Case]:
    cs = [Case(FLOOR_SYNC, "memory-sync", "-", m_bare, floor=True)]
    cs += [Case(n, g, "buttress", m, note) for n, g, m, note in bc.RATELIMIT if g == "memory-sync"]
    cs.append(Case(STORE_SYNC, "memory-sync", "buttress", m_store, "per key, 1,000 keys; extra"))
    cs += [
        Case(f"limits MemoryStorage {lbl}", "memory-sync", "limits", _limits_sync(cls))
        for lbl, cls in STRATS
    ]
    cs += [
        Case(
            "pyrate-limiter InMemoryBucket (log)",
            "memory-sync",
            "pyrate-limiter",
            _pyrate_sync("log"),
            "one shared bucket",
        ),
        Case(
            "pyrate-limiter StateBucket TokenBucket",
            "memory-sync",
            "pyrate-limiter",
            _pyrate_sync("gcra"),
            "one shared bucket",
        ),
        Case(FLOOR_ASYNC, "memory-async", "-", ma_bare, floor=True),
    ]
    cs += [Case(n, g, "buttress", m, note) for n, g, m, note in bc.RATELIMIT if g == "memory-async"]
    cs.append(Case(STORE_ASYNC, "memory-async", "buttress", ma_store, "per key, 1,000 keys; extra"))
    cs.append(
        Case(
            AIOLIMITER,
            "memory-async",
            "aiolimiter",
            ma_aiolimiter,
            "allow=acquire(), deny=has_capacity(); one limiter",
        )
    )
    cs += [
        Case(f"limits.aio MemoryStorage {lbl}", "memory-async", "limits", _limits_async(cls))
        for lbl, cls in STRATS
    ]
    return cs


# ---------------------------------------------------------------- measurement
def keys_for(scenario: str, n: int, ctx) -> list[str]:
    if scenario == "deny":
        return [ctx.deny_key] * n
    ks = [f"user:{i}" for i in range(ALLOW_KEYS)]
    return [ks[i % ALLOW_KEYS] for i in range(n)]


def run_sync(decide, keys) -> tuple[int, int]:
    t0 = time.perf_counter_ns()
    admitted = 0
    for k in keys:
        if decide(k):
            admitted += 1
    return time.perf_counter_ns() - t0, admitted


async def run_async(decide, keys) -> tuple[int, int]:
    t0 = time.perf_counter_ns()
    admitted = 0
    for k in keys:
        if await decide(k):
            admitted += 1
    return time.perf_counter_ns() - t0, admitted


async def measure_once(case: Case, scenario: str, n: int, ctx, warm: int) -> float:
    ctx.prefix = f"bench{time.perf_counter_ns()}"
    decide, close = await _maybe_await(case.make(scenario, ctx))
    try:
        run = run_async if case.group.endswith("async") else run_sync
        wkeys = [f"warm:{i}" for i in range(warm)] if scenario == "allow" else [ctx.deny_key] * warm
        await _maybe_await(run(decide, wkeys))
        ns, admitted = await _maybe_await(run(decide, keys_for(scenario, n, ctx)))
    finally:
        if close is not None:
            await _maybe_await(close())
    expected = n if scenario == "allow" else 0
    if admitted != expected:
        raise AssertionError(
            f"{case.name} [{scenario}]: admitted {admitted} of {n}, expected {expected}"
        )
    return ns / n


async def run(args) -> dict[str, Any]:
    cases = all_cases()
    if args.only:
        keep = [s.lower() for s in args.only]
        cases = [c for c in cases if c.floor or any(s in c.name.lower() for s in keep)]
    ctx = SimpleNamespace(prefix="", deny_key="deny", concurrency=1)
    units = [(c, sc) for c in cases for sc in ("allow", "deny")]
    numbers = {}
    for c, sc in units:  # size each measurement from one short trial (also a warm-up)
        est = await measure_once(c, sc, args.min_number, ctx, args.warmup)
        fit = int(args.max_seconds * 1e9 / max(est, 1.0))
        numbers[(c.name, sc)] = max(args.min_number, min(args.number, fit // 1000 * 1000))

    samples: dict[tuple[str, str], list[float]] = {(c.name, sc): [] for c, sc in units}
    gc.enable()
    for rep in range(args.repeat):
        k = rep % len(units)
        for c, sc in units[k:] + units[:k]:
            ns = await measure_once(c, sc, numbers[(c.name, sc)], ctx, args.warmup)
            samples[(c.name, sc)].append(ns)
        print(f"  rep {rep + 1}/{args.repeat} done", flush=True)
    return {"cases": cases, "samples": samples, "numbers": numbers}


# ---------------------------------------------------------------- report
def analyse(cases, samples, numbers, vers):
    floor_of = {c.group: c.name for c in cases if c.floor}
    med = {k: cm.median(v) for k, v in samples.items()}
    ref = {"memory-sync": bc.RL_SYNC, "memory-async": bc.RL_ASYNC}
    results, rows = [], []
    for c in cases:
        r = {
            "name": c.name,
            "group": c.group,
            "lib": c.lib,
            "version": vers.get(c.lib, "-"),
            "floor": c.floor,
            "note": c.note,
        }
        row = [c.name, c.group, r["version"]]
        for sc in ("allow", "deny"):
            m = med[(c.name, sc)]
            f = med[(floor_of[c.group], sc)]
            b = med.get((ref[c.group], sc))
            vs = m / b if b and c.lib != "buttress" and not c.floor else float("nan")
            r[sc] = {
                "number": numbers[(c.name, sc)],
                "us_per_decision_median": m / 1000,
                "decisions_per_s": 1e9 / m,
                "net_us_vs_floor": (m - f) / 1000,
                "x_floor_paired": cm.paired_median(
                    samples[(c.name, sc)], samples[(floor_of[c.group], sc)], ratio=True
                ),
                "x_buttress": vs,
                "samples_ns": [round(x, 1) for x in samples[(c.name, sc)]],
            }
            row += [m / 1000, 1e9 / m, (m - f) / 1000, "-" if vs != vs else f"{vs:.1f}x"]
        results.append(r)
        rows.append(row)
    headers = ["case", "group", "version"]
    for sc in ("allow", "deny"):
        headers += [f"{sc} µs", f"{sc} decisions/s", f"{sc} net µs", f"{sc} x buttress"]
    return results, (headers, rows), med, floor_of


def targets(med, floor_of) -> list[dict[str, Any]]:
    out = []

    def add(label, ok, detail):
        out.append({"target": label, "pass": ok, "detail": detail})

    for group, name in (("memory-sync", bc.RL_SYNC), ("memory-async", bc.RL_ASYNC)):
        for sc in ("allow", "deny"):
            key = (name, sc)
            if key not in med:
                continue
            us = med[key] / 1000
            net = (med[key] - med[(floor_of[group], sc)]) / 1000
            add(
                f"{group} {sc}: RateLimiter decision <= 1 µs",
                us <= 1.0,
                f"{us:.3f} µs measured ({net:.3f} µs over the no-op floor)",
            )
            peers = [LIMITS_FW] if group == "memory-sync" else [LIMITS_AIO_FW, AIOLIMITER]
            for peer in peers:
                if (peer, sc) not in med:
                    continue
                ratio = med[(peer, sc)] / med[key]
                add(
                    f"{group} {sc}: at least 2x faster than {peer}",
                    ratio >= 2,
                    f"{med[(peer, sc)] / 1000:.3f} µs / {us:.3f} µs = {ratio:.1f}x",
                )
    return out


def main() -> None:
    args = cm.parser(
        __doc__,
        name="ratelimit",
        number=200_000,
        min_number=10_000,
        max_seconds=0.25,
        warmup=500,
        unit="decisions",
    ).parse_args()
    env = cm.start("ratelimit", args)
    t0 = time.time()
    res = asyncio.run(run(args))
    wall = time.time() - t0
    env["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    vers = cm.versions(DISTS)
    results, (h, rows), med, floor_of = analyse(res["cases"], res["samples"], res["numbers"], vers)
    tgts = targets(med, floor_of)

    print(
        f"\nIn-memory rate-limit decision, median of {args.repeat} "
        "(net = minus the no-op floor of the group; x buttress = this / buttress of the group)"
    )
    print(cm.table(h, rows, markdown=args.markdown))
    print("\nTargets")
    for t in tgts:
        print(f"  {cm.verdict(t['pass'])}  {t['target']}: {t['detail']}")
    print("\nversions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))

    payload = {
        "benchmark": "ratelimit",
        "env": env,
        "params": {
            "repeat": args.repeat,
            "number_max": args.number,
            "number_min": args.min_number,
            "max_seconds": args.max_seconds,
            "warmup": args.warmup,
            "allow_keys": ALLOW_KEYS,
            "per_key_limit_per_hour": PER_KEY_LIMIT,
            "deny_limit_per_hour": DENY_LIMIT,
            "gc": "enabled",
            "pinned_cpus": env["pinned_cpus"],
        },
        "wall_s": round(wall, 1),
        "versions": vers,
        "cases": results,
        "targets": tgts,
        "tables": {"main": cm.table(h, rows, markdown=True)},
    }
    path = cm.write_json(args.out, payload)
    print(f"\nwrote {path} (wall {wall:.0f} s)")


if __name__ == "__main__":
    main()
