#!/usr/bin/env python3
"""Memory bounds (issue 8): worst single-operation stall and memory at 10k / 100k / 1M keys.

Cases:
  store-rl     buttress MemoryStore.acquire([RateRequest(key, 10/hour)])
  store-idem   buttress MemoryStore.begin(key, fp, lease=30) then complete(..., a 23-byte
               body, ttl=3600), timed together as one operation
  ratelimiter  buttress RateLimiter(10, per=3600).allow(key)
  limits       the peer: limits FixedWindowRateLimiter(MemoryStorage()).hit(10/hour, ns, key)
               (unbounded; a timer thread rescans every key every 10 ms)

Workload, per case and size N, each in a fresh interpreter (so RSS is that case's alone):
  fill   N distinct keys, one operation each (an attacker's flood: every key stays live)
  churn  the clock jumps 2 h (every key idle), then N more distinct keys: the expired ones
         are dropped as the new ones arrive
The clock is a manual one that advances 1 µs per operation (for limits, its memory module's
``time`` is patched to it). Per phase: the worst single operation in wall time (as a request
would see it: preemption by other processes and garbage collections included), its worst
CPU time without the collector's time (the operation's own work; each reading of the thread
clock adds ~0.5 µs), the longest collection, p99.9 and the median of the wall times; after
the fill: RSS growth, and the bytes tracemalloc traces in a second, traced run of the fill
(per key, and buttress's own count of them, ``nbytes``, over the traced bytes; by default
up to 100k keys). Bounds:
``max_keys=N`` and an ample ``max_bytes``, so each table holds exactly N keys (the
defaults: see docs/shared-state.md). limits' stalls come from its timer thread, which holds
the GIL while it rescans every key: they show in wall time, not in the caller's CPU time.

Run:  .venv/bin/python bench/memory.py [--sizes 10000,100000,1000000] [--markdown]
      (./dev bench memory); ``--before SRC`` measures another checkout's ``src`` instead;
      ``--trace-up-to 1000000`` adds the traced run at 1M keys
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import subprocess
import sys
import time
import tracemalloc
import types
from array import array
from statistics import median
from typing import Any

import _common as cm
import limits.storage.memory
import limits.strategies
from limits import RateLimitItemPerHour

from buttress import RateLimiter
from buttress.stores import MemoryStore, Rate, RateRequest, StoredResponse

# time spent in the garbage collector so far (ns), and the longest collection of the phase
GC = {"ns": 0, "max_ns": 0, "start": 0}


def _on_gc(stage: str, info: dict[str, int]) -> None:
    now = time.perf_counter_ns()
    if stage == "start":
        GC["start"] = now
    else:
        spent = now - GC["start"]
        GC["ns"] += spent
        GC["max_ns"] = max(GC["max_ns"], spent)


gc.callbacks.append(_on_gc)

CASES = ("store-rl", "store-idem", "ratelimiter", "limits")
DISTS = ["buttress", "limits"]
BODY = b'{"id":1,"status":"ok"}\n'  # 23 bytes, as in the issue
HEADERS = ((b"content-type", b"application/json"),)
PAGE = os.sysconf("SC_PAGE_SIZE")


class ManualClock:
    """now() is whatever the benchmark says; sleeps are not used."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def time(self) -> float:  # stands in for the `time` module in limits
        return self.t


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def make(case: str, n: int, clock: ManualClock) -> tuple[Any, Any, Any]:
    """(op(key) -> ok, table or None, the object to keep alive)."""
    if case == "store-rl":
        store = MemoryStore(clock=clock, **bounds(MemoryStore, n))
        rate = Rate(10, 3600.0)
        acquire = store.acquire

        def op(key: str) -> bool:
            return acquire([RateRequest(key, rate)])[0].allowed

        return op, getattr(store, "_tats", None), store
    if case == "store-idem":
        store = MemoryStore(clock=clock, **bounds(MemoryStore, n))
        response = StoredResponse(201, HEADERS, BODY)
        begin, complete = store.begin, store.complete

        def op(key: str) -> bool:
            got = begin(key, "fp:" + key, 30.0)
            return complete(key, got.token or "", response, 3600.0)

        return op, getattr(store, "_records", None), store
    if case == "ratelimiter":
        limiter = RateLimiter(10, per=3600.0, clock=clock, **bounds(RateLimiter, n))
        return limiter.allow, getattr(limiter, "_tats", None), limiter
    if case == "limits":
        limits.storage.memory.time = types.SimpleNamespace(time=clock.time)  # type: ignore[assignment]
        storage = limits.storage.MemoryStorage()
        hit = limits.strategies.FixedWindowRateLimiter(storage).hit
        item = RateLimitItemPerHour(10)

        def op(key: str) -> bool:
            return hit(item, "bench", key)

        return op, None, storage
    raise SystemExit(f"unknown case {case!r}")


