"""`EdgeMiddleware`: the features of `harden` fused into one ASGI layer.

Request context (ids, trace context), the access log, HTTP metrics, security headers, CORS
and the error edge each used to be a middleware of their own, with a ``send`` wrapper each:
about a dozen coroutine frames and closures per request. `EdgeMiddleware` does the same
work, with the same observable result, in one layer with one ``send`` wrapper. It behaves
exactly like this stack, outermost first::

    RequestContextMiddleware > AccessLogMiddleware > MetricsMiddleware
        > SecurityHeadersMiddleware > CORSMiddleware > ErrorMiddleware > app

with one difference of placement: the error edge used to sit inside `GracefulShutdown`,
and now sits outside it (`harden` puts the shutdown layer inside this one, so that its
503s still carry ids and security headers). A problem+json answer to an exception
therefore adds ``Connection: close`` itself while the server drains, as it used to get
from the shutdown layer.

The inner layers of `harden` are fused in too. When the app it wraps starts with
`GracefulShutdown` > `HealthMiddleware` > `LoadSheddingMiddleware` >
`BodyLimitMiddleware` > `DeadlineMiddleware` (any of them may be missing, the order may
not change), an HTTP request does their work in this layer's frame, reading their state
(in-flight set, concurrency limiter, limits, deadline policy) and calling the application
below them directly: no frame, ``send`` wrapper or header scan of their own. Their single
``send`` signal (response started, status, last body byte) is this layer's. What is rare
goes through the layers themselves, which stay whole: lifespan and WebSocket scopes, the
health and readiness paths, requests arriving while the server drains, and bodies the
body limit must count (chunked, HTTP/2) or refuse.

The separate classes stay available for standalone use; this one is built from them (their
settings validation, header sets and preflight answer are reused as they are).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from random import getrandbits
from typing import Any, Final

from buttress import _clock
from buttress._clock import SYSTEM_CLOCK, next_id, tick_width, wheel_for
from buttress.asgi._context import (
    _ADDRESS_HEADERS,
    _REQUEST_ID,
    _TRACE,
    UNKNOWN_CLIENT,
    RequestContextMiddleware,
    TraceContext,
    _valid_request_id,
    parse_traceparent,
    resolve_client,
)
from buttress.asgi._errors import ErrorMiddleware
from buttress.asgi._headers import (
    SECURITY_PROFILES,
    CORSMiddleware,
    SecurityHeadersMiddleware,
    SecurityProfile,
)
from buttress.asgi._health import HealthMiddleware
from buttress.asgi._limits import BodyLimitMiddleware, DeadlineMiddleware
from buttress.asgi._logging import AccessLogMiddleware, log_access
from buttress.asgi._metrics import _MAX_TRACE_ID, _METHOD_LABELS, MetricsMiddleware, _route_path
from buttress.asgi._problem import problem_for_exception, send_problem
from buttress.asgi._shedding import LoadSheddingMiddleware, _client_gone
from buttress.asgi._shutdown import GracefulShutdown, _answer_abandoned
from buttress.asgi._types import ASGIApp, Message, Receive, Scope, Send
from buttress.errors import ConfigurationError, DeadlineExceeded, ErrorCode
from buttress.resilience import deadline
from buttress.resilience._deadline import _DEADLINE
from buttress.resilience._timeout import _expired

__all__ = ["EdgeMiddleware"]


_CLOSE = (b"connection", b"close")
# the per-origin CORS answers kept: inserted while under the cap, for origins up to 256
# bytes (a real origin is short); others are computed each time, never an unbounded table
_CORS_CACHE_MAX = 1024
_CORS_KEY_MAX = 256
_NO_EXTRA: list[tuple[bytes, bytes]] = []
_NO_KWARGS: Final[dict[str, Any]] = {}
_NOTHING: frozenset[Any] = frozenset()
_CORS_NAMES = frozenset(
    {
        b"access-control-allow-origin",
        b"vary",
        b"access-control-allow-credentials",
        b"access-control-expose-headers",
    }
)

# what the one pass over the request headers looks for
(
    _ID,
    _TRACEPARENT,
    _ORIGIN,
    _AC_METHOD,
    _AC_HEADERS,
    _XFF,
    _FORWARDED,
    _LENGTH,
    _CHUNKED,
    _TIMEOUT,
) = range(10)

if sys.version_info < (3, 12):  # pragma: no cover - depends on the interpreter
    # 3.11's asyncio.current_task() is pure Python; the dict it reads is the C module's own
    _task_of_loop: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
        asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]
    )
else:  # pragma: no cover - depends on the interpreter
    _task_of_loop = asyncio.current_task
_running_loop = asyncio.get_running_loop
_monotonic = time.monotonic
_NO_BLOCK = contextlib.nullcontext()
_NONZERO = 1 << 64 | 1  # the lowest bit of the trace id and of the span id
_new_trace = tuple.__new__  # TraceContext(...) without the NamedTuple's Python __new__


async def _unused_app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
    raise RuntimeError("a configuration holder is never called")


def _security_profile(value: object) -> dict[str, str] | None:
    """The header set for ``security_headers``: None (off), or a profile's headers."""
    if value is False or value is None:
        return None
    if value is True:
        return SECURITY_PROFILES["api"]
    if isinstance(value, str) and value in SECURITY_PROFILES:
        return SECURITY_PROFILES[value]
    raise ConfigurationError(
        f"EdgeMiddleware(security_headers={value!r}): 'api', 'full', True (api) or False"
    )


