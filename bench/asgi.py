#!/usr/bin/env python3
"""`harden()` on a Starlette app vs the bare app vs the peer middleware stack, in one run.

Three configurations serve ``GET /hello`` -> ``JSONResponse({"message": "hello"})``:

  bare      plain Starlette, built exactly like the shared peer harness's bare app
  buttress  ``harden(bare, HardenSettings(...))`` in the production configuration: request
            id and trace context, JSON access log (buttress's direct writer, to
            /dev/null), metrics, security headers (the default "api" set: OWASP's REST
            cheat sheet), CORS (the origin allowed, credentials), graceful shutdown,
            problem+json errors, health endpoints, a global rate limit on the in-memory
            store (100000000/minute, never refuses: as the peer's slowapi), adaptive load
            shedding, 1 MiB body limit, 30 s request deadline, idempotency keys (optional)
  peer      the harness's peer stack, outermost first: prometheus-fastapi-instrumentator (own
            CollectorRegistry, /metrics), asgi-correlation-id, a BaseHTTPMiddleware timing
            logger (one INFO line per request to /dev/null), secure, Starlette
            CORSMiddleware, slowapi (100000000/minute, memory://, never triggers)

Every request carries ``Origin: https://example.com`` (allowed by both stacks).

(a) in-process: the app is called directly with a synthetic scope and a ``receive`` that
    returns the request, then ``http.disconnect`` once the response is complete (like
    uvicorn). Each repetition measures every config once, in an order rotated per
    repetition; medians are reported. Times are the driving thread's CPU time (``--clock
    wall`` for the wall clock, which also counts the time spent waiting for a core while
    other processes run). Also per-feature rows: the buttress stack with one feature
    switched off in turn, to attribute its cost (full - row).
(b) real server: uvicorn, 1 worker, ``--http httptools --loop asyncio --no-access-log`` on
    127.0.0.1, pinned to CPU 1; ``wrk -t1 -c32 -d10s --latency`` pinned to CPU 0 after a
    2 s warm-up; configs alternate (order rotated per run), ``--server-runs`` each; also
    the buttress stack with the full OWASP header set (``security_headers="full"``).
    Skipped with a message when wrk is not installed (``apt-get install -y wrk``).

The same pair on FastAPI: ``fastapi`` (``@app.get("/hello")`` returning the dict) and
``fastapi + buttress`` (the same settings), in-process and under uvicorn.

Targets (issues 3 and 9): in-process the whole buttress stack adds at most 15 µs/request
over bare Starlette and over bare FastAPI; under uvicorn buttress reaches at least 0.85x
bare's requests/s and at least 8x the peer's.

Run:  .venv/bin/python bench/asgi.py [--markdown] [--skip-server] [--profile 20000]
Also the uvicorn factory: ``BENCH_APP=buttress uvicorn asgi:create_from_env --factory``
(with bench/ on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import io
import os
import pstats
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as cm
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from buttress.asgi import HardenSettings, configure_logging, harden

BENCH_DIR = Path(__file__).resolve().parent
DISTS = [
    "buttress",
    "starlette",
    "fastapi",
    "uvicorn",
    "httptools",
    "structlog",
    "slowapi",
    "limits",
    "asgi-correlation-id",
    "prometheus-fastapi-instrumentator",
    "prometheus-client",
    "secure",
]
PEER_MODULES = ["slowapi", "asgi_correlation_id", "prometheus_fastapi_instrumentator", "secure"]
ORIGIN = "https://example.com"
HIGH_LIMIT = "100000000/minute"
BARE, BUTTRESS, PEER = "bare", "buttress", "peer"
FASTAPI, FASTAPI_BUTTRESS = "fastapi", "fastapi + buttress"

# --------------------------------------------------------------------------- the apps


async def hello(request):
    return JSONResponse({"message": "hello"})


def _routes():
    return [Route("/hello", hello, methods=["GET"])]


def create_bare() -> Starlette:
    return Starlette(routes=_routes())


def create_fastapi() -> Any:
    from fastapi import FastAPI  # noqa: PLC0415 - only for the FastAPI rows

    app = FastAPI()

    @app.get("/hello")
    async def hello_fastapi() -> dict[str, str]:
        return {"message": "hello"}

    return app


# ---- buttress: harden(bare) with everything on

# "everything on", the production configuration: the defaults (access log, security
# headers, health, metrics, graceful shutdown, load shedding, 1 MiB body limit, 30 s
# deadline, idempotency keys) plus a global rate limit on the in-memory store that never
# refuses (as the peer's slowapi) and CORS for the benchmark's origin with credentials (as
# the peer's CORSMiddleware).
RATE_LIMITS = ("global=100000000/minute",)
ON_SETTINGS: dict[str, Any] = {
    "cors_origins": (ORIGIN,),
    "cors_credentials": True,
    "rate_limits": RATE_LIMITS,
    "configure_logging": False,  # configured once below: JSON lines to /dev/null
}
# opt-in settings measured as extra rows on top of "everything on" (cost = row - full)
EXTRA_SETTINGS: dict[str, dict[str, Any]] = {
    # a proxy allow-list; the client (127.0.0.1) is not in it and no X-Forwarded-For is sent
    "trusted_proxies=('10.0.0.0/8',)": {"trusted_proxies": ("10.0.0.0/8",)},
    # the OWASP Secure Headers Project set instead of the API default (12 headers, not 5)
    "security_headers='full'": {"security_headers": "full"},
}
# (label, HardenSettings field, value that switches the feature off)
FEATURES: list[tuple[str, str, Any]] = [
    ("access log", "access_log", False),
    ("security headers", "security_headers", False),
    ("CORS", "cors_origins", ()),
    ("request deadline", "request_timeout", None),
    ("body limit", "max_body_bytes", None),
    ("health endpoints", "health", False),
    ("rate limits", "rate_limits", ()),
    ("idempotency", "idempotency", "off"),
]
# features harden() may grow: the first of these fields HardenSettings has is switched
OPTIONAL_FEATURES: dict[str, tuple[str, ...]] = {
    "metrics": ("metrics", "prometheus", "metrics_enabled"),
    "graceful shutdown": ("graceful_shutdown", "shutdown"),
    "load shedding": (
        "shedding",
        "load_shedding",
        "shed",
        "adaptive_concurrency",
        "shed_adaptive",
        "max_in_flight",
    ),
}
_FIELDS = {f.name: f for f in dataclasses.fields(HardenSettings)}


def _field_default(name: str) -> Any:
    f = _FIELDS[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def feature_table() -> tuple[dict[str, Any], list[tuple[str, str, Any]]]:
    """The "everything on" settings and the features that can be switched off one by one."""
    on = dict(ON_SETTINGS)
    feats = list(FEATURES)
    for label, candidates in OPTIONAL_FEATURES.items():
        name = next((c for c in candidates if c in _FIELDS), None)
        if name is None:
            continue
        default = _field_default(name)
        if default is False:
            on[name] = True
        elif default is None and "in_flight" in name:
            on[name] = 1000
        feats.append((label, name, False if isinstance(default, bool) else None))
    return on, feats


_logging_ready = [False]
_devnull: list[Any] = []


def use_devnull_logging() -> None:
    """buttress's JSON logging to /dev/null: the access line takes the direct JSON writer."""
    if not _devnull:
        _devnull.append(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    configure_logging(json=True, stream=_devnull[0])
    _logging_ready[0] = True


def create_buttress(**overrides: Any) -> Any:
    """A fresh bare app behind harden(), everything on (``overrides`` switch features)."""
    if not _logging_ready[0]:
        use_devnull_logging()
    on, _ = feature_table()
    return harden(create_bare(), HardenSettings(**{**on, **overrides}))


def create_fastapi_buttress(**overrides: Any) -> Any:
    """harden() around the bare FastAPI app, with the same settings as `create_buttress`."""
    if not _logging_ready[0]:
        use_devnull_logging()
    on, _ = feature_table()
    return harden(create_fastapi(), HardenSettings(**{**on, **overrides}))


def create_buttress_minimal() -> Any:
    """harden() with every switchable feature off: request context + error layer only."""
    _, feats = feature_table()
    return create_buttress(**{name: off for _, name, off in feats})


# ---- peer: copied from the shared harness's asgi_stack.py (not imported at run time)

_timing_logger: Any = None


def _get_timing_logger():
    global _timing_logger
    if _timing_logger is None:
        import logging  # noqa: PLC0415

        from asgi_correlation_id import CorrelationIdFilter  # noqa: PLC0415

        lg = logging.getLogger("bench.request_timing")
        lg.setLevel(logging.INFO)
        lg.propagate = False
        h = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
        h.addFilter(CorrelationIdFilter(uuid_length=32))
        h.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s %(message)s")
        )
        lg.addHandler(h)
        _timing_logger = lg
    return _timing_logger


