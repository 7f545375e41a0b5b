"""Request context: request ids, W3C trace context and the real client address.

`RequestContextMiddleware` accepts a well-formed inbound ``X-Request-ID`` (bounded length,
a safe charset) or makes a new one, parses the W3C ``traceparent`` header (or starts a
trace), binds both to context variables for the duration of the request, so logs and
outbound `buttress.http` calls carry them, and echoes the id on every response (500s
included, since this is the outermost layer of `harden`).

`client_address` finds the client behind proxies the right way: the right-most address in
``X-Forwarded-For`` that is not one of *your* trusted proxies, never the left-most (which
any client can forge). It is the one place that decides who the client is: the rate-limit
keys and the access log both go through `resolve_client`.

A server can rewrite ``scope["client"]`` itself from ``X-Forwarded-For`` before buttress
sees it (uvicorn does by default for peers in ``--forwarded-allow-ips``, 127.0.0.1 and ::1).
That is detected per request: the proxy-header layers of uvicorn, Hypercorn and Granian set
the client to ``(address, 0)``, and port 0 is never a TCP peer's; recent uvicorn releases
keep a port written in the hop (``203.0.113.9:4444``), and then the client is exactly one
of the hops of the header. When that happens and buttress trusts no proxy, the rewritten
address is not believed: the client is `UNKNOWN_CLIENT`, and an error says so once per
process, with the fix. `is_local_request` is the one test of "a local caller" that
``/metrics`` and health details use: a loopback peer with no proxy header at all.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from random import getrandbits
from typing import Any, Final, NamedTuple

from buttress.asgi._runner import Hooks, Stage
from buttress.asgi._types import ASGIApp, Scope
from buttress.errors import ConfigurationError

__all__ = [
    "ADDRESS_HEADERS",
    "PROXY_HEADERS",
    "UNKNOWN_CLIENT",
    "RequestContextMiddleware",
    "TraceContext",
    "client_address",
    "current_request_id",
    "current_scope",
    "current_trace",
    "found_client",
    "is_local_request",
    "is_loopback",
    "is_proxy_header",
    "parse_traceparent",
    "resolve_client",
    "trusted_networks",
]


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
"""An allow-list of proxies, as `trusted_networks` parses it."""

_REQUEST_ID: ContextVar[str | None] = ContextVar("buttress_request_id", default=None)
_TRACE: ContextVar[TraceContext | None] = ContextVar("buttress_trace", default=None)
_SCOPE: ContextVar[Scope | None] = ContextVar("buttress_scope", default=None)

_HEX = frozenset(b"0123456789abcdef")
_NONZERO = 1 << 64 | 1  # the lowest bit of the trace id and of the span id, in one draw
_new_trace = tuple.__new__  # TraceContext(...) without the NamedTuple's Python __new__
# RFC 3986 unreserved plus a few separators ids commonly use; no spaces, quotes or controls
_ID_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/+=")


def current_request_id() -> str | None:
    """The id of the request being served by this task, or None outside a request."""
    return _REQUEST_ID.get()


def current_scope() -> Scope | None:
    """The ASGI scope of the request being served, or None outside a request.

    The same dict the app sees, so ``scope["route"]`` is there once the router ran
    (integrations read the route template and the principal from it).
    """
    return _SCOPE.get()


def current_trace() -> TraceContext | None:
    """The trace context of the request being served, or None outside a request."""
    return _TRACE.get()


class TraceContext(NamedTuple):
    """W3C trace context of this server span (immutable; cheap to build per request).

    Attributes:
        trace_id: 32 lowercase hex digits.
        span_id: this service's span (16 hex digits), the parent of outbound calls.
        parent_id: the caller's span, when the request carried a ``traceparent``.
        flags: trace flags (bit 0: sampled).
    """

    trace_id: str
    span_id: str
    parent_id: str | None
    flags: int

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` value for outbound calls (this span as the parent)."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    @property
    def sampled(self) -> bool:
        """Whether the caller asked for this trace to be recorded."""
        return bool(self.flags & 1)


def _is_hex(value: bytes, length: int) -> bool:
    return len(value) == length and all(c in _HEX for c in value) and value.strip(b"0") != b""


def parse_traceparent(value: bytes | str | None) -> tuple[str, str, int] | None:
    """``(trace_id, parent_id, flags)`` from a ``traceparent`` header, or None if invalid.

    Follows the W3C rules: version ``ff`` is invalid; version ``00`` has exactly four
    fields; later versions may append fields; ids are lowercase hex and not all zeros.

    Example::

        >>> parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        ('4bf92f3577b34da6a3ce929d0e0e4736', '00f067aa0ba902b7', 1)
    """
    if value is None:
        return None
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    raw = raw.strip()
    if len(raw) < 55 or len(raw) > 512:
        return None
    parts = raw.split(b"-")
    if len(parts) < 4:
        return None
    version, trace_id, parent_id, flags = parts[0], parts[1], parts[2], parts[3]
    if len(version) != 2 or not all(c in _HEX for c in version) or version == b"ff":
        return None
    if version == b"00" and (len(parts) != 4 or len(raw) != 55):
        return None
    if not _is_hex(trace_id, 32) or not _is_hex(parent_id, 16):
        return None
    if len(flags) != 2 or not all(c in _HEX for c in flags):
        return None
    return trace_id.decode(), parent_id.decode(), int(flags, 16)


def _valid_request_id(value: bytes, max_length: int) -> bool:
    return 0 < len(value) <= max_length and all(c in _ID_BYTES for c in value)


def trusted_networks(cidrs: Iterable[str]) -> Networks:
    """Parse a CIDR allow-list of proxies, raising `ConfigurationError` on a bad entry."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ConfigurationError(
                f"trusted_proxies={cidr!r}: not an IP network (use CIDR like 10.0.0.0/8)"
            ) from exc
    return tuple(networks)


