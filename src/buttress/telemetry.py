"""One event vocabulary for every decision buttress makes, and hooks that consume it.

Policies emit frozen ``...Event`` dataclasses (a retry scheduled, a retry budget exhausted,
a breaker changing state, a call rejected, a timeout, a fallback used, a hedge launched)
to hooks: callables taking one event. Hooks are registered globally with `add_hook` or per
pipeline with ``Pipeline(..., hooks=[...])``. Events are only built off the happy path, so
a pipeline whose calls succeed pays nothing for telemetry.

Two hooks ship: `LoggingHook` (structlog when installed, the standard library otherwise)
and `PrometheusHook` (prometheus-client). `buttress.asgi.harden` installs one
`LoggingHook` by default (`HARDEN_LOGGED_EVENTS`, at most one line per event kind and
policy every 10 s, see `install_event_logging`).

Levels: a retry scheduled, a fallback used, a breaker closing or half-opening, a
rate-limit store answering again are ``info``; a retry given up, a spent retry budget, a
breaker opening, a rate-limit store bypassed, a timeout are ``warning`` (`Event.log_level`).

Example::

    from buttress.telemetry import LoggingHook, add_hook

    add_hook(LoggingHook())
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

from buttress._classify import classify
from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import ErrorCode

__all__ = [
    "HARDEN_LOGGED_EVENTS",
    "CallRejectedEvent",
    "CircuitStateChangedEvent",
    "Event",
    "FallbackUsedEvent",
    "HedgeLaunchedEvent",
    "Hook",
    "LoggingHook",
    "Meter",
    "PrometheusHook",
    "PrometheusMeter",
    "QuotaWarningEvent",
    "RateLimitFallbackEvent",
    "RateLimitedEvent",
    "RequestErrorEvent",
    "RetryBudgetExhaustedEvent",
    "RetryGaveUpEvent",
    "RetryScheduledEvent",
    "TimeoutEvent",
    "add_hook",
    "add_meter",
    "clear_hooks",
    "emit",
    "global_hooks",
    "install_event_logging",
    "meters",
    "outcome_of",
    "record_idempotency",
    "record_pipeline_call",
    "record_store_call",
    "remove_hook",
    "remove_meter",
]

_log = logging.getLogger("buttress")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: which pipeline and policy decided."""

    kind: ClassVar[str] = "event"
    level: ClassVar[int] = logging.INFO
    pipeline: str | None = None
    policy: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The event as plain data for a log line (exceptions become their type name)."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, BaseException):
                data[key] = type(value).__name__
            elif isinstance(value, ErrorCode):
                data[key] = value.wire
        data["event"] = self.kind
        return data

    def log_level(self) -> int:
        """The level `LoggingHook` logs this event at (``level``, unless the event says)."""
        return self.level


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduledEvent(Event):
    """A call failed with a retriable error; another attempt will run after ``delay``."""

    kind: ClassVar[str] = "retry_scheduled"
    level: ClassVar[int] = logging.INFO
    attempt: int
    delay: float
    error: BaseException | None = None
    code: ErrorCode | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryGaveUpEvent(Event):
    """Retrying stopped; ``reason`` says why (attempts, deadline, retry_after_too_long...)."""

    kind: ClassVar[str] = "retry_gave_up"
    level: ClassVar[int] = logging.WARNING
    attempts: int
    elapsed: float
    reason: str
    error: BaseException | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudgetExhaustedEvent(Event):
    """A retry was refused because the fleet-protecting retry budget is spent."""

    kind: ClassVar[str] = "retry_budget_exhausted"
    level: ClassVar[int] = logging.WARNING
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitStateChangedEvent(Event):
    """A circuit breaker moved between ``closed``, ``open`` and ``half_open``."""

    kind: ClassVar[str] = "circuit_state_changed"
    level: ClassVar[int] = logging.WARNING
    from_state: str
    to_state: str
    generation: int
    reason: str = ""

    def log_level(self) -> int:
        """``warning`` when the breaker opens, ``info`` when it half-opens or closes."""
        return logging.WARNING if self.to_state == "open" else logging.INFO


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRejectedEvent(Event):
    """A policy refused a call without running it (open circuit, full bulkhead, limit)."""

    kind: ClassVar[str] = "call_rejected"
    level: ClassVar[int] = logging.INFO
    code: ErrorCode
    retry_after: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutEvent(Event):
    """A timeout cut a call off (async) or a call overran its timeout (sync)."""

    kind: ClassVar[str] = "timeout"
    level: ClassVar[int] = logging.WARNING
    timeout: float
    elapsed: float
    code: ErrorCode = ErrorCode.UPSTREAM_TIMEOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsedEvent(Event):
    """A fallback answered in place of a failed call."""

    kind: ClassVar[str] = "fallback_used"
    level: ClassVar[int] = logging.INFO
    error: BaseException | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeLaunchedEvent(Event):
    """A hedged (parallel) attempt started because the first was slow or failed."""

    kind: ClassVar[str] = "hedge_launched"
    level: ClassVar[int] = logging.INFO
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitedEvent(Event):
    """An inbound request was refused (429) by the rate limit named ``policy``.

    ``key_hash`` is an HMAC of the key (never the raw API key, address or user id), so one
    client's refusals can be correlated without logging who it is.
    """

    kind: ClassVar[str] = "rate_limited"
    level: ClassVar[int] = logging.INFO
    route: str
    method: str = ""
    key_hash: str
    retry_after: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaWarningEvent(Event):
    """A key crossed the warning share of the rate limit ``policy`` (once per crossing)."""

    kind: ClassVar[str] = "quota_warning"
    level: ClassVar[int] = logging.INFO
    route: str = ""
    key_hash: str
    used_ratio: float
    remaining: int
    limit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitFallbackEvent(Event):
    """The shared rate-limit store failed (``engaged``) or answers again (not ``engaged``).

    ``mode`` is ``open`` (decided by a local in-memory limiter meanwhile) or ``closed``
    (requests answered 503 meanwhile); ``error`` is the failure that engaged it, if any.
    """

    kind: ClassVar[str] = "rate_limit_fallback"
    level: ClassVar[int] = logging.WARNING
    engaged: bool
    mode: str
    reason: str = ""
    error: BaseException | None = None

    def log_level(self) -> int:
        """``warning`` when the store is bypassed, ``info`` when it answers again."""
        return logging.WARNING if self.engaged else logging.INFO


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestErrorEvent(Event):
    """An exception escaped the application; `ErrorMiddleware` answered it (or logged it).

    ``code`` is what was answered (``internal_error`` for anything but a buttress error);
    ``response_started``: the response had begun, so only the log line tells. Emitted
    inside the request (its id and trace are current), for error trackers: the Sentry
    integration sends the exceptions no other integration saw. Not logged by the default
    event logging (`ErrorMiddleware` writes the error line itself).
    """

    kind: ClassVar[str] = "request_error"
    level: ClassVar[int] = logging.ERROR
    error: BaseException
    code: ErrorCode
    method: str = ""
    path: str = ""
    response_started: bool = False


