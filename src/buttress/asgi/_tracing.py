"""The request's server span: `RequestContextMiddleware`'s hooks when OpenTelemetry is on.

Chosen once, when the stage is composed (`server_hooks`, from
``RequestContextMiddleware.stage_hooks``): without OpenTelemetry the stage keeps its own
W3C hooks and nothing here runs.

With it, ``arrive`` finds the server span: the current span when an instrumentation
outside buttress (``opentelemetry-instrumentation-asgi`` wrapping the hardened app)
already started one, else a new ``SERVER`` span buttress starts itself, its parent taken
from the request's headers by the global propagator (``traceparent``, ``tracestate``,
``baggage``), made current while the request runs. An instrumentation inside buttress
(``opentelemetry-instrumentation-fastapi``) then sees a current span and records an
``INTERNAL`` child: one trace, one server span. The request's `TraceContext` (logs,
``traceresponse``, problem+json, exemplars, outbound ``traceparent``) names that span.

``finish`` puts on the span what buttress decided: the route template, the status (and
``error.type`` for a 5xx), the rate limit (policy, remaining; never the key), the
idempotency outcome, a shed reason. A 429, a 500's exception and an exceeded deadline
reach it through the telemetry events (`buttress.otel.span_event`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from buttress.asgi._context import (
    _REQUEST_ID,
    _SCOPE,
    _TRACE,
    TraceContext,
    _new_trace,
    _valid_request_id,
)
from buttress.asgi._logging import route_template
from buttress.asgi._runner import Hooks
from buttress.otel import error_type, tracer

if TYPE_CHECKING:
    from buttress.asgi._context import RequestContextMiddleware

__all__ = ["SERVER_ATTRIBUTES", "server_hooks"]

#: the attributes buttress may set on the server span (see docs/observability.md)
SERVER_ATTRIBUTES: Final = (
    "http.request.method",
    "url.path",
    "url.scheme",
    "http.route",
    "http.response.status_code",
    "network.protocol.version",
    "error.type",
    "buttress.request_id",
    "buttress.rate_limit.policy",
    "buttress.rate_limit.remaining",
    "buttress.rate_limit.limited",
    "buttress.idempotency.outcome",
    "buttress.shed.reason",
    "buttress.deadline.exceeded",
)

_UNMATCHED = "<unmatched>"


class _FoundGetter:
    """The propagator's ``Getter`` over the headers the runner scanned (``ex.found``)."""

    @staticmethod
    def get(carrier: dict[bytes, list[bytes]], key: str) -> list[str] | None:
        values = carrier.get(key.lower().encode("latin-1"))
        return None if not values else [v.decode("latin-1") for v in values]

    @staticmethod
    def keys(carrier: dict[bytes, list[bytes]]) -> list[str]:
        return [k.decode("latin-1") for k in carrier]


def _ratelimit(headers: list[tuple[bytes, bytes]] | None) -> tuple[str, int] | None:
    """(policies, lowest remaining) from the ``RateLimit`` field the rate limit answered."""
    if not headers:
        return None
    for name, value in headers:
        if name == b"ratelimit":
            names = []
            remaining = None
            for item in value.decode("latin-1").split(","):
                parts = item.strip().split(";")
                names.append(parts[0].strip('"'))
                for part in parts[1:]:
                    if part.startswith("r="):
                        left = int(part[2:]) if part[2:].isdigit() else None
                        if left is not None and (remaining is None or left < remaining):
                            remaining = left
            return ",".join(names), remaining if remaining is not None else -1
    return None


