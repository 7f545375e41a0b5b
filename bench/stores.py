#!/usr/bin/env python3
"""What the shared stores cost: idempotency overhead per store, and rate-limit round trips.

(1) Idempotency, in process: `IdempotencyMiddleware` over a bare ASGI app that answers
    ``POST /orders`` with 201 and a small JSON body, called directly (no HTTP server; a
    synthetic scope, ``receive`` returns the body, then ``http.disconnect``), side by side
    with the bare app in one run. Rows are stores; per store:

      first   every request has a new key: ``abegin`` takes it, the app runs,
              ``acomplete`` stores the response (two store calls)
      replay  every request repeats a completed one: ``abegin`` returns the stored
              response, the app does not run (one store call)

    The bare app gets the same requests (the header is just ignored). Responses are
    checked (201; ``Idempotent-Replayed: true`` on replays) or the run fails.

(2) Rate limits: decisions per second of ``acquire([RateRequest(key, Rate(1_000_000,
    3600))])`` (1,000 keys round-robin, every decision admits), sync and async (one
    caller), against the driver's own cheapest round trip in the same run: redis-py
    ``PING`` for Redis, psycopg ``SELECT 1`` for PostgreSQL (memory and SQLite have no
    network floor).

Stores: ``memory://``, ``sqlite:///<tmp>/bench.db``, ``--redis-url`` (default
redis://127.0.0.1:6379/0) and ``--postgres-url`` (default
postgresql://postgres@127.0.0.1:5432/test), loopback only; a store that cannot be
reached is skipped with a message. Each store gets a fresh namespace, whose keys and rows
are deleted at the end (the SQLite file too). Each repetition measures every case once,
in an order rotated per repetition; medians are reported, overheads as the median of the
paired differences (case - bare of the same repetition). This process is pinned to CPU 0;
the shared servers are not pinned (the peer harness pins a private Redis to CPU 1: use it
for the Redis-vs-PING comparison with the peers, ``bench/peer_plugin.py``).

Run:  .venv/bin/python bench/stores.py [--repeat 5] [--number 2000] [--markdown]
          [--only redis] [--skip-ratelimit] [--skip-idempotency]
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import _common as cm

from buttress.asgi.middleware import IdempotencyMiddleware
from buttress.errors import BackendError
from buttress.stores import Rate, RateRequest, open_store

DISTS = ["buttress", "redis", "psycopg"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
ALLOW_KEYS = 1000
RATE = Rate(1_000_000, 3600.0)
BODY = json.dumps({"sku": "A-42", "quantity": 1}).encode()
RESPONSE = json.dumps({"id": 1, "status": "created"}).encode()
RESPONSE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(RESPONSE)).encode()),
]
BARE = "bare app"


# ---------------------------------------------------------------- the app and the driver
async def orders_app(scope, receive, send) -> None:
    """The bare app: reads the request body, answers 201 with a small JSON body."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 201, "headers": RESPONSE_HEADERS})
    await send({"type": "http.response.body", "body": RESPONSE})


REQUEST_MSG = {"type": "http.request", "body": BODY, "more_body": False}
DISCONNECT_MSG = {"type": "http.disconnect"}


class Conn:
    __slots__ = ("done", "got_request", "replayed", "status")

    def __init__(self) -> None:
        self.got_request = False
        self.done = asyncio.Event()
        self.status = 0
        self.replayed = False

    async def receive(self):
        if not self.got_request:
            self.got_request = True
            return REQUEST_MSG
        await self.done.wait()
        return DISCONNECT_MSG

    async def send(self, msg) -> None:
        if msg["type"] == "http.response.start":
            self.status = msg["status"]
            self.replayed = (b"idempotent-replayed", b"true") in msg.get("headers", ())
        elif msg["type"] == "http.response.body" and not msg.get("more_body", False):
            self.done.set()