# events LoggingHook marks as audit records (``audit=True``): who was throttled, and when
# the limits were not enforced as configured
_AUDIT_EVENTS = (RateLimitedEvent, QuotaWarningEvent, RateLimitFallbackEvent)


Hook = Callable[[Event], object]

_hooks_lock = threading.Lock()
_global_hooks: tuple[Hook, ...] = ()


def add_hook(hook: Hook) -> None:
    """Send every event from every pipeline to ``hook`` as well."""
    global _global_hooks
    with _hooks_lock:
        if hook not in _global_hooks:
            _global_hooks = (*_global_hooks, hook)


def remove_hook(hook: Hook) -> None:
    """Stop sending events to ``hook`` (no-op when it was not registered)."""
    global _global_hooks
    with _hooks_lock:
        _global_hooks = tuple(h for h in _global_hooks if h != hook)


def clear_hooks() -> None:
    """Remove every global hook."""
    global _global_hooks
    with _hooks_lock:
        _global_hooks = ()


def global_hooks() -> tuple[Hook, ...]:
    """The hooks registered with `add_hook`."""
    return _global_hooks


class Meter(Protocol):
    """Receives measurements of every call, the happy path included (opt-in).

    Hooks hear decisions (a retry, a breaker opening), which are rare; a meter hears
    every pipeline call, store round trip and idempotent request, so a service can chart
    call rates, latency and error ratios per dependency. Nothing is measured until a
    meter is added (`add_meter`), and a pipeline decides when it first runs: add meters
    at start-up. Outcomes are bounded labels: ``ok``, an `ErrorCode` wire name
    (``upstream_timeout``, ``circuit_open``...), ``cancelled``, or ``error`` for an
    exception the taxonomy does not know.

    Two meters ship: `PrometheusMeter` (prometheus-client; ``harden()`` adds it with
    ``metrics_detail=True``) and ``buttress.otel.OtelMeter`` (OpenTelemetry metrics).
    """

    def pipeline_call(self, pipeline: str, seconds: float, outcome: str) -> None:
        """One call through the named pipeline took ``seconds`` and ended in ``outcome``."""

    def store_call(self, system: str, operation: str, seconds: float, outcome: str) -> None:
        """One round trip of a shared store (``redis``, ``postgresql``, ``sqlite``)."""

    def idempotency(self, outcome: str) -> None:
        """One request with an Idempotency-Key: ``first``, ``replay``, ``conflict``..."""