def bounds(cls: Any, n: int) -> dict[str, int]:
    """max_keys=N and ample bytes, where the version measured has those options."""
    params = inspect.signature(cls).parameters
    out = {"max_keys": n} if "max_keys" in params else {}
    if "max_bytes" in params:
        out["max_bytes"] = 4 << 30
    return out


def phase(
    op: Any, n: int, prefix: str, clock: ManualClock, lat: array | None, own: array | None
) -> int:
    """Run N operations on new keys; the number admitted.

    Wall times (ns) into ``lat``, CPU times without the collector's time into ``own``.
    """
    ok = 0
    perf = time.perf_counter_ns
    cpu = time.thread_time_ns
    GC["max_ns"] = 0
    for i in range(n):
        key = f"{prefix}:{i:09d}"
        if lat is None or own is None:
            ok += bool(op(key))
        else:
            g0 = GC["ns"]
            c0 = cpu()
            t0 = perf()
            ok += bool(op(key))
            lat[i] = perf() - t0
            own[i] = cpu() - c0 - (GC["ns"] - g0)
        clock.t += 1e-6
    return ok


def one(case: str, n: int, traced: bool) -> dict[str, Any]:
    clock = ManualClock()
    out: dict[str, Any] = {"case": case, "n": n}
    if traced:
        tracemalloc.start()
        op, table, keep = make(case, n, clock)
        base = tracemalloc.get_traced_memory()[0]
        out["admitted_fill"] = phase(op, n, "fill", clock, None, None)
        out["traced_bytes"] = tracemalloc.get_traced_memory()[0] - base
        out["counted_bytes"] = getattr(table, "nbytes", None)
        tracemalloc.stop()
        del keep
        return out
    lat = array("q", bytes(8 * n))
    own = array("q", bytes(8 * n))
    op, table, keep = make(case, n, clock)
    base = rss()
    t0 = time.perf_counter()
    out["admitted_fill"] = phase(op, n, "fill", clock, lat, own)
    out["fill_s"] = time.perf_counter() - t0
    out["rss_fill"] = rss() - base
    out["fill"] = stats(lat, own)
    clock.t += 7200.0
    if case == "limits":
        time.sleep(0.05)  # let its timer thread see the jump (it rescans every 10 ms)
    out["admitted_churn"] = phase(op, n, "churn", clock, lat, own)
    out["rss_churn"] = rss() - base
    out["churn"] = stats(lat, own)
    out["keys_after"] = len(table) if table is not None else None
    del keep
    return out


def stats(lat: array, own: array) -> dict[str, float]:
    xs = sorted(lat)
    return {
        "max_ms": xs[-1] / 1e6,
        "own_max_ms": max(own) / 1e6,
        "gc_max_ms": GC["max_ns"] / 1e6,
        "p999_us": xs[int(len(xs) * 0.999)] / 1e3,
        "median_us": median(xs) / 1e3,
    }


