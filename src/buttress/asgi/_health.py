"""Health endpoints (pure ASGI): liveness, readiness and an ``application/health+json`` report.

`HealthMiddleware` answers three paths itself and passes everything else to the app:

* ``/health/live``: the process only, never a dependency (one database blip must not make
  the orchestrator restart every replica). 200 ``{"status":"pass"}`` until `mark_dead`.
* ``/health/ready``: the *critical* checks only. 200 when they all pass (``warn`` counts as
  pass), 503 otherwise, and 503 at once after `mark_draining` (graceful shutdown).
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
import re
from collections.abc import Awaitable, Iterable
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


def _check_path(option: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in "?# "):
        raise ConfigurationError(
            f"HealthMiddleware({option}={value!r}): must be a path starting with '/' "
            "(no query, fragment or spaces), or None to switch it off"
        )
    return value


# ------------------------------------------------------------------ the middleware
_LIVE, _READY, _HEALTH = 0, 1, 2
_ALLOW = ((b"allow", b"GET, HEAD"),)


class HealthMiddleware(Stage):
    """Answer ``/health/live``, ``/health/ready`` and ``/health``; pass the rest through.

    Args:
        app: the ASGI application to wrap.
        checks: the `Check` objects (unique names). ``critical`` ones decide readiness.
        live_path, ready_path, health_path: where to answer (None switches one off).
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
        live_path: str | None = "/health/live",
        ready_path: str | None = "/health/ready",
        health_path: str | None = "/health",
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
        for option, value, kind in (
            ("live_path", live_path, _LIVE),
            ("ready_path", ready_path, _READY),
            ("health_path", health_path, _HEALTH),
        ):
            path = _check_path(option, value)
            if path is None:
                continue
            if path in routes:
                raise ConfigurationError(
                    f"{owner}({option}={path!r}): already used by {owners[path]}; "
                    "the three paths must differ"
                )
            routes[path] = kind
            owners[path] = option
        self._routes = routes

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

        self._token_digest = (
            None if token is None else hashlib.sha256(token.encode("ascii")).digest()
        )
        self._expose = expose_details
        self._version = version
        self._service_id = service_id
        self._draining = False
        self._dead: str | None = None

    # -------------------------------------------------------------- state switches
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
        if not self._ready:
            return 200, {"status": "pass"}
        observations = await self._ready.observe()
        status = _aggregate(observations)
        body = {"status": status}
        if details:
            body["checks"] = _checks_document(observations)
        return (503 if status == "fail" else 200), body

    async def _report(self, details: bool) -> tuple[int, dict[str, Any]]:
        observations = await self._full.observe() if self._full else ()
        status: Status = "fail" if self._dead is not None else _aggregate(observations)
        body: dict[str, Any] = {"status": status}
        if details:
            if self._version is not None:
                body["version"] = self._version
            if self._service_id is not None:
                body["serviceId"] = self._service_id
            notes = [note for note, on in (("draining", self._draining),) if on]
            if notes:
                body["notes"] = notes
            if self._dead is not None:
                body["output"] = self._dead
            body["checks"] = _checks_document(observations)
        return (503 if status == "fail" else 200), body