_global_meters: tuple[Meter, ...] = ()


def add_meter(meter: Meter) -> None:
    """Send every measurement to ``meter`` as well (pipelines built from now on)."""
    global _global_meters
    with _hooks_lock:
        if meter not in _global_meters:
            _global_meters = (*_global_meters, meter)


def remove_meter(meter: Meter) -> None:
    """Stop sending measurements to ``meter`` (no-op when it was not added)."""
    global _global_meters
    with _hooks_lock:
        _global_meters = tuple(m for m in _global_meters if m is not meter)


def meters() -> tuple[Meter, ...]:
    """The meters added with `add_meter` (empty: nothing is measured)."""
    return _global_meters


def outcome_of(exc: BaseException) -> str:
    """The bounded outcome label of a failed call (see `Meter`)."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    found = classify(exc)
    return found.code.wire if found is not None else "error"


def record_pipeline_call(pipeline: str, seconds: float, outcome: str) -> None:
    """Give one pipeline call to every meter; a failing meter is logged, not raised."""
    for meter in _global_meters:
        try:
            meter.pipeline_call(pipeline, seconds, outcome)
        except Exception:
            _log.exception("buttress meter %r failed on a pipeline call", meter)


def record_store_call(system: str, operation: str, seconds: float, outcome: str) -> None:
    """Give one store round trip to every meter; a failing meter is logged, not raised."""
    for meter in _global_meters:
        try:
            meter.store_call(system, operation, seconds, outcome)
        except Exception:
            _log.exception("buttress meter %r failed on a store call", meter)


def record_idempotency(outcome: str) -> None:
    """Give one idempotent request's outcome to every meter."""
    for meter in _global_meters:
        try:
            meter.idempotency(outcome)
        except Exception:
            _log.exception("buttress meter %r failed on an idempotency outcome", meter)


def emit(event: Event, hooks: Iterable[Hook] = ()) -> None:
    """Deliver ``event`` to ``hooks`` and the global ones; a failing hook is logged, not raised."""
    for hook in (*hooks, *_global_hooks):
        try:
            hook(event)
        except Exception:
            _log.exception("buttress telemetry hook %r failed on %s", hook, event.kind)


_MAX_THROTTLE_KEYS = 1024  # (kind, pipeline, policy, variant) keys a LoggingHook remembers