#: what `client_address` answers when a client address exists but cannot be believed (the
#: server rewrote it from a header buttress does not trust) or is not an IP address
UNKNOWN_CLIENT: Final = "unknown"

#: headers through which a proxy passes the client's address on: what the proxy-header
#: layers of servers and frameworks read
ADDRESS_HEADERS: Final = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-real-ip",
        b"cf-connecting-ip",
        b"true-client-ip",
        b"x-client-ip",
    }
)
#: request headers that show a request came through a proxy (with every ``X-Forwarded-*``)
PROXY_HEADERS: Final = ADDRESS_HEADERS | {b"via"}

_CACHE_MAX = 1024  # distinct peers whose parsed form is kept (then parsed each time)
_peers: dict[str, str] = {}
_log = logging.getLogger("buttress.asgi.client")
_rewrite_reported = False
_REWRITE_MESSAGE = (
    "the server rewrote the client address from a forwarding header (%s), but buttress "
    "trusts no proxy: such requests count as client 'unknown' (one rate-limit bucket, "
    "'unknown' in the access log). Fix: serve without proxy headers (uvicorn "
    "--no-proxy-headers, or uvicorn.run(..., proxy_headers=False); gunicorn with a worker "
    'class whose CONFIG_KWARGS set "proxy_headers": False), or, behind your own proxies, '
    "list them in trusted_proxies (BUTTRESS_TRUSTED_PROXIES)"
)


