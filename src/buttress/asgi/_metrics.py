"""Prometheus metrics for inbound HTTP, and the ``/metrics`` endpoint that serves them.

`MetricsMiddleware` is a pure ASGI middleware that records, per request:

- ``buttress_http_requests_total{method,route,status}``
- ``buttress_http_request_duration_seconds{method,route}`` (a histogram)
- ``buttress_http_requests_in_flight``

plus ``buttress_http_requests_shed_total{reason}`` and
``buttress_http_requests_limited_total{policy}``, which the load-shedding and rate-limit
middlewares increment through `HttpMetrics.shed` and `HttpMetrics.limited`, and the
resilience events of every pipeline (retries, exhausted retry budgets, breaker states,
rejections, timeouts) through a `buttress.telemetry.PrometheusHook` on the same registry.
One name per fact: a 429 is ``buttress_http_requests_limited_total{policy}`` (and its
``buttress_http_requests_total{status="429"}``), never also a resilience counter; the
inbound request deadline's 504 is ``buttress_timeouts_total{pipeline="inbound",
policy="request_deadline",code="deadline_exceeded"}``, never ``upstream_timeout`` (which
means an outbound call's own timeout).

Labels stay bounded. ``route`` is the route *template* (``/items/{id}``, with the prefixes
of mounted sub-applications), never the raw path; requests no route matched (404s, bare
ASGI apps) share one label, `UNMATCHED_ROUTE`. The template is read after the app has
answered from ``scope["route"]``, where Starlette and FastAPI put the matched route, and
completed with the templates of the mounts above it (found once per route in
``scope["router"]``), so the layers between this one and the router must pass the scope
dict on, not a copy. A request answered before routing (429, 413, 503, an idempotent
replay) or by a route that leaves no ``scope["route"]`` (FastAPI's ``/docs``) is named by
matching its path against the app's routes (`buttress.asgi._logging.RouteNames`,
cached). ``method`` is one of the standard methods or ``OTHER``. A handler
that raises counts as a 500 (and the exception propagates); a request cancelled before it
answered counts as 499.

``/metrics`` is answered by the middleware itself (Prometheus text format, or OpenMetrics
when the ``Accept`` header asks for ``application/openmetrics-text``; exemplars carrying
the trace id appear only there). Like health details it is not public by default: a
loopback client, or ``Authorization: Bearer <token>`` when a token is configured. Anyone
else gets a problem+json answer: 401 with ``WWW-Authenticate: Bearer`` when a token would
have been accepted, 403 otherwise (an operator probing from the wrong place learns why).
A loopback request that carries any proxy header (``Forwarded``, any ``X-Forwarded-*``,
``X-Real-IP``, ``Via``, ``CF-Connecting-IP``, ``True-Client-IP``, ``X-Client-IP``: see
`buttress.asgi._context.is_local_request`) came through a proxy and is not treated as local
(as for health details). A proxy on the same host that adds none of those makes every
client look local, and no header can reveal it: there, use a token with
``expose="token"``, and block the path at the proxy.

Several worker processes (gunicorn, ``uvicorn --workers``) without
``PROMETHEUS_MULTIPROC_DIR``: each scrape reaches one worker and sees its numbers only.
`HttpMetrics` warns once per process, one line, when the process looks like one worker of
several (`several_workers`, a heuristic: ``WEB_CONCURRENCY`` or ``UVICORN_WORKERS`` above
1, ``--workers``/``-w`` above 1 in ``GUNICORN_CMD_ARGS``, or in the command line of the
parent process when that is uvicorn or gunicorn, read from ``/proc`` on Linux; a gunicorn
``workers`` set only in a configuration file is not seen). The cure: set the environment variable
``PROMETHEUS_MULTIPROC_DIR`` to a directory *before* the processes start (prometheus-client
picks its storage when it is imported) and empty that directory at every start of the
service, as prometheus-client requires; each process then writes its values to files and
``/metrics`` sums them across processes (the in-flight gauge in ``livesum`` mode). Under
gunicorn also call ``prometheus_client.multiprocess.mark_process_dead(worker.pid)`` in the
``child_exit`` hook. prometheus-client does not keep exemplars in that mode.

Cost per request, in process over a bare Starlette app: about 2 µs (3.5 µs with
exemplars). In one process the series are plain Python numbers bumped on the event-loop
thread and read only when someone scrapes (`buttress.asgi._metrics_collector`, which says
what it replaces and why); in multiprocess mode every update goes through
prometheus-client's own metrics and their file-backed values (about 9 µs).

Example::

    from prometheus_client import CollectorRegistry
    from buttress.asgi._metrics import MetricsMiddleware

    app = MetricsMiddleware(app, registry=CollectorRegistry(), token="s3cret-token")
"""