class _ServerSpan:
    """The hooks of a `RequestContextMiddleware` whose trace context comes from OTel."""

    def __init__(self, context: RequestContextMiddleware, found_tracer: Any) -> None:
        from opentelemetry import context as otel_context  # noqa: PLC0415
        from opentelemetry import propagate, trace  # noqa: PLC0415

        self.context = context
        self.tracer = found_tracer
        self.propagator = propagate.get_global_textmap()
        self.getter: Any = _FoundGetter()  # duck-typed: a Getter needs OTel at import
        self.attach = otel_context.attach
        self.detach = otel_context.detach
        self.in_context = trace.set_span_in_context
        self.current = trace.get_current_span
        self.span_of = trace.get_current_span
        self.server = trace.SpanKind.SERVER
        self.status = trace.Status
        self.error = trace.StatusCode.ERROR

    def hooks(self) -> Hooks:
        context = self.context
        reads = {context.header} if context.trust_incoming else set()
        reads.add(b"traceparent")
        reads.update(f.lower().encode("latin-1") for f in self.propagator.fields)
        return Hooks(
            arrive=self.arrive,
            start=self.start,
            fail=self.fail,
            finish=self.finish,
            reads=frozenset(reads),
            fields=("context_headers", "context_tokens", "otel_span", "otel_token"),
        )

    def arrive(self, ex: Any) -> None:
        """Find or start the server span; take the request id; bind both."""
        context = self.context
        found = ex.found
        scope = ex.scope
        request_id: str | None = None
        if context.trust_incoming:
            for value in found.get(context.header, ()):
                if _valid_request_id(value, context.max_length):
                    request_id = value.decode("ascii")
                    break
        current = self.current()
        if getattr(current, "kind", None) is self.server and current.get_span_context().is_valid:
            span = current  # an instrumentation outside buttress started it: use it
            parent = getattr(current, "parent", None)
            ex.otel_token = None  # not ours to end
        else:
            parent_ctx = self.propagator.extract(found, getter=self.getter)
            parent = self.span_of(parent_ctx).get_span_context()
            method = scope["method"]
            attributes = {
                "http.request.method": method,
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
                "network.protocol.version": scope.get("http_version", "1.1"),
            }
            span = self.tracer.start_span(
                method, context=parent_ctx, kind=self.server, attributes=attributes
            )
            ex.otel_token = self.attach(self.in_context(span, parent_ctx))
        # FastAPI (0.165+) would start a SERVER span of its own from the raw headers, a
        # second root: its own key for "observed already" (what it sets for a mounted app)
        scope.setdefault("fastapi.telemetry", None)
        ids = span.get_span_context()
        trace_id = f"{ids.trace_id:032x}"
        span_id = f"{ids.span_id:016x}"
        flags = int(ids.trace_flags)
        parent_id = f"{parent.span_id:016x}" if parent is not None and parent.is_valid else None
        ex.otel_span = span
        trace = _new_trace(TraceContext, (trace_id, span_id, parent_id, flags))
        if request_id is None:
            request_id = trace_id if not context.custom_ids else context.generator()
        if span.is_recording():
            span.set_attribute("buttress.request_id", request_id)
        ex.context_headers = [
            (b"traceresponse", f"00-{trace_id}-{span_id}-{flags:02x}".encode("ascii")),
            (context.header, request_id.encode("ascii")),
        ]
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = request_id
        state["trace"] = trace
        ex.context_tokens = (_REQUEST_ID.set(request_id), _TRACE.set(trace), _SCOPE.set(scope))

    def start(self, ex: Any, headers: list[tuple[bytes, bytes]]) -> None:
        """Echo the id and ``traceresponse``; describe an instrumentation's span now.

        (Such a span ends with the response body, before ``finish``.)
        """
        headers.extend(ex.context_headers)
        if ex.otel_token is None:
            span = ex.otel_span
            if span.is_recording():
                self._describe(ex, span, own=False)

    def fail(self, ex: Any, exc: BaseException) -> None:
        """An exception nobody inside answered: its type on the span (it goes on)."""
        span = ex.otel_span
        if span.is_recording():
            span.set_attribute("error.type", error_type(exc))

    def finish(self, ex: Any) -> None:
        """What buttress decided, on the span; the span ended (if buttress started it)."""
        span = ex.otel_span
        own = ex.otel_token is not None
        try:
            if own and span.is_recording():
                self._describe(ex, span, own=True)
        finally:
            self.context.finish(ex)
            if own:
                self.detach(ex.otel_token)
                span.end()

    def _describe(self, ex: Any, span: Any, own: bool) -> None:
        scope = ex.scope
        route = route_template(scope)
        if route != _UNMATCHED:
            span.set_attribute("http.route", route)
            if own:
                span.update_name(f"{scope['method']} {route}")
        status = ex.status
        if own:
            span.set_attribute("http.response.status_code", status or 500)
            if not status or status >= 500:
                attributes = getattr(span, "attributes", None) or {}
                if "error.type" not in attributes:
                    span.set_attribute("error.type", str(status or 500))
                span.set_status(self.status(self.error))
        limited = _ratelimit(getattr(ex, "ratelimit_headers", None))
        if limited is not None:
            span.set_attribute("buttress.rate_limit.policy", limited[0])
            span.set_attribute("buttress.rate_limit.remaining", limited[1])
        state = scope.get("state") or {}
        outcome = state.get("buttress.idempotency")
        if outcome is not None:
            span.set_attribute("buttress.idempotency.outcome", outcome)
        shed = state.get("buttress.shed")
        if shed is not None:
            span.set_attribute("buttress.shed.reason", shed)


def server_hooks(context: RequestContextMiddleware, *, required: bool = False) -> Hooks | None:
    """The stage's hooks with the trace context from OpenTelemetry, or None when it is off."""
    found = tracer(required=required)
    if found is None:
        return None
    return _ServerSpan(context, found).hooks()
