"""`EdgeMiddleware`: the outer features of `harden` fused into one ASGI layer.

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

The separate classes stay available for standalone use; this one is built from them (their
settings validation, header sets and preflight answer are reused as they are).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from random import getrandbits
from typing import Any

from buttress.asgi._context import (
    _REQUEST_ID,
    _TRACE,
    RequestContextMiddleware,
    TraceContext,
    _trusted,
    _valid_request_id,
    client_address,
    parse_traceparent,
)
from buttress.asgi._errors import ErrorMiddleware
from buttress.asgi._headers import CORSMiddleware, SecurityHeadersMiddleware
from buttress.asgi._logging import AccessLogMiddleware, log_access
from buttress.asgi._metrics import _MAX_TRACE_ID, _METHOD_LABELS, MetricsMiddleware, _route_path
from buttress.asgi._problem import problem_for_exception, send_problem
from buttress.asgi._types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["EdgeMiddleware"]


_CLOSE = (b"connection", b"close")
_CLIENT_CACHE_MAX = 4096
_NO_EXTRA: list[tuple[bytes, bytes]] = []


async def _unused_app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
    raise RuntimeError("a configuration holder is never called")


class EdgeMiddleware:
    """Request context, access log, metrics, security headers, CORS and errors in one layer.

    Args:
        app: the ASGI application.
        request_id_header: the request-id header (default ``x-request-id``).
        access_log: write one access line per request (default True).
        trusted_proxies: CIDRs of your proxies, for the client address in the access log.
        security_headers: add the OWASP headers and remove ``Server`` & co. (default True).
        csp_routes: a Content-Security-Policy per path prefix (see
            `SecurityHeadersMiddleware`).
        cors_origins, cors_origin_regex, cors_methods, cors_headers, cors_credentials: CORS
            (see `CORSMiddleware`); off when neither origins nor a regex is given.
        metrics: a `MetricsMiddleware` whose counting and ``/metrics`` endpoint this layer
            takes over (its own ``app`` is never called), or None for no metrics.
        shutdown: the `GracefulShutdown` inside this layer, if any: while it drains,
            problem+json answers to exceptions carry ``Connection: close``.
        error_logger: the logger for exceptions (see `ErrorMiddleware`).

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
        security_headers: bool = True,
        csp_routes: Mapping[str, str | None] | None = None,
        cors_origins: Sequence[str] = (),
        cors_origin_regex: str | None = None,
        cors_methods: Sequence[str] = ("GET", "HEAD", "POST"),
        cors_headers: Sequence[str] = (),
        cors_credentials: bool = False,
        metrics: MetricsMiddleware | None = None,
        shutdown: Any = None,
        error_logger: Any = None,
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
        self.security: SecurityHeadersMiddleware | None = (
            SecurityHeadersMiddleware(_unused_app, csp_routes=csp_routes or None)
            if security_headers
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
        # (peer, x-forwarded-for) -> client address: ipaddress parsing once per pair
        self._clients: dict[tuple[str | None, bytes | None], str | None] = {}
        # origin -> the CORS headers of a simple request (empty: not allowed)
        self._cors: dict[bytes, list[tuple[bytes, bytes]]] = {}
        cors_names = {
            b"access-control-allow-origin",
            b"vary",
            b"access-control-allow-credentials",
            b"access-control-expose-headers",
        }
        # whether a CORS header can stand in for one of the security headers (not with the
        # OWASP set): only then must the CORS names count as present
        self._cors_overlap = self.security is not None and not cors_names.isdisjoint(
            self.security.base_names
        )

    def _cors_headers(self, cors: CORSMiddleware, origin_raw: bytes) -> list[tuple[bytes, bytes]]:
        """The CORS headers for a simple request from ``origin_raw`` (cached per origin)."""
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
        if len(self._cors) >= _CLIENT_CACHE_MAX:
            self._cors.clear()
        self._cors[origin_raw] = headers
        return headers

    def client(self, scope: Scope, xff: bytes | None) -> str | None:
        """The client address for the access log (`client_address`, cached per peer + XFF)."""
        client = scope.get("client")
        peer: str | None = str(client[0]) if client else None
        trusted = self._trusted
        if not trusted or peer is None:
            return peer
        key = (peer, xff)
        clients = self._clients
        try:
            return clients[key]
        except KeyError:
            pass
        if xff is None and not _trusted(peer, trusted):
            address: str | None = peer
        else:
            address = client_address(scope, trusted)
        if len(clients) >= _CLIENT_CACHE_MAX:
            clients.clear()
        clients[key] = address
        return address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # -- request context: one pass over the headers for every feature
        request_id: str | None = None
        parsed: tuple[str, str, int] | None = None
        origin_raw: bytes | None = None
        request_method: bytes | None = None
        request_headers: bytes | None = None
        xff: bytes | None = None
        want = self.header
        for name, value in scope["headers"]:
            if name == want:
                if request_id is None and _valid_request_id(value, self.max_length):
                    request_id = value.decode("ascii")
            elif name == b"traceparent":
                if parsed is None:
                    parsed = parse_traceparent(value)
            elif name == b"origin":
                origin_raw = value
            elif name == b"access-control-request-method":
                request_method = value
            elif name == b"access-control-request-headers":
                request_headers = value
            elif name == b"x-forwarded-for":
                xff = value if xff is None else xff + b"," + value
        span = f"{getrandbits(64) | 1:016x}"
        if parsed is not None:
            trace = TraceContext(parsed[0], span, parsed[1], parsed[2])
        else:
            trace = TraceContext(f"{getrandbits(128) | 1:032x}", span, None, 1)
        if request_id is None:
            request_id = trace[0]
        context_headers = [
            (b"traceresponse", f"00-{trace[0]}-{span}-{trace[3]:02x}".encode("ascii")),
            (want, request_id.encode("ascii")),
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
                mpath = scope["path"]
                if scope.get("root_path"):
                    mpath = _route_path(scope)
                if mpath in metrics._skip:
                    if mpath == metrics.path:
                        await self._serve_metrics(scope, send, context_headers)
                        return
                    metrics = None
            access = self.access
            logged = access is not None and scope["path"] not in self._exclude
            started_at = time.perf_counter() if logged else 0.0
            status = 0
            size = 0
            app_started = False
            trace_at_start: str | None = None
            exemplars = metrics is not None and metrics._exemplars

            # -- security headers and CORS, decided before the app runs
            security = self.security
            if security is not None:
                add = security._headers_for(scope["path"]) if security.routes else security.base
                remove = security.remove
                names = security.base_names
            else:
                add = _NO_EXTRA
                remove = frozenset()
                names = frozenset()
            cors = self.cors
            cors_headers = _NO_EXTRA
            cors_overlap = self._cors_overlap
            preflight = False
            if cors is not None and origin_raw is not None:
                if scope["method"] == "OPTIONS" and request_method is not None:
                    preflight = True
                else:
                    cors_headers = self._cors_headers(cors, origin_raw)

            async def edge_send(message: Message) -> None:
                nonlocal status, size, trace_at_start, app_started
                kind = message["type"]
                if kind == "http.response.start":
                    status = message["status"]
                    app_started = True
                    if exemplars:
                        assert metrics is not None  # noqa: S101
                        trace_at_start = metrics._trace_id(scope)
                    headers = message.get("headers", ())
                    if security is not None:
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
                    else:
                        message["headers"] = [*headers, *cors_headers, *context_headers]
                elif kind == "http.response.body":
                    size += len(message.get("body", b""))
                await send(message)

            active = None
            mstart = 0.0
            failed = 0
            if metrics is not None:
                active = metrics._active
                active.active += 1
                mstart = metrics._now()
            try:
                if preflight:
                    assert cors is not None  # noqa: S101
                    assert origin_raw is not None  # noqa: S101
                    assert request_method is not None  # noqa: S101
                    await cors._preflight(
                        edge_send, origin_raw.decode("latin-1"), request_method, request_headers
                    )
                else:
                    try:
                        await self.app(scope, receive, edge_send)
                    except Exception as exc:
                        await self._error(scope, exc, app_started, edge_send)
            except Exception:
                failed = 500  # the error answer itself failed (the client went away)
                raise
            except BaseException:  # cancelled: the client went away or a deadline cut it
                failed = status or 499
                raise
            finally:
                if metrics is not None:
                    assert active is not None  # noqa: S101
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
                if logged:
                    self._write_access(scope, started_at, status, size, xff)
        finally:
            _TRACE.reset(trace_token)
            _REQUEST_ID.reset(id_token)

    async def _serve_metrics(
        self, scope: Scope, send: Send, context_headers: list[tuple[bytes, bytes]]
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

        assert self.metrics is not None  # noqa: S101 - checked by the caller
        try:
            await self.metrics._serve(scope, send_context)
        finally:
            if logged:
                self._write_access(scope, started, status, size, None)

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
        self, scope: Scope, started: float, status: int, size: int, xff: bytes | None
    ) -> None:
        access = self.access
        assert access is not None  # noqa: S101
        log_access(
            access.logger,
            access.direct,
            scope,
            status,
            size,
            started,
            self.client(scope, xff),
            access.principal(scope),
        )