from __future__ import annotations

import hmac
import itertools
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, Protocol

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.asgi._context import is_local_request
from buttress.asgi._logging import RouteNames
from buttress.asgi._metrics_collector import Recorder, acquire_families, release_families
from buttress.asgi._problem import send_problem
from buttress.asgi._runner import Hooks, Stage
from buttress.asgi._types import ASGIApp, Scope, Send
from buttress.errors import ConfigurationError, ErrorCode

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_EXEMPT_PATHS",
    "UNMATCHED_ROUTE",
    "HttpMetrics",
    "MetricsMiddleware",
    "RequestMetrics",
    "several_workers",
]

TraceIdFn = Callable[[Scope], "str | None"]
Expose = Literal["loopback", "token", "public"]

#: Latency buckets in seconds: fine below 100 ms where APIs live, coarse up to 30 s.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Paths neither counted nor timed (probes and scrapes would drown the real traffic).
DEFAULT_EXEMPT_PATHS: tuple[str, ...] = ("/health", "/health/live", "/health/ready", "/metrics")
#: The one ``route`` label shared by every request that no route matched.
UNMATCHED_ROUTE = "<unmatched>"

_METHOD_LABELS = {
    m: m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
}
_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_MAX_REASONS = 64  # distinct shed reasons / limit policies before they fold into "other"
_MAX_TRACE_ID = 64  # prometheus-client refuses exemplar labels over 128 characters
_HEX = b"0123456789abcdef"
_log = logging.getLogger("buttress")


class RequestMetrics(Protocol):
    """What other middlewares need to report their decisions (`HttpMetrics` fits).

    Example::

        def on_shed(metrics: RequestMetrics) -> None:
            metrics.shed("concurrency")
    """

    def shed(self, reason: str) -> None:
        """Count one request answered 503 by load shedding, by ``reason``."""

    def limited(self, policy: str) -> None:
        """Count one request answered 429 by the rate-limit ``policy``."""


# --------------------------------------------------------------------------- HttpMetrics


def _traceparent_trace_id(scope: Scope) -> str | None:
    """The trace id of a valid inbound W3C ``traceparent`` header, else None."""
    for name, value in scope.get("headers", ()):
        if name == b"traceparent":
            parts = bytes(value).strip().split(b"-")
            if (
                len(parts) >= 4
                and len(parts[0]) == 2
                and parts[0] != b"ff"
                and len(parts[1]) == 32
                and not parts[1].translate(None, _HEX)
                and parts[1] != b"0" * 32
            ):
                return parts[1].decode("ascii")
            return None
    return None


def _validate_buckets(buckets: Iterable[float]) -> tuple[float, ...]:
    try:
        values = tuple(float(b) for b in buckets)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"buckets must be numbers of seconds, got {buckets!r}") from exc
    if not values:
        raise ConfigurationError("buckets must not be empty")
    finite = values[:-1] if values[-1] == math.inf else values
    if any(not math.isfinite(b) or b <= 0 for b in finite):
        raise ConfigurationError(f"buckets must be positive, finite seconds, got {values}")
    if any(a >= b for a, b in itertools.pairwise(values)):
        raise ConfigurationError(f"buckets must be strictly increasing, got {values}")
    return finite


