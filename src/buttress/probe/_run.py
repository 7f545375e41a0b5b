"""The probe run: every check in order, each a pass, warn, fail or n/a with evidence.

The order matters: the rate-limit burst runs last among the checks (it spends the budget
the ``X-Forwarded-For`` check needs). Every check reads `Exchange` objects from the bounded
`Client`, so a target that hangs, resets or answers garbage gives failed checks quickly.

The modes asked for follow the checks, in this order: the service is started first
(``start``), then the checks, the load (``load``), the dependency fault (``fault``) and
last the shutdown under load (it ends the service). The report holds the rules of the
checks and of the modes that ran (`GROUPS`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import itertools
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from buttress import __version__
from buttress._urls import redacted as redact
from buttress.probe._compare import compare_runs, merge_status
from buttress.probe._http import Client, Exchange
from buttress.probe._idem import example_body, idempotency
from buttress.probe._lifecycle import Service, fault, shutdown
from buttress.probe._load import LoadPlan, Progress, run_load
from buttress.probe._rules import GROUPS, RULES
from buttress.probe._threshold import Stats
from buttress.probe._watch import WatchOptions, watch
from buttress.report import Check, CheckStatus, Finding, Location, Report

__all__ = ["ProbeOptions", "is_loopback", "probe", "run"]

PASS, FAIL, WARN, NA = (
    CheckStatus.PASS,
    CheckStatus.FAIL,
    CheckStatus.WARN,
    CheckStatus.NOT_APPLICABLE,
)
MAX_BURST = 500
BURST_CONCURRENCY = 8
LIVE_PATHS = ("/health/live", "/livez", "/healthz", "/health")
READY_PATHS = ("/health/ready", "/readyz", "/healthz", "/health")
HEALTH_STATUSES = {"pass", "warn", "fail", "ok", "up", "down"}
PROBLEM = "application/problem+json"
REQUEST_ID_HEADERS = ("x-request-id", "x-correlation-id", "request-id", "x-trace-id")
LEAKS = (
    "Traceback (most recent call last)",
    'File "/',
    "Werkzeug Debugger",
    "DEBUG = True",
    "Exception Value:",
    "at java.",
    "at org.",
    "node_modules",
    "<title>Internal Server Error</title>",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeOptions:
    """What to probe and how hard (the command line's options)."""

    url: str
    timeout: float = 5.0  # seconds, per request, in total
    health: tuple[str, ...] = ()  # liveness path, then readiness path
    write_route: str | None = None  # "POST /orders"
    write_body: str | None = None  # JSON; else from /openapi.json's schema, else {}
    burst: int = 50
    burst_route: str | None = None  # a GET path
    budget: float = 60.0  # seconds for the checks, the burst included
    load: LoadPlan | None = None  # the load and its thresholds (PRB060-PRB062)
    load_route: str | None = None  # the load's GET path when ``load.path`` is "" (found)
    start: tuple[str, ...] = ()  # start this command, and SIGTERM it under load at the end
    start_timeout: float = 30.0  # seconds for the started service to answer
    shutdown_timeout: float = 30.0  # seconds from SIGTERM to exit before it is killed
    fault: tuple[str, ...] = ()  # cut a dependency (PRB080-PRB082)
    recover: tuple[str, ...] = ()  # and restore it
    fault_timeout: float = 30.0  # seconds to wait for readiness 503, and for recovery
    compare: str | None = None  # parity: the same checks on this URL too (PRB095-PRB099)
    watch: WatchOptions | None = None  # the deploy gate instead of the checks (PRB090-PRB091)

    def modes(self) -> tuple[str, ...]:
        """The rule groups this run fills (`GROUPS`): the checks, then the modes asked.

        The deploy gate runs alone: it watches a service just deployed, it does not probe it.
        """
        if self.watch is not None:
            return ("watch",)
        asked = (
            ("load", self.load),
            ("fault", self.fault),
            ("shutdown", self.start),
            ("compare", self.compare),
        )
        return ("checks", *(name for name, value in asked if value))


def is_loopback(url: str) -> bool:
    """True when ``url``'s host is ``localhost`` or a loopback address (no DNS asked).

    Only the name ``localhost`` itself: ``anything.localhost`` is a lookup the resolver may
    send to DNS, which may answer with any address.
    """
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class _Outcome:
    status: CheckStatus
    evidence: str
    where: str = ""  # the URL a failure is located at


@dataclass(slots=True)
class _State:
    client: Client
    opts: ProbeOptions
    outcomes: dict[str, _Outcome] = field(default_factory=dict)
    samples: list[Exchange] = field(default_factory=list)  # answers for header checks
    errors: list[Exchange] = field(default_factory=list)  # the error probes
    get_paths: list[str] = field(default_factory=list)
    post_paths: list[str] = field(default_factory=list)
    live: Exchange | None = None
    ready: Exchange | None = None
    openapi: Any = None
    write_schemas: dict[str, Any] = field(default_factory=dict)  # "POST /path" -> schema
    load_stats: Stats | None = None

    def set(self, rid: str, status: CheckStatus, evidence: str, where: str = "") -> None:
        self.outcomes[rid] = _Outcome(status, evidence, where or self.client.url("/"))


def _problem_4xx(seen: Exchange) -> bool:
    return 400 <= seen.status < 500 and seen.content_type == PROBLEM


# -- discovery -------------------------------------------------------------------


def _fill(path: str, params: Iterable[Any]) -> str:
    kinds = {}
    for p in params:
        if isinstance(p, dict) and p.get("in") == "path":
            schema = p.get("schema") if isinstance(p.get("schema"), dict) else {}
            kinds[str(p.get("name"))] = schema.get("type", "string") if schema else "string"
    return re.sub(
        r"\{([^}/]+)\}",
        lambda m: "1" if kinds.get(m.group(1)) in ("integer", "number") else "probe",
        path,
    )


async def _discover(st: _State) -> None:
    seen = await st.client.send("GET", "/openapi.json")
    doc = seen.json() if seen.status == 200 else None
    paths = doc.get("paths") if isinstance(doc, dict) else None
    if not isinstance(paths, dict):
        return
    st.openapi = doc
    for path, ops in list(paths.items())[:200]:
        if not isinstance(path, str) or not path.startswith("/") or not isinstance(ops, dict):
            continue
        shared = ops.get("parameters", []) if isinstance(ops.get("parameters"), list) else []
        for method in ("get", "post"):
            op = ops.get(method)
            if not isinstance(op, dict):
                continue
            own = op.get("parameters", []) if isinstance(op.get("parameters"), list) else []
            filled = _fill(path, [*shared, *own])
            (st.get_paths if method == "get" else st.post_paths).append(filled)
        for method in ("post", "put", "patch"):
            op = ops.get(method)
            body = op.get("requestBody") if isinstance(op, dict) else None
            content = body.get("content") if isinstance(body, dict) else None
            media = content.get("application/json") if isinstance(content, dict) else None
            if isinstance(op, dict) and isinstance(media, dict) and "schema" in media:
                own = op.get("parameters", []) if isinstance(op.get("parameters"), list) else []
                key = f"{method.upper()} {_fill(path, [*shared, *own])}"
                st.write_schemas[key] = media["schema"]


# -- health ----------------------------------------------------------------------


async def _find(st: _State, paths: Iterable[str], ok: tuple[int, ...]) -> Exchange | None:
    tried: list[Exchange] = []
    for path in dict.fromkeys(paths):
        seen = await st.client.send("GET", path)
        tried.append(seen)
        if seen.status in ok:
            return seen
    return None


def _tried(paths: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(paths))


async def _health(st: _State) -> None:
    given = st.opts.health
    live_paths = [*given[:1], *LIVE_PATHS]
    ready_paths = [*given[1:2], *given[:1], *READY_PATHS]
    live = await _find(st, live_paths, (200,))
    st.live = live
    if live is None:
        st.set("PRB001", FAIL, f"no 200 from GET {_tried(live_paths)}")
    else:
        st.samples.append(live)
        st.set("PRB001", PASS, live.short(), live.url)
    ready = await _find(st, ready_paths, (200, 503))
    st.ready = ready
    if ready is None:
        st.set("PRB002", FAIL, f"no 200 or 503 from GET {_tried(ready_paths)}")
    elif ready.status == 503:
        st.set("PRB002", FAIL, f"{ready.short()}: the service says it is not ready", ready.url)
    elif live is not None and ready.url == live.url:
        st.set("PRB002", WARN, f"{ready.short()}: one endpoint serves liveness and readiness")
    else:
        st.set("PRB002", PASS, ready.short(), ready.url)
    found = [x for x in (live, ready) if x is not None]
    if len(found) == 2 and found[0].url == found[1].url:
        found = found[:1]
    if not found:
        st.set("PRB003", NA, "no health endpoint found")
        st.set("PRB004", NA, "no health endpoint found")
        return
    shapes = []
    verdict = PASS
    for seen in found:
        body = seen.json()
        status = body.get("status") if isinstance(body, dict) else None
        good = isinstance(status, str) and status.lower() in HEALTH_STATUSES
        if seen.content_type == "application/health+json" and good:
            shapes.append(f"{seen.short()} status={status}")
        elif good:
            verdict = WARN if verdict is PASS else verdict
            shapes.append(f"{seen.short()} has a status but not application/health+json")
        else:
            verdict = FAIL
            shapes.append(f"{seen.short()} has no health+json status field")
    st.set("PRB003", verdict, "; ".join(shapes), found[0].url)
    timings = []
    worst = 0.0
    failed = ""
    for seen in found:
        samples = [seen.elapsed]
        for _ in range(2):
            again = await st.client.send("GET", _path(seen.url))
            if not again.ok:
                failed = again.short()
                break
            samples.append(again.elapsed)
        worst = max(worst, *samples)
        timings.append(f"{_path(seen.url)} max {max(samples) * 1000:.0f} ms of {len(samples)}")
    if failed:
        st.set("PRB004", FAIL, f"{failed}; " + "; ".join(timings), found[0].url)
    elif worst < 0.5:
        st.set("PRB004", PASS, "; ".join(timings))
    else:
        st.set("PRB004", WARN, "slower than 500 ms: " + "; ".join(timings), found[0].url)


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


# -- errors ----------------------------------------------------------------------


def _write_route(st: _State) -> tuple[str, str] | None:
    if st.opts.write_route:
        method, _, path = st.opts.write_route.strip().partition(" ")
        return method.upper(), path.strip() or "/"
    if st.post_paths:
        return "POST", st.post_paths[0]
    return None


async def _errors(st: _State) -> None:
    client = st.client
    unknown = await client.send("GET", f"/buttress-probe-{secrets.token_hex(4)}-missing")
    st.errors.append(unknown)
    if unknown.ok:
        st.samples.append(unknown)
    verdict = PASS if _problem_4xx(unknown) else FAIL
    st.set("PRB010", verdict, unknown.short(), unknown.url)

    target = _path(st.live.url) if st.live is not None else "/"
    wrong = await client.send("DELETE", target)
    st.errors.append(wrong)
    if wrong.status == 405 and wrong.content_type == PROBLEM:
        allow = wrong.header("allow")
        st.set("PRB011", PASS, wrong.short() + (f", Allow: {allow}" if allow else ""))
    elif _problem_4xx(wrong):
        st.set("PRB011", WARN, f"{wrong.short()} (4xx problem+json, not 405)", wrong.url)
    else:
        st.set("PRB011", FAIL, wrong.short(), wrong.url)

    route = _write_route(st)
    if route is None:
        note = "no write route: give --write-route 'POST /path' (no POST in /openapi.json)"
        st.set("PRB012", NA, note)
        st.set("PRB013", NA, note)
    else:
        method, path = route
        headers = {
            "content-type": "application/json",
            "idempotency-key": f"buttress-probe-{secrets.token_hex(8)}",
        }
        bad = await client.send(method, path, headers=headers, content=b'{"broken": ')
        st.errors.append(bad)
        st.set("PRB012", PASS if _problem_4xx(bad) else FAIL, bad.short(), bad.url)
        headers["idempotency-key"] = f"buttress-probe-{secrets.token_hex(8)}"
        huge = await client.send_large(method, path, size=2 * 1024 * 1024, headers=headers)
        st.errors.append(huge)
        evidence = f"2 MiB body: {huge.short()}"
        if huge.status == 413 and huge.content_type == PROBLEM:
            st.set("PRB013", PASS, evidence)
        elif _problem_4xx(huge):
            st.set("PRB013", WARN, f"{evidence} (refused, but not as too large)", huge.url)
        elif not huge.ok and huge.sent and "reset" in huge.error and _answers(st):
            st.set("PRB013", WARN, f"{evidence} (closed without an answer)", huge.url)
        else:
            st.set("PRB013", FAIL, evidence, huge.url)

    answered = [e for e in st.errors if e.ok]
    if not answered:
        st.set("PRB014", FAIL, "no error probe got an answer: " + st.errors[0].error)
    else:
        bad_ones = []
        for seen in answered:
            text = seen.body.decode("utf-8", "replace")
            leak = next((m for m in LEAKS if m in text), "")
            if seen.status >= 500 or leak:
                bad_ones.append(seen.short() + (f" contains {leak!r}" if leak else ""))
        if bad_ones:
            st.set("PRB014", FAIL, "; ".join(bad_ones), answered[0].url)
        else:
            st.set("PRB014", PASS, f"{len(answered)} error answers, no 5xx, no internals")
    if not answered:
        st.set("PRB015", FAIL, "no error probe got an answer")
    else:
        missing = [s.short() for s in answered if not _request_id(s)]
        if missing:
            st.set("PRB015", FAIL, "no request id header: " + "; ".join(missing))
        else:
            ids = {_request_id(s) for s in answered}
            st.set("PRB015", PASS, f"{len(answered)} error answers carry {', '.join(ids)}")


# -- idempotency -----------------------------------------------------------------


def _write_body(st: _State, method: str, path: str) -> Any:
    import json  # noqa: PLC0415

    if st.opts.write_body is not None:
        return json.loads(st.opts.write_body)
    schema = st.write_schemas.get(f"{method} {path}")
    if schema is None:
        return {}
    body = example_body(schema, st.openapi)
    return {} if body is None else body


async def _idempotency(st: _State) -> None:
    route = _write_route(st)
    if route is None:
        note = "no write route: give --write-route 'POST /path' (no POST in /openapi.json)"
        for rid in ("PRB050", "PRB051", "PRB052"):
            st.set(rid, NA, note)
        return
    method, path = route
    outcomes = await idempotency(st.client, method, path, _write_body(st, method, path))
    for rid, (status, evidence, where) in outcomes.items():
        st.set(rid, status, evidence, where if status is FAIL else "")


def _answers(st: _State) -> bool:
    """The target answered the other error probes (a reset is then about the body)."""
    return any(e.ok for e in st.errors[:-1])


def _request_id(seen: Exchange) -> str:
    return next((h for h in REQUEST_ID_HEADERS if seen.header(h)), "")


# -- security --------------------------------------------------------------------


def _every(st: _State, rid: str, test: Any, what: str) -> None:
    answered = [s for s in st.samples if s.ok]
    if not answered:
        st.set(rid, FAIL, "no answer to check headers on")
        return
    missing = [s for s in answered if not test(s)]
    if missing:
        shown = "; ".join(s.short() for s in missing[:3])
        st.set(rid, FAIL, f"missing {what}: {shown}", missing[0].url)
    else:
        st.set(rid, PASS, f"{what} on {len(answered)} answers")


def _frames_denied(seen: Exchange) -> bool:
    csp = seen.header("content-security-policy").lower()
    xfo = seen.header("x-frame-options").lower()
    return "frame-ancestors" in csp or xfo in ("deny", "sameorigin")


async def _security(st: _State, root: Exchange) -> None:
    if root.ok:
        st.samples.insert(0, root)
    _every(
        st,
        "PRB020",
        lambda s: s.header("x-content-type-options").lower() == "nosniff",
        "X-Content-Type-Options: nosniff",
    )
    _every(st, "PRB021", _frames_denied, "CSP frame-ancestors or X-Frame-Options")
    https = st.client.base.startswith("https://")
    answered = [s for s in st.samples if s.ok]
    hsts = [s for s in answered if "max-age=" in s.header("strict-transport-security")]
    if https:
        _every(
            st,
            "PRB022",
            lambda s: "max-age=" in s.header("strict-transport-security"),
            "Strict-Transport-Security",
        )
    elif answered and len(hsts) == len(answered):
        st.set("PRB022", PASS, "Strict-Transport-Security sent (browsers honour it over https)")
    else:
        st.set("PRB022", NA, "http target: HSTS only applies over https; probe the https URL")
    _every(
        st,
        "PRB023",
        lambda s: bool(s.header("cache-control") or s.header("referrer-policy")),
        "Cache-Control or Referrer-Policy",
    )
    if not answered:
        st.set("PRB024", FAIL, "no answer to check headers on")
    else:
        loud = []
        server = ""
        for s in answered:
            names = ("x-powered-by", "x-aspnet-version", "x-aspnetmvc-version")
            loud += [f"{name}: {s.header(name)}" for name in names if s.header(name)]
            if s.header("server"):
                server = s.header("server")
        if server and re.search(r"\d", server):
            loud.append(f"server: {server}")
        if loud:
            st.set("PRB024", FAIL, "; ".join(sorted(set(loud))), answered[0].url)
        elif server:
            st.set("PRB024", WARN, f"server: {server} names the stack (no version)")
        else:
            st.set("PRB024", PASS, "no Server version, no X-Powered-By")
    await _cors(st)


async def _cors(st: _State) -> None:
    origin = f"https://buttress-probe-{secrets.token_hex(4)}.example"
    path = st.get_paths[0] if st.get_paths else "/"
    plain = await st.client.send("GET", path, headers={"origin": origin})
    pre = await st.client.send(
        "OPTIONS",
        path,
        headers={"origin": origin, "access-control-request-method": "POST"},
    )
    answered = [s for s in (plain, pre) if s.ok]
    if not answered:
        st.set("PRB025", FAIL, f"no answer: {plain.short()}")
        return
    worst = PASS
    notes = []
    for s in answered:
        allow = s.header("access-control-allow-origin")
        creds = s.header("access-control-allow-credentials").lower() == "true"
        if (allow in (origin, "*") and creds) or (allow == "null" and creds):
            worst = FAIL
            notes.append(f"{s.short()} allows {allow} with credentials")
        elif allow == origin:
            worst = WARN if worst is PASS else worst
            notes.append(f"{s.short()} reflects Origin {origin} (no credentials)")
        else:
            notes.append(f"{s.short()} Access-Control-Allow-Origin: {allow or '(none)'}")
    st.set("PRB025", worst, f"Origin: {origin}: " + "; ".join(notes), answered[0].url)


_REMAINING = re.compile(r"(?:^|[;,\s])r=(\d+)")


def _remaining(seen: Exchange) -> int | None:
    """The remaining quota: RateLimit (draft 8+), RateLimit-Remaining or X-RateLimit-*."""
    values = []
    for value in seen.headers.get_list("ratelimit"):
        values += [int(m) for m in _REMAINING.findall(value)]
    for name in ("ratelimit-remaining", "x-ratelimit-remaining"):
        raw = seen.header(name).split(",")[0].strip()
        if raw.isdigit():
            values.append(int(raw))
    return min(values) if values else None


async def _limited_route(st: _State) -> tuple[str, Exchange | None]:
    """The GET route the burst aims at: given, else the first one that reports a quota."""
    if st.opts.burst_route:
        return st.opts.burst_route, None
    skip = ("/health", "/livez", "/readyz", "/healthz", "/metrics", "/docs", "/redoc", "/openapi")
    candidates = [p for p in st.get_paths if not p.startswith(skip)][:6]
    first_ok: str | None = None
    for path in candidates:
        seen = await st.client.send("GET", path)
        if _remaining(seen) is not None:
            return path, seen
        if first_ok is None and 200 <= seen.status < 300:
            first_ok = path
    return first_ok or "/", None


async def _forwarded(st: _State, path: str) -> None:
    counters = []
    shown = []
    for xff in ("", "203.0.113.10", "198.51.100.20"):
        headers = {"x-forwarded-for": xff, "x-real-ip": xff} if xff else {}
        seen = await st.client.send("GET", path, headers=headers)
        counters.append(_remaining(seen))
        shown.append(
            f"{'XFF ' + xff if xff else 'no XFF'}: {seen.short()} remaining={counters[-1]}"
        )
    known = [c for c in counters if c is not None]
    # a pair says something only while the budget is not spent: (1, 0, 0) is one budget
    telling = [(a, b) for a, b in itertools.pairwise(known) if a > 0]
    if len(known) < len(counters):
        st.set("PRB026", NA, f"GET {path} reports no RateLimit remaining: " + "; ".join(shown))
    elif not telling:
        st.set("PRB026", NA, "the budget is spent (run again later): " + "; ".join(shown))
    elif all(a > b for a, b in telling):
        st.set("PRB026", PASS, "one budget, decreasing: " + "; ".join(shown))
    else:
        st.set("PRB026", FAIL, "a forged X-Forwarded-For gets another budget: " + "; ".join(shown))


# -- rate limits -----------------------------------------------------------------


async def _burst(st: _State, path: str) -> None:
    total = max(1, min(st.opts.burst, MAX_BURST))
    client = st.client
    end = min(client.deadline, time.monotonic() + 20.0)
    answers: list[Exchange] = []
    state = {"next": 0, "stop": False}

    async def worker() -> None:
        while not state["stop"] and state["next"] < total and time.monotonic() < end:
            state["next"] += 1
            seen = await client.send("GET", path)
            answers.append(seen)
            if seen.status == 429 or seen.status >= 500 or client.gave_up:
                state["stop"] = True

    await asyncio.gather(*(worker() for _ in range(min(BURST_CONCURRENCY, total))))
    first_429 = next((i for i, s in enumerate(answers) if s.status == 429), None)
    first_5xx = next((i for i, s in enumerate(answers) if s.status >= 500), None)
    failed = [s for s in answers if not s.ok]
    head = f"burst of up to {total} GET {path} ({BURST_CONCURRENCY} at a time): {len(answers)} sent"
    if first_5xx is not None and (first_429 is None or first_5xx < first_429):
        bad = answers[first_5xx]
        st.set("PRB030", FAIL, f"{head}; {bad.short()} before any 429", bad.url)
    elif first_429 is not None:
        st.set("PRB030", PASS, f"{head}; 429 at request {first_429 + 1}")
    elif failed and len(failed) == len(answers):
        st.set("PRB030", FAIL, f"{head}; {failed[0].short()}", failed[0].url)
    else:
        note = f"; {len(failed)} without an answer" if failed else ""
        st.set("PRB030", WARN, f"{head}; no 429 within the burst{note}")
    if first_429 is None:
        st.set("PRB031", NA, "no 429 seen")
        return
    limited = answers[first_429]
    retry = limited.header("retry-after")
    fields = [
        name
        for name in (
            "ratelimit",
            "ratelimit-policy",
            "ratelimit-remaining",
            "x-ratelimit-remaining",
        )
        if limited.header(name)
    ]
    evidence = (
        f"{limited.short()} Retry-After: {retry or '(none)'}; "
        f"fields: {', '.join(fields) or '(none)'}"
    )
    if retry and fields:
        st.set("PRB031", PASS, evidence)
    elif retry:
        st.set("PRB031", WARN, evidence + " (no RateLimit fields)", limited.url)
    else:
        st.set("PRB031", FAIL, evidence, limited.url)


# -- metrics ---------------------------------------------------------------------

_TYPE = re.compile(r"^# TYPE (\S+) (counter|histogram)\s*$", re.MULTILINE)


async def _metrics(st: _State) -> None:
    seen = await st.client.send("GET", "/metrics")
    if seen.status in (401, 403):
        st.set("PRB040", NA, f"{seen.short()}: needs a token this probe does not have")
        st.set("PRB041", PASS, f"{seen.short()}: refused without a token")
        return
    if seen.status != 200:
        st.set("PRB040", FAIL, seen.short(), seen.url)
        st.set("PRB041", NA, f"{seen.short()}: no /metrics")
        return
    types = _TYPE.findall(seen.body.decode("utf-8", "replace"))
    counters = [n for n, t in types if t == "counter" and "request" in n]
    histograms = [
        n
        for n, t in types
        if t == "histogram"
        and "request" in n
        and ("duration" in n or "latency" in n or "seconds" in n)
    ]
    if counters and histograms:
        st.set("PRB040", PASS, f"{seen.short()}: {counters[0]}, {histograms[0]}")
    else:
        missing = [
            w
            for w, got in (("request counter", counters), ("duration histogram", histograms))
            if not got
        ]
        st.set("PRB040", FAIL, f"{seen.short()}: no {' and no '.join(missing)}", seen.url)
    outside = await st.client.send(
        "GET",
        "/metrics",
        headers={"x-forwarded-for": "203.0.113.7", "forwarded": "for=203.0.113.7"},
    )
    if outside.status in (401, 403, 404):
        st.set(
            "PRB041", PASS, f"forwarded for 203.0.113.7: {outside.short()} (plain: {seen.status})"
        )
    else:
        st.set(
            "PRB041",
            WARN,
            f"forwarded for 203.0.113.7: {outside.short()}; from here this probe cannot tell "
            "whether the world can read it: check the proxy blocks /metrics",
            outside.url,
        )


# -- the run ---------------------------------------------------------------------


async def checks(opts: ProbeOptions, *, record: bool = False) -> _State:
    """The checks (PRB001-PRB052) against ``opts.url``; the state with every outcome."""
    client = Client(opts.url, timeout=opts.timeout, budget=opts.budget, record=record)
    st = _State(client=client, opts=opts)
    try:
        root = await client.send("GET", "/")
        await _discover(st)
        await _health(st)
        await _errors(st)
        await _security(st, root)
        await _metrics(st)
        await _idempotency(st)
        route, _ = await _limited_route(st)
        await _forwarded(st, route)
        await _burst(st, route)
    finally:
        await client.aclose()
    return st


def health_paths(st: _State) -> tuple[str, str]:
    """The liveness and readiness paths found (else the given ones, else buttress's)."""
    given = st.opts.health
    live = _path(st.live.url) if st.live is not None else (given[0] if given else LIVE_PATHS[0])
    ready = (
        _path(st.ready.url)
        if st.ready is not None
        else (given[1] if len(given) > 1 else READY_PATHS[0])
    )
    return live, ready


def load_route(st: _State) -> str:
    """The load's route: given, else the first plain GET route of /openapi.json, else liveness."""
    if st.opts.load_route:
        return st.opts.load_route
    skip = ("/health", "/livez", "/readyz", "/healthz", "/metrics", "/docs", "/redoc", "/openapi")
    plain = [p for p in st.get_paths if not p.startswith(skip) and "probe" not in p]
    return plain[0] if plain else health_paths(st)[0]


async def _load(st: _State, plan: LoadPlan, on_progress: Any) -> None:
    client = Client(
        st.opts.url,
        timeout=st.opts.timeout,
        budget=plan.duration + st.opts.timeout + 5,
        give_up=0,
        connections=plan.concurrency,
    )
    started = time.monotonic()
    try:
        samples = await run_load(client, plan, on_progress=on_progress)
    finally:
        await client.aclose()
    stats = Stats.of(samples, seconds=time.monotonic() - started)
    head = f"{plan.describe()}: {stats.summary()}"
    for rid, kind in (("PRB060", "latency"), ("PRB061", "errors"), ("PRB062", "throughput")):
        mine = [t for t in plan.thresholds if t.kind == kind]
        if not mine:
            st.set(rid, NA, f"no {kind} threshold given; {head}")
            continue
        results = [(t, *t.check(stats)) for t in mine]
        broken = [f"{t.text} broken: {seen}" for t, ok, seen in results if not ok]
        held = [f"{t.text} held: {seen}" for t, ok, seen in results if ok]
        if broken:
            st.set(rid, FAIL, "; ".join([*broken, *held]) + f"; {head}", client.url(plan.path))
        else:
            st.set(rid, PASS, "; ".join(held) + f"; {head}")
    st.load_stats = stats


def _mode_client(opts: ProbeOptions, budget: float, connections: int = 4) -> Client:
    return Client(opts.url, timeout=opts.timeout, budget=budget, give_up=0, connections=connections)


async def run(
    opts: ProbeOptions,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    on_tick: Callable[[str], None] | None = None,
) -> Report:
    """Probe ``opts.url``; the report (never raises for anything the target does).

    ``on_progress`` sees the load while it runs; ``on_phase`` is told each phase begins;
    ``on_tick`` sees each judgement of a deploy watch.
    """
    started = time.monotonic()
    tell = on_phase or (lambda _: None)
    if opts.watch is not None:
        return await _watched(opts, opts.watch, tell, on_tick)
    if opts.compare:
        return await _compared(opts, opts.compare, tell)
    service = Service(opts.start) if opts.start else None
    try:
        if service is not None:
            tell(f"starting {' '.join(opts.start)}")
            early = await _start(service, opts)
            if early:
                return await _failed_start(opts, early, time.monotonic() - started)
        tell("checks")
        st = await checks(opts)
        if opts.load is not None:
            plan = opts.load
            if not plan.path:
                plan = dataclasses.replace(plan, path=load_route(st))
            tell(f"load: {plan.describe()}")
            await _load(st, plan, on_progress)
        live, ready = health_paths(st)
        if opts.fault:
            tell(f"fault: {' '.join(opts.fault)}")
            client = _mode_client(opts, budget=4 * opts.fault_timeout + 300)
            try:
                outcomes = await fault(
                    client,
                    fault_cmd=opts.fault,
                    recover_cmd=opts.recover or None,
                    live=live,
                    ready=ready,
                    limit=opts.fault_timeout,
                )
            finally:
                await client.aclose()
            for rid, (status, evidence) in outcomes.items():
                st.set(rid, status, evidence, st.client.url(ready) if status is FAIL else "")
        if service is not None:
            tell("shutdown: SIGTERM under load")
            await _shutdown(st, service, opts, ready)
    finally:
        if service is not None:
            service.stop()
    return _report(st, opts, time.monotonic() - started)


async def _watched(
    opts: ProbeOptions,
    watching: WatchOptions,
    tell: Callable[[str], None],
    tick: Callable[[str], None] | None,
) -> Report:
    started = time.monotonic()
    st = _State(client=Client(opts.url, timeout=opts.timeout, budget=0), opts=opts)
    await st.client.aclose()
    outcomes = await watch(watching, on_phase=tell, on_tick=tick)
    for rid, (status, evidence) in outcomes.items():
        st.set(rid, status, evidence, redact(watching.prometheus) if watching.prometheus else "")
    return _report(st, opts, time.monotonic() - started)


async def _compared(opts: ProbeOptions, other: str, tell: Callable[[str], None]) -> Report:
    started = time.monotonic()
    tell(f"checks: A {redact(opts.url)}")
    a = await checks(opts, record=True)
    tell(f"checks: B {redact(other)}")
    b = await checks(dataclasses.replace(opts, url=other), record=True)
    merged = _State(client=a.client, opts=opts)
    none = _Outcome(NA, "not run (the run's time was up)")
    for rid in GROUPS["checks"]:
        oa, ob = a.outcomes.get(rid, none), b.outcomes.get(rid, none)
        status = merge_status(oa.status, ob.status)
        evidence = f"A {oa.status.value}: {oa.evidence} | B {ob.status.value}: {ob.evidence}"
        where = oa.where if oa.status is status else ob.where
        merged.set(rid, status, evidence, where)
    parity = compare_runs(
        (
            {rid: o.status for rid, o in a.outcomes.items()},
            {rid: o.status for rid, o in b.outcomes.items()},
        ),
        (a.client.log, b.client.log),
        ([a.live, a.ready], [b.live, b.ready]),
    )
    for rid, (status, evidence) in parity.items():
        merged.set(rid, status, evidence, redact(other) if status is FAIL else "")
    report = _report(merged, opts, time.monotonic() - started)
    extra = {**report.extra, "requests": str(a.client.sent + b.client.sent)}
    return dataclasses.replace(report, target=f"{redact(opts.url)} vs {redact(other)}", extra=extra)


async def _start(service: Service, opts: ProbeOptions) -> str:
    client = _mode_client(opts, budget=opts.start_timeout + opts.timeout + 2, connections=1)
    try:
        path = opts.health[0] if opts.health else LIVE_PATHS[0]
        before = await client.send("GET", path)
        if before.ok or "refused" not in before.error:  # another process would be judged
            return (
                f"something already answers at {redact(opts.url)} ({before.short()}): stop it, or "
                "give --start a command that serves on a free port"
            )
        problem = service.start()
        if problem:
            return problem
        ready = opts.health[1] if len(opts.health) > 1 else READY_PATHS[0]
        return await service.wait_ready(client, path, ready, opts.start_timeout)
    finally:
        await client.aclose()


async def _shutdown(st: _State, service: Service, opts: ProbeOptions, ready: str) -> None:
    base = opts.load or LoadPlan(path="", concurrency=4, rate=50.0)
    plan = dataclasses.replace(
        base,
        path=base.path or load_route(st),
        duration=min(opts.shutdown_timeout + 10.0, 600.0),
    )
    budget = plan.duration + opts.timeout + 5
    client = _mode_client(opts, budget=budget, connections=plan.concurrency)
    ready_client = _mode_client(opts, budget=budget, connections=1)
    try:
        outcomes = await shutdown(
            service,
            client,
            ready_client,
            plan=plan,
            ready_path=ready,
            limit=opts.shutdown_timeout,
        )
    finally:
        await client.aclose()
        await ready_client.aclose()
    for rid, (status, evidence) in outcomes.items():
        st.set(rid, status, f"{plan.describe()}: {evidence}" if rid == "PRB070" else evidence)


async def _failed_start(opts: ProbeOptions, problem: str, duration: float) -> Report:
    st = _State(client=Client(opts.url, timeout=opts.timeout, budget=0), opts=opts)
    await st.client.aclose()
    for rid in RULES:
        st.set(rid, FAIL, f"the service did not start: {problem}")
    return _report(st, opts, duration)


def _report(st: _State, opts: ProbeOptions, duration: float) -> Report:
    checks = []
    findings = []
    wanted = {rid for mode in opts.modes() for rid in GROUPS[mode]}
    rules = tuple(r for rid, r in RULES.items() if rid in wanted)
    for definition in rules:
        rid = definition.id
        outcome = st.outcomes.get(rid, _Outcome(NA, "not run (the run's time was up)"))
        fail = outcome.status is FAIL
        checks.append(
            Check(
                rule=definition,
                status=outcome.status,
                findings=int(fail),
                evidence=outcome.evidence,
            )
        )
        if fail:
            findings.append(
                Finding(
                    rule_id=rid,
                    category=definition.category,
                    priority=definition.priority,
                    message=f"{definition.title}: no. {outcome.evidence}"[:1000],
                    location=Location(path=outcome.where or st.client.url("/")),
                    fix=definition.fix,
                    docs=definition.docs,
                    fingerprint=f"{rid}:{_path(outcome.where)}",
                )
            )
    return Report(
        tool="buttress probe",
        version=__version__,
        target=redact(opts.url),
        rules=rules,
        checks=tuple(checks),
        findings=tuple(findings),
        duration=duration,
        extra=_extra(st),
    )


def _extra(st: _State) -> dict[str, str]:
    extra = {"requests": str(st.client.sent)}
    if st.load_stats is not None:
        extra["load"] = st.load_stats.summary()
    return extra


def probe(opts: ProbeOptions) -> Report:
    """Probe synchronously (`run` in a fresh event loop)."""
    return asyncio.run(run(opts))