class RequestTimingMiddleware(BaseHTTPMiddleware):
    """The ubiquitous hand-written 'log method, path, status, duration' middleware."""

    def __init__(self, app):
        super().__init__(app)
        self.log = _get_timing_logger()

    async def dispatch(self, request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        self.log.info(
            "%s %s %s %.2fms",
            request.method,
            request.url.path,
            response.status_code,
            (time.perf_counter() - t0) * 1000,
        )
        return response


def _mw_correlation():
    from asgi_correlation_id import CorrelationIdMiddleware  # noqa: PLC0415

    return Middleware(CorrelationIdMiddleware)


def _mw_secure():
    from secure import Secure  # noqa: PLC0415
    from secure.middleware import SecureASGIMiddleware  # noqa: PLC0415

    return Middleware(SecureASGIMiddleware, secure=Secure.with_default_headers())


def _mw_cors():
    from starlette.middleware.cors import CORSMiddleware  # noqa: PLC0415

    return Middleware(
        CORSMiddleware,
        allow_origins=[ORIGIN],
        allow_methods=["*"],
        allow_headers=["*"],
        allow_credentials=True,
    )


def _slowapi_setup(app: Starlette) -> None:
    from slowapi import Limiter, _rate_limit_exceeded_handler  # noqa: PLC0415
    from slowapi.errors import RateLimitExceeded  # noqa: PLC0415
    from slowapi.util import get_remote_address  # noqa: PLC0415

    app.state.limiter = Limiter(
        key_func=get_remote_address, default_limits=[HIGH_LIMIT], storage_uri="memory://"
    )
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)