class HttpMetrics:
    """The HTTP metric families on one registry, their label children, and the exposition.

    Build one when other middlewares must report into the same metrics before the
    `MetricsMiddleware` exists (harden builds the metrics first, then the layers), and
    pass it as ``MetricsMiddleware(app, metrics=...)``. Two instances on one registry and
    namespace share the collectors instead of failing on duplicate names.

    Args:
        registry: a ``prometheus_client.CollectorRegistry``; default the global one.
        namespace: metric name prefix (``""`` for none).
        buckets: histogram upper bounds in seconds, strictly increasing.
        exemplars: attach the trace id to the duration and count of each request
            (visible in OpenMetrics only).
        trace_id: ``(scope) -> str | None`` read when the response starts (so context
            variables set by an inner request-context middleware are visible); default:
            the trace id of an inbound W3C ``traceparent`` header.
        resilience: also register `buttress.telemetry.PrometheusHook` (a global hook, on
            the same registry) so retries, breaker states and rejections show up.
        detail: measure the happy path in detail (default off): add
            `buttress.telemetry.PrometheusMeter` (a global meter, on the same registry:
            every call of every named pipeline, every store round trip and every
            idempotent request's outcome, counted and timed) and the request and response
            body sizes, ``buttress_http_request_size_bytes{method,route}`` (from
            ``Content-Length``) and ``buttress_http_response_size_bytes{method,route}``.

    Example::

        metrics = HttpMetrics(registry=CollectorRegistry())
        metrics.shed("concurrency")
        body, content_type = metrics.render("text/plain")
        metrics.close()
    """

    def __init__(
        self,
        *,
        registry: Any = None,
        namespace: str = "buttress",
        buckets: Iterable[float] = DEFAULT_BUCKETS,
        exemplars: bool = False,
        trace_id: TraceIdFn | None = None,
        resilience: bool = True,
        detail: bool = False,
    ) -> None:
        if not isinstance(namespace, str) or (namespace and not _NAME_RE.fullmatch(namespace)):
            raise ConfigurationError(
                f"namespace must be a Prometheus name ([a-zA-Z_:][a-zA-Z0-9_:]*), got {namespace!r}"
            )
        bounds = _validate_buckets(buckets)
        if trace_id is not None and not callable(trace_id):
            raise ConfigurationError("trace_id must be a callable (scope) -> str | None")
        try:
            import prometheus_client as prom  # noqa: PLC0415 - optional dependency
            from prometheus_client import values  # noqa: PLC0415
            from prometheus_client.exposition import choose_encoder  # noqa: PLC0415
        except ImportError as exc:  # pragma: no cover - exercised without the extra
            raise ConfigurationError(
                "metrics need prometheus-client: pip install 'buttress[metrics]'"
            ) from exc
        registry = prom.REGISTRY if registry is None else registry
        multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(
            "prometheus_multiproc_dir"  # noqa: SIM112 - the old spelling prometheus-client honours
        )
        exposition = registry
        if multiproc_dir:
            if values.ValueClass is values.MutexValue:
                raise ConfigurationError(
                    "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported; "
                    "set it in the environment before the service starts"
                )
            if not os.path.isdir(multiproc_dir):
                raise ConfigurationError(
                    f"PROMETHEUS_MULTIPROC_DIR={multiproc_dir!r} is not a directory; create it "
                    "(empty) before the service starts"
                )
            from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

            exposition = prom.CollectorRegistry()
            MultiProcessCollector(exposition, path=multiproc_dir)  # type: ignore[no-untyped-call]
            if exemplars:
                _log.warning(
                    "metrics exemplars are off: prometheus-client does not keep them in "
                    "multiprocess mode (PROMETHEUS_MULTIPROC_DIR)"
                )
                exemplars = False

        else:
            _warn_several_workers()

        self.namespace = namespace
        self.multiprocess = bool(multiproc_dir)
        self.exemplars = bool(exemplars)
        self.trace_id: TraceIdFn = trace_id if trace_id is not None else _traceparent_trace_id
        self.registry = registry
        self._exposition = exposition
        self._choose_encoder = choose_encoder
        self._families = acquire_families(
            prom, registry, namespace, bounds, resilience, self.multiprocess, detail
        )
        self._closed = False
        self._active = self._families.active  # an object with an int ``active``
        # (id(route), method label, status) -> (route, recorder); route guards against id reuse
        self._children: dict[tuple[int, str, int], tuple[object, Recorder]] = {}
        self._templates: dict[int, tuple[object, str]] = {}
        self._shed: dict[str, Any] = {}
        self._limited: dict[str, Any] = {}

    def shed(self, reason: str) -> None:
        """Count one request refused by load shedding (``reason``: a short fixed word).

        Example::

            metrics.shed("adaptive_limit")
        """
        child = self._shed.get(reason)
        if child is None:
            child = self._child(self._shed, self._families.shed, reason)
        child.inc()

    def limited(self, policy: str) -> None:
        """Count one request refused by the rate-limit ``policy`` (its configured name).

        Example::

            metrics.limited("per_ip_burst")
        """
        child = self._limited.get(policy)
        if child is None:
            child = self._child(self._limited, self._families.limited, policy)
        child.inc()

    @staticmethod
    def _child(cache: dict[str, Any], family: Any, label: str) -> Any:
        key = label if len(cache) < _MAX_REASONS else "other"  # keep the label set bounded
        child = cache.get(key)
        if child is None:
            child = family.labels(key)
            cache[key] = child
        return child

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header value: (body, content type).

        Example::

            body, content_type = metrics.render("application/openmetrics-text")
        """
        encoder, content_type = self._choose_encoder(accept)
        return encoder(self._exposition), content_type

    def close(self) -> None:
        """Remove the resilience hook and unregister the collectors once the last user closes.

        Example::

            metrics.close()
        """
        if not self._closed:
            self._closed = True
            release_families(self._families, self.namespace)

    @property
    def in_flight(self) -> int:
        """Requests being served right now (by this process)."""
        return int(self._active.active)

    def begin(self) -> None:
        """Count one more request in flight; `end` counts it out.

        Example::

            metrics.begin()
            ...  # serve it
            metrics.end(scope, 200, elapsed=0.012)
        """
        self._active.active += 1

    def end(
        self,
        scope: Scope,
        status: int,
        elapsed: float,
        trace: object = None,
        names: RouteNames | None = None,
        sent: int | None = None,
    ) -> None:
        """One request over: out of flight, counted and timed under its route and status.

        ``trace`` (a trace id string) becomes the exemplar of the sample when it is a
        non-empty string of at most 64 characters. ``names`` names the requests that
        ``scope["route"]`` does not (answered before routing: see `RouteNames`).
        ``sent``: the response body's bytes, for the size histograms (``detail``).
        """
        self._active.active -= 1
        route = scope.get("route")
        if route is None and names is not None and names.wanted(scope):
            route = names(scope)  # a template (one string object per template), or None
        method = _METHOD_LABELS.get(scope["method"], "OTHER")
        entry = self._children.get((id(route), method, status))
        if entry is None or entry[0] is not route:
            entry = self._resolve(scope, route, method, status)
        if isinstance(trace, str) and 0 < len(trace) <= _MAX_TRACE_ID:
            entry[1].record_exemplar(elapsed, trace)
        else:
            entry[1].record(elapsed)
        if sent is not None and self._families.sizes is not None:
            self._sizes(scope, route, method, sent)

    def _sizes(self, scope: Scope, route: object, method: str, sent: int) -> None:
        """The request's declared body size and the response's sent one (``detail``)."""
        sizes = self._families.sizes
        assert sizes is not None  # noqa: S101 - checked by the caller
        template = self._templates[id(route)][1]  # resolved by `end` just before
        request, response = sizes
        response.labels(method, template).observe(sent)
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit():
                    request.labels(method, template).observe(int(value))
                return
        request.labels(method, template).observe(0)

    def _resolve(
        self, scope: Scope, route: object, method: str, status: int
    ) -> tuple[object, Recorder]:
        """Slow path, once per (route, method, status): the recorder of its labels."""
        cached = self._templates.get(id(route))
        if cached is not None and cached[0] is route:
            template = cached[1]
        else:
            template = _route_template(scope, route)
            self._templates[id(route)] = (route, template)
        entry = (route, self._families.series(method, template, status))
        self._children[(id(route), method, status)] = entry
        return entry


def _route_template(scope: Scope, route: object) -> str:
    """The full template of the route that handled the request (mount prefixes included)."""
    if route is None:
        return UNMATCHED_ROUTE
    if isinstance(route, str):  # named by RouteNames: the full template already
        return route
    routes = getattr(scope.get("router"), "routes", None)
    if routes is not None:
        found = _find_route(routes, route, "", 0)
        if found is not None:
            return found
    path_format = getattr(route, "path_format", None)
    return path_format if isinstance(path_format, str) and path_format else UNMATCHED_ROUTE


def _find_route(routes: Any, target: object, prefix: str, depth: int) -> str | None:
    """Depth-first search of Starlette/FastAPI routes, joining Mount templates on the way."""
    if depth > 16:
        return None
    try:
        items = list(routes)
    except TypeError:
        return None
    for item in items:
        path_format = getattr(item, "path_format", "")
        if not isinstance(path_format, str):
            path_format = ""
        if item is target:
            return prefix + path_format or "/"
        children = getattr(item, "routes", None)
        if children:
            found = _find_route(
                children, target, prefix + path_format.removesuffix("/{path}"), depth + 1
            )
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------- the middleware


class MetricsMiddleware(Stage):
    """Count and time every HTTP request; serve ``/metrics`` (see the module docstring).

    Args:
        app: the ASGI application.
        metrics: an existing `HttpMetrics`; otherwise one is built from ``registry``,
            ``namespace``, ``buckets``, ``exemplars``, ``trace_id`` and ``resilience``
            (see `HttpMetrics`), which must then keep their defaults.
        path: where the exposition is served (``None``: not served here).
        token: a bearer token that may read ``path`` from anywhere.
        expose: ``"loopback"`` (loopback clients, or the token), ``"token"`` (the token
            only) or ``"public"`` (anyone: only behind a network you trust).
        exempt_paths: exact paths neither counted nor timed.
        clock: the clock that times requests.
        router: the app whose routes name the requests answered before routing (see
            `buttress.asgi._logging.RouteNames`; default: found by following ``.app``).

    Example::

        from prometheus_client import CollectorRegistry

        app = MetricsMiddleware(app, registry=CollectorRegistry(), exemplars=True)
        app.shed("concurrency")        # from the load-shedding layer
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics | None = None,
        registry: Any = None,
        path: str | None = "/metrics",
        namespace: str = "buttress",
        buckets: Iterable[float] = DEFAULT_BUCKETS,
        token: str | None = None,
        expose: Expose = "loopback",
        exemplars: bool = False,
        trace_id: TraceIdFn | None = None,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
        clock: Clock = SYSTEM_CLOCK,
        resilience: bool = True,
        router: Any = None,
    ) -> None:
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ConfigurationError(f"path must start with '/' (or be None), got {path!r}")
        if expose not in ("loopback", "token", "public"):
            raise ConfigurationError(
                f"expose must be 'loopback', 'token' or 'public', got {expose!r}"
            )
        if token is not None and (
            not isinstance(token, str)
            or not token
            or not token.isascii()
            or not token.isprintable()
            or any(c.isspace() for c in token)
        ):
            raise ConfigurationError("token must be a non-empty ASCII string without spaces")
        if expose == "token" and token is None:
            raise ConfigurationError("expose='token' needs a token")
        if expose == "public" and token is not None:
            raise ConfigurationError("a token has no effect with expose='public'; drop one")
        if isinstance(exempt_paths, str):
            raise ConfigurationError("exempt_paths must be a collection of paths, not one string")
        exempt = frozenset(exempt_paths)
        for item in exempt:
            if not isinstance(item, str) or not item.startswith("/"):
                raise ConfigurationError(f"exempt paths must start with '/', got {item!r}")
        if not callable(getattr(clock, "now", None)):
            raise ConfigurationError(f"clock must have a now() method, got {clock!r}")
        if metrics is None:
            metrics = HttpMetrics(
                registry=registry,
                namespace=namespace,
                buckets=buckets,
                exemplars=exemplars,
                trace_id=trace_id,
                resilience=resilience,
            )
            self._owns_metrics = True
        else:
            if (
                registry is not None
                or namespace != "buttress"
                or tuple(buckets) != DEFAULT_BUCKETS
                or exemplars
                or trace_id is not None
                or not resilience
            ):
                raise ConfigurationError(
                    "pass registry, namespace, buckets, exemplars, trace_id and resilience "
                    "to HttpMetrics when you pass metrics=, not to MetricsMiddleware"
                )
            self._owns_metrics = False
        self.app = app
        self.metrics = metrics
        self.path = path
        self.expose: Expose = expose
        self._token = token.encode("ascii") if token is not None else None
        self._skip = exempt | {path} if path is not None else exempt
        self._now = clock.now
        self._begin = metrics.begin
        self._end = metrics.end
        self._exemplars = metrics.exemplars
        self._trace_id = metrics.trace_id
        self._names = RouteNames(router if router is not None else app) or None

    def shed(self, reason: str) -> None:
        """Count one request refused by load shedding (see `HttpMetrics.shed`)."""
        self.metrics.shed(reason)

    def limited(self, policy: str) -> None:
        """Count one request refused by a rate limit (see `HttpMetrics.limited`)."""
        self.metrics.limited(policy)

    def close(self) -> None:
        """Release the metrics this middleware built (see `HttpMetrics.close`)."""
        if self._owns_metrics:
            self.metrics.close()

    def stage_hooks(self) -> Hooks:
        """Arrive: ``/metrics`` answered, or the clock starts; finish: count and time."""
        return Hooks(
            arrive=self.arrive,
            start=self.start if self._exemplars else None,
            fail=self.fail,
            finish=self.finish,
            fields=("metrics_started", "metrics_status", "metrics_trace"),
        )

    def arrive(self, ex: Any) -> Awaitable[bool] | None:
        """Serve ``/metrics``; skip the exempt paths; count the request in flight."""
        scope = ex.scope
        path = scope["path"]
        if scope.get("root_path"):
            path = _route_path(scope)
        if path in self._skip:
            ex.metrics_started = None
            if path == self.path:
                return self._serve(scope, ex.send)
            return None
        self._begin()
        ex.metrics_started = self._now()
        ex.metrics_status = 0
        ex.metrics_trace = None
        return None

    def start(self, ex: Any, headers: list[tuple[bytes, bytes]]) -> None:
        """The exemplar's trace id, read when the response starts."""
        if ex.metrics_started is not None:
            ex.metrics_trace = self._trace_id(ex.scope)

    def fail(self, ex: Any, exc: BaseException) -> None:
        """An exception counts as a 500; a cancellation before an answer as a 499."""
        if ex.metrics_started is not None:
            if isinstance(exc, Exception):
                ex.metrics_status = 500
            elif not ex.status:
                ex.metrics_status = 499

    def finish(self, ex: Any) -> None:
        """Count and time the request under its route, method and status."""
        start = ex.metrics_started
        if start is None:
            return
        elapsed = self._now() - start
        scope = ex.scope
        trace = None
        if self._exemplars:
            trace = ex.metrics_trace
            if trace is None:
                trace = self._trace_id(scope)
        # returned without answering: the server sends a 500
        self._end(
            scope, ex.metrics_status or ex.status or 500, elapsed, trace, self._names, ex.size
        )

    async def _serve(self, scope: Scope, send: Send) -> bool:
        method = scope["method"]
        head = method == "HEAD"
        if method != "GET" and not head:
            await send_problem(
                send, ErrorCode.METHOD_NOT_ALLOWED, headers=[(b"allow", b"GET, HEAD")]
            )
            return True
        authorization = b""
        accept: list[bytes] = []
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization = value
            elif name == b"accept":
                accept.append(value)
        if not self._allowed(scope, authorization):
            if self._token is not None:
                challenge = b'Bearer realm="metrics"'
                if authorization:
                    challenge += b', error="invalid_token"'
                await send_problem(
                    send,
                    ErrorCode.UNAUTHORIZED,
                    detail="Metrics need a valid bearer token.",
                    headers=[(b"www-authenticate", challenge)],
                    head=head,
                )
            else:
                await send_problem(
                    send,
                    ErrorCode.FORBIDDEN,
                    detail="Metrics are served to loopback clients only.",
                    head=head,
                )
            return True
        body, content_type = self.metrics.render(b",".join(accept).decode("latin-1"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode("ascii")),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if head else body})
        return True

    def _allowed(self, scope: Scope, authorization: bytes) -> bool:
        if self.expose == "public":
            return True
        if self._token is not None and authorization:
            scheme, _, credentials = bytes(authorization).partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(
                credentials.strip(), self._token
            ):
                return True
        # a local reverse proxy forwarding someone else's request is not a local scrape
        return self.expose == "loopback" and is_local_request(scope)


