"""Structured JSON logs (structlog) with secrets redacted, and a one-line-per-request access log.

`configure_logging` sets structlog up the production way: JSON lines on a pipe or file,
readable colours on a terminal, the request id and trace id of the current request merged
in, and every ``Authorization``, ``Cookie``, ``Set-Cookie``, password-, token- or
secret-like field replaced by ``[redacted]``, however deep it sits.

One JSON style for every line, whoever writes it (buttress, your structlog calls, the
standard library's ``logging``, uvicorn): compact (no spaces), the line's own fields
first, then ``event``, ``logger`` (when known), ``level`` and ``timestamp``, last and in
that order; ``timestamp`` is ISO 8601 in UTC with milliseconds
(``2026-01-02T03:04:05.678Z``)::

    {"method":"GET","route":"/orders/{id}",...,"event":"request","logger":"buttress.access","level":"info","timestamp":"2026-01-02T03:04:05.678Z"}
    {"order_id":7,"request_id":"...","event":"order_created","logger":"app","level":"info","timestamp":"2026-01-02T03:04:05.679Z"}

The server's own loggers are taken over (``uvicorn``, ``uvicorn.error``): their lines come
out in the same style. With ``access_log=True`` (what `harden` passes when its access log
is on) uvicorn's access logger is silenced, so each request is logged once, by
`AccessLogMiddleware`; otherwise its lines are routed through the same format. With
``events=True`` (`harden`'s default) the resilience events that need a person's
attention are logged too (`buttress.telemetry.install_event_logging`).

`AccessLogMiddleware` writes one line per request: method, route template, path, status,
duration_ms, response bytes, request id, trace id, client address (trusted-proxy aware:
an IP address or ``unknown``, never what a header said) and principal when known. The
route is the template the router matched; a request a middleware answered before routing
(a 429, 413, 503, an idempotent replay...) is named by matching its path against the
app's routes (`RouteNames`), so it is logged and counted under its route, not
``<unmatched>``.

Tracebacks, on the console and in JSON, are plain text (`format_traceback`): no local
variables (they hold headers and tokens), the innermost 20 frames of each exception, at
most 120 lines of 300 characters, rendered in about a millisecond. structlog's default on
a terminal with rich installed prints every frame's locals: over a thousand lines, and a
third of a second or more of blocked event loop, for one exception from a deep middleware
stack.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, MutableMapping
from json import dumps as json_dumps
from typing import Any, TextIO

from buttress.asgi._context import (
    _REQUEST_ID,
    _TRACE,
    ADDRESS_HEADERS,
    UNKNOWN_CLIENT,
    found_client,
    trusted_networks,
)
from buttress.asgi._runner import Hooks, Stage
from buttress.asgi._types import ASGIApp, Scope

__all__ = [
    "REDACTED",
    "AccessLogMiddleware",
    "RouteNames",
    "configure_logging",
    "format_traceback",
    "redact",
    "redact_processor",
]


REDACTED = "[redacted]"
SENSITIVE_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[-_]?key|authori[sz]ation|cookie|session|"
    r"credential|private[-_]?key|signature",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with sensitive keys' values replaced by ``[redacted]``.

    Dicts are walked recursively (lists and tuples too); keys that look like passwords,
    tokens, secrets, API keys, cookies or authorization are redacted, and ``Bearer``/
    ``Basic`` credentials inside strings are masked.

    Example::

        >>> redact({"user": "ann", "password": "hunter2", "headers": {"Cookie": "s=1"}})
        {'user': 'ann', 'password': '[redacted]', 'headers': {'Cookie': '[redacted]'}}
    """
    if _depth > 20:
        return value
    if isinstance(value, dict):
        return {
            k: (
                REDACTED
                if isinstance(k, str) and SENSITIVE_KEY.search(k)
                else redact(v, _depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        if len(value) == 2 and isinstance(value[0], str | bytes):  # a (name, value) header pair
            name = value[0].decode("latin-1") if isinstance(value[0], bytes) else value[0]
            if SENSITIVE_KEY.search(name):
                return (value[0], REDACTED) if isinstance(value, tuple) else [value[0], REDACTED]
        items = [redact(v, _depth + 1) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, str) and ("earer " in value or "asic " in value):
        return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
    return value


def redact_processor(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """A structlog processor applying `redact` to every event."""
    return redact(dict(event_dict))


def _merge_request_context(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    request_id = _REQUEST_ID.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    trace = _TRACE.get()
    if trace is not None:
        event_dict.setdefault("trace_id", trace.trace_id)
    return event_dict


_TRACEBACK_FRAMES = 20  # the innermost frames of each exception in a chain
_TRACEBACK_LINES = 120  # the whole text, chained exceptions included
_TRACEBACK_HEAD = 8  # lines kept from the start when the text is cut (the outer exceptions)
_TRACEBACK_WIDTH = 300  # characters per line


def format_traceback(exc_info: Any) -> str:
    """``exc_info`` as a bounded plain traceback: no local variables, at most 120 lines.

    Each exception of a chain keeps its innermost 20 frames; longer text keeps its first
    lines and its end (the innermost frames and the message); each line is cut at 300
    characters. What ``configure_logging`` uses for the console and for JSON.

    Example::

        try:
            1 / 0
        except ZeroDivisionError:
            text = format_traceback(sys.exc_info())   # "Traceback (most recent ..."
    """
    kind, exc, tb = exc_info
    if exc is None:
        return ""
    text = "".join(traceback.format_exception(kind, exc, tb, limit=-_TRACEBACK_FRAMES))
    lines = text.rstrip("\n").split("\n")
    if len(lines) > _TRACEBACK_LINES:
        tail = _TRACEBACK_LINES - _TRACEBACK_HEAD - 1
        cut = len(lines) - _TRACEBACK_HEAD - tail
        lines = [*lines[:_TRACEBACK_HEAD], f"  ... {cut} lines left out ...", *lines[-tail:]]
    width = _TRACEBACK_WIDTH
    return "\n".join(
        line if len(line) <= width else f"{line[:width]}... ({len(line) - width} more)"
        for line in lines
    )


def _console_traceback(sio: TextIO, exc_info: Any) -> None:
    """The console ``exception_formatter``: `format_traceback`, fast and bounded."""
    sio.write("\n" + format_traceback(exc_info))


def configure_logging(
    *,
    json: bool | None = None,
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    access_log: bool = False,
    events: bool = False,
) -> None:
    """Configure structlog (and route the standard library's logging through it).

    Args:
        json: JSON lines (default: when the stream is not a terminal) or console output.
        level: the minimum level (default INFO).
        stream: where lines go (default ``sys.stdout``).
        access_log: buttress writes the access lines (`AccessLogMiddleware`): silence the
            server's own access logger (``uvicorn.access``) so a request is logged once.
            False (the default): the server's access lines come out in the same format.
        events: also log the resilience events a person should see (retries, give-ups,
            breaker changes, fallbacks, the rate-limit store bypassed), rate-limited: see
            `buttress.telemetry.install_event_logging`.

    Example::

        configure_logging()                 # JSON in production, colours in a terminal
        structlog.get_logger().info("order_created", order_id=7, card_token="tok_123")
        # {"order_id":7,"card_token":"[redacted]","event":"order_created","level":"info",...}
    """
    import structlog  # noqa: PLC0415 - the asgi extra

    out: TextIO = stream if stream is not None else _Stdout()  # type: ignore[assignment]
    as_json = json if json is not None else not out.isatty()
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        from buttress.errors import ConfigurationError  # noqa: PLC0415

        raise ConfigurationError(f"configure_logging(level={level!r}): not a logging level")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _merge_request_context,
        _add_logger_name,
        structlog.processors.add_log_level,
        _add_timestamp,
        redact_processor,
    ]
    renderer: Any
    if as_json:
        shared.append(structlog.processors.ExceptionRenderer(format_traceback))
        shared.append(_tail_order)
        renderer = structlog.processors.JSONRenderer(separators=(",", ":"))
    else:
        # not structlog's default (rich, with every frame's local variables: secrets,
        # thousands of lines, a blocked event loop)
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=_console_traceback)
    global _access_sink, _access_json
    _access_sink = out if numeric <= logging.INFO else None
    _access_json = as_json
    _access_level[0] = numeric
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_NamedPrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=shared)
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    take_over_server_loggers(access_log=access_log)
    if events:
        from buttress.telemetry import install_event_logging  # noqa: PLC0415

        install_event_logging()


#: The server loggers whose lines `configure_logging` routes through its own format.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi")
#: The server access loggers: silenced when buttress writes the access lines.
SERVER_ACCESS_LOGGERS = ("uvicorn.access",)


def take_over_server_loggers(*, access_log: bool) -> None:
    """Send uvicorn's log lines through the root handler (buttress's format).

    uvicorn gives its loggers their own handlers and formats (``propagate=False``), set up
    before the app is imported; this removes them, so the lines reach the root logger.
    With ``access_log`` (buttress logs each request) ``uvicorn.access`` gets no handler
    and does not propagate: uvicorn then sees it has none and skips the access line
    entirely (it checks ``hasHandlers()`` per connection).
    """
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    for name in SERVER_ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = not access_log


class _NamedPrintLoggerFactory:
    """structlog's ``PrintLoggerFactory``, keeping the name given to ``get_logger``."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def __call__(self, *args: Any) -> Any:
        import structlog  # noqa: PLC0415 - the asgi extra

        logger = structlog.PrintLogger(self._out)
        logger.name = args[0] if args and isinstance(args[0], str) else ""  # type: ignore[attr-defined]
        return logger


def _add_logger_name(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """``logger``: the stdlib record's name, or the name given to ``get_logger``."""
    record = event_dict.get("_record")
    name = record.name if record is not None else getattr(logger, "name", None)
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def _add_timestamp(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """``timestamp``: ISO 8601, UTC, milliseconds (the access line's own format)."""
    event_dict["timestamp"] = _timestamp(time.time())
    return event_dict


_TAIL = ("event", "logger", "level", "timestamp")


def _tail_order(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """The line's own fields first, then event, logger, level, timestamp (as access lines)."""
    tail = [(key, event_dict.pop(key)) for key in _TAIL if key in event_dict]
    event_dict.update(tail)
    return event_dict


class _Stdout:
    """``sys.stdout`` looked up at every write, so a replaced stdout (tests, daemons) works."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return sys.stdout.isatty()


# Set by configure_logging: where access lines go when buttress owns the log format. The
# access line is then written directly (a fixed JSON shape, no processor chain: ~5 µs
# instead of ~60 µs through structlog); otherwise it goes through your structlog setup.
_access_sink: TextIO | None = None
_access_json = True
_access_level = [logging.INFO]
# [(UTC millisecond, its ISO 8601 text)]: lines in a burst share it; one tuple, replaced
# whole, so a thread logging at the same time never reads a millisecond with another's text
_stamp: list[tuple[int, str]] = [(-1, "")]
# [(UTC second, its ``2026-01-02T03:04:05`` text)], the same way: a new millisecond formats
# only its three digits
_second: list[tuple[int, str]] = [(-1, "")]


def _timestamp(now: float) -> str:
    """``now`` (`time.time`) as ``2026-01-02T03:04:05.678Z``, cached per millisecond."""
    ms = int(now * 1000)
    cached = _stamp[0]
    if ms == cached[0]:
        return cached[1]
    whole, frac = divmod(ms, 1000)
    second = _second[0]
    if whole == second[0]:
        prefix = second[1]
    else:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second[0] = (whole, prefix)
    text = f"{prefix}.{frac:03d}Z"
    _stamp[0] = (ms, text)
    return text


def _q(value: str | None) -> str:
    """A JSON string literal (fast path for plain ASCII)."""
    if value is None:
        return "null"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json_dumps(value)


_UNMATCHED = "<unmatched>"


def route_template(scope: Scope, names: RouteNames | None = None) -> str:
    """The matched route's template (``/orders/{id}``) after routing, else ``<unmatched>``.

    With ``names``, a request no router named (see `RouteNames.wanted`) is named by
    matching its path against the app's routes.
    """
    route = scope.get("route")
    if route is None:
        if names is not None and names.wanted(scope):
            found = names(scope)
            if found is not None:
                return str(scope.get("root_path", "")) + found
        return _UNMATCHED
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return _UNMATCHED
    root = scope.get("root_path", "")
    return template if root == "" else str(root) + template


_MAX_NAMED_PATHS = 1024  # (method, path) -> template entries a RouteNames keeps
_MAX_DEPTH = 16  # mounts within mounts


class RouteNames:
    """Name the requests no router named, by matching them against an app's routes.

    A request that a middleware answers before the app runs (a 429, 413, 503, an
    idempotent replay, a 409 or 422 about its key) never reaches the router, so
    ``scope["route"]`` is not set; some frameworks' own routes do not set it either
    (FastAPI's ``/docs``). For those, and only those, this matches ``(method, path)``
    against the app's routes (Starlette's ``route.matches(scope)``, mounts and FastAPI's
    included routers followed) and returns the template (``/orders/{order_id}``, mount
    prefixes included; a partial match, a method the route does not take, names it too).
    Answers are cached per (method, path), at most 1,024 of them (the cache starts over
    when full, so junk paths cannot grow it); a path no route matches is cached as None.

    Args:
        app: the app that routes (an object with ``router.routes`` or ``routes``), or an
            ASGI middleware in front of it: ``.app`` is followed, up to 32 layers.

    Example::

        names = RouteNames(fastapi_app)
        names({"type": "http", "method": "POST", "path": "/orders/7", "root_path": ""})
        # '/orders/{order_id}'
    """

    def __init__(self, app: Any) -> None:
        self.routes = _find_routes(app)
        self._cache: dict[tuple[str, str], str | None] = {}
        self._interned: dict[str, str] = {}  # one string per template: metrics key on it
        self._match: Any = None

    def __bool__(self) -> bool:
        return self.routes is not None

    @staticmethod
    def wanted(scope: Scope) -> bool:
        """No ``scope["route"]``, and either no router ran or one matched (an endpoint)."""
        return "router" not in scope or "endpoint" in scope

    def __call__(self, scope: Scope) -> str | None:
        """The template of the route matching the request, else None."""
        routes = self.routes
        if routes is None:
            return None
        key = (scope.get("method", ""), scope["path"])
        cache = self._cache
        if key in cache:
            return cache[key]
        if self._match is None:
            from starlette.routing import Match  # noqa: PLC0415 - there are routes: starlette

            self._match = Match
        try:
            found = _match_routes(routes, dict(scope), "", 0, self._match)
        except Exception:  # buttress: ignore[BTR303] naming the route must never fail a request
            found = None
        if found is not None:
            found = self._interned.setdefault(found, found)
        if len(cache) >= _MAX_NAMED_PATHS:
            cache.clear()
        cache[key] = found
        return found


def _find_routes(app: Any) -> Any:
    """The routes of the router under ``app`` (following ``.app`` through middlewares)."""
    for _ in range(32):
        if app is None:
            return None
        for router in (getattr(app, "router", None), app):  # an app, or a Router itself
            routes = getattr(router, "routes", None)
            if isinstance(routes, list) and callable(getattr(router, "url_path_for", None)):
                return routes
        app = getattr(app, "app", None)
    return None


def _match_routes(routes: Any, scope: Scope, prefix: str, depth: int, match: Any) -> str | None:
    """The template of the first full match (else the first partial) under ``routes``."""
    partial: str | None = None
    for route in _flatten(routes):
        kind, child = route.matches(scope)
        if kind is match.NONE:
            continue
        effective = getattr(route, "starlette_route", None) or route
        template = getattr(effective, "path_format", None)
        if not isinstance(template, str):
            continue
        children = getattr(effective, "routes", None)
        found = None
        if children and template.endswith("/{path}") and depth < _MAX_DEPTH:  # a Mount
            inner = {**scope, **child}
            found = _match_routes(
                children, inner, prefix + template.removesuffix("/{path}"), depth + 1, match
            )
        name = found if found is not None else prefix + template
        if kind is match.FULL:
            return name
        if partial is None:
            partial = name
    return partial


def _flatten(routes: Any) -> Any:
    """Routes, with FastAPI's included routers replaced by the routes they hold."""
    for route in routes:
        expand = getattr(route, "effective_route_contexts", None)
        if callable(expand):
            yield from expand()
        else:
            yield route


class AccessLogMiddleware(Stage):
    """One structured log line per request.

    Args:
        app: the ASGI application.
        logger: a structlog logger (default ``structlog.get_logger("buttress.access")``).
        trusted_proxies: CIDRs of your proxies, for the client address (default none).
        exclude_paths: paths not logged (default the health and metrics endpoints).
        principal: a function of the scope returning the caller's identity, if known
            (default: ``scope["state"]["principal"]``, set by authentication).
        router: the app whose routes name the requests answered before routing (see
            `RouteNames`; default: found by following ``.app`` from ``app``).

    Example::

        configure_logging()
        app = AccessLogMiddleware(app, trusted_proxies=["10.0.0.0/8"])
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        logger: Any = None,
        trusted_proxies: Iterable[str] = (),
        exclude_paths: Iterable[str] = ("/health", "/health/live", "/health/ready", "/metrics"),
        principal: Callable[[Scope], str | None] | None = None,
        router: Any = None,
    ) -> None:
        self.direct = logger is None  # our own format: write lines directly when we can
        if logger is None:
            import structlog  # noqa: PLC0415 - the asgi extra

            logger = structlog.get_logger("buttress.access")
        self.app = app
        self.logger = logger
        self.trusted = trusted_networks(trusted_proxies)
        self.exclude = frozenset(exclude_paths)
        self.principal = principal or _state_principal
        # (peer, X-Forwarded-For) -> client, behind trusted proxies: ipaddress parsing once
        # per pair (bounded: see `resolve_client`)
        self.clients: dict[tuple[str, bytes], str] = {}
        self.names = RouteNames(router if router is not None else app) or None

    def stage_hooks(self) -> Hooks:
        """Arrive: the clock starts; finish: the line, with the final status and size."""
        return Hooks(
            arrive=self.arrive,
            finish=self.finish,
            reads=ADDRESS_HEADERS,
            fields=("access_started",),
        )

    def arrive(self, ex: Any) -> None:
        """Start the request's clock (None: an excluded path, not logged)."""
        ex.access_started = None if ex.scope["path"] in self.exclude else time.perf_counter()

    def finish(self, ex: Any) -> None:
        """Write the line."""
        started = ex.access_started
        if started is None:
            return
        scope = ex.scope
        log_access(
            self.logger,
            self.direct,
            scope,
            ex.status,
            ex.size,
            started,
            found_client(scope, ex.found, self.trusted, self.clients) or UNKNOWN_CLIENT,
            self.principal(scope),
            self.names,
        )


_NULL = "null"
_QUOTE = '"%s"'


def log_access(
    logger: Any,
    direct: bool,
    scope: Scope,
    status: int,
    size: int,
    started: float,
    client: str | None,
    principal: str | None,
    names: RouteNames | None = None,
) -> None:
    """Write one access line: directly as JSON when buttress owns the format, else structlog.

    ``started`` is the `time.perf_counter` reading when the request arrived; a ``status``
    of 0 (no response) is logged as 500; ``names`` names the requests no router named.
    """
    trace = _TRACE.get()
    sink = _access_sink
    if sink is not None and direct and _access_json:
        duration = (time.perf_counter() - started) * 1000
        now = time.time()
        cached = _stamp[0]
        stamp = cached[1] if int(now * 1000) == cached[0] else _timestamp(now)
        method: str = scope["method"]
        path: str = scope["path"]
        route = route_template(scope, names)
        request_id = _REQUEST_ID.get()
        trace_id = trace[0] if trace is not None else None  # lowercase hex, or None
        # the free-text fields checked at once; the common case needs no escaping
        text = f"{method}{route}{path}{request_id}{client}{principal}"
        if (
            text.isascii()
            and text.isprintable()
            and '"' not in text
            and "\\" not in text
            and request_id is not None
            and trace_id is not None
            and client is not None
        ):
            sink.write(
                f'{{"method":"{method}","route":"{route}","path":"{path}",'
                f'"status":{status or 500},"duration_ms":{duration:.3f},"bytes":{size},'
                f'"request_id":"{request_id}","trace_id":"{trace_id}","client":"{client}",'
                f'"principal":{_NULL if principal is None else _QUOTE % principal},'
                f'"event":"request","logger":"buttress.access","level":"info",'
                f'"timestamp":"{stamp}"}}\n'
            )
        else:
            sink.write(
                f'{{"method":{_q(method)},"route":{_q(route)},"path":{_q(path)},'
                f'"status":{status or 500},"duration_ms":{duration:.3f},"bytes":{size},'
                f'"request_id":{_q(request_id)},"trace_id":{_q(trace_id)},'
                f'"client":{_q(client)},"principal":{_q(principal)},'
                f'"event":"request","logger":"buttress.access","level":"info",'
                f'"timestamp":"{stamp}"}}\n'
            )
    else:
        logger.info(
            "request",
            method=scope["method"],
            route=route_template(scope, names),
            path=scope["path"],
            status=status or 500,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            bytes=size,
            request_id=_REQUEST_ID.get(),
            trace_id=trace.trace_id if trace is not None else None,
            client=client,
            principal=principal,
        )


def _state_principal(scope: Scope) -> str | None:
    state = scope.get("state")
    if isinstance(state, dict):
        value = state.get("principal")
        return None if value is None else str(value)
    return None