def _mw_slowapi():
    from slowapi.middleware import SlowAPIMiddleware  # noqa: PLC0415

    return Middleware(SlowAPIMiddleware)


def _instrumentator(app: Starlette) -> None:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415
    from prometheus_fastapi_instrumentator import Instrumentator  # noqa: PLC0415

    # own registry so several apps can live in one process; instrument() inserts the
    # middleware at position 0, i.e. outermost
    Instrumentator(registry=CollectorRegistry()).instrument(app).expose(
        app, include_in_schema=False
    )


def create_peer() -> Starlette:
    app = Starlette(
        routes=_routes(),
        middleware=[
            _mw_correlation(),
            Middleware(RequestTimingMiddleware),
            _mw_secure(),
            _mw_cors(),
            _mw_slowapi(),
        ],
    )
    _slowapi_setup(app)
    _instrumentator(app)
    return app


# ---- control: the bare app sending the response headers the buttress stack adds (static
# values, no other work), to separate what those header bytes cost the server from the
# middleware work (uvicorn validates and lowercases every response header in Python)

HEADERS_CONTROL = "bare + buttress headers [control]"


class StaticHeaders:
    def __init__(self, app, headers: list[tuple[bytes, bytes]]):
        self.app = app
        self.headers = headers

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.headers

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def buttress_response_headers() -> list[tuple[bytes, bytes]]:
    """The headers the full buttress stack adds to the /hello response (one request)."""
    import concurrent.futures  # noqa: PLC0415

    # a loop of its own in a thread: uvicorn calls the factory inside its running loop
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        c = ex.submit(asyncio.run, one_request(create_buttress())).result()
    bare = {b"content-length", b"content-type"}
    return [(k, v) for k, v in c.headers or () if k.lower() not in bare]


def create_headers_control():
    return StaticHeaders(create_bare(), buttress_response_headers())


# extra configs served under uvicorn too (by name: see feature_apps); the header count is
# where uvicorn's cost per request grows fastest
FULL_HEADERS = "buttress + security_headers='full'"
SERVER_EXTRA = [FULL_HEADERS]

MAIN_APPS: dict[str, Callable[[], Any]] = {
    BARE: create_bare,
    BUTTRESS: create_buttress,
    PEER: create_peer,
    HEADERS_CONTROL: create_headers_control,
    FASTAPI: create_fastapi,
    FASTAPI_BUTTRESS: create_fastapi_buttress,
}


def feature_apps() -> dict[str, Callable[[], Any]]:
    apps: dict[str, Callable[[], Any]] = {}
    _, feats = feature_table()
    for label, name, off in feats:
        apps[f"buttress - {label}"] = lambda name=name, off=off: create_buttress(**{name: off})
    apps["buttress - every switchable feature"] = create_buttress_minimal
    for label, extra in EXTRA_SETTINGS.items():
        apps[f"buttress + {label}"] = lambda extra=extra: create_buttress(**extra)
    return apps


def create_from_env():
    """uvicorn factory: ``BENCH_APP=<config name>``."""
    name = os.environ.get("BENCH_APP", BARE)
    return {**MAIN_APPS, **feature_apps()}[name]()


# --------------------------------------------------------------------------- (a) in-process

REQ_HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"bench/1.0"),
    (b"accept", b"*/*"),
    (b"origin", ORIGIN.encode()),
]
SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 54321),
    "scheme": "http",
    "method": "GET",
    "root_path": "",
    "path": "/hello",
    "raw_path": b"/hello",
    "query_string": b"",
}
REQUEST_MSG = {"type": "http.request", "body": b"", "more_body": False}
DISCONNECT_MSG = {"type": "http.disconnect"}


class Conn:
    __slots__ = ("body", "done", "got_request", "headers", "status")

    def __init__(self):
        self.got_request = False
        self.done = asyncio.Event()
        self.status = 0
        self.headers = None
        self.body = b""

    async def receive(self):
        if not self.got_request:
            self.got_request = True
            return REQUEST_MSG
        await self.done.wait()
        return DISCONNECT_MSG

    async def send(self, msg):
        t = msg["type"]
        if t == "http.response.start":
            self.status = msg["status"]
            self.headers = msg.get("headers")
        elif t == "http.response.body":
            self.body += msg.get("body", b"")
            if not msg.get("more_body", False):
                self.done.set()


