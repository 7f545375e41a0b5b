"""OpenTelemetry for buttress: one trace per request, spans for what buttress decides.

When OpenTelemetry is active (an SDK ``TracerProvider`` is set, `enable` was called, or
``BUTTRESS_OTEL`` asks for it), buttress:

* takes the request's trace and span ids from the OTel server span (an instrumentation's,
  or one buttress starts itself, ``SERVER`` kind, with the HTTP semantic-convention
  attributes), so logs, ``traceresponse``, problem+json, exemplars and spans name one
  trace (`buttress.asgi.harden`, ``RequestContextMiddleware``);
* wraps every `buttress.Pipeline` call in a ``buttress.pipeline <name>`` span and every
  attempt of a retrying pipeline in a ``buttress.attempt`` span;
* turns every telemetry event (retry scheduled, breaker state changed, fallback used,
  hedge launched, timeout, rejection...) into a span event on the current span.

The decision is taken once, when an app is hardened or a pipeline first runs, never per
call: without OpenTelemetry nothing on the hot path changes. ``BUTTRESS_OTEL=off`` turns
it all off whatever is installed.

`configure` sets up a provider for services that have none (a console exporter with
``BUTTRESS_OTEL=console``, OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set) with a
parent-based ratio sampler (``BUTTRESS_OTEL_SAMPLE_RATIO``, default 1.0, or the standard
``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG``). It never replaces a provider the
application set itself.

Example::

    from buttress import otel

    otel.configure(service_name="shop")     # or your own TracerProvider, set globally
    app = harden(app)                       # spans from here on
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from contextvars import ContextVar
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Final

from buttress.errors import ConfigurationError, ErrorCode
from buttress.telemetry import (
    CallRejectedEvent,
    CircuitStateChangedEvent,
    Event,
    FallbackUsedEvent,
    HedgeLaunchedEvent,
    QuotaWarningEvent,
    RateLimitedEvent,
    RateLimitFallbackEvent,
    RequestErrorEvent,
    RetryBudgetExhaustedEvent,
    RetryGaveUpEvent,
    RetryScheduledEvent,
    TimeoutEvent,
    add_hook,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

__all__ = [
    "CALL",
    "SAMPLE_RATIO_ENV",
    "SWITCH_ENV",
    "OtelMeter",
    "configure",
    "current_traceparent",
    "disable",
    "disable_metrics",
    "enable",
    "enable_metrics",
    "error_type",
    "event_attributes",
    "metrics_configured",
    "pipeline_tracing",
    "reset",
    "span_event",
    "tracer",
]

#: ``BUTTRESS_OTEL``: ``off`` (never trace), ``on`` (trace through the global provider,
#: even one set later), ``console`` or ``otlp`` (`configure` one when none is set)
SWITCH_ENV: Final = "BUTTRESS_OTEL"
#: ``BUTTRESS_OTEL_SAMPLE_RATIO``: the share of new traces `configure` records (0 to 1)
SAMPLE_RATIO_ENV: Final = "BUTTRESS_OTEL_SAMPLE_RATIO"

_OFF: Final = frozenset({"off", "0", "false", "no", "none", "disabled"})
_ON: Final = frozenset({"on", "1", "true", "yes"})
_EXPORTERS: Final = frozenset({"console", "otlp"})
_SCOPE_NAME: Final = "buttress"

_log = logging.getLogger("buttress.otel")
_lock = threading.Lock()
_provider: list[Any] = []  # [TracerProvider] after enable()
_disabled: list[bool] = []  # [True] after disable()


def _version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415 - once, when tracing starts

        return version("buttress")
    except Exception:  # buttress: ignore[BTR303] a version is a nicety
        return "0"


def _switch() -> str:
    return os.environ.get(SWITCH_ENV, "").strip().lower()


def enable(provider: TracerProvider | None = None) -> None:
    """Trace buttress through ``provider`` (default: the global one, even if set later).

    For tests and for applications that keep their provider out of the global slot.
    Takes effect for apps hardened and pipelines first used from now on.

    Example::

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        otel.enable(provider)
    """
    _require()
    from opentelemetry import trace  # noqa: PLC0415 - optional dependency

    with _lock:
        _disabled.clear()
        _provider[:] = [provider if provider is not None else trace.get_tracer_provider()]


def disable() -> None:
    """Stop tracing apps hardened and pipelines first used from now on (undoes `enable`)."""
    with _lock:
        _provider.clear()
        _disabled[:] = [True]


def reset() -> None:
    """Back to the automatic choice (undoes `enable` and `disable`; for tests)."""
    with _lock:
        _provider.clear()
        _disabled.clear()


def _require() -> None:
    from buttress._startup import require_modules  # noqa: PLC0415

    require_modules("buttress tracing", ("opentelemetry.trace",), "otel")


def _is_default(provider: object) -> bool:
    from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider  # noqa: PLC0415

    return isinstance(provider, ProxyTracerProvider | NoOpTracerProvider)


def tracer(*, required: bool = False) -> Tracer | None:
    """The tracer buttress records spans with, or None when tracing is off.

    On when `enable` was called, when the global provider is not OpenTelemetry's default
    (an SDK ``TracerProvider`` was set), or when ``BUTTRESS_OTEL`` says ``on``,
    ``console`` or ``otlp`` (the last two `configure` a provider if none is set). Off with
    ``BUTTRESS_OTEL=off`` or after `disable`. ``required``: on whatever the provider
    (spans go to the global provider once one is set); `ConfigurationError` if
    OpenTelemetry is not installed.

    Also installs the telemetry hook that turns buttress's events into span events.
    """
    switch = _switch()
    if switch in _OFF or (_disabled and not required):
        return None
    if switch and switch not in _ON and switch not in _EXPORTERS:
        raise ConfigurationError(f"{SWITCH_ENV}={switch!r}: must be off, on, console or otlp")
    if _provider:
        provider = _provider[0]
    else:
        try:
            from opentelemetry import trace  # noqa: PLC0415 - optional dependency
        except ImportError:
            if required or switch:
                _require()
            return None
        provider = trace.get_tracer_provider()
        if _is_default(provider):
            if switch in _EXPORTERS:
                provider = configure()
            elif not (required or switch in _ON):
                return None
    add_hook(span_event)
    return provider.get_tracer(_SCOPE_NAME, _version())  # type: ignore[no-any-return]


def _sample_ratio() -> float:
    raw = os.environ.get(SAMPLE_RATIO_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigurationError(f"{SAMPLE_RATIO_ENV}={raw!r}: must be a number in [0, 1]")
    return ratio


def configure(
    *,
    service_name: str | None = None,
    exporter: Any = None,
    sample_ratio: float | None = None,
    set_global: bool = True,
) -> TracerProvider:
    """Set up an SDK ``TracerProvider`` for a service that has none, and return it.

    Args:
        service_name: ``service.name`` (default: ``OTEL_SERVICE_NAME``, else the SDK's).
        exporter: a ``SpanExporter``, ``"console"`` or ``"otlp"``; default: ``"console"``
            when ``BUTTRESS_OTEL=console``, OTLP (HTTP) when ``OTEL_EXPORTER_OTLP_ENDPOINT``
            is set and ``opentelemetry-exporter-otlp-proto-http`` is installed, else none.
        sample_ratio: the share of new traces recorded, parent-based (a caller's sampled
            flag wins); default ``BUTTRESS_OTEL_SAMPLE_RATIO``, else 1.0. When
            ``OTEL_TRACES_SAMPLER`` is set and no ratio is given, the SDK's sampler from
            the environment is used instead.
        set_global: make it the global provider (default True).

    When the application already set its own provider, nothing is changed: that provider
    is returned (and a line logged).

    Example::

        otel.configure(service_name="shop", sample_ratio=0.1)
    """
    _require()
    try:
        from opentelemetry import trace  # noqa: PLC0415 - optional dependency
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider as SdkProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace import sampling  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError as exc:
        raise ConfigurationError(
            "otel.configure() needs opentelemetry-sdk: pip install 'buttress[otel]'"
        ) from exc
    current = trace.get_tracer_provider()
    if set_global and not _is_default(current):
        _log.info("otel.configure(): the application set its own TracerProvider; kept")
        return current
    ratio = sample_ratio
    if ratio is None and not os.environ.get("OTEL_TRACES_SAMPLER"):
        ratio = _sample_ratio()
    sampler = None
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
            raise ConfigurationError(f"otel.configure(sample_ratio={ratio!r}): a number in [0, 1]")
        sampler = sampling.ParentBased(sampling.TraceIdRatioBased(float(ratio)))
    attributes = {"service.name": service_name} if service_name else {}
    provider = SdkProvider(sampler=sampler, resource=Resource.create(attributes))
    if exporter is None:
        if _switch() == "console":
            exporter = "console"
        elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or _switch() == "otlp":
            exporter = "otlp"
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
                OTLPSpanExporter,
            )
        except ImportError as exc:
            raise ConfigurationError(
                "OTLP export needs opentelemetry-exporter-otlp-proto-http: pip install "
                "opentelemetry-exporter-otlp-proto-http"
            ) from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


# ---------------------------------------------------------------- events -> span events

#: the namespace of each event's fields on a span event (``buttress.retry.attempt``...)
_NAMESPACE: Final[dict[type[Event], str]] = {
    RetryScheduledEvent: "buttress.retry.",
    RetryGaveUpEvent: "buttress.retry.",
    RetryBudgetExhaustedEvent: "buttress.retry.",
    CircuitStateChangedEvent: "buttress.breaker.",
    CallRejectedEvent: "buttress.rejection.",
    TimeoutEvent: "buttress.timeout.",
    FallbackUsedEvent: "buttress.fallback.",
    HedgeLaunchedEvent: "buttress.hedge.",
    RateLimitedEvent: "buttress.rate_limit.",
    QuotaWarningEvent: "buttress.rate_limit.",
    RateLimitFallbackEvent: "buttress.rate_limit.",
    RequestErrorEvent: "buttress.request.",
}
_RENAMED: Final = {"timeout": "seconds", "to_state": "state", "from_state": "previous_state"}
_SKIPPED: Final = frozenset({"pipeline", "policy", "error", "code", "key_hash", "kind"})


def error_type(exc: BaseException) -> str:
    """The ``error.type`` of an exception: its fully qualified class name.

    Example::

        >>> error_type(TimeoutError())
        'TimeoutError'
    """
    kind = type(exc)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


class _Call:
    """Per pipeline call: the attempts so far, the delay chosen before the next one."""

    __slots__ = ("attempt", "delay", "entered", "retry_after")

    def __init__(self) -> None:
        self.attempt = 0
        self.delay: float | None = None
        self.retry_after: float | None = None
        self.entered: float | None = None


#: the pipeline call being traced (set by the pipeline span, read by the attempt spans)
CALL: ContextVar[_Call | None] = ContextVar("buttress_otel_call", default=None)


def event_attributes(event: Event) -> dict[str, Any]:
    """The attributes of ``event``'s span event (``buttress.*``, ``error.type``)."""
    prefix = _NAMESPACE.get(type(event), "buttress.")
    attributes: dict[str, Any] = {}
    if event.pipeline:
        attributes["buttress.pipeline"] = event.pipeline
    if event.policy:
        attributes["buttress.policy"] = event.policy
    for item in fields(event):
        name = item.name
        if name in _SKIPPED:
            continue
        value = getattr(event, name)
        if value is None or value == "":
            continue
        if isinstance(value, bool | int | float | str):
            attributes[prefix + _RENAMED.get(name, name)] = value
    error = getattr(event, "error", None)
    if isinstance(error, BaseException):
        attributes["error.type"] = error_type(error)
    code = getattr(event, "code", None)
    if isinstance(code, ErrorCode):
        attributes["buttress.error.code"] = code.wire
    return attributes


def span_event(event: Event) -> None:
    """A telemetry hook: ``event`` as a span event (``buttress.<kind>``) on the current span.

    Installed globally (`buttress.telemetry.add_hook`) when tracing is on. A few events
    also set attributes: a 500's exception type (``error.type``), a 429's policy, a
    request deadline exceeded; a scheduled retry's delay goes on the next attempt's span.
    """
    from opentelemetry import trace  # noqa: PLC0415 - installed when this hook is

    if isinstance(event, RetryScheduledEvent):
        call = CALL.get()
        if call is not None:
            call.delay = event.delay
            call.retry_after = _retry_after(event.error)
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes = event_attributes(event)
    span.add_event(f"buttress.{event.kind}", attributes)
    if isinstance(event, RequestErrorEvent):
        span.set_attribute("error.type", error_type(event.error))
        span.set_attribute("buttress.error.code", event.code.wire)
    elif isinstance(event, RateLimitedEvent):
        span.set_attributes(
            {
                "buttress.rate_limit.policy": event.policy,
                "buttress.rate_limit.remaining": 0,
                "buttress.rate_limit.limited": True,
            }
        )
    elif isinstance(event, TimeoutEvent) and event.policy == "request_deadline":
        span.set_attributes(
            {"buttress.deadline.exceeded": True, "buttress.deadline.seconds": event.timeout}
        )


def _retry_after(error: BaseException | None) -> float | None:
    if error is None:
        return None
    from buttress.errors import classify  # noqa: PLC0415 - off the happy path

    info = classify(error)
    return None if info is None else info.retry_after


# ---------------------------------------------------------------- pipeline spans


def _failed(span: Any, exc: BaseException) -> None:
    """Mark ``span`` failed by ``exc`` (``error.type``; status and exception if an error)."""
    if not span.is_recording():
        return
    span.set_attribute("error.type", error_type(exc))
    if isinstance(exc, Exception):
        from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415 - off the happy path

        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc)[:200] or type(exc).__name__))