def _trusted(address: str, networks: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def is_proxy_header(name: bytes) -> bool:
    """Whether request header ``name`` (lowercase) is one a proxy adds (`PROXY_HEADERS`)."""
    return name in PROXY_HEADERS or name.startswith(b"x-forwarded-")


def is_loopback(client: object) -> bool:
    """Whether an ASGI ``client`` is a loopback address (127.0.0.0/8, ::1, mapped v4).

    No client (a Unix socket, maybe a local reverse proxy) is not loopback.
    """
    if not isinstance(client, tuple | list) or not client or not isinstance(client[0], str):
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_local_request(scope: Scope) -> bool:
    """A loopback peer that is not a proxy forwarding someone else's request.

    Any proxy header (`PROXY_HEADERS`, any ``X-Forwarded-*``) makes a request not local,
    so a server's rewrite of the client address (which needs such a header) never makes
    one local. A proxy on the same host that adds none of them looks local: protect what
    this guards with a token there.
    """
    if not is_loopback(scope.get("client")):
        return False
    return not any(is_proxy_header(name) for name, _ in scope.get("headers", ()))


def _host_port(hop: str) -> tuple[str, int]:
    """``(host, port)`` of one ``X-Forwarded-For`` hop, as uvicorn's proxy layer reads it."""
    if hop.startswith("["):
        end = hop.find("]")
        if end == -1:
            return hop, 0
        host, rest = hop[1:end], hop[end + 1 :]
        if not rest:
            return host, 0
        if not rest.startswith(":"):
            return hop, 0
        try:
            return host, int(rest[1:])
        except ValueError:
            return host, 0
    if hop.count(":") == 1:
        host, port = hop.rsplit(":", 1)
        try:
            return host, int(port)
        except ValueError:
            return hop, 0
    return hop, 0


def _rewritten(host: object, port: object, xff: bytes | None) -> bool:
    """Whether a server set this client from a forwarding header (one is present).

    Proxy-header layers set the port to 0, which no TCP peer has; uvicorn keeps a port
    written in the hop, and then ``(host, port)`` is one of the hops.
    """
    if port == 0:
        return True
    if not isinstance(port, int) or xff is None or b":%d" % port not in xff:
        return False
    target = (host, port)
    return any(_host_port(hop.strip()) == target for hop in xff.decode("latin-1").split(","))


def _report_rewrite(xff: bytes | None) -> None:
    global _rewrite_reported
    if not _rewrite_reported:
        _rewrite_reported = True
        header = "X-Forwarded-For" if xff is not None else "Forwarded, X-Real-IP or the like"
        _log.error(_REWRITE_MESSAGE, header)


def _canonical(host: str) -> str:
    """``host`` as an IP address in its normal form, or `UNKNOWN_CLIENT` (cached, bounded)."""
    found = _peers.get(host)
    if found is None:
        try:
            found = str(ipaddress.ip_address(host))
        except ValueError:
            found = UNKNOWN_CLIENT
        if len(_peers) < _CACHE_MAX and len(host) <= 64:
            _peers[host] = found
    return found


def _walk(peer: str, xff: bytes, trusted: Networks) -> str:
    """The right-most ``X-Forwarded-For`` hop that is not a trusted proxy (peer: trusted)."""
    for raw in reversed(xff.decode("latin-1").split(",")):
        hop = raw.strip()
        if not hop:
            continue
        if not _trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the chain: do not trust anything before it
    return peer


def found_client(
    scope: Scope,
    found: dict[bytes, list[bytes]],
    trusted: Networks,
    cache: dict[tuple[str, bytes], str] | None = None,
) -> str | None:
    """`client_address` from headers already scanned (``found``: name -> values in order).

    ``found`` must hold every header of `PROXY_HEADERS` but ``via`` that the request has
    (the runner's ``ex.found`` does, for a stage that reads them).
    """
    if ADDRESS_HEADERS.isdisjoint(found):  # the common case: the peer, as resolve_client
        client = scope.get("client")
        if not client:
            return None
        host = client[0]
        if not isinstance(host, str):
            return UNKNOWN_CLIENT
        peer = _peers.get(host)
        return peer if peer is not None else _canonical(host)
    values = found.get(b"x-forwarded-for")
    xff = b",".join(values) if values else None
    return resolve_client(scope.get("client"), xff, True, trusted, cache)


def resolve_client(
    client: Any,
    xff: bytes | None,
    forwarded: bool,
    trusted: Networks,
    cache: dict[tuple[str, bytes], str] | None = None,
) -> str | None:
    """Who the client is: the one decision behind `client_address` and `found_client`.

    Args:
        client: ``scope["client"]``.
        xff: the request's ``X-Forwarded-For`` values, joined with ``,`` (None: absent).
        forwarded: whether the request carries a header that passes an address on
            (``X-Forwarded-For``, ``Forwarded``, ``X-Real-IP`` and the like).
        trusted: your proxies (`trusted_networks`).
        cache: (peer, X-Forwarded-For) -> client, filled while under 1,024 entries.

    Returns an IP address in its normal form, `UNKNOWN_CLIENT`, or None (no client
    address at all: a Unix socket).
    """
    if not client:
        return None
    host = client[0]
    # rewritten by the server while we trust no proxy: not believed. (With proxies of
    # ours, the server's answer is where our own walk starts.)
    if not trusted and forwarded and _rewritten(host, client[1] if len(client) > 1 else None, xff):
        _report_rewrite(xff)
        return UNKNOWN_CLIENT
    peer = _canonical(host) if isinstance(host, str) else UNKNOWN_CLIENT
    if not trusted or xff is None or peer == UNKNOWN_CLIENT:
        return peer
    if cache is not None:
        key = (peer, xff)
        found = cache.get(key)
        if found is not None:
            return found
    address = _walk(peer, xff, trusted) if _trusted(peer, trusted) else peer
    if cache is not None and len(cache) < _CACHE_MAX and len(xff) <= 256:
        cache[key] = address
    return address


def client_address(scope: Scope, trusted: Networks = ()) -> str | None:
    """The client's address, trusted-proxy aware.

    When the direct peer is a trusted proxy, walk ``X-Forwarded-For`` from the right and
    return the first address that is not a trusted proxy; otherwise return the peer. An
    empty allow-list trusts nobody: the peer address is the answer, whatever the headers
    say. The answer is always an IP address (normal form), `UNKNOWN_CLIENT` (``"unknown"``:
    the server rewrote the address from a header while buttress trusts no proxy, or the
    peer is not an IP address), or None when the server gives no client address (a Unix
    socket).

    Example::

        nets = trusted_networks(["10.0.0.0/8"])
        client_address(scope, nets)   # "203.0.113.9" behind a 10.x load balancer
    """
    xff: bytes | None = None
    forwarded = False
    for name, value in scope.get("headers", ()):
        if name in ADDRESS_HEADERS:
            forwarded = True
            if name == b"x-forwarded-for":
                xff = value if xff is None else xff + b"," + value
    return resolve_client(scope.get("client"), xff, forwarded, trusted)


class RequestContextMiddleware(Stage):
    """Request id and trace context for every request, bound to context variables.

    Args:
        app: the ASGI application.
        header: the request-id header (default ``x-request-id``).
        max_length: longest inbound id accepted (default 128); longer or with characters
            outside ``[A-Za-z0-9-._~:/+=]`` gets a fresh id instead.
        trust_incoming: accept inbound ids at all (default True).
        trace: parse and emit W3C trace context (default True).
        generator: makes new ids (default: the trace id, so one id finds the request in
            logs and traces; 32 random hex digits when tracing is off).
        tracing: take the trace context from OpenTelemetry's server span (starting one
            when no instrumentation did; `buttress.otel`): None (default) when OTel is
            active, True always, False never. Decided once, when the stage is composed.

    The id is echoed as a response header; the trace context is returned as
    ``traceresponse`` (W3C Trace Context level 2) and stored in ``scope["state"]``.

    Example::

        app = RequestContextMiddleware(app)
        # inside a handler:
        from buttress.asgi import current_request_id
        log.info("charging", request_id=current_request_id())
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = "x-request-id",
        max_length: int = 128,
        trust_incoming: bool = True,
        trace: bool = True,
        generator: Callable[[], str] | None = None,
        tracing: bool | None = None,
    ) -> None:
        if not header or not all(c.isalnum() or c == "-" for c in header):
            raise ConfigurationError(
                f"RequestContextMiddleware(header={header!r}): must be a header name"
            )
        if (
            isinstance(max_length, bool)
            or not isinstance(max_length, int)
            or not (8 <= max_length <= 1024)
        ):
            raise ConfigurationError(
                f"RequestContextMiddleware(max_length={max_length!r}): must be an integer in "
                "[8, 1024]"
            )
        self.app = app
        self.header = header.lower().encode("latin-1")
        self.max_length = max_length
        self.trust_incoming = trust_incoming
        self.trace = trace
        self.generator = generator or _new_id
        self.custom_ids = generator is not None
        self.tracing = tracing

    def stage_hooks(self) -> Hooks:
        """Arrive: ids and trace context bound; start: both echoed; finish: unbound."""
        if self.trace and self.tracing is not False:
            from buttress.asgi._tracing import server_hooks  # noqa: PLC0415 - OTel only

            traced = server_hooks(self, required=self.tracing is True)
            if traced is not None:
                return traced
        reads = {self.header} if self.trust_incoming else set()
        if self.trace:
            reads.add(b"traceparent")
        return Hooks(
            arrive=self.arrive,
            start=self.start,
            finish=self.finish,
            reads=frozenset(reads),
            fields=("context_headers", "context_tokens"),
        )

    def arrive(self, ex: Any) -> None:
        """Take or make the request id and the trace context; bind them."""
        found = ex.found
        request_id: str | None = None
        if self.trust_incoming:
            for value in found.get(self.header, ()):
                if _valid_request_id(value, self.max_length):
                    request_id = value.decode("ascii")
                    break
        trace: TraceContext | None = None
        if self.trace:
            parsed = None
            for value in found.get(b"traceparent", ()):
                parsed = parse_traceparent(value)
                if parsed is not None:
                    break
            if parsed is not None:
                span = (getrandbits(64) | 1).to_bytes(8, "big").hex()  # never all zeros
                trace = _new_trace(TraceContext, (parsed[0], span, parsed[1], parsed[2]))
                response = f"00-{parsed[0]}-{span}-{parsed[2]:02x}".encode("ascii")
            else:  # a new trace: its id and our span from one draw, neither all zeros
                ids = (getrandbits(192) | _NONZERO).to_bytes(24, "big").hex()
                trace_id = ids[:32]
                span = ids[32:]
                trace = _new_trace(TraceContext, (trace_id, span, None, 1))
                response = f"00-{trace_id}-{span}-01".encode("ascii")
            if request_id is None and not self.custom_ids:
                request_id = trace[0]  # a fresh id: the trace id (one id to grep for)
            headers = [(b"traceresponse", response)]
        else:
            headers = []
        if request_id is None:
            request_id = self.generator()
        headers.append((self.header, request_id.encode("ascii")))
        scope = ex.scope
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = request_id
        if trace is not None:
            state["trace"] = trace
        ex.context_headers = headers
        ex.context_tokens = (_REQUEST_ID.set(request_id), _TRACE.set(trace), _SCOPE.set(scope))

    def start(self, ex: Any, headers: list[tuple[bytes, bytes]]) -> None:
        """Echo the id and the trace context (``traceresponse``)."""
        headers.extend(ex.context_headers)

    def finish(self, ex: Any) -> None:
        """Unbind the request's id and trace context."""
        id_token, trace_token, scope_token = ex.context_tokens
        _SCOPE.reset(scope_token)
        _TRACE.reset(trace_token)
        _REQUEST_ID.reset(id_token)


def _new_id() -> str:
    return f"{getrandbits(128):032x}"


def outbound_trace_headers() -> list[tuple[str, str]]:
    """Headers an outbound call should carry: ``traceparent`` and ``x-request-id``.

    Used as a `buttress.http` ``on_request`` hook by `propagate_context`.
    """
    headers = []
    trace = _TRACE.get()
    if trace is not None:
        headers.append(("traceparent", trace.traceparent))
    request_id = _REQUEST_ID.get()
    if request_id is not None:
        headers.append(("x-request-id", request_id))
    return headers


def propagate_context(request: Any) -> None:
    """A `buttress.http` ``on_request`` hook: add trace context and request id.

    Example::

        from buttress.http import async_client
        from buttress.asgi.context import propagate_context

        client = async_client(on_request=[propagate_context])
    """
    for name, value in outbound_trace_headers():
        if name not in request.headers:
            request.headers[name] = value