async def one_request(app) -> Conn:
    scope = dict(SCOPE)
    scope["headers"] = list(REQ_HEADERS)
    c = Conn()
    await app(scope, c.receive, c.send)
    return c


# (a) times the driving thread's CPU (time.thread_time_ns) by default: on a shared machine the
# wall clock also counts the time the process waited for a core ("--clock wall" for it)
CLOCKS: dict[str, Callable[[], int]] = {"cpu": time.thread_time_ns, "wall": time.perf_counter_ns}
_clock = [CLOCKS["cpu"]]


async def drive(app, n: int) -> tuple[float, int]:
    bad = 0
    now = _clock[0]
    t0 = now()
    for _ in range(n):
        c = await one_request(app)
        if c.status != 200:
            bad += 1
    return (now() - t0) / n / 1000, bad


def describe_response(c: Conn) -> dict[str, Any]:
    hdrs = {k.decode().lower(): v.decode() for k, v in (c.headers or [])}
    return {"status": c.status, "body": c.body.decode(), "header_names": sorted(hdrs)}


def _check_shape(name: str, shape: dict[str, Any]) -> None:
    assert shape["status"] == 200, (name, shape)
    assert shape["body"].replace(" ", "") == '{"message":"hello"}', (name, shape)
    hdrs = shape["header_names"]
    if name == PEER:
        assert "access-control-allow-origin" in hdrs, (name, hdrs)
        assert "x-request-id" in hdrs, (name, hdrs)
    if name in (BUTTRESS, FASTAPI_BUTTRESS):
        for h in ("access-control-allow-origin", "x-request-id", "content-security-policy"):
            assert h in hdrs, (name, h, hdrs)


async def check_access_log() -> str:
    """One request through the full stack with the log captured: the access line is there."""
    buf = io.StringIO()
    use_devnull_logging()  # marks logging as configured, so create_buttress leaves it
    configure_logging(json=True, stream=buf)
    try:
        app = create_buttress()
        c = await one_request(app)
        assert c.status == 200, c.status
    finally:
        use_devnull_logging()
    lines = [ln for ln in buf.getvalue().splitlines() if '"event":"request"' in ln]
    assert len(lines) == 1, buf.getvalue()
    return lines[0]


async def run_inproc(apps: dict[str, tuple[Callable[[], Any], int]], repeat: int, warmup: int):
    built, shapes = {}, {}
    for name, (factory, _) in apps.items():
        app = factory()
        c = await one_request(app)
        shapes[name] = describe_response(c)
        _check_shape(name, shapes[name])
        await drive(app, warmup)
        built[name] = app
    names = list(built)
    samples: dict[str, list[float]] = {k: [] for k in names}
    bad_total = dict.fromkeys(names, 0)
    gc.enable()
    for rep in range(repeat):
        k = rep % len(names)
        t0 = time.time()
        for name in names[k:] + names[:k]:  # rotated: drift does not always hit the same case
            us, bad = await drive(built[name], apps[name][1])
            samples[name].append(us)
            bad_total[name] += bad
        print(f"  in-process rep {rep + 1}/{repeat} done ({time.time() - t0:.1f} s)", flush=True)
    return samples, bad_total, shapes


def _cost(name: str, full: float, row: float) -> float:
    if name.startswith("buttress - "):
        return full - row
    if name.startswith("buttress + "):
        return row - full
    return float("nan")


def analyse_inproc(apps, samples, bad_total, shapes) -> list[dict[str, Any]]:
    base = cm.median(samples[BARE])
    full = cm.median(samples[BUTTRESS]) if BUTTRESS in samples else float("nan")
    out = []
    for name, xs in samples.items():
        m = cm.median(xs)
        out.append(
            {
                "config": name,
                "n": apps[name][1],
                "us_per_request_median": m,
                "us_per_request_min": min(xs),
                "us_per_request_max": max(xs),
                "overhead_us_vs_bare": m - base,
                "overhead_us_vs_bare_paired": cm.paired_median(xs, samples[BARE], ratio=False),
                "ratio_vs_bare": m / base,
                "ratio_vs_bare_paired": cm.paired_median(xs, samples[BARE], ratio=True),
                # "buttress - X": what X costs (full stack - stack without X);
                # "buttress + X": what the extra setting X costs (row - full stack)
                "feature_cost_us": _cost(name, full, m),
                "feature_cost_us_paired": (
                    _cost(name, 0.0, cm.paired_median(xs, samples[BUTTRESS], ratio=False))
                    if BUTTRESS in samples
                    else float("nan")
                ),
                "requests_per_s_single_core": 1e6 / m,
                "non_200": bad_total[name],
                "samples_us": [round(x, 2) for x in xs],
                "response": shapes[name],
            }
        )
    return out