@dataclass(slots=True)
class LoggingHook:
    """Log every event as one structured line, optionally at most one per key and interval.

    Uses structlog when it is installed (key-value pairs, through the structlog
    configuration in force when the event happens), the standard ``logging`` module
    otherwise (message plus ``extra``). The level is the event's `Event.log_level`.

    Args:
        logger_name: the logger's name (the ``logger`` field of the line).
        events: the event classes to log (default: every event).
        interval: seconds between two lines of one key, (event kind, pipeline, policy,
            and the breaker's new state or whether a rate-limit fallback engaged); the
            events in between are counted, and the next line of that key carries
            ``suppressed=<count>``. 0 (the default): every event is logged.
        clock: the clock ``interval`` is measured on (tests pass a FakeClock).

    Example::

        add_hook(LoggingHook(logger_name="myservice.resilience"))
        add_hook(LoggingHook(events=(CircuitStateChangedEvent,), interval=10.0))
    """

    logger_name: str = "buttress"
    events: tuple[type[Event], ...] | None = None
    interval: float = 0.0
    clock: Clock = SYSTEM_CLOCK
    _logger: Any = field(init=False, repr=False, default=None)
    _structured: bool = field(init=False, repr=False, default=False)
    # key -> [time of the last line, events suppressed since]
    _last: dict[tuple[Any, ...], list[Any]] = field(init=False, repr=False, default_factory=dict)
    _lock: Any = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        interval = self.interval
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval >= 0:
            from buttress.errors import ConfigurationError  # noqa: PLC0415

            raise ConfigurationError(f"LoggingHook(interval={interval!r}): seconds >= 0")
        if self.events is not None:
            self.events = tuple(self.events)
        try:
            import structlog  # noqa: PLC0415, F401 - optional dependency: is it there?

            self._logger = None  # looked up per line: see __call__
            self._structured = True
        except ImportError:
            self._logger = logging.getLogger(self.logger_name)

    def __call__(self, event: Event) -> None:
        """Log ``event`` (unless it is not one of ``events``, or its key spoke recently)."""
        if self.events is not None and not isinstance(event, self.events):
            return
        suppressed = 0
        if self.interval > 0:
            passed = self._pass(event)
            if passed is None:
                return
            suppressed = passed
        data = event.as_dict()
        name = data.pop("event")
        if isinstance(event, _AUDIT_EVENTS):
            data["audit"] = True
        if suppressed:
            data["suppressed"] = suppressed
        level = event.log_level()
        if self._structured:
            logger = self._logger
            if logger is None:
                # looked up per line (events are rare): a logger cached here would keep
                # writing where structlog was configured first
                import structlog  # noqa: PLC0415 - imported in __post_init__

                logger = structlog.get_logger(self.logger_name)
            logger.log(level, name, **data)
        else:
            detail = " ".join(f"{k}={v}" for k, v in data.items() if v is not None)
            self._logger.log(level, "%s %s", name, detail, extra={"buttress": data})

    def _pass(self, event: Event) -> int | None:
        """None: too soon after this key's last line (counted); else the count suppressed."""
        variant = getattr(event, "to_state", None)
        if variant is None:
            variant = getattr(event, "engaged", None)
        key = (event.kind, event.pipeline, event.policy, variant)
        now = self.clock.now()
        with self._lock:
            entry = self._last.get(key)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                return None
            suppressed = 0 if entry is None else entry[1]
            if entry is None and len(self._last) >= _MAX_THROTTLE_KEYS:
                horizon = now - self.interval  # forget the keys that are quiet anyway
                self._last = {k: v for k, v in self._last.items() if v[0] > horizon}
                if len(self._last) >= _MAX_THROTTLE_KEYS:
                    self._last.clear()
            self._last[key] = [now, 0]
            return suppressed


#: The events `harden` logs by default: what a person on call needs to see (retries and
#: their end, breakers, fallbacks, the rate-limit store bypassed), not per-request noise
#: (rejections, 429s, quota warnings, timeouts that a retry or a 504 reports anyway).
HARDEN_LOGGED_EVENTS: tuple[type[Event], ...] = (
    RetryScheduledEvent,
    RetryGaveUpEvent,
    RetryBudgetExhaustedEvent,
    CircuitStateChangedEvent,
    FallbackUsedEvent,
    RateLimitFallbackEvent,
)