def _route_path(scope: Scope) -> str:
    """The path below ``root_path`` (ASGI servers send the full path), as Starlette does."""
    path: str = scope["path"]
    root_path: str = scope["root_path"]
    if path.startswith(root_path):
        if path == root_path:
            return "/"
        if path[len(root_path)] == "/":
            return path[len(root_path) :]
    return path


# --------------------------------------------------------------------------- several workers

_SERVERS = ("uvicorn", "gunicorn")
_warned_workers = [False]


def several_workers(
    environ: dict[str, str] | None = None, parent_cmdline: list[str] | None = None
) -> str | None:
    """Why this process looks like one worker of several, or None (a heuristic).

    Several when ``WEB_CONCURRENCY`` or ``UVICORN_WORKERS`` (what ``uvicorn --workers``
    and gunicorn read) is above 1, when ``GUNICORN_CMD_ARGS`` says ``--workers``/``-w``
    above 1, or when the parent process is uvicorn or gunicorn started with ``--workers``
    or ``-w`` above 1 (its command line, from ``/proc/<ppid>/cmdline`` on Linux). Not
    seen: a gunicorn ``workers`` set only in its configuration file.

    Example::

        several_workers({"WEB_CONCURRENCY": "4"}, [])   # 'WEB_CONCURRENCY=4'
    """
    env = dict(os.environ) if environ is None else environ
    for name in ("WEB_CONCURRENCY", "UVICORN_WORKERS"):
        if _count(env.get(name, "")) > 1:
            return f"{name}={env[name]}"
    import shlex  # noqa: PLC0415 - start-up only

    try:
        gunicorn_args = shlex.split(env.get("GUNICORN_CMD_ARGS", ""))
    except ValueError:
        gunicorn_args = []
    if _workers_arg(gunicorn_args) > 1:
        return f"GUNICORN_CMD_ARGS={env['GUNICORN_CMD_ARGS']}"
    argv = _parent_cmdline() if parent_cmdline is None else parent_cmdline
    if any(os.path.basename(a).split(".")[0] in _SERVERS for a in argv[:3]):
        workers = _workers_arg(argv)
        if workers > 1:
            return f"the parent process runs {workers} workers ({' '.join(argv)[:200]})"
    return None


def _count(text: str) -> int:
    text = text.strip()
    return int(text) if text.isdigit() else 0


def _workers_arg(argv: list[str]) -> int:
    """The ``--workers N``/``--workers=N``/``-w N``/``-wN`` of a command line, else 0."""
    for i, arg in enumerate(argv):
        if arg in ("--workers", "-w") and i + 1 < len(argv):
            return _count(argv[i + 1])
        if arg.startswith("--workers="):
            return _count(arg.partition("=")[2])
        if arg.startswith("-w") and arg[2:].isdigit():
            return _count(arg[2:])
    return 0


def _parent_cmdline() -> list[str]:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            raw = f.read(8192)
    except OSError:  # not Linux, or no /proc: not seen
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _warn_several_workers() -> None:
    """Warn once per process when it looks like one worker of several (no multiprocess dir)."""
    if _warned_workers[0]:
        return
    _warned_workers[0] = True
    reason = several_workers()
    if reason is not None:
        _log.warning(
            "metrics: this process looks like one worker of several (%s) and "
            "PROMETHEUS_MULTIPROC_DIR is not set: each scrape of /metrics sees one "
            "worker's numbers; set it to an empty directory before the server starts",
            reason,
        )