def scope_for(key: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/orders",
        "raw_path": b"/orders",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
            (b"idempotency-key", key.encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def drive(app, keys: list[str], replay: bool) -> float:
    """µs per request over ``keys``; fails unless every response is the expected one."""
    scopes = [scope_for(k) for k in keys]
    bad = 0
    t0 = time.perf_counter_ns()
    for scope in scopes:
        c = Conn()
        await app(scope, c.receive, c.send)
        if c.status != 201 or c.replayed is not replay:
            bad += 1
    us = (time.perf_counter_ns() - t0) / len(keys) / 1000
    if bad:
        raise AssertionError(f"{bad} of {len(keys)} responses were not as expected")
    return us


# ---------------------------------------------------------------- the stores
def store_urls(args, tmp: str) -> dict[str, str]:
    urls = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp}/bench.db",
        "redis": args.redis_url,
        "postgresql": args.postgres_url,
    }
    for name in ("redis", "postgresql"):
        if urlsplit(urls[name]).hostname not in LOOPBACK:
            raise SystemExit(f"refusing: the benchmark only talks to loopback ({urls[name]})")
    if args.only:
        urls = {k: v for k, v in urls.items() if any(s in k for s in args.only)}
    return urls


def open_bench_store(kind: str, url: str, namespace: str):
    return open_store(url) if kind == "memory" else open_store(url, namespace=namespace)


def cleanup(kind: str, url: str, namespace: str) -> int:
    """Delete what the benchmark wrote under ``namespace``; the count."""
    if kind == "redis":
        import redis  # noqa: PLC0415 - only with Redis

        raw = redis.Redis.from_url(url)
        try:
            names = list(raw.scan_iter(match=f"{namespace}:*", count=1000))
            for i in range(0, len(names), 1000):
                raw.unlink(*names[i : i + 1000])
            return len(names)
        finally:
            raw.close()
    if kind == "postgresql":
        import psycopg  # noqa: PLC0415 - only with PostgreSQL

        deleted = 0
        with psycopg.connect(url, autocommit=True) as conn:
            for table, column in (
                ("buttress_rate", "key"),
                ("buttress_idempotency", "key"),
                ("buttress_breaker", "name"),
            ):
                cur = conn.execute(
                    f"DELETE FROM public.{table} WHERE {column} LIKE %s",  # noqa: S608 - constants
                    (f"{namespace}:%",),
                )
                deleted += cur.rowcount
        return deleted
    return 0


async def reachable(kind: str, url: str, namespace: str) -> str | None:
    """None when the store answers, else why not."""
    store = open_bench_store(kind, url, namespace)
    try:
        await store.aping()
    except BackendError as exc:
        return str(exc)
    finally:
        await store.aclose()
    return None


# ---------------------------------------------------------------- (1) idempotency
async def run_idempotency(stores: dict[str, tuple[str, str]], args) -> dict[str, Any]:
    n = args.number
    apps: dict[str, Any] = {}
    opened = []
    for kind, (url, namespace) in stores.items():
        store = open_bench_store(kind, url, namespace)
        opened.append(store)
        apps[kind] = IdempotencyMiddleware(orders_app, store=store)
    # one completed request per store, replayed by every "replay" request
    replay_key = f"replay-{uuid.uuid4().hex}"
    for app in apps.values():
        await drive(app, [replay_key], replay=False)
    runs: dict[str, Callable[[int], Awaitable[float]]] = {
        BARE: lambda rep: drive(orders_app, [replay_key] * n, replay=False)
    }
    for kind, app in apps.items():
        runs[f"{kind} first"] = lambda rep, app=app: drive(
            app, [f"first-{rep}-{i}-{uuid.uuid4().hex[:8]}" for i in range(n)], replay=False
        )
        runs[f"{kind} replay"] = lambda rep, app=app: drive(app, [replay_key] * n, replay=True)
    for _ in range(args.warmup):  # connections, caches, code paths
        for run in runs.values():
            await run(-1)
    samples = await rotate(runs, args.repeat, "idempotency")
    for store in opened:
        await store.aclose()
    return samples


# ---------------------------------------------------------------- (2) rate limits
def rl_sync(store) -> Callable[[], float]:
    acquire = store.acquire
    keys = [f"user:{i}" for i in range(ALLOW_KEYS)]

    def run(n: int) -> float:
        admitted = 0
        t0 = time.perf_counter_ns()
        for i in range(n):
            admitted += acquire([RateRequest(keys[i % ALLOW_KEYS], RATE)])[0].allowed
        us = (time.perf_counter_ns() - t0) / n / 1000
        assert admitted == n, f"admitted {admitted} of {n}"
        return us

    return run