_harden_hook: list[LoggingHook] = []


def install_event_logging(*, interval: float = 10.0, clock: Clock = SYSTEM_CLOCK) -> LoggingHook:
    """Log `HARDEN_LOGGED_EVENTS` through one global `LoggingHook`, installed once.

    What `buttress.asgi.harden` calls when it configures logging: logger
    ``buttress.resilience``, at most one line per (event kind, pipeline, policy, new
    state) every ``interval`` seconds, the next line counting the ones left out
    (``suppressed``). Calling it again keeps the hook already installed (so one event
    is never logged twice); it installs it again after `clear_hooks`.

    Example::

        install_event_logging()
        install_event_logging()      # still one hook
    """
    with _hooks_lock:
        if _harden_hook and _harden_hook[0] in _global_hooks:
            return _harden_hook[0]
    hook = _harden_hook[0] if _harden_hook else None
    if hook is None or hook.interval != interval or hook.clock is not clock:
        hook = LoggingHook(
            logger_name="buttress.resilience",
            events=HARDEN_LOGGED_EVENTS,
            interval=interval,
            clock=clock,
        )
        _harden_hook[:] = [hook]
    add_hook(hook)
    return hook


_STATE_VALUE = {"closed": 0, "open": 1, "half_open": 2}


class PrometheusHook:
    """Count events in Prometheus metrics (needs ``prometheus-client``).

    Metrics (prefix configurable):
    ``buttress_retries_total{pipeline,policy,code}``,
    ``buttress_retry_gave_up_total{pipeline,policy,reason}``,
    ``buttress_retry_budget_exhausted_total{pipeline,policy}``,
    ``buttress_rejections_total{pipeline,policy,code}``,
    ``buttress_timeouts_total{pipeline,policy,code}``,
    ``buttress_fallbacks_total{pipeline,policy}``, ``buttress_hedges_total{pipeline,policy}``,
    ``buttress_circuit_state{breaker}`` (0 closed, 1 open, 2 half-open) and
    ``buttress_circuit_transitions_total{breaker,to_state}``; for inbound rate limits
    ``buttress_quota_warnings_total{policy}``,
    ``buttress_rate_limit_fallbacks_total{policy,mode}`` and
    ``buttress_rate_limit_fallback_engaged{policy}`` (1 while the store is bypassed). Keys
    are never labels.

    The 429s themselves (`RateLimitedEvent`) are not counted here: they are HTTP
    answers, counted once, by `buttress.asgi.metrics.HttpMetrics` as
    ``buttress_http_requests_limited_total{policy}`` (next to
    ``buttress_http_requests_shed_total{reason}``). Without `harden`, pass
    ``RateLimitMiddleware(..., on_limited=metrics.limited)``.

    Example::

        from prometheus_client import CollectorRegistry
        add_hook(PrometheusHook(registry=CollectorRegistry()))
    """

    def __init__(self, *, registry: Any = None, prefix: str = "buttress") -> None:
        try:
            import prometheus_client as prom  # noqa: PLC0415 - optional dependency
        except ImportError as exc:  # pragma: no cover - exercised without the extra
            from buttress.errors import ConfigurationError  # noqa: PLC0415

            raise ConfigurationError(
                "PrometheusHook needs prometheus-client: pip install 'buttress[metrics]'"
            ) from exc
        reg = registry if registry is not None else prom.REGISTRY
        p = prefix

        def counter(name: str, doc: str, labels: list[str]) -> Any:
            return prom.Counter(f"{p}_{name}", doc, labels, registry=reg)

        self.retries = counter("retries", "Retries scheduled", ["pipeline", "policy", "code"])
        self.gave_up = counter(
            "retry_gave_up", "Calls that stopped retrying", ["pipeline", "policy", "reason"]
        )
        self.budget = counter(
            "retry_budget_exhausted", "Retries refused by the retry budget", ["pipeline", "policy"]
        )
        self.rejections = counter(
            "rejections", "Calls rejected by a policy", ["pipeline", "policy", "code"]
        )
        self.timeouts = counter(
            "timeouts", "Calls cut by a timeout", ["pipeline", "policy", "code"]
        )
        self.fallbacks = counter("fallbacks", "Fallbacks used", ["pipeline", "policy"])
        self.hedges = counter("hedges", "Hedged attempts launched", ["pipeline", "policy"])
        self.transitions = counter(
            "circuit_transitions", "Circuit breaker state changes", ["breaker", "to_state"]
        )
        self.state = prom.Gauge(
            f"{p}_circuit_state",
            "Circuit breaker state (0 closed, 1 open, 2 half-open)",
            ["breaker"],
            registry=reg,
        )
        self.quota_warnings = counter(
            "quota_warnings", "Keys that crossed a rate limit's warning share", ["policy"]
        )
        self.rate_limit_fallbacks = counter(
            "rate_limit_fallbacks", "Times the rate-limit store was bypassed", ["policy", "mode"]
        )
        self.rate_limit_fallback = prom.Gauge(
            f"{p}_rate_limit_fallback_engaged",
            "1 while rate limits are decided without the shared store",
            ["policy"],
            registry=reg,
        )

    def __call__(self, event: Event) -> None:
        """Record ``event``."""
        pipeline = event.pipeline or ""
        if isinstance(event, RetryScheduledEvent):
            code = event.code.wire if event.code else ""
            self.retries.labels(pipeline, event.policy, code).inc()
        elif isinstance(event, RetryGaveUpEvent):
            self.gave_up.labels(pipeline, event.policy, event.reason).inc()
        elif isinstance(event, RetryBudgetExhaustedEvent):
            self.budget.labels(pipeline, event.policy).inc()
        elif isinstance(event, CallRejectedEvent):
            self.rejections.labels(pipeline, event.policy, event.code.wire).inc()
        elif isinstance(event, TimeoutEvent):
            self.timeouts.labels(pipeline, event.policy, event.code.wire).inc()
        elif isinstance(event, FallbackUsedEvent):
            self.fallbacks.labels(pipeline, event.policy).inc()
        elif isinstance(event, HedgeLaunchedEvent):
            self.hedges.labels(pipeline, event.policy).inc()
        elif isinstance(event, CircuitStateChangedEvent):
            self.transitions.labels(event.policy, event.to_state).inc()
            self.state.labels(event.policy).set(_STATE_VALUE.get(event.to_state, -1))
        elif isinstance(event, QuotaWarningEvent):
            self.quota_warnings.labels(event.policy).inc()
        elif isinstance(event, RateLimitFallbackEvent):
            if event.engaged:
                self.rate_limit_fallbacks.labels(event.policy, event.mode).inc()
            self.rate_limit_fallback.labels(event.policy).set(1 if event.engaged else 0)