# --------------------------------------------------------------------------- (b) uvicorn + wrk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}")
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/hello", headers={"Origin": ORIGIN}
            )
            with urllib.request.urlopen(req, timeout=2) as r:
                return {
                    "status": r.status,
                    "header_names": sorted(h.lower() for h in r.headers),
                }
        except Exception as e:
            last = e
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} not ready: {last}")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(v: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["requests_per_s"] = float(m.group(1)) if m else float("nan")
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", text)
    out["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if m:
        out["latency_avg_ms"], out["latency_stdev_ms"], out["latency_max_ms"] = (
            _ms(m.group(i)) for i in (1, 2, 3)
        )
    for p in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", text, re.MULTILINE)
        out[f"p{p}_ms"] = _ms(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors:.*", text)
    out["socket_errors"] = m.group(0) if m else ""
    return out


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (nan when unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def serve_and_load(name: str, duration: int, warm: int, conns: int, pin: bool) -> dict[str, Any]:
    port = free_port()
    env = dict(os.environ, BENCH_APP=name, PYTHONPATH=str(BENCH_DIR))
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "asgi:create_from_env",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--http",
        "httptools",
        "--loop",
        "asyncio",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    pin_srv = ["taskset", "-c", "1"] if pin else []  # taskset execs: the pid is uvicorn's
    pin_wrk = ["taskset", "-c", "0"] if pin else []
    srv = subprocess.Popen(
        pin_srv + cmd, cwd=BENCH_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        shape = wait_ready(port, srv)
        url = f"http://127.0.0.1:{port}/hello"
        hdr = ["-H", f"Origin: {ORIGIN}"]
        wrk = shutil.which("wrk") or "wrk"
        subprocess.run(
            [*pin_wrk, wrk, "-t1", f"-c{conns}", f"-d{warm}s", *hdr, url],
            capture_output=True,
            text=True,
            timeout=warm + 30,
            check=True,
        )
        cpu0, t0 = _cpu_seconds(srv.pid), time.perf_counter()
        p = subprocess.run(
            [*pin_wrk, wrk, "-t1", f"-c{conns}", f"-d{duration}s", "--latency", *hdr, url],
            capture_output=True,
            text=True,
            timeout=duration + 30,
            check=True,
        )
        cpu1, t1 = _cpu_seconds(srv.pid), time.perf_counter()
        res = parse_wrk(p.stdout)
        res["server_cpu_pct"] = 100 * (cpu1 - cpu0) / (t1 - t0)
        # server CPU time per request: robust when the server core is not saturated or shared
        res["server_cpu_us_per_request"] = (
            (cpu1 - cpu0) / res["requests"] * 1e6 if res["requests"] else float("nan")
        )
        res["wrk_stdout"] = p.stdout
        res["response"] = shape
        res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        return res
    finally:
        stop(srv)


def stop(srv: subprocess.Popen) -> None:
    """Stop the uvicorn we started (by its pid). buttress's graceful shutdown drains for
    5 s after SIGTERM; a second SIGTERM exits at once, so the run does not wait for it."""
    srv.terminate()
    try:
        srv.wait(timeout=1)
    except subprocess.TimeoutExpired:
        srv.terminate()  # the second signal: exit now
    try:
        _, err = srv.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        srv.kill()
        _, err = srv.communicate()
    if srv.returncode not in (0, -15, 143) and err:
        print(err.decode()[-2000:], file=sys.stderr)


def run_server(names, runs, duration, warm, conns, pin) -> dict[str, list[dict[str, Any]]]:
    samples: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(runs):
        k = r % len(names)
        for name in names[k:] + names[:k]:  # alternating, order rotated per run
            res = serve_and_load(name, duration, warm, conns, pin)
            samples[name].append(res)
            print(
                f"  server run {r + 1}/{runs} {name}: {res['requests_per_s']:,.0f} req/s "
                f"p50={res['p50_ms']:.2f}ms p99={res['p99_ms']:.2f}ms "
                f"non2xx={res['non_2xx']} server cpu={res['server_cpu_pct']:.0f}%",
                flush=True,
            )
    return samples


def analyse_server(samples) -> list[dict[str, Any]]:
    def med(name, key):
        return cm.median([s[key] for s in samples[name]])

    def runs(name, key):
        return [s[key] for s in samples[name]]

    out = []
    for name, ss in samples.items():
        rps = med(name, "requests_per_s")
        row = {
            "config": name,
            "runs": len(ss),
            "requests_per_s_median": rps,
            "requests_per_s_runs": runs(name, "requests_per_s"),
            "p50_ms_median": med(name, "p50_ms"),
            "p99_ms_median": med(name, "p99_ms"),
            "p50_ms_runs": runs(name, "p50_ms"),
            "p99_ms_runs": runs(name, "p99_ms"),
            "server_cpu_pct_runs": [round(x, 1) for x in runs(name, "server_cpu_pct")],
            "server_cpu_us_per_request_median": med(name, "server_cpu_us_per_request"),
            "server_cpu_us_per_request_runs": runs(name, "server_cpu_us_per_request"),
            "non_2xx_total": sum(s["non_2xx"] for s in ss),
            "socket_errors": [s["socket_errors"] for s in ss if s["socket_errors"]],
            "response": ss[0]["response"],
            "loadavg_after_runs": runs(name, "loadavg_after"),
            "wrk_stdout": runs(name, "wrk_stdout"),
        }
        for ref in (BARE, PEER):
            if ref in samples:
                row[f"rps_ratio_vs_{ref}"] = rps / med(ref, "requests_per_s")
                # the same, from server CPU per request (ref CPU/req / this CPU/req)
                row[f"cpu_ratio_vs_{ref}"] = med(ref, "server_cpu_us_per_request") / med(
                    name, "server_cpu_us_per_request"
                )
                # paired: the same run index (run r of both configs: adjacent in time)
                row[f"rps_ratio_vs_{ref}_paired"] = cm.paired_median(
                    runs(name, "requests_per_s"), runs(ref, "requests_per_s"), ratio=True
                )
        out.append(row)
    return out


# --------------------------------------------------------------------------- targets

INPROC_LIMIT_US = 15.0
VS_BARE_MIN = 0.85
VS_PEER_MIN = 8.0


def targets(inproc: list[dict] | None, server: list[dict] | None) -> list[dict[str, Any]]:
    out = []

    def add(label, ok, detail):
        out.append({"target": label, "pass": ok, "detail": detail})

    if inproc:
        rows = {x["config"]: x for x in inproc}
        r = rows[BUTTRESS]
        o = r["overhead_us_vs_bare"]
        add(
            f"in-process: the whole buttress stack adds <= {INPROC_LIMIT_US:.0f} µs/request "
            "over bare Starlette",
            o <= INPROC_LIMIT_US,
            f"{o:.1f} µs ({o / INPROC_LIMIT_US:.0%} of the limit, paired "
            f"{r['overhead_us_vs_bare_paired']:.1f} µs; bare "
            f"{r['us_per_request_median'] - o:.1f} µs, "
            f"buttress {r['us_per_request_median']:.1f} µs)",
        )
        if FASTAPI in rows and FASTAPI_BUTTRESS in rows:
            f, fb = rows[FASTAPI], rows[FASTAPI_BUTTRESS]
            o = fb["us_per_request_median"] - f["us_per_request_median"]
            paired = cm.paired_median(fb["samples_us"], f["samples_us"], ratio=False)
            add(
                f"in-process: the whole buttress stack adds <= {INPROC_LIMIT_US:.0f} µs/request "
                "over bare FastAPI",
                o <= INPROC_LIMIT_US,
                f"{o:.1f} µs ({o / INPROC_LIMIT_US:.0%} of the limit, paired {paired:.1f} µs; "
                f"fastapi {f['us_per_request_median']:.1f} µs, "
                f"fastapi + buttress {fb['us_per_request_median']:.1f} µs)",
            )
    if server:
        r = {x["config"]: x for x in server}[BUTTRESS]
        if "rps_ratio_vs_bare" in r:
            x = r["rps_ratio_vs_bare"]
            add(
                f"uvicorn: buttress >= {VS_BARE_MIN}x bare's requests/s",
                x >= VS_BARE_MIN,
                f"{x:.2f}x (paired {r['rps_ratio_vs_bare_paired']:.2f}x; by server CPU per "
                f"request {r['cpu_ratio_vs_bare']:.2f}x)",
            )
        if "rps_ratio_vs_peer" in r:
            x = r["rps_ratio_vs_peer"]
            add(
                f"uvicorn: buttress >= {VS_PEER_MIN:.0f}x the peer stack's requests/s",
                x >= VS_PEER_MIN,
                f"{x:.1f}x (paired {r['rps_ratio_vs_peer_paired']:.1f}x; by server CPU per "
                f"request {r['cpu_ratio_vs_peer']:.1f}x)",
            )
        rows = {x["config"]: x for x in server}
        if PEER in rows:
            p99, peer_p99 = r["p99_ms_median"], rows[PEER]["p99_ms_median"]
            add(
                "uvicorn: buttress p99 below the peer stack's",
                p99 < peer_p99,
                f"{p99:.2f} ms vs {peer_p99:.2f} ms",
            )
        if FASTAPI in rows and FASTAPI_BUTTRESS in rows:
            fx = (
                rows[FASTAPI_BUTTRESS]["requests_per_s_median"]
                / rows[FASTAPI]["requests_per_s_median"]
            )
            add(
                f"uvicorn: fastapi + buttress >= {VS_BARE_MIN}x bare FastAPI's requests/s",
                fx >= VS_BARE_MIN,
                f"{fx:.2f}x",
            )
    return out


# --------------------------------------------------------------------------- profile


async def _profile_requests(app, n: int) -> None:
    for _ in range(n):
        c = await one_request(app)
        assert c.status == 200


def profile(n: int, top: int) -> str:
    """cProfile over n in-process requests through the full buttress stack."""
    app = create_buttress()
    asyncio.run(_profile_requests(app, 2_000))  # warm

    async def go():
        pr = cProfile.Profile()
        pr.enable()
        await _profile_requests(app, n)
        pr.disable()
        return pr

    pr = asyncio.run(go())
    buf = io.StringIO()
    st = pstats.Stats(pr, stream=buf)
    st.sort_stats("tottime").print_stats(top)
    buf.write(f"\n--- only src/buttress/asgi (tottime, {n:,} requests) ---\n")
    st.sort_stats("tottime").print_stats(r"buttress[/\\]asgi", top)
    buf.write("\n--- only buttress (cumulative) ---\n")
    st.sort_stats("cumulative").print_stats(r"buttress[/\\]", top)
    return buf.getvalue()


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=50_000, help="requests/measurement: bare, buttress")
    ap.add_argument("--feature-n", type=int, default=10_000, help="... per-feature rows (10,000)")
    ap.add_argument("--peer-n", type=int, default=4_000, help="... the peer stack (~1 ms/req)")
    ap.add_argument("--repeat", type=int, default=5, help="in-process repetitions (5)")
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="(a) times the thread's CPU time (cpu, default) or the wall clock (wall)",
    )
    ap.add_argument("--warmup", type=int, default=2_000, help="warm-up requests per config")
    ap.add_argument("--no-features", action="store_true", help="skip the per-feature rows")
    ap.add_argument("--skip-inproc", action="store_true")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--server-runs", type=int, default=2)
    ap.add_argument("--duration", type=int, default=10, help="wrk -d seconds (10)")
    ap.add_argument("--server-warmup", type=int, default=2, help="wrk warm-up seconds (2)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-pin", action="store_true", help="do not pin (driver/wrk 0, uvicorn 1)")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="only print a cProfile of N in-process requests through the buttress stack",
    )
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--out", default="asgi", help="bench/results/<OUT>.json, or a .json path")
    args = ap.parse_args()
    _clock[0] = CLOCKS[args.clock]

    missing = [m for m in PEER_MODULES if _missing(m)]
    if missing:
        sys.exit(f"missing peer libraries: {', '.join(missing)} (pip install -e '.[bench]')")
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    pinned = cm.pin_self(0) if pin else None
    if args.profile:
        print(profile(args.profile, 30))
        return
    env = cm.env_info()
    on, feats = feature_table()
    print(
        f"asgi: python={env['python']} cpus={env['cpu_count']} pinned={pinned} "
        f"buttress@{env['git']['commit']}{' +uncommitted src' if env['git']['src_dirty'] else ''} "
        f"load={env['loadavg_at_start']}",
        flush=True,
    )
    warn = cm.load_warning()
    if warn:
        print(warn, flush=True)
    t0 = time.time()
    md = args.markdown
    payload: dict[str, Any] = {
        "benchmark": "asgi",
        "env": env,
        "versions": cm.versions(DISTS),
        "params": {
            "clock": args.clock,
            "n": args.n,
            "feature_n": args.feature_n,
            "peer_n": args.peer_n,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "server_runs": args.server_runs,
            "wrk": f"-t1 -c{args.connections} -d{args.duration}s --latency",
            "server_warmup_s": args.server_warmup,
            "uvicorn": "1 worker, --http httptools, --loop asyncio, --no-access-log",
            "pinned": pin,
            "request_headers": [k.decode() for k, _ in REQ_HEADERS],
            "buttress_settings": {k: repr(v) for k, v in on.items()},
            "buttress_logging": "configure_logging(json=True, stream=open(os.devnull, 'w'))",
            "features_switched": [f"{label}: {name}={off!r}" for label, name, off in feats],
            "slowapi_limit": HIGH_LIMIT,
        },
    }
    inproc_rows = server_rows = None
    tables: dict[str, str] = {}
    out_lines: list[str] = []

    def emit(title: str, key: str, headers: list[str], rows: list[list[Any]]) -> None:
        tables[key] = cm.table(headers, rows, markdown=True)
        out_lines.extend(["", title, cm.table(headers, rows, markdown=md)])

    added = buttress_response_headers()
    payload["buttress_added_headers"] = {
        "count": len(added),
        "bytes": sum(len(k) + len(v) + 4 for k, v in added),
        "names": [k.decode() for k, _ in added],
    }
    if not args.skip_inproc:
        payload["access_log_line"] = asyncio.run(check_access_log())
        apps: dict[str, tuple[Callable[[], Any], int]] = {
            BARE: (create_bare, args.n),
            BUTTRESS: (create_buttress, args.n),
            PEER: (create_peer, args.peer_n),
            HEADERS_CONTROL: (create_headers_control, args.feature_n),
            FASTAPI: (create_fastapi, args.n),
            FASTAPI_BUTTRESS: (create_fastapi_buttress, args.n),
        }
        if not args.no_features:
            apps.update({k: (f, args.feature_n) for k, f in feature_apps().items()})
        samples, bad, shapes = asyncio.run(run_inproc(apps, args.repeat, args.warmup))
        inproc_rows = analyse_inproc(apps, samples, bad, shapes)
        payload["inprocess"] = inproc_rows
        main_rows = [r for r in inproc_rows if r["config"] in MAIN_APPS]
        emit(
            f"(a) in-process ASGI, µs/request ({args.clock} time), median of {args.repeat} reps "
            "(overhead = minus bare)",
            "inprocess",
            ["config", "N", "µs/req", "min–max", "overhead µs", "paired", "x bare", "req/s 1 core"],
            [
                [
                    r["config"],
                    r["n"],
                    r["us_per_request_median"],
                    f"{r['us_per_request_min']:.1f}–{r['us_per_request_max']:.1f}",
                    r["overhead_us_vs_bare"],
                    r["overhead_us_vs_bare_paired"],
                    f"{r['ratio_vs_bare']:.2f}x",
                    r["requests_per_s_single_core"],
                ]
                for r in main_rows
            ],
        )
        feat_rows = [
            r for r in inproc_rows if r["config"].startswith(("buttress - ", "buttress + "))
        ]
        if feat_rows:
            full = {r["config"]: r for r in inproc_rows}[BUTTRESS]
            emit(
                "(a') what each feature costs: the buttress stack with it switched off "
                "(cost = full stack - row; '+' rows: an opt-in setting added, cost = row - full)",
                "features",
                ["config", "N", "µs/req", "overhead µs vs bare", "feature cost µs", "paired"],
                [
                    [
                        BUTTRESS + " (everything on)",
                        full["n"],
                        full["us_per_request_median"],
                        full["overhead_us_vs_bare"],
                        "-",
                        "-",
                    ]
                ]
                + [
                    [
                        r["config"],
                        r["n"],
                        r["us_per_request_median"],
                        r["overhead_us_vs_bare"],
                        r["feature_cost_us"],
                        r["feature_cost_us_paired"],
                    ]
                    for r in feat_rows
                ],
            )
    if not args.skip_server:
        if shutil.which("wrk") is None:
            msg = "(b) skipped: wrk is not installed (apt-get install -y wrk)"
            print(msg, flush=True)
            payload["server_skipped"] = msg
        else:
            samples_s = run_server(
                [*MAIN_APPS, *SERVER_EXTRA],
                args.server_runs,
                args.duration,
                args.server_warmup,
                args.connections,
                pin,
            )
            server_rows = analyse_server(samples_s)
            payload["server"] = server_rows
            emit(
                f"(b) uvicorn (1 worker, httptools, asyncio) + wrk -t1 -c{args.connections} "
                f"-d{args.duration}s, {args.server_runs} alternating runs each, medians",
                "server",
                [
                    "config",
                    "req/s",
                    "runs",
                    "p50 ms",
                    "p99 ms",
                    "non-2xx",
                    "server CPU %",
                    "CPU µs/req",
                    "x bare",
                    "x peer",
                    "x bare (CPU/req)",
                    "x peer (CPU/req)",
                ],
                [
                    [
                        r["config"],
                        r["requests_per_s_median"],
                        " / ".join(f"{x:,.0f}" for x in r["requests_per_s_runs"]),
                        r["p50_ms_median"],
                        r["p99_ms_median"],
                        r["non_2xx_total"],
                        " / ".join(f"{x:.0f}" for x in r["server_cpu_pct_runs"]),
                        r["server_cpu_us_per_request_median"],
                        f"{r['rps_ratio_vs_bare']:.2f}x",
                        f"{r['rps_ratio_vs_peer']:.2f}x",
                        f"{r['cpu_ratio_vs_bare']:.2f}x",
                        f"{r['cpu_ratio_vs_peer']:.2f}x",
                    ]
                    for r in server_rows
                ],
            )
            starved = [r["config"] for r in server_rows if min(r["server_cpu_pct_runs"]) < 90]
            if starved:  # req/s then measures the share of the core it got, not its cost
                out_lines.append(
                    f"\nwarning: uvicorn had < 90 % of its core in some runs of {starved}: "
                    "other processes ran on it; compare the CPU µs/req columns"
                )
    tgts = targets(inproc_rows, server_rows)
    payload["targets"] = tgts
    payload["tables"] = tables
    env["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    wall = time.time() - t0
    payload["wall_s"] = round(wall, 1)
    print("\n".join(out_lines))
    a = payload["buttress_added_headers"]
    print(
        f"\nbuttress adds {a['count']} response headers ({a['bytes']:,} bytes) to /hello; "
        f"'{HEADERS_CONTROL}' is the bare app sending just those"
    )
    print("\nTargets" + ("" if tgts else ": none measured"))
    for t in tgts:
        print(f"  {cm.verdict(t['pass'])}  {t['target']}: {t['detail']}")
    print("\nversions: " + ", ".join(f"{k} {v}" for k, v in payload["versions"].items()))
    print(f"load average: start {env['loadavg_at_start']}, end {env['loadavg_at_end']}")
    path = cm.write_json(args.out, payload)
    print(f"\nwrote {path} (wall {wall:.0f} s)")


def _missing(module: str) -> bool:
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec(module) is None


if __name__ == "__main__":
    main()