def child(case: str, n: int, traced: bool, src: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--one", case, str(n)] + (["--traced"] if traced else [])
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{case} {n}: failed\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="10000,100000,1000000", help="key counts (comma list)")
    ap.add_argument("--only", action="append", default=[], help="case substring filter")
    ap.add_argument(
        "--trace-up-to",
        type=int,
        default=100_000,
        metavar="N",
        help="tracemalloc runs for sizes up to N (100000; 0: none): a traced 1M run adds ~1 min",
    )
    ap.add_argument("--before", metavar="SRC", help="measure the buttress in SRC (a src dir)")
    ap.add_argument("--cpu", type=int, default=0, help="pin to CPU N (0)")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--out", default="memory", help="bench/results/<OUT>.json, or a .json path")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.traced)))
        return
    pinned = None if args.no_pin else cm.pin_self(args.cpu)
    env = cm.env_info()
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = [c for c in CASES if not args.only or any(o in c for o in args.only)]
    print(
        f"memory: sizes={sizes} python={env['python']} cpus={env['cpu_count']} "
        f"pinned={pinned} buttress@{env['git']['commit']}"
        f"{' +uncommitted src' if env['git']['src_dirty'] else ''}"
        f"{' BEFORE=' + args.before if args.before else ''}",
        flush=True,
    )
    warn = cm.load_warning()
    if warn:
        print(warn, flush=True)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    for n in sizes:
        for case in cases:
            src = args.before if args.before and case != "limits" else None
            r = child(case, n, False, src)
            if n <= args.trace_up_to:
                r.update({k: v for k, v in child(case, n, True, src).items() if k != "n"})
            results.append(r)
            print(
                f"  {case:<12} {n:>9,}: worst {r['fill']['max_ms']:.2f} / "
                f"{r['churn']['max_ms']:.2f} ms (CPU {r['fill']['own_max_ms']:.2f} / "
                f"{r['churn']['own_max_ms']:.2f}), rss +{r['rss_fill'] / 2**20:.0f} MiB "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    headers = [
        "case",
        "keys",
        "admitted fill / churn",
        "fill worst ms",
        "CPU",
        "GC",
        "fill p99.9 µs",
        "churn worst ms",
        "CPU",
        "GC",
        "churn p99.9 µs",
        "median µs",
        "RSS MiB",
        "traced MiB",
        "traced B/key",
        "counted / traced",
    ]
    rows = []
    for r in results:
        traced = r.get("traced_bytes")
        counted = r.get("counted_bytes")
        rows.append(
            [
                r["case"],
                r["n"],
                f"{r['admitted_fill']:,} / {r['admitted_churn']:,}",
                r["fill"]["max_ms"],
                r["fill"]["own_max_ms"],
                r["fill"]["gc_max_ms"],
                r["fill"]["p999_us"],
                r["churn"]["max_ms"],
                r["churn"]["own_max_ms"],
                r["churn"]["gc_max_ms"],
                r["churn"]["p999_us"],
                r["fill"]["median_us"],
                r["rss_fill"] / 2**20,
                traced / 2**20 if traced else float("nan"),
                traced / r["n"] if traced else float("nan"),
                counted / traced if counted and traced else "-",
            ]
        )
    print()
    print(cm.table(headers, rows, markdown=args.markdown))
    ratio_rows = []
    by = {(r["case"], r["n"]): r for r in results}
    for n in sizes:
        peer = by.get(("limits", n))
        if peer is None:
            continue
        for case in ("store-rl", "ratelimiter"):
            r = by.get((case, n))
            if r is None:
                continue
            worst = max(r["fill"]["max_ms"], r["churn"]["max_ms"])
            peer_worst = max(peer["fill"]["max_ms"], peer["churn"]["max_ms"])
            own = max(r["fill"]["own_max_ms"], r["churn"]["own_max_ms"])
            peer_own = max(peer["fill"]["own_max_ms"], peer["churn"]["own_max_ms"])
            mem = r.get("traced_bytes") or r["rss_fill"]
            peer_mem = peer.get("traced_bytes") or peer["rss_fill"]
            ratio_rows.append(
                [
                    f"{case} vs limits",
                    n,
                    worst,
                    peer_worst,
                    peer_worst / worst,
                    own,
                    peer_own,
                    peer_own / own,
                    mem / peer_mem,
                ]
            )
    if ratio_rows:
        print()
        print(
            cm.table(
                [
                    "pair",
                    "keys",
                    "buttress worst ms",
                    "limits worst ms",
                    "limits / buttress",
                    "buttress CPU ms",
                    "limits CPU ms",
                    "limits / buttress",
                    "memory: buttress / limits",
                ],
                ratio_rows,
                markdown=args.markdown,
            )
        )
    path = cm.write_json(
        args.out,
        {
            "benchmark": "memory",
            "env": env | {"pinned_cpus": pinned},
            "versions": cm.versions(DISTS),
            "params": {"sizes": sizes, "cases": cases, "before": args.before},
            "results": results,
        },
    )
    print(f"\nwrote {path} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