def _over(declared: list[bytes], limit: int) -> bool:
    """Whether a Content-Length is over ``limit`` or malformed (the body layer answers)."""
    for value in declared:
        try:
            if int(value) > limit:
                return True
        except ValueError:
            return True
    return False


def _asked(raw: bytes, timeout: float) -> float | None:
    """A client's deadline in seconds, when it is shorter than ours (`DeadlineMiddleware`)."""
    try:
        asked = float(raw)
    except ValueError:
        return None
    return asked if 0 < asked < timeout else None


class EdgeMiddleware:
    """Request context, access log, metrics, security headers, CORS and errors in one layer.

    Args:
        app: the ASGI application.
        request_id_header: the request-id header (default ``x-request-id``).
        access_log: write one access line per request (default True).
        trusted_proxies: CIDRs of your proxies, for the client address in the access log.
        security_headers: the security headers to add (``Server`` & co. are removed):
            ``"api"`` (default, or True: OWASP's REST set, `API_HEADERS`), ``"full"``
            (the OWASP Secure Headers Project set, `OWASP_HEADERS`), or False (none).
        csp_routes: a Content-Security-Policy per path prefix (see
            `SecurityHeadersMiddleware`).
        cors_origins, cors_origin_regex, cors_methods, cors_headers, cors_credentials: CORS
            (see `CORSMiddleware`); off when neither origins nor a regex is given.
        metrics: a `MetricsMiddleware` whose counting and ``/metrics`` endpoint this layer
            takes over (its own ``app`` is never called), or None for no metrics.
        shutdown: the `GracefulShutdown` inside this layer, if any: while it drains,
            problem+json answers to exceptions carry ``Connection: close``.
        error_logger: the logger for exceptions (see `ErrorMiddleware`).
        fuse: do the HTTP work of the buttress layers at the top of ``app`` in this
            layer (see the module documentation); False calls ``app`` as it is.

    Example::

        app = EdgeMiddleware(app, cors_origins=("https://shop.example.com",))
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        request_id_header: str = "x-request-id",
        access_log: bool = True,
        trusted_proxies: Iterable[str] = (),
        security_headers: bool | SecurityProfile = "api",
        csp_routes: Mapping[str, str | None] | None = None,
        cors_origins: Sequence[str] = (),
        cors_origin_regex: str | None = None,
        cors_methods: Sequence[str] = ("GET", "HEAD", "POST"),
        cors_headers: Sequence[str] = (),
        cors_credentials: bool = False,
        metrics: MetricsMiddleware | None = None,
        shutdown: Any = None,
        error_logger: Any = None,
        fuse: bool = True,
    ) -> None:
        self.app = app
        self.context = RequestContextMiddleware(_unused_app, header=request_id_header)
        self.header = self.context.header
        self.max_length = self.context.max_length
        self.access: AccessLogMiddleware | None = (
            AccessLogMiddleware(_unused_app, trusted_proxies=trusted_proxies)
            if access_log
            else None
        )
        profile = _security_profile(security_headers)
        self.security: SecurityHeadersMiddleware | None = (
            SecurityHeadersMiddleware(_unused_app, headers=profile, csp_routes=csp_routes or None)
            if profile is not None
            else None
        )
        self.cors: CORSMiddleware | None = (
            CORSMiddleware(
                _unused_app,
                allow_origins=cors_origins,
                allow_origin_regex=cors_origin_regex,
                allow_methods=cors_methods,
                allow_headers=cors_headers,
                allow_credentials=cors_credentials,
            )
            if cors_origins or cors_origin_regex
            else None
        )
        self.metrics = metrics
        self.shutdown = shutdown
        self.errors = ErrorMiddleware(_unused_app, logger=error_logger)
        self._exclude = self.access.exclude if self.access is not None else frozenset()
        self._trusted = self.access.trusted if self.access is not None else ()
        # (peer, x-forwarded-for) -> client address, behind trusted proxies: ipaddress
        # parsing once per pair (bounded: see `resolve_client`)
        self._clients: dict[tuple[str, bytes], str] = {}
        # origin -> the CORS headers of a simple request (empty: not allowed); bounded
        self._cors: dict[bytes, list[tuple[bytes, bytes]]] = {}
        # whether a CORS header can stand in for one of the security headers (not with the
        # OWASP sets): only then must the CORS names count as present
        self._cors_overlap = self.security is not None and not _CORS_NAMES.isdisjoint(
            self.security.base_names
        )
        # response header names that need the careful merge: removed, or set by the app
        self._special = (
            self.security.remove | self.security.base_names
            if self.security is not None
            else frozenset()
        )
        self._fuse(fuse)

    def _fuse(self, fuse: bool) -> None:
        """Find the layers to do in-line: harden's order, each one optional."""
        layer: Any = self.app
        found: dict[type[Any], Any] = {}
        for kind in (
            GracefulShutdown,
            HealthMiddleware,
            LoadSheddingMiddleware,
            BodyLimitMiddleware,
            DeadlineMiddleware,
        ):
            if fuse and type(layer) is kind:
                found[kind] = layer
                layer = layer.app
        self._inner: ASGIApp = layer  # what the fused path calls: the app below the layers
        shutdown: GracefulShutdown | None = found.get(GracefulShutdown)
        health: HealthMiddleware | None = found.get(HealthMiddleware)
        shedding: LoadSheddingMiddleware | None = found.get(LoadSheddingMiddleware)
        self._shutdown = shutdown
        if shutdown is not None and self.shutdown is None:
            self.shutdown = shutdown
        # paths the layers answer themselves: such requests go through them as they are
        paths = set(health._routes) if health is not None else set()
        if shutdown is not None and shutdown.ready_path is not None:
            paths.add(shutdown.ready_path)
        self._layer_paths = frozenset(paths)
        self._shedding = shedding
        self._limiter = shedding.limiter if shedding is not None else None
        self._shed_exempt = shedding.exempt_paths if shedding is not None else frozenset()
        self._body: BodyLimitMiddleware | None = found.get(BodyLimitMiddleware)
        self._deadline: DeadlineMiddleware | None = found.get(DeadlineMiddleware)
        self._deadline_link = None
        self._deadline_width = 0.0
        self._inline = False
        if self._deadline is not None:
            pipeline = self._deadline.pipeline
            self._deadline_link = pipeline._async or pipeline._build_async()
            self._deadline_width = tick_width(self._deadline.timeout)
            # the link's work in-line: only on the clock whose timers the wheel coalesces
            self._inline = self._deadline.policy.clock is SYSTEM_CLOCK
        # header name -> what it is, for the one pass over the request headers
        scan = dict.fromkeys(_ADDRESS_HEADERS, _FORWARDED)
        scan.update(
            {
                b"traceparent": _TRACEPARENT,
                b"origin": _ORIGIN,
                b"access-control-request-method": _AC_METHOD,
                b"access-control-request-headers": _AC_HEADERS,
                b"x-forwarded-for": _XFF,
            }
        )
        if self._body is not None:
            scan[b"content-length"] = _LENGTH
            scan[b"transfer-encoding"] = _CHUNKED
        if self._deadline is not None and self._deadline.header is not None:
            scan[self._deadline.header] = _TIMEOUT
        scan[self.header] = _ID
        self._scan = scan

    def _cors_headers(self, cors: CORSMiddleware, origin_raw: bytes) -> list[tuple[bytes, bytes]]:
        """The CORS headers for a simple request from ``origin_raw`` (cached per origin).

        The cache takes new origins while it holds fewer than 1,024 and only short ones:
        distinct ``Origin`` values sent by a client cannot grow it without bound.
        """
        cached = self._cors.get(origin_raw)
        if cached is not None:
            return cached
        headers: list[tuple[bytes, bytes]] = []
        if cors.allowed(origin_raw.decode("latin-1")):
            allow = b"*" if cors.any_origin and not cors.credentials else origin_raw
            headers = [(b"access-control-allow-origin", allow), (b"vary", b"Origin")]
            if cors.credentials:
                headers.append((b"access-control-allow-credentials", b"true"))
            if cors.expose:
                headers.append((b"access-control-expose-headers", cors.expose))
        if len(self._cors) < _CORS_CACHE_MAX and len(origin_raw) <= _CORS_KEY_MAX:
            self._cors[origin_raw] = headers
        return headers

    def client(self, scope: Scope, xff: bytes | None, forwarded: bool = False) -> str | None:
        """The client address for the access log: `resolve_client`, as `client_address`.

        ``xff`` is the request's ``X-Forwarded-For`` (joined), ``forwarded`` whether it
        carries any header that passes an address on (implied by ``xff``).
        """
        return resolve_client(
            scope.get("client"),
            xff,
            forwarded or xff is not None,
            self._trusted,
            self._clients,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        # -- request context: one pass over the headers for every feature
        request_id: str | None = None
        parsed: tuple[str, str, int] | None = None
        origin_raw: bytes | None = None
        request_method: bytes | None = None
        request_headers: bytes | None = None
        xff: bytes | None = None
        forwarded = False  # a header that passes a client address on
        declared: list[bytes] | None = None  # Content-Length values (fused body limit)
        chunked = False
        asked_raw: bytes | None = None  # the client's deadline header (fused deadline)
        scan = self._scan.get
        for name, value in scope["headers"]:
            what = scan(name)
            if what is None:
                continue
            if what == _ID:
                if request_id is None and _valid_request_id(value, self.max_length):
                    request_id = value.decode("ascii")
            elif what == _TRACEPARENT:
                if parsed is None:
                    parsed = parse_traceparent(value)
            elif what == _ORIGIN:
                origin_raw = value
            elif what == _AC_METHOD:
                request_method = value
            elif what == _AC_HEADERS:
                request_headers = value
            elif what == _XFF:
                xff = value if xff is None else xff + b"," + value
            elif what == _FORWARDED:
                forwarded = True
            elif what == _LENGTH:
                if declared is None:
                    declared = [value]
                else:
                    declared.append(value)
            elif what == _CHUNKED:
                chunked = True
            elif asked_raw is None:  # _TIMEOUT: the first one counts
                asked_raw = value
        if parsed is not None:
            span = f"{getrandbits(64) | 1:016x}"
            trace = _new_trace(TraceContext, (parsed[0], span, parsed[1], parsed[2]))
            traceresponse = f"00-{parsed[0]}-{span}-{parsed[2]:02x}"
        else:  # a new trace: its id and our span from one draw, neither all zeros
            ids = f"{getrandbits(192) | _NONZERO:048x}"
            span = ids[32:]
            trace = _new_trace(TraceContext, (ids[:32], span, None, 1))
            traceresponse = f"00-{ids[:32]}-{span}-01"
        if request_id is None:
            request_id = trace[0]
        context_headers = [
            (b"traceresponse", traceresponse.encode("ascii")),
            (self.header, request_id.encode("ascii")),
        ]
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = request_id
        state["trace"] = trace
        id_token = _REQUEST_ID.set(request_id)
        trace_token = _TRACE.set(trace)
        try:
            # -- metrics: /metrics is answered here, undecorated, as the layer used to
            metrics = self.metrics
            if metrics is not None:
                mpath = path
                if scope.get("root_path"):
                    mpath = _route_path(scope)
                if mpath in metrics._skip:
                    if mpath == metrics.path:
                        await self._serve_metrics(scope, send, context_headers, xff, forwarded)
                        return
                    metrics = None
            access = self.access
            logged = access is not None and path not in self._exclude
            started_at = time.perf_counter() if logged else 0.0
            status = 0
            size = 0
            app_started = False
            trace_at_start: str | None = None
            exemplars = metrics is not None and metrics._exemplars
            # load shedding's sample: from admission to the last byte of the response
            sampling = False
            ended = dropped = False
            end = 0.0
            shed_now = time.monotonic
            drop_statuses: frozenset[int] = _NOTHING

            # -- security headers and CORS, decided before the app runs
            security = self.security
            if security is not None:
                add = security._headers_for(path) if security.routes else security.base
                remove = security.remove
                names = security.base_names
            else:
                add = _NO_EXTRA
                remove = names = _NOTHING
            special = self._special
            cors = self.cors
            cors_headers = _NO_EXTRA
            cors_overlap = self._cors_overlap
            preflight = False
            if cors is not None and origin_raw is not None:
                if scope["method"] == "OPTIONS" and request_method is not None:
                    preflight = True
                else:
                    cached = self._cors.get(origin_raw)
                    cors_headers = (
                        cached if cached is not None else self._cors_headers(cors, origin_raw)
                    )
                    if cors_overlap and cors_headers:
                        special = _NOTHING  # the careful merge, always (see below)

            async def edge_send(message: Message) -> None:
                nonlocal status, size, trace_at_start, app_started, ended, end, dropped
                kind = message["type"]
                if kind == "http.response.start":
                    status = message["status"]
                    app_started = True
                    if exemplars and metrics is not None:
                        trace_at_start = metrics._trace_id(scope)
                    headers = message.get("headers", ())
                    if security is None:
                        message["headers"] = [*headers, *cors_headers, *context_headers]
                    else:
                        careful = not special
                        for header in headers:
                            if header[0].lower() in special:
                                careful = True
                                break
                        if not careful:  # the common case: nothing to remove, none of ours
                            message["headers"] = [
                                *headers,
                                *cors_headers,
                                *add,
                                *context_headers,
                            ]
                        else:
                            kept = []
                            present = set()
                            for header in headers:
                                name = header[0].lower()
                                if name not in remove:
                                    kept.append(header)
                                    present.add(name)
                            kept.extend(cors_headers)
                            if cors_overlap:
                                present.update(h[0].lower() for h in cors_headers)
                            if present.isdisjoint(names):
                                kept.extend(add)
                            else:
                                kept.extend(h for h in add if h[0] not in present)
                            kept.extend(context_headers)
                            message["headers"] = kept
                elif kind == "http.response.body":
                    size += len(message.get("body", b""))
                    if sampling and not ended and not message.get("more_body", False):
                        ended = True
                        end = shed_now()
                        dropped = status in drop_statuses
                elif kind == "http.response.pathsend" and sampling and not ended:
                    ended = True
                    end = shed_now()
                    dropped = status in drop_statuses
                await send(message)

            active = None
            mstart = 0.0
            failed = 0
            if metrics is not None:
                active = metrics._active
                active.active += 1
                mstart = metrics._now()
            try:
                if preflight and cors is not None and origin_raw is not None:
                    await cors._preflight(
                        edge_send,
                        origin_raw.decode("latin-1"),
                        request_method or b"",
                        request_headers,
                    )
                else:
                    try:
                        shutdown = self._shutdown
                        if path in self._layer_paths or (
                            shutdown is not None and shutdown._draining
                        ):
                            # answered by a layer, or draining: the layers as they are
                            await self.app(scope, receive, edge_send)
                            return
                        # -- graceful shutdown: the request is in flight
                        task = None
                        if shutdown is not None:
                            try:
                                task = _task_of_loop(_running_loop())
                            except RuntimeError:  # pragma: no cover - not on asyncio
                                task = None
                            if task is not None:
                                shutdown._requests.add(task)
                        try:
                            # -- load shedding: admission (ConcurrencyLimiter._admit)
                            limiter = self._limiter
                            held = 0
                            shed_start = 0.0
                            if limiter is not None and path not in self._shed_exempt:
                                lock = limiter._lock
                                lock.acquire()
                                in_flight = limiter._in_flight
                                if in_flight >= limiter._cap:
                                    lock.release()
                                    shedding = self._shedding
                                    if shedding is not None:
                                        await shedding._shed(
                                            scope,
                                            edge_send,
                                            "max_in_flight"
                                            if in_flight >= limiter._hard
                                            else "adaptive",
                                        )
                                    return
                                limiter._in_flight = held = in_flight + 1
                                lock.release()
                                if limiter._algorithm is not None and self._shedding is not None:
                                    shed_now = self._shedding._now
                                    drop_statuses = self._shedding.drop_statuses
                                    shed_start = shed_now()
                                    sampling = True
                            try:
                                # -- body limit: declared bodies within the limit need nothing
                                body = self._body
                                if body is not None:
                                    limit = body.limit_for(path) if body.routes else body.max_bytes
                                    slow = chunked or not scope.get(
                                        "http_version", "1.1"
                                    ).startswith("1")
                                    if declared is not None and not slow:
                                        slow = _over(declared, limit)
                                    if slow:  # a body to count or refuse: the layer itself
                                        await body(scope, receive, edge_send)
                                        return
                                # -- request deadline: DeadlineMiddleware's Timeout
                                link = self._deadline_link
                                layer = self._deadline
                                if link is None or layer is None or path in layer.exempt:
                                    await self._inner(scope, receive, edge_send)
                                    return
                                asked = None
                                if asked_raw is not None:
                                    asked = _asked(asked_raw, layer.timeout)
                                loop = _running_loop()
                                if task is None:
                                    task = _task_of_loop(loop)
                                try:
                                    if asked is not None or task is None or not self._inline:
                                        # the Timeout's own link (a client's shorter deadline)
                                        with deadline(asked) if asked else _NO_BLOCK:
                                            await link(
                                                self._inner,
                                                (scope, receive, edge_send),
                                                _NO_KWARGS,
                                            )
                                    else:
                                        # the link's work in-line (Timeout._awrap, system
                                        # clock): the task goes into a bucket of the loop's
                                        # timer wheel, which cancels it when the bucket is due
                                        start = _monotonic()
                                        at = start + layer.timeout
                                        width = self._deadline_width
                                        outer = _DEADLINE.get()
                                        if outer is not None and outer < at:
                                            if outer <= start:
                                                raise _expired(layer.policy.name)
                                            at = outer
                                            width = tick_width(at - start)
                                        wheel = _clock._last_wheel
                                        if wheel is None or wheel.loop is not loop:
                                            wheel = wheel_for(loop)
                                        cancelling = task.cancelling()
                                        ident = next_id()
                                        if (
                                            wheel._last_start < at <= wheel._last_end
                                            and width == wheel._last_width
                                            and wheel._last is not None
                                        ):
                                            bucket = wheel._last
                                        else:
                                            bucket = wheel.bucket(at, width)
                                        bucket[ident] = task
                                        token = _DEADLINE.set(at)
                                        try:
                                            await self._inner(scope, receive, edge_send)
                                        except asyncio.CancelledError as exc:
                                            fired = wheel.fired
                                            if fired and ident in fired:
                                                fired.discard(ident)
                                                if task.uncancel() <= cancelling:
                                                    raise layer.policy._timed_out(
                                                        layer.pipeline._ctx,
                                                        start,
                                                        at,
                                                        at == start + layer.timeout,
                                                    ) from exc
                                            raise
                                        finally:
                                            bucket.pop(ident, None)
                                            _DEADLINE.reset(token)
                                            fired = wheel.fired
                                            if fired and ident in fired:  # swallowed: undo it
                                                fired.discard(ident)
                                                task.uncancel()
                                except DeadlineExceeded as exc:
                                    if app_started:
                                        raise  # part of the response is out: drop it
                                    await send_problem(
                                        edge_send,
                                        ErrorCode.DEADLINE_EXCEEDED,
                                        detail=str(exc),
                                        headers=[_CLOSE],
                                    )
                            except Exception as exc:
                                if sampling and not ended and not _client_gone(exc):
                                    ended = True
                                    end = shed_now()
                                    code = problem_for_exception(exc)[0]
                                    dropped = code.http_status in drop_statuses
                                raise
                            finally:
                                # the slot is held until the application returns; no end
                                # means cancelled, client gone or no response: no sample
                                if held and limiter is not None:
                                    if sampling and ended:
                                        limiter._release(held, end - shed_start, dropped, end)
                                    else:
                                        limiter._ignore()
                        except asyncio.CancelledError:
                            if (
                                shutdown is None
                                or task is None
                                or task not in shutdown._abandoned
                                or task.uncancel() > 0
                            ):
                                raise
                            await _answer_abandoned(scope, edge_send)
                        finally:
                            if shutdown is not None and task is not None:
                                requests = shutdown._requests
                                requests.discard(task)
                                if shutdown._abandoned:
                                    shutdown._abandoned.discard(task)
                                if not requests and shutdown._idle:
                                    shutdown._wake_idle()
                    except Exception as exc:
                        await self._error(scope, exc, app_started, edge_send)
            except Exception:
                failed = 500  # the error answer itself failed (the client went away)
                raise
            except BaseException:  # cancelled: the client went away or a deadline cut it
                failed = status or 499
                raise
            finally:
                if metrics is not None and active is not None:
                    elapsed = metrics._now() - mstart
                    active.active -= 1
                    mstatus = failed or status or 500
                    route = scope.get("route")
                    method = _METHOD_LABELS.get(scope["method"], "OTHER")
                    entry = metrics._children.get((id(route), method, mstatus))
                    if entry is None or entry[0] is not route:
                        entry = metrics._resolve(scope, route, method, mstatus)
                    if exemplars:
                        exemplar = trace_at_start
                        if exemplar is None:
                            exemplar = metrics._trace_id(scope)
                        if isinstance(exemplar, str) and 0 < len(exemplar) <= _MAX_TRACE_ID:
                            entry[1].record_exemplar(elapsed, exemplar)
                        else:
                            entry[1].record(elapsed)
                    else:
                        entry[1].record(elapsed)
                if logged and access is not None:
                    log_access(
                        access.logger,
                        access.direct,
                        scope,
                        status,
                        size,
                        started_at,
                        self.client(scope, xff, forwarded) or UNKNOWN_CLIENT,
                        access.principal(scope),
                    )
        finally:
            _TRACE.reset(trace_token)
            _REQUEST_ID.reset(id_token)

    async def _serve_metrics(
        self,
        scope: Scope,
        send: Send,
        context_headers: list[tuple[bytes, bytes]],
        xff: bytes | None,
        forwarded: bool,
    ) -> None:
        logged = self.access is not None and scope["path"] not in self._exclude
        started = time.perf_counter()
        status = 0
        size = 0

        async def send_context(message: Message) -> None:
            nonlocal status, size
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *context_headers]
            elif kind == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        metrics = self.metrics
        if metrics is None:  # pragma: no cover - checked by the caller
            raise RuntimeError("no metrics to serve")
        try:
            await metrics._serve(scope, send_context)
        finally:
            if logged:
                self._write_access(scope, started, status, size, xff, forwarded)

    async def _error(self, scope: Scope, exc: Exception, started: bool, send: Send) -> None:
        code, retry_after, detail = problem_for_exception(exc)
        self.errors._log(scope, exc, code, started)
        if started:
            return
        shutdown = self.shutdown
        if (
            shutdown is not None
            and shutdown._draining
            and shutdown.close_connections
            and scope.get("http_version", "1.1") in {"1.0", "1.1"}
        ):
            inner = send

            async def closing_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
                await inner(message)

            send = closing_send
        await send_problem(
            send,
            code,
            detail=detail,
            request_id=_REQUEST_ID.get(),
            retry_after=retry_after,
            head=scope.get("method") == "HEAD",
        )

    def _write_access(
        self,
        scope: Scope,
        started: float,
        status: int,
        size: int,
        xff: bytes | None,
        forwarded: bool,
    ) -> None:
        access = self.access
        if access is None:  # pragma: no cover - checked by the caller
            return
        log_access(
            access.logger,
            access.direct,
            scope,
            status,
            size,
            started,
            self.client(scope, xff, forwarded) or UNKNOWN_CLIENT,
            access.principal(scope),
        )