def rl_async(store) -> Callable[[int], Awaitable[float]]:
    aacquire = store.aacquire
    keys = [f"user:{i}" for i in range(ALLOW_KEYS)]

    async def run(n: int) -> float:
        admitted = 0
        t0 = time.perf_counter_ns()
        for i in range(n):
            admitted += (await aacquire([RateRequest(keys[i % ALLOW_KEYS], RATE)]))[0].allowed
        us = (time.perf_counter_ns() - t0) / n / 1000
        assert admitted == n, f"admitted {admitted} of {n}"
        return us

    return run


def floor_clients(kind: str, url: str):
    """(name, sync round trip, async round trip factory, close) for a network store."""
    if kind == "redis":
        import redis  # noqa: PLC0415
        import redis.asyncio  # noqa: PLC0415

        client = redis.Redis.from_url(url)

        async def amake():
            aclient = redis.asyncio.Redis.from_url(url)
            return aclient.ping, aclient.aclose

        return "redis-py PING", client.ping, amake, client.close
    if kind == "postgresql":
        import psycopg  # noqa: PLC0415

        conn = psycopg.connect(url, autocommit=True)

        def select1():
            conn.execute("SELECT 1").fetchone()

        async def amake():
            aconn = await psycopg.AsyncConnection.connect(url, autocommit=True)

            async def aselect1():
                await (await aconn.execute("SELECT 1")).fetchone()

            return aselect1, aconn.close

        return "psycopg SELECT 1", select1, amake, conn.close
    return None


async def run_ratelimit(stores: dict[str, tuple[str, str]], args) -> dict[str, Any]:
    n = args.number
    runs: dict[str, Callable[[int], Awaitable[float]]] = {}
    closers: list[Callable[[], Any]] = []
    floors: dict[str, str] = {}
    for kind, (url, namespace) in stores.items():
        store = open_bench_store(kind, url, namespace)
        closers.append(store.aclose)
        sync_run, async_run = rl_sync(store), rl_async(store)
        runs[f"{kind} sync"] = lambda rep, f=sync_run: _wrap_sync(f, n)
        runs[f"{kind} async"] = lambda rep, f=async_run: f(n)
        made = floor_clients(kind, url)
        if made is None:
            continue
        label, sync_floor, amake, close = made
        closers.append(close)
        afloor, aclose = await amake()
        closers.append(aclose)
        floors[kind] = label
        runs[f"{kind} sync floor"] = lambda rep, f=sync_floor: _wrap_sync(_loop(f), n)
        runs[f"{kind} async floor"] = lambda rep, f=afloor: _aloop(f, n)
    for _ in range(args.warmup):  # connections, caches, code paths
        for run in runs.values():
            await run(-1)
    samples = await rotate(runs, args.repeat, "rate limits")
    for close in closers:
        result = close()
        if asyncio.iscoroutine(result):
            await result
    return {"samples": samples, "floors": floors}


async def _wrap_sync(f: Callable[[int], float], n: int) -> float:
    return f(n)


def _loop(call: Callable[[], Any]) -> Callable[[int], float]:
    def run(n: int) -> float:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            call()
        return (time.perf_counter_ns() - t0) / n / 1000

    return run