class PrometheusMeter:
    """Measure every call in Prometheus metrics (needs ``prometheus-client``); a `Meter`.

    Metrics (prefix configurable): ``buttress_pipeline_calls_total{pipeline,outcome}`` and
    ``buttress_pipeline_call_duration_seconds{pipeline}`` (named pipelines only),
    ``buttress_store_calls_total{system,operation,outcome}`` and
    ``buttress_store_call_duration_seconds{system,operation}`` (Redis, PostgreSQL and
    SQLite stores; the memory store makes no round trip), and
    ``buttress_idempotency_requests_total{outcome}``. Every label is bounded: pipeline
    names are the code's, outcomes are ``ok``, a taxonomy code, ``cancelled`` or
    ``error``. ``harden(..., settings=HardenSettings(metrics_detail=True))`` adds one on the
    app's registry.

    In one process the values are plain numbers, one shard per recording thread (no count
    is lost, no lock is taken), exposed by one collector that builds prometheus-client's
    metric families when scraped (`buttress._prom_local`; no ``_created`` samples). With
    ``PROMETHEUS_MULTIPROC_DIR`` they go through prometheus-client's own ``Counter`` and
    ``Histogram`` (their values live in its files).

    Example::

        from prometheus_client import CollectorRegistry
        add_meter(PrometheusMeter(registry=CollectorRegistry()))
    """

    def __init__(self, *, registry: Any = None, prefix: str = "buttress") -> None:
        try:
            import prometheus_client as prom  # noqa: PLC0415 - optional dependency
            from prometheus_client import values  # noqa: PLC0415
        except ImportError as exc:  # pragma: no cover - exercised without the extra
            from buttress.errors import ConfigurationError  # noqa: PLC0415

            raise ConfigurationError(
                "PrometheusMeter needs prometheus-client: pip install 'buttress[metrics]'"
            ) from exc
        from buttress._prom_local import LocalCollector, LocalMetric, PromMetric  # noqa: PLC0415

        reg = registry if registry is not None else prom.REGISTRY
        p = prefix
        specs = (  # (counter, help, labels, histogram, help, histogram labels, buckets)
            (
                f"{p}_pipeline_calls",
                "Calls through a named pipeline",
                ("pipeline", "outcome"),
                f"{p}_pipeline_call_duration_seconds",
                "Duration of calls through a named pipeline (retries and waits included)",
                1,
                tuple(prom.Histogram.DEFAULT_BUCKETS[:-1]),  # without +Inf, always added
            ),
            (
                f"{p}_store_calls",
                "Round trips to the shared store",
                ("system", "operation", "outcome"),
                f"{p}_store_call_duration_seconds",
                "Duration of round trips to the shared store",
                2,
                _STORE_BUCKETS,
            ),
            (
                f"{p}_idempotency_requests",
                "Requests with an Idempotency-Key, by outcome",
                ("outcome",),
                None,
                "",
                0,
                (),
            ),
        )
        self._registry = reg
        # prometheus-client picked file-backed values at import (PROMETHEUS_MULTIPROC_DIR)
        if values.ValueClass is not values.MutexValue:
            recorders: list[Any] = []
            collectors: list[Any] = []
            for counter, doc, labels, histogram, hdoc, keep, buckets in specs:
                made = prom.Counter(counter, doc, labels, registry=reg)
                collectors.append(made)
                hist = None
                if histogram is not None:
                    hist = prom.Histogram(
                        histogram, hdoc, labels[:keep], buckets=buckets, registry=reg
                    )
                    collectors.append(hist)
                recorders.append(PromMetric(made, hist, keep))
            self.collectors: tuple[Any, ...] = tuple(collectors)
        else:
            recorders = [
                LocalMetric(
                    counter,
                    doc,
                    labels,
                    histogram=histogram,
                    histogram_help=hdoc,
                    histogram_labels=keep,
                    bounds=buckets,
                )
                for counter, doc, labels, histogram, hdoc, keep, buckets in specs
            ]
            collector = LocalCollector(recorders)
            reg.register(collector)  # ValueError when the names are taken, as prometheus'
            self.collectors = (collector,)
        self._pipelines, self._stores, self._idempotency = recorders

    def pipeline_call(self, pipeline: str, seconds: float, outcome: str) -> None:
        """Count the call and observe its duration."""
        self._pipelines.observe((pipeline, outcome), seconds)

    def store_call(self, system: str, operation: str, seconds: float, outcome: str) -> None:
        """Count the round trip and observe its duration."""
        self._stores.observe((system, operation, outcome), seconds)

    def idempotency(self, outcome: str) -> None:
        """Count the idempotent request's outcome."""
        self._idempotency.inc((outcome,))

    def unregister(self) -> None:
        """Remove the metrics from their registry (and stop measuring: `remove_meter`)."""
        remove_meter(self)
        for collector in self.collectors:
            with contextlib.suppress(KeyError):
                self._registry.unregister(collector)


#: store round trips are sub-millisecond on loopback and tens of ms across a region
_STORE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
