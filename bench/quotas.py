#!/usr/bin/env python3
"""Rate limits with and without quotas, next to slowapi: raw ASGI requests, one run.

Every case serves the same Starlette app (``GET /hello``, JSON) and is driven with raw ASGI
messages in one asyncio loop; ``--keys`` client addresses take turns (1,000: one key per
client, so the rate-limit state and the top-keys sketch see many distinct keys). Every
limit is 100,000,000/minute per key: nothing is ever refused, this is the price of the
check on every admitted request.

Cases:
  bare app [floor]          the Starlette app alone
  buttress plain            RateLimitMiddleware(app, [Limit("global", rate)]), memory store
  buttress plans            the rate per plan: Plans({"free", "pro"}, resolve=
                            plan_from_header("x-plan")), the plan cached per key (60 s)
  buttress cost before      cost=request_units() (Content-Length, before the handler)
  buttress cost after       cost=response_bytes() (charged when the response ends)
  buttress top keys         top_keys=NoisyNeighbours(top=10) (Space-Saving, 60 s window)
  slowapi ASGI              the peer: SlowAPIASGIMiddleware + Limiter(default_limits=[rate],
                            key_func=get_remote_address, storage_uri="memory://")
  slowapi BaseHTTP          the same with SlowAPIMiddleware (BaseHTTPMiddleware)
  harden() top keys off     bench/asgi.py create_buttress(rate_limit_top_keys=0): the
                            production set-up (every feature on, this global rate limit)
  harden() top keys on      the same with rate_limit_top_keys=10 (the default)

Reported: µs per request (the driving thread's CPU time), net µs over the floor, and the
ratio of each row to its reference (rate-limit rows: buttress plain; harden() top keys on:
harden() top keys off), paired per repetition. Cases are measured in an order rotated per
repetition; the median over repetitions is reported.

Run:  .venv/bin/python bench/quotas.py [--repeat 11] [--number 10000] [--keys 1000] [--markdown]
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _common as cm

import asgi as bench_asgi
from buttress.asgi._heavy_hitters import NoisyNeighbours
from buttress.asgi._quotas import Plans, plan_from_header, request_units, response_bytes
from buttress.asgi._ratelimit import Limit, RateLimitMiddleware

DISTS = ["buttress", "slowapi", "limits", "starlette"]
RATE = "100000000/minute"
FLOOR = "bare app [floor]"
PLAIN = "buttress plain"
HARDEN = "harden() top keys off"
TOP = "harden() top keys on"


@dataclass
class Case:
    name: str
    make: Callable[[], Any]  # -> ASGI app
    reference: str | None  # the row this one is compared with (ratio)
    note: str = ""


def _bare() -> Any:
    return bench_asgi.create_bare()


def _limited(**options: Any) -> Callable[[], Any]:
    cost = options.pop("cost", 1)

    def make() -> Any:
        return RateLimitMiddleware(_bare(), [Limit("global", RATE, cost=cost)], **options)

    return make


def _plans() -> Any:
    plans = Plans({"free": RATE, "pro": RATE}, resolve=plan_from_header("x-plan"), ttl=60.0)
    return RateLimitMiddleware(_bare(), [Limit("global", plans)])


def _slowapi(asgi_middleware: bool) -> Callable[[], Any]:
    def make() -> Any:
        from slowapi import Limiter  # noqa: PLC0415 - a peer, imported when measured
        from slowapi.middleware import (  # noqa: PLC0415
            SlowAPIASGIMiddleware,
            SlowAPIMiddleware,
        )
        from slowapi.util import get_remote_address  # noqa: PLC0415

        app = bench_asgi.create_bare()
        app.add_middleware(SlowAPIASGIMiddleware if asgi_middleware else SlowAPIMiddleware)
        app.state.limiter = Limiter(
            key_func=get_remote_address, default_limits=[RATE], storage_uri="memory://"
        )
        return app

    return make


def all_cases() -> list[Case]:
    return [
        Case(FLOOR, _bare, None),
        Case(PLAIN, _limited(), PLAIN, "the production limit"),
        Case("buttress plans", _plans, PLAIN, "plan from a header, cached per key"),
        Case("buttress cost before", _limited(cost=request_units()), PLAIN, "Content-Length"),
        Case("buttress cost after", _limited(cost=response_bytes()), PLAIN, "body bytes"),
        Case(
            "buttress top keys",
            lambda: _limited(top_keys=NoisyNeighbours(top=10))(),
            PLAIN,
            "NoisyNeighbours(top=10)",
        ),
        Case("slowapi ASGI", _slowapi(True), PLAIN, "SlowAPIASGIMiddleware, memory://"),
        Case("slowapi BaseHTTP", _slowapi(False), PLAIN, "SlowAPIMiddleware, memory://"),
        Case(
            HARDEN,
            lambda: bench_asgi.create_buttress(rate_limit_top_keys=0),
            None,
            "bench/asgi.py production set-up, top keys off",
        ),
        Case(
            TOP,
            lambda: bench_asgi.create_buttress(rate_limit_top_keys=10),
            HARDEN,
            "rate_limit_top_keys=10 (the default)",
        ),
    ]


# ---------------------------------------------------------------- driving
def _scopes(keys: int) -> list[dict[str, Any]]:
    out = []
    for i in range(keys):
        scope = dict(bench_asgi.SCOPE)
        scope["client"] = (f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", 40000)
        scope["headers"] = [
            *bench_asgi.REQ_HEADERS,
            (b"x-plan", b"pro"),
            (b"content-length", b"0"),
        ]
        out.append(scope)
    return out


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def drive(app: Any, scopes: list[dict[str, Any]], n: int) -> tuple[int, int]:
    """CPU ns for ``n`` requests, and how many were not answered 200."""
    status: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    k = len(scopes)
    now = time.thread_time_ns
    t0 = now()
    for i in range(n):
        await app(dict(scopes[i % k]), _receive, send)
    ns = now() - t0
    return ns, sum(1 for s in status if s != 200)


async def run(args: Any) -> dict[str, Any]:
    cases = all_cases()
    if args.only:
        keep = [s.lower() for s in args.only]
        wanted = {c.name for c in cases if any(s in c.name.lower() for s in keep)}
        wanted |= {c.reference for c in cases if c.name in wanted and c.reference}
        cases = [c for c in cases if c.name == FLOOR or c.name in wanted]
    scopes = _scopes(args.keys)
    apps = {c.name: c.make() for c in cases}
    for c in cases:  # warm-up: caches, kept requests, sketches full
        _, bad = await drive(apps[c.name], scopes, args.warmup)
        if bad:
            raise AssertionError(f"{c.name}: {bad} of {args.warmup} requests were not 200")
    samples: dict[str, list[float]] = {c.name: [] for c in cases}
    gc.collect()
    for rep in range(args.repeat):
        k = rep % len(cases)
        for c in cases[k:] + cases[:k]:
            ns, bad = await drive(apps[c.name], scopes, args.number)
            if bad:
                raise AssertionError(f"{c.name}: {bad} requests were not 200")
            samples[c.name].append(ns / args.number)
        print(f"  rep {rep + 1}/{args.repeat} done", flush=True)
    return {"cases": cases, "samples": samples}


# ---------------------------------------------------------------- report
def analyse(cases: list[Case], samples: dict[str, list[float]]) -> tuple[list[Any], list[Any]]:
    med = {name: cm.median(xs) for name, xs in samples.items()}
    floor = samples[FLOOR]
    rows, results = [], []
    for c in cases:
        m = med[c.name]
        net = cm.paired_median(samples[c.name], floor, ratio=False)
        ratio = float("nan")
        if c.reference and c.reference != c.name and c.reference in samples:
            ratio = cm.paired_median(samples[c.name], samples[c.reference], ratio=True)
        rows.append(
            [c.name, m / 1000, 1e9 / m, net / 1000, "-" if ratio != ratio else f"{ratio:.3f}"]
        )
        results.append(
            {
                "name": c.name,
                "note": c.note,
                "reference": c.reference,
                "us_per_request_median": m / 1000,
                "net_us_over_floor": net / 1000,
                "x_reference_paired": ratio,
                "samples_ns": [round(x, 1) for x in samples[c.name]],
            }
        )
    return rows, results


def targets(samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    out = []

    def ratio(name: str, ref: str) -> float | None:
        if name not in samples or ref not in samples:
            return None
        return cm.paired_median(samples[name], samples[ref], ratio=True)

    top = ratio(TOP, HARDEN)
    if top is not None:
        out.append(
            {
                "target": "top keys cost <= 5% of the production set-up",
                "pass": top <= 1.05,
                "detail": f"{TOP} / {HARDEN} = {top:.3f}",
            }
        )
    peer = ratio("slowapi ASGI", PLAIN)
    if peer is not None:
        out.append(
            {
                "target": "RateLimitMiddleware faster than slowapi's ASGI middleware",
                "pass": peer > 1.0,
                "detail": f"slowapi ASGI / buttress plain = {peer:.2f}x",
            }
        )
    return out


def drive_only(args: Any) -> None:
    """Build one case and drive it, nothing else (per request: run with two ``--number``)."""
    found = [c for c in all_cases() if c.name == args.drive]
    if not found:
        names = ", ".join(repr(c.name) for c in all_cases())
        raise SystemExit(f"--drive {args.drive!r}: no such case; one of {names}")
    bench_asgi.use_devnull_logging()
    app = found[0].make()
    scopes = _scopes(args.keys)

    async def go() -> None:
        await drive(app, scopes, args.warmup)
        await drive(app, scopes, args.number)

    asyncio.run(go())


def main() -> None:
    ap = cm.parser(
        __doc__,
        name="quotas",
        number=10_000,
        min_number=10_000,
        max_seconds=1.0,
        warmup=3_000,
        unit="requests",
    )
    ap.add_argument("--keys", type=int, default=1000, help="distinct client addresses (1000)")
    ap.add_argument(
        "--drive",
        metavar="CASE",
        help="only drive CASE (a case name): --warmup requests, then --number; prints nothing "
        "(for an instruction counter: valgrind --tool=callgrind ... bench/quotas.py --drive ...)",
    )
    args = ap.parse_args()
    if args.drive:
        drive_only(args)
        return
    env = cm.start("quotas", args)
    bench_asgi.use_devnull_logging()
    t0 = time.time()
    res = asyncio.run(run(args))
    wall = time.time() - t0
    env["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    vers = cm.versions(DISTS)
    rows, results = analyse(res["cases"], res["samples"])
    tgts = targets(res["samples"])
    headers = ["case", "µs/request", "requests/s", "net µs", "x reference"]
    print(
        f"\nRaw ASGI requests, {args.keys:,} client keys, median of {args.repeat} x "
        f"{args.number:,} (net = minus the bare app; x reference = this / buttress plain, "
        "or / harden() top keys off for the top keys on row, paired per repetition)"
    )
    print(cm.table(headers, rows, markdown=args.markdown))
    print("\nTargets")
    for t in tgts:
        print(f"  {cm.verdict(t['pass'])}  {t['target']}: {t['detail']}")
    print("\nversions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    payload = {
        "benchmark": "quotas",
        "env": env,
        "params": {
            "repeat": args.repeat,
            "number": args.number,
            "warmup": args.warmup,
            "keys": args.keys,
            "rate": RATE,
            "pinned_cpus": env["pinned_cpus"],
        },
        "wall_s": round(wall, 1),
        "versions": vers,
        "cases": results,
        "targets": tgts,
        "tables": {"main": cm.table(headers, rows, markdown=True)},
    }
    path = cm.write_json(args.out, payload)
    print(f"\nwrote {path} (wall {wall:.0f} s)")


if __name__ == "__main__":
    main()
