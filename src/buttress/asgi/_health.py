"""Health endpoints (pure ASGI): liveness, readiness and an ``application/health+json`` report.

`HealthMiddleware` answers four paths itself (each settable, with aliases such as
``/ping``) and passes everything else to the app:

* ``/health/live``: the process only, never a dependency (one database blip must not make
  the orchestrator restart every replica). 200 ``{"status":"pass"}`` until `mark_dead`.
* ``/health/ready``: the *critical* checks only. 200 when they all pass (``warn`` counts as
  pass), 503 otherwise, and 503 at once after `mark_draining` (graceful shutdown).
* ``/health/startup``: 503 until the start-up checks (migrations applied, caches warm...)
  have passed once, then 200 for good; readiness is 503 until then too (`started`).
* ``/health``: every check, as ``application/health+json`` (draft-inadvisable-health-check):
  ``status`` pass/warn/fail and ``checks`` keyed ``"component:measurement"``. 200 for
  pass and warn, 503 for fail. A failing non-critical check makes the report ``warn``.

Checks run concurrently, each bounded by its own timeout (a check that times out is
``fail``: "timed out after 1 s"), and never raise: an exception becomes ``fail`` with the
exception's type as output (never its message or a traceback). Results are cached for
``cache_ttl`` seconds per set (readiness, full report) and concurrent requests during a
refresh share one in-flight refresh, so a probe storm costs one query per dependency per
``cache_ttl``, never one per probe.

Details (component names, observed values, outputs, version) describe internals. They are
returned only to a request with ``Authorization: Bearer <token>`` matching ``token``
(compared in constant time), or, with ``expose_details="loopback"`` (the default), to a
loopback client that is not a proxy forwarding someone else's request (a request carrying
any proxy header, ``Forwarded``, any ``X-Forwarded-*``, ``X-Real-IP``, ``Via``,
``CF-Connecting-IP``, ``True-Client-IP`` or ``X-Client-IP``, is not treated as loopback:
`buttress.asgi._context.is_local_request`). Everyone else gets the aggregate ``status``
alone: no per-check list, since even component names map the service's architecture. A
proxy on the same host that adds none of those headers makes every caller look local, and
no header can reveal it: set ``token`` and ``expose_details="token"`` there.

Built-in checks: `PostgresCheck`, `RedisCheck`, `HttpCheck`, `SQLiteCheck`, `DiskCheck`,
`MemoryCheck`, and `BreakersCheck` (open circuit breakers from
`buttress.resilience.registry` as a ``warn``; included by default, never critical). Any
object with ``name``, ``critical``, ``component_type`` and ``async run() -> CheckResult``
is a `Check`; subclass `BaseCheck` to get validation and helpers.

Example::

    from buttress.asgi._health import HealthMiddleware, PostgresCheck, RedisCheck

    app = HealthMiddleware(
        app,
        checks=[PostgresCheck(dsn="postgresql://app@db/app"), RedisCheck(url="redis://cache")],
        token=os.environ["HEALTH_TOKEN"],
    )
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from buttress._clock import SYSTEM_CLOCK, Clock, Timer
from buttress.asgi._context import current_request_id, is_local_request
from buttress.asgi._health_checks import (
    BaseCheck,
    BreakersCheck,
    Check,
    CheckResult,
    DiskCheck,
    HttpCheck,
    MemoryCheck,
    PostgresCheck,
    RedisCheck,
    SQLiteCheck,
    Status,
    _StillRunning,
    as_check,
)
from buttress.asgi._problem import send_problem
from buttress.asgi._runner import Hooks, Stage
from buttress.asgi._types import ASGIApp, Scope, Send
from buttress.errors import ConfigurationError, ErrorCode
from buttress.resilience._policy import check_positive

__all__ = [
    "HEALTH_CONTENT_TYPE",
    "BaseCheck",
    "BreakersCheck",
    "Check",
    "CheckResult",
    "DiskCheck",
    "HealthMiddleware",
    "HttpCheck",
    "MemoryCheck",
    "PostgresCheck",
    "RedisCheck",
    "SQLiteCheck",
    "Status",
]


HEALTH_CONTENT_TYPE: Final = b"application/health+json"

_STATUSES: Final = frozenset({"pass", "warn", "fail"})
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_TOKEN_RE: Final = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what fits a Bearer header
_EXPOSE: Final = ("loopback", "token", "always")


# ------------------------------------------------------------------ running and caching
@dataclass(frozen=True, slots=True)
class _Observation:
    key: str
    check: Check
    critical: bool
    result: CheckResult
    time: str


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _report_key(check: Check) -> str:
    measurement = getattr(check, "measurement", None)
    return f"{check.name}:{measurement}" if measurement else check.name


async def _guarded(check: Check) -> CheckResult:
    try:
        result: object = await check.run()
    except _StillRunning:
        return CheckResult(status="fail", output="previous probe still running")
    except Exception as exc:
        return CheckResult(status="fail", output=type(exc).__name__)
    if not isinstance(result, CheckResult):
        return CheckResult(status="fail", output=f"returned {type(result).__name__}")
    return result


_lingering: set[asyncio.Task[CheckResult]] = set()  # timed-out checks still cleaning up


async def _run_check(check: Check, limit: float, clock: Clock) -> CheckResult:
    """Run one check as its own task; after ``limit`` s cancel it and report ``fail``.

    The answer does not wait for the cancelled check to finish cleaning up (closing a
    half-open connection can itself hang): the timeout is a hard bound on the response.
    """
    loop = asyncio.get_running_loop()
    task = loop.create_task(_guarded(check))
    waiter: asyncio.Future[bool] = loop.create_future()

    def expire() -> None:
        if not task.done():
            task.cancel()
            if not waiter.done():
                waiter.set_result(False)

    def finished(_: object) -> None:
        if not waiter.done():
            waiter.set_result(True)

    task.add_done_callback(finished)
    timer: Timer = clock.call_later(limit, expire)
    try:
        in_time = await waiter
    except asyncio.CancelledError:  # the refresh itself is cancelled (loop shutdown)
        task.cancel()
        raise
    finally:
        timer.cancel()
    if not in_time:
        _lingering.add(task)
        task.add_done_callback(_lingering.discard)
        return CheckResult(status="fail", output=f"timed out after {limit:g} s")
    if task.cancelled():  # the check cancelled itself
        return CheckResult(status="fail", output="cancelled")
    return task.result()


class _CheckSet:
    """A set of checks whose results are cached for ``ttl`` and refreshed single-flight."""

    __slots__ = ("_at", "_clock", "_entries", "_results", "_task", "_ttl")

    def __init__(
        self, entries: tuple[tuple[str, Check, bool, float], ...], clock: Clock, ttl: float
    ) -> None:
        self._entries = entries
        self._clock = clock
        self._ttl = ttl
        self._results: tuple[_Observation, ...] | None = None
        self._at = 0.0
        self._task: asyncio.Task[tuple[_Observation, ...]] | None = None

    def __bool__(self) -> bool:
        return bool(self._entries)

    async def observe(self) -> tuple[_Observation, ...]:
        results = self._results
        if results is not None and self._clock.now() - self._at < self._ttl:
            return results
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.get_loop() is not loop:
            task = self._task = loop.create_task(self._refresh())
        # shield: a client that hangs up must not cancel the refresh the others wait for
        return await asyncio.shield(task)

    async def _refresh(self) -> tuple[_Observation, ...]:
        try:
            clock = self._clock
            outcomes = await asyncio.gather(
                *(_run_check(check, timeout, clock) for _, check, _, timeout in self._entries)
            )
            stamp = _utc_now()
            results = tuple(
                _Observation(key, check, critical, outcome, stamp)
                for (key, check, critical, _), outcome in zip(self._entries, outcomes, strict=True)
            )
            self._results = results
            self._at = clock.now()
            return results
        finally:
            if self._task is asyncio.current_task():
                self._task = None


def _aggregate(observations: Iterable[_Observation]) -> Status:
    """Fail if a critical check fails; warn if anything else is not pass; else pass."""
    status: Status = "pass"
    for obs in observations:
        outcome = obs.result.status
        if outcome == "fail" and obs.critical:
            return "fail"
        if outcome != "pass":
            status = "warn"
    return status


def _entry(obs: _Observation) -> dict[str, Any]:
    result = obs.result
    entry: dict[str, Any] = {
        "componentId": getattr(obs.check, "component_id", None) or obs.check.name,
        "componentType": obs.check.component_type,
    }
    if result.observed_value is not None:
        entry["observedValue"] = result.observed_value
        if result.observed_unit is not None:
            entry["observedUnit"] = result.observed_unit
    entry["status"] = result.status
    entry["time"] = obs.time
    if result.output:
        entry["output"] = result.output
    entry["critical"] = obs.critical
    return entry


def _checks_document(observations: Iterable[_Observation]) -> dict[str, list[dict[str, Any]]]:
    checks: dict[str, list[dict[str, Any]]] = {}
    for obs in observations:
        checks.setdefault(obs.key, []).append(_entry(obs))
    return checks


def _check_paths(option: str, value: object) -> tuple[str, ...]:
    """One path, several (aliases: ``("/ping", "/health/live")``), or None/() for none."""
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Iterable) or isinstance(items, bytes):
        items = (items,)
    paths = tuple(items)
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in "?# "):
            raise ConfigurationError(
                f"HealthMiddleware({option}={value!r}): each path must start with '/' "
                "(no query, fragment or spaces); None or () switches it off"
            )
    return paths


# ------------------------------------------------------------------ the middleware
_LIVE, _READY, _HEALTH, _STARTUP = 0, 1, 2, 3
_log = logging.getLogger("buttress.asgi.health")
_ALLOW = ((b"allow", b"GET, HEAD"),)


class HealthMiddleware(Stage):
    """Answer ``/health/live``, ``/health/ready``, ``/health/startup`` and ``/health``.

    Anything else passes through.

    **Start-up.** ``startup_checks`` (checks, or plain functions, sync or async: migrations
    applied, caches warm, a dependency answers) gate the start: until they all pass once
    (``warn`` counts as pass), ``/health/startup`` and ``/health/ready`` answer 503 and
    the report is ``fail`` with the note ``starting``. Once they pass the service is
    *started* for good: they never run again, as a Kubernetes ``startupProbe`` expects
    (it stops probing at its first success). They run when a probe asks (single-flight,
    cached ``cache_ttl``), or `mark_started` ends the start from code.

    Args:
        app: the ASGI application to wrap.
        checks: the `Check` objects (unique names). ``critical`` ones decide readiness.
        startup_checks: `Check` objects or functions (see above; unique names).
        live_path, ready_path, health_path, startup_path: where to answer: a path, several
            (``("/ping", "/health/live")``), or None to switch one off.
        cache_ttl: seconds results are reused (>= 0; 0: every request after a refresh
            starts a new one, still shared by concurrent requests).
        check_timeout: default seconds per check (> 0); a check's own ``timeout`` wins.
        token: a secret; ``Authorization: Bearer <token>`` unlocks details.
        expose_details: ``"loopback"`` (token or a loopback client, the default),
            ``"token"`` (token only) or ``"always"`` (a trusted network only).
        breakers: add a `BreakersCheck` on `buttress.resilience.registry` (default True;
            not added twice when ``checks`` holds one).
        version, service_id: the report's ``version`` and ``serviceId`` (details only).
        clock: time source for caching and timeouts.

    Example::

        app = HealthMiddleware(app, checks=[PostgresCheck(dsn=DSN)], token=HEALTH_TOKEN)
        ...
        app.mark_draining()   # on SIGTERM: /health/ready answers 503 from now on
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        checks: Iterable[Check] = (),
        startup_checks: Iterable[Check | Callable[[], object]] = (),
        live_path: str | Sequence[str] | None = "/health/live",
        ready_path: str | Sequence[str] | None = "/health/ready",
        health_path: str | Sequence[str] | None = "/health",
        startup_path: str | Sequence[str] | None = "/health/startup",
        cache_ttl: float = 2.0,
        check_timeout: float = 1.0,
        token: str | None = None,
        expose_details: Literal["loopback", "token", "always"] = "loopback",
        breakers: bool = True,
        version: str | None = None,
        service_id: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        owner = "HealthMiddleware"
        self.app = app
        self.cache_ttl = check_positive(owner, "cache_ttl", cache_ttl, allow_zero=True)
        self.check_timeout = check_positive(owner, "check_timeout", check_timeout)
        if token is not None and (not isinstance(token, str) or not _TOKEN_RE.fullmatch(token)):
            raise ConfigurationError(
                f"{owner}(token=...): must be a non-empty string of visible ASCII characters "
                "(no spaces), or None"
            )
        if expose_details not in _EXPOSE:
            raise ConfigurationError(
                f"{owner}(expose_details={expose_details!r}): must be one of "
                + ", ".join(repr(v) for v in _EXPOSE)
            )
        if not isinstance(breakers, bool):
            raise ConfigurationError(f"{owner}(breakers={breakers!r}): must be True or False")
        for option, value in (("version", version), ("service_id", service_id)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigurationError(f"{owner}({option}={value!r}): must be a string or None")

        routes: dict[str, int] = {}
        owners: dict[str, str] = {}
        paths: tuple[tuple[str, object, int], ...] = (
            ("live_path", live_path, _LIVE),
            ("ready_path", ready_path, _READY),
            ("health_path", health_path, _HEALTH),
            ("startup_path", startup_path, _STARTUP),
        )
        for option, given, kind in paths:
            for path in _check_paths(option, given):
                if path in routes:
                    raise ConfigurationError(
                        f"{owner}({option}={path!r}): already used by {owners[path]}; "
                        "each path answers one probe"
                    )
                routes[path] = kind
                owners[path] = option
        self._routes = routes
        self.paths: frozenset[str] = frozenset(routes)

        all_checks: list[object] = [checks] if isinstance(checks, Check) else list(checks)
        if breakers and not any(isinstance(c, BreakersCheck) for c in all_checks):
            all_checks.append(BreakersCheck())
        entries: list[tuple[str, Check, bool, float]] = []
        seen: set[str] = set()
        for check in all_checks:
            if not isinstance(check, Check):
                raise ConfigurationError(
                    f"{owner}(checks=[..., {check!r}]): each check needs name, critical, "
                    "component_type and an async run() (see buttress.asgi.health.BaseCheck)"
                )
            if not isinstance(check.name, str) or not check.name or check.name in seen:
                raise ConfigurationError(
                    f"{owner}(checks=[...]): check names must be unique non-empty strings; "
                    f"{check.name!r} is not"
                )
            if not isinstance(check.critical, bool):
                raise ConfigurationError(
                    f"{owner}(checks=[...]): {check.name!r}.critical={check.critical!r} must be "
                    "True or False"
                )
            seen.add(check.name)
            own = getattr(check, "timeout", None)
            timeout = self.check_timeout if own is None else check_positive(
                type(check).__name__, "timeout", own
            )  # fmt: skip
            entries.append((_report_key(check), check, check.critical, timeout))
        self.checks: tuple[Check, ...] = tuple(check for _, check, _, _ in entries)
        self._full = _CheckSet(tuple(entries), clock, self.cache_ttl)
        self._ready = _CheckSet(tuple(e for e in entries if e[2]), clock, self.cache_ttl)
        self._startup = _CheckSet(self._startup_entries(startup_checks), clock, self.cache_ttl)
        self._started = not self._startup

        self._token_digest = (
            None if token is None else hashlib.sha256(token.encode("ascii")).digest()
        )
        self._expose = expose_details
        self._version = version
        self._service_id = service_id
        self._draining = False
        self._dead: str | None = None

    def _startup_entries(
        self, items: Iterable[Check | Callable[[], object]]
    ) -> tuple[tuple[str, Check, bool, float], ...]:
        owner = "HealthMiddleware(startup_checks=[...])"
        if isinstance(items, Check) or callable(items):
            items = [items]
        entries = []
        seen: set[str] = set()
        for item in items:
            check = as_check(item, owner)
            if not isinstance(check.name, str) or not check.name or check.name in seen:
                raise ConfigurationError(
                    f"{owner}: start-up check names must be unique non-empty strings; "
                    f"{check.name!r} is not (pass name= to CallableCheck)"
                )
            seen.add(check.name)
            own = getattr(check, "timeout", None)
            timeout = self.check_timeout if own is None else check_positive(
                type(check).__name__, "timeout", own
            )  # fmt: skip
            # every start-up check counts: a non-critical one would never gate anything
            entries.append((_report_key(check), check, True, timeout))
        return tuple(entries)

    # -------------------------------------------------------------- state switches
    @property
    def started(self) -> bool:
        """True once the start-up checks passed (or `mark_started` was called)."""
        return self._started

    def mark_started(self) -> None:
        """End the start from code: readiness no longer waits for the start-up checks.

        Example::

            await warm_caches()
            app.parts.health.mark_started()
        """
        if not self._started:
            self._started = True
            _log.info("start-up complete (marked started)")

    async def _starting(self) -> tuple[_Observation, ...] | None:
        """None once started; else run the start-up checks (latching on success)."""
        if self._started:
            return None
        observations = await self._startup.observe()
        if self.started:  # marked started while they ran
            return None
        if _aggregate(observations) != "fail":
            self._started = True
            _log.info("start-up checks passed: %s", ", ".join(o.key for o in observations))
            return None
        return observations

    @property
    def draining(self) -> bool:
        """True once `mark_draining` was called: readiness answers 503."""
        return self._draining

    def mark_draining(self) -> None:
        """Answer ``/health/ready`` with 503 from now on (safe from a signal handler).

        Example::

            loop.add_signal_handler(signal.SIGTERM, health.mark_draining)
        """
        self._draining = True

    @property
    def alive(self) -> bool:
        """False once `mark_dead` was called."""
        return self._dead is None

    def mark_dead(self, reason: str = "marked dead") -> None:
        """Fail ``/health/live`` (and readiness): ask the orchestrator for a restart.

        Use it for states the process cannot leave by itself (a wedged worker pool, a
        corrupted in-memory cache). ``reason`` is shown with details only.

        Example::

            health.mark_dead("worker pool wedged")
        """
        self._dead = reason or "marked dead"

    # -------------------------------------------------------------- the stage
    def stage_hooks(self) -> Hooks:
        """Arrive: the health paths answered."""
        return Hooks(arrive=self.arrive)

    def arrive(self, ex: Any) -> Awaitable[bool] | None:
        """Answer a health path; pass anything else on."""
        scope = ex.scope
        kind = self._routes.get(scope["path"])
        if kind is None:
            return None
        return self._answer(scope, ex.send, kind)

    async def _answer(self, scope: Scope, send: Send, kind: int) -> bool:
        method = scope["method"]
        if method not in {"GET", "HEAD"}:
            await send_problem(
                send,
                ErrorCode.METHOD_NOT_ALLOWED,
                detail="health endpoints answer GET and HEAD",
                request_id=current_request_id(),
                headers=_ALLOW,
            )
            return True
        details = self._details_allowed(scope)
        if kind == _LIVE:
            status, body = self._live(details)
        elif kind == _READY:
            status, body = await self._readiness(details)
        elif kind == _STARTUP:
            status, body = await self._startup_probe(details)
        else:
            status, body = await self._report(details)
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", HEALTH_CONTENT_TYPE),
                    (b"content-length", str(len(payload)).encode("ascii")),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else payload})
        return True

    def _details_allowed(self, scope: Scope) -> bool:
        expose = self._expose
        if expose == "always":
            return True
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
        digest = self._token_digest
        if digest is not None and authorization is not None:
            scheme, _, credentials = bytes(authorization).strip().partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(
                hashlib.sha256(credentials.strip()).digest(), digest
            ):
                return True
        # a local reverse proxy forwarding someone else's request is not a local caller
        return expose == "loopback" and is_local_request(scope)

    def _live(self, details: bool) -> tuple[int, dict[str, Any]]:
        if self._dead is None:
            return 200, {"status": "pass"}
        body: dict[str, Any] = {"status": "fail"}
        if details:
            body["output"] = self._dead
        return 503, body

    async def _readiness(self, details: bool) -> tuple[int, dict[str, Any]]:
        if self._dead is not None or self._draining:
            body: dict[str, Any] = {"status": "fail"}
            if details:
                body["output"] = self._dead if self._dead is not None else "draining"
            return 503, body
        pending = await self._starting()
        if pending is not None:
            return self._not_started(pending, details)
        if not self._ready:
            return 200, {"status": "pass"}
        observations = await self._ready.observe()
        status = _aggregate(observations)
        body = {"status": status}
        if details:
            body["checks"] = _checks_document(observations)
        return (503 if status == "fail" else 200), body

    async def _startup_probe(self, details: bool) -> tuple[int, dict[str, Any]]:
        if self._dead is not None:
            body: dict[str, Any] = {"status": "fail"}
            if details:
                body["output"] = self._dead
            return 503, body
        pending = await self._starting()
        if pending is not None:
            return self._not_started(pending, details)
        return 200, {"status": "pass"}

    @staticmethod
    def _not_started(
        pending: tuple[_Observation, ...], details: bool
    ) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"status": "fail"}
        if details:
            body["output"] = "starting"
            body["checks"] = _checks_document(pending)
        return 503, body

    async def _report(self, details: bool) -> tuple[int, dict[str, Any]]:
        pending = await self._starting()
        observations = await self._full.observe() if self._full else ()
        if pending is not None:
            observations = pending + observations
        status: Status = "fail" if self._dead is not None else _aggregate(observations)
        if pending is not None:
            status = "fail"
        body: dict[str, Any] = {"status": status}
        if details:
            if self._version is not None:
                body["version"] = self._version
            if self._service_id is not None:
                body["serviceId"] = self._service_id
            notes = [
                note
                for note, on in (("starting", pending is not None), ("draining", self._draining))
                if on
            ]
            if notes:
                body["notes"] = notes
            if self._dead is not None:
                body["output"] = self._dead
            body["checks"] = _checks_document(observations)
        return (503 if status == "fail" else 200), body