async def _aloop(call: Callable[[], Awaitable[Any]], n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        await call()
    return (time.perf_counter_ns() - t0) / n / 1000


# ---------------------------------------------------------------- shared
async def rotate(
    runs: dict[str, Callable[[int], Awaitable[float]]], repeat: int, label: str
) -> dict[str, list[float]]:
    names = list(runs)
    samples: dict[str, list[float]] = {k: [] for k in names}
    gc.enable()
    for rep in range(repeat):
        k = rep % len(names)
        t0 = time.time()
        for name in names[k:] + names[:k]:  # rotated: drift does not always hit one case
            samples[name].append(await runs[name](rep))
        print(f"  {label} rep {rep + 1}/{repeat} done ({time.time() - t0:.1f} s)", flush=True)
    return samples


def idempotency_rows(kinds: list[str], samples: dict[str, list[float]]) -> list[list[Any]]:
    bare = samples[BARE]
    rows = []
    for kind in kinds:
        first, replay = samples[f"{kind} first"], samples[f"{kind} replay"]
        rows.append(
            [
                kind,
                cm.median(bare),
                cm.median(first),
                cm.paired_median(first, bare, ratio=False),
                cm.median(replay),
                cm.paired_median(replay, bare, ratio=False),
            ]
        )
    return rows


def ratelimit_rows(kinds: list[str], res: dict[str, Any]) -> list[list[Any]]:
    samples, floors = res["samples"], res["floors"]
    rows = []
    for kind in kinds:
        for mode in ("sync", "async"):
            us = samples[f"{kind} {mode}"]
            floor = samples.get(f"{kind} {mode} floor")
            rows.append(
                [
                    f"{kind} {mode}",
                    floors.get(kind, "-"),
                    cm.median(floor) if floor else float("nan"),
                    cm.median(us),
                    1e6 / cm.median(us),
                    f"{cm.paired_median(floor, us, ratio=True):.2f}x" if floor else "-",
                ]
            )
    return rows


def main() -> None:
    ap = cm.parser(
        __doc__,
        name="stores",
        number=2000,
        min_number=2000,
        max_seconds=0.0,
        warmup=1,
        unit="requests or decisions",
    )
    ap.set_defaults(repeat=5)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--skip-idempotency", action="store_true")
    ap.add_argument("--skip-ratelimit", action="store_true")
    args = ap.parse_args()
    env = cm.start("stores", args)
    tmp = tempfile.mkdtemp(prefix="buttress-bench-")
    namespace = f"bench{uuid.uuid4().hex[:10]}"
    stores: dict[str, tuple[str, str]] = {}
    skipped: dict[str, str] = {}
    t0 = time.time()
    try:
        for kind, url in store_urls(args, tmp).items():
            why = asyncio.run(reachable(kind, url, namespace))
            if why is None:
                stores[kind] = (url, namespace)
            else:
                skipped[kind] = why
                print(f"skipping {kind}: {why}", flush=True)
        kinds = list(stores)
        tables: dict[str, str] = {}
        payload: dict[str, Any] = {
            "benchmark": "stores",
            "env": env,
            "versions": cm.versions(DISTS),
            "params": {
                "repeat": args.repeat,
                "number": args.number,
                "stores": {k: v[0] for k, v in stores.items()},
                "skipped": skipped,
                "rate": str(RATE),
                "allow_keys": ALLOW_KEYS,
                "request_body_bytes": len(BODY),
                "response_body_bytes": len(RESPONSE),
            },
        }
        if not args.skip_idempotency:
            samples = asyncio.run(run_idempotency(stores, args))
            headers = ["store", "bare µs", "first µs", "+added", "replay µs", "+added"]
            rows = idempotency_rows(kinds, samples)
            tables["idempotency"] = cm.table(headers, rows, markdown=True)
            payload["idempotency"] = {"samples_us": samples}
            print(
                f"\n(1) Idempotency-Key overhead, in process, µs/request, median of "
                f"{args.repeat} x {args.number:,} requests (+added = paired median vs bare)"
            )
            print(cm.table(headers, rows, markdown=args.markdown))
        if not args.skip_ratelimit:
            res = asyncio.run(run_ratelimit(stores, args))
            headers = ["store", "floor", "floor µs", "µs/decision", "decisions/s", "x floor rate"]
            rows = ratelimit_rows(kinds, res)
            tables["ratelimit"] = cm.table(headers, rows, markdown=True)
            payload["ratelimit"] = {"samples_us": res["samples"], "floors": res["floors"]}
            print(
                f"\n(2) Rate-limit decision (one key, admits), median of {args.repeat} x "
                f"{args.number:,} (x floor rate = decisions/s over the floor's round trips/s, "
                "paired; 1.00x = one bare round trip)"
            )
            print(cm.table(headers, rows, markdown=args.markdown))
    finally:
        for kind, (url, ns) in stores.items():
            try:
                count = cleanup(kind, url, ns)
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning the others
                print(f"cleanup of {kind} failed: {exc}", flush=True)
            else:
                if count:
                    print(f"  cleaned {count} {kind} keys/rows of namespace {ns}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.time() - t0
    env["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print("\nversions: " + ", ".join(f"{k} {v}" for k, v in payload["versions"].items()))
    payload["wall_s"] = round(wall, 1)
    payload["tables"] = tables
    path = cm.write_json(args.out, payload)
    print(f"\nwrote {path} (wall {wall:.0f} s)")


if __name__ == "__main__":
    main()