class PipelineTracing:
    """The links a traced `buttress.Pipeline` adds to its chain, built once per pipeline.

    ``span``: the outermost link, one ``buttress.pipeline <name>`` span (INTERNAL) per
    call; ``inside(policy, link)`` / ``outside(policy, link)``: what goes just inside and
    just outside a policy's own link (an attempt span inside a `Retry`, the queue wait
    around a `Bulkhead` that may queue). The policies' drivers are not changed.
    """

    def __init__(self, tracer: Tracer, pipeline: Any) -> None:
        from opentelemetry import context, trace  # noqa: PLC0415 - optional dependency

        from buttress.resilience._breaker import CircuitBreaker  # noqa: PLC0415
        from buttress.resilience._bulkhead import Bulkhead  # noqa: PLC0415
        from buttress.resilience._retry import Retry  # noqa: PLC0415

        self._retry = Retry
        self._bulkhead = Bulkhead
        self.tracer = tracer
        name = pipeline.name
        self.span_name = f"buttress.pipeline {name}" if name else "buttress.pipeline"
        self.attributes: dict[str, Any] = {
            "buttress.pipeline": name or "",
            "buttress.policies": ",".join(p.name for p in pipeline.policies),
        }
        self.breaker = next((p for p in pipeline.policies if isinstance(p, CircuitBreaker)), None)
        self._attach = context.attach
        self._detach = context.detach
        self._in_context = trace.set_span_in_context
        self._current = trace.get_current_span
        self._internal = trace.SpanKind.INTERNAL

    def _start(self) -> Any:
        attributes = self.attributes
        breaker = self.breaker
        if breaker is not None:
            attributes = {**attributes, "buttress.breaker.state": breaker.state}
        return self.tracer.start_span(self.span_name, kind=self._internal, attributes=attributes)

    @staticmethod
    def _end(span: Any, call: _Call) -> None:
        if call.attempt:
            span.set_attribute("buttress.retry.attempts", call.attempt)
        span.end()

    def span(self, inner: Any, *, sync: bool) -> Any:
        """The outermost link: the call's span, current while the chain runs."""
        start, end, attach, detach, in_context = (
            self._start,
            self._end,
            self._attach,
            self._detach,
            self._in_context,
        )
        if sync:

            def link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                call = _Call()
                call_token = CALL.set(call)
                span = start()
                token = attach(in_context(span))
                try:
                    return inner(fn, args, kwargs)
                except BaseException as exc:
                    _failed(span, exc)
                    raise
                finally:
                    detach(token)
                    CALL.reset(call_token)
                    end(span, call)

            return link

        async def alink(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            call = _Call()
            call_token = CALL.set(call)
            span = start()
            token = attach(in_context(span))
            try:
                return await inner(fn, args, kwargs)
            except BaseException as exc:
                _failed(span, exc)
                raise
            finally:
                detach(token)
                CALL.reset(call_token)
                end(span, call)

        return alink

    def inside(self, policy: Any, inner: Any, *, sync: bool) -> Any:
        """The link just inside ``policy``'s: an attempt span (`Retry`), a queue's end."""
        if isinstance(policy, self._retry):
            return self._attempt(policy, inner, sync=sync)
        if isinstance(policy, self._bulkhead) and policy.max_queued:
            return self._admitted(inner, sync=sync)
        return inner

    def outside(self, policy: Any, link: Any, *, sync: bool) -> Any:
        """The link just outside ``policy``'s: a queue's start (a `Bulkhead` that queues)."""
        if isinstance(policy, self._bulkhead) and policy.max_queued:
            return self._queued(link, sync=sync)
        return link

    def _attempt(self, retry: Any, inner: Any, *, sync: bool) -> Any:
        from buttress.resilience._deadline import current_deadline  # noqa: PLC0415
        from buttress.resilience._policy import call_terminal  # noqa: PLC0415

        direct = inner is call_terminal
        now = retry.clock.now
        start_span = self.tracer.start_span
        kind, attach, detach, in_context = (
            self._internal,
            self._attach,
            self._detach,
            self._in_context,
        )

        def begin() -> Any:
            call = CALL.get()
            if call is None:  # not under this pipeline's span (cannot happen): a fresh count
                call = _Call()
            call.attempt += 1
            attributes: dict[str, Any] = {"buttress.retry.attempt": call.attempt}
            if call.delay is not None:
                attributes["buttress.retry.delay"] = call.delay
                call.delay = None
            if call.retry_after is not None:
                attributes["buttress.retry.retry_after"] = call.retry_after
                call.retry_after = None
            at = current_deadline()
            if at is not None:
                attributes["buttress.deadline.remaining"] = at - now()
            return start_span("buttress.attempt", kind=kind, attributes=attributes)

        if sync:

            def link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                span = begin()
                token = attach(in_context(span))
                try:
                    return fn(*args, **kwargs) if direct else inner(fn, args, kwargs)
                except BaseException as exc:
                    _failed(span, exc)
                    raise
                finally:
                    detach(token)
                    span.end()

            return link

        async def alink(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            span = begin()
            token = attach(in_context(span))
            try:
                return await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))
            except BaseException as exc:
                _failed(span, exc)
                raise
            finally:
                detach(token)
                span.end()

        return alink

    def _queued(self, inner: Any, *, sync: bool) -> Any:
        from time import perf_counter  # noqa: PLC0415

        if sync:

            def link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                call = CALL.get()
                if call is not None:
                    call.entered = perf_counter()
                return inner(fn, args, kwargs)

            return link

        async def alink(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            call = CALL.get()
            if call is not None:
                call.entered = perf_counter()
            return await inner(fn, args, kwargs)

        return alink

    def _admitted(self, inner: Any, *, sync: bool) -> Any:
        from time import perf_counter  # noqa: PLC0415

        from buttress.resilience._policy import call_terminal  # noqa: PLC0415

        direct = inner is call_terminal
        current = self._current

        def note() -> None:
            call = CALL.get()
            if call is not None and call.entered is not None:
                span = current()
                if span.is_recording():
                    waited = perf_counter() - call.entered
                    span.set_attribute("buttress.bulkhead.queue_wait", waited)
                call.entered = None

        if sync:

            def link(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                note()
                return fn(*args, **kwargs) if direct else inner(fn, args, kwargs)

            return link

        async def alink(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            note()
            return await (fn(*args, **kwargs) if direct else inner(fn, args, kwargs))

        return alink


def pipeline_tracing(pipeline: Any) -> PipelineTracing | None:
    """The tracing links for ``pipeline``, or None when tracing is off (see `tracer`)."""
    found = tracer()
    return None if found is None else PipelineTracing(found, pipeline)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current OpenTelemetry span, or None (no OTel, no span).

    `buttress.http` puts it on each attempt of a request that carries a ``traceparent``
    (`buttress.asgi.context.propagate_context`), so the server called sees the attempt's
    span as its parent: a retried call shows as two attempts, each with its server span.
    """
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace  # noqa: PLC0415 - imported already

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


# ------------------------------------------------------------------ metrics
#: the semantic conventions' advice for ``db.client.operation.duration`` (seconds)
_DB_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


class OtelMeter:
    """The measurements of `buttress.telemetry.Meter` as OpenTelemetry metrics.

    Instruments (on the meter ``buttress``):

    * ``buttress.pipeline.call.duration`` (histogram, s): every call of a named pipeline,
      attributes ``buttress.pipeline``, ``buttress.outcome`` and, when it failed,
      ``error.type`` (the taxonomy's code: bounded);
    * ``db.client.operation.duration`` (histogram, s, the semantic conventions' name and
      buckets): every round trip of a Redis, PostgreSQL or SQLite store, attributes
      ``db.system.name``, ``db.operation.name`` and ``error.type`` when it failed;
    * ``buttress.idempotency.requests`` (counter): requests with an Idempotency-Key,
      attribute ``buttress.idempotency.outcome`` (``first``, ``replay``, ``conflict``,
      ``in_flight``, ``store_unavailable``).

    Example::

        from opentelemetry.sdk.metrics import MeterProvider
        otel.enable_metrics(MeterProvider(metric_readers=[reader]))
    """

    def __init__(self, provider: Any = None) -> None:
        from opentelemetry import metrics  # noqa: PLC0415 - optional dependency

        source = provider if provider is not None else metrics.get_meter_provider()
        meter = source.get_meter(_SCOPE_NAME, _version())
        self.calls = meter.create_histogram(
            "buttress.pipeline.call.duration",
            unit="s",
            description="Duration of calls through a named buttress pipeline",
        )
        self.store = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of round trips to the buttress store",
            explicit_bucket_boundaries_advisory=list(_DB_BUCKETS),
        )
        self.idempotent = meter.create_counter(
            "buttress.idempotency.requests",
            unit="{request}",
            description="Requests with an Idempotency-Key, by outcome",
        )

    def pipeline_call(self, pipeline: str, seconds: float, outcome: str) -> None:
        """Record one pipeline call."""
        attributes = {"buttress.pipeline": pipeline, "buttress.outcome": outcome}
        if outcome != "ok":
            attributes["error.type"] = outcome
        self.calls.record(seconds, attributes)

    def store_call(self, system: str, operation: str, seconds: float, outcome: str) -> None:
        """Record one store round trip."""
        attributes = {"db.system.name": system, "db.operation.name": operation}
        if outcome != "ok":
            attributes["error.type"] = outcome
        self.store.record(seconds, attributes)

    def idempotency(self, outcome: str) -> None:
        """Count one idempotent request."""
        self.idempotent.add(1, {"buttress.idempotency.outcome": outcome})


_meter: list[OtelMeter] = []


def enable_metrics(provider: Any = None) -> OtelMeter:
    """Send buttress's call measurements to OpenTelemetry metrics (``provider``: default global).

    Adds one `OtelMeter` as a `buttress.telemetry` meter (replacing one added before);
    pipelines first used from now on are measured. `disable_metrics` undoes it.
    """
    from buttress._startup import require_modules  # noqa: PLC0415
    from buttress.telemetry import add_meter  # noqa: PLC0415

    require_modules("buttress OpenTelemetry metrics", ("opentelemetry.metrics",), "otel")
    meter = OtelMeter(provider)
    with _lock:
        _disable_metrics_locked()
        _meter.append(meter)
        add_meter(meter)
    return meter


def disable_metrics() -> None:
    """Stop sending measurements to OpenTelemetry (undoes `enable_metrics`)."""
    with _lock:
        _disable_metrics_locked()


def _disable_metrics_locked() -> None:
    """`disable_metrics` with the module's lock held."""
    from buttress.telemetry import remove_meter  # noqa: PLC0415

    for meter in _meter:
        remove_meter(meter)
    _meter.clear()


def metrics_configured() -> bool:
    """Whether an OpenTelemetry SDK ``MeterProvider`` is set globally (not the no-op)."""
    if "opentelemetry.metrics" not in sys.modules:
        return False
    from opentelemetry import metrics  # noqa: PLC0415

    provider = metrics.get_meter_provider()
    return type(provider).__module__.startswith("opentelemetry.sdk")
