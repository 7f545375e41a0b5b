"""Request context: request ids, W3C trace context and the real client address.

`RequestContextMiddleware` accepts a well-formed inbound ``X-Request-ID`` (bounded length,
a safe charset) or makes a new one, parses the W3C ``traceparent`` header (or starts a
trace), binds both to context variables for the duration of the request, so logs and
outbound `buttress.http` calls carry them, and echoes the id on every response (500s
included, since this is the outermost layer of `harden`).

`client_address` finds the client behind proxies the right way: the right-most address in
``X-Forwarded-For`` that is not one of *your* trusted proxies, never the left-most (which
any client can forge).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from random import getrandbits
from typing import Any, NamedTuple

from buttress.asgi._types import ASGIApp, Message, Receive, Scope, Send
from buttress.errors import ConfigurationError

__all__ = [
    "RequestContextMiddleware",
    "TraceContext",
    "client_address",
    "current_request_id",
    "current_trace",
    "parse_traceparent",
    "trusted_networks",
]


_REQUEST_ID: ContextVar[str | None] = ContextVar("buttress_request_id", default=None)
_TRACE: ContextVar[TraceContext | None] = ContextVar("buttress_trace", default=None)

_HEX = frozenset(b"0123456789abcdef")
# RFC 3986 unreserved plus a few separators ids commonly use; no spaces, quotes or controls
_ID_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/+=")


def current_request_id() -> str | None:
    """The id of the request being served by this task, or None outside a request."""
    return _REQUEST_ID.get()


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


def trusted_networks(
    cidrs: Iterable[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
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


def _trusted(
    address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(
    scope: Scope,
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
) -> str | None:
    """The client's address, trusted-proxy aware.

    When the direct peer is a trusted proxy, walk ``X-Forwarded-For`` from the right and
    return the first address that is not a trusted proxy; otherwise return the peer. An
    empty allow-list trusts nobody: the peer address is the answer.

    Example::

        nets = trusted_networks(["10.0.0.0/8"])
        client_address(scope, nets)   # "203.0.113.9" behind a 10.x load balancer
    """
    client = scope.get("client")
    peer: str | None = str(client[0]) if client else None
    if not trusted or peer is None or not _trusted(peer, trusted):
        return peer
    hops: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            hops.extend(h.strip() for h in value.decode("latin-1").split(","))
    for hop in reversed(hops):
        if not hop:
            continue
        if not _trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the chain: do not trust anything before it
    return peer


class RequestContextMiddleware:
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id: str | None = None
        parsed = None
        want = self.header
        for name, value in scope["headers"]:
            if name == want and request_id is None and self.trust_incoming:
                if _valid_request_id(value, self.max_length):
                    request_id = value.decode("ascii")
            elif name == b"traceparent" and self.trace and parsed is None:
                parsed = parse_traceparent(value)
        trace: TraceContext | None = None
        extra: list[tuple[bytes, bytes]] = []
        if self.trace:
            span = f"{getrandbits(64) | 1:016x}"  # never all zeros
            if parsed is not None:
                trace = TraceContext(parsed[0], span, parsed[1], parsed[2])
            else:
                trace = TraceContext(f"{getrandbits(128) | 1:032x}", span, None, 1)
            extra.append((b"traceresponse", f"00-{trace[0]}-{span}-{trace[3]:02x}".encode("ascii")))
        if request_id is None:
            # a fresh id: the trace id when there is one (one id to grep for), else random
            request_id = self.generator() if self.custom_ids or trace is None else trace[0]
        extra.append((self.header, request_id.encode("ascii")))
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = request_id
        if trace is not None:
            state["trace"] = trace

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        id_token = _REQUEST_ID.set(request_id)
        trace_token = _TRACE.set(trace)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
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
        from buttress.asgi import propagate_context

        client = async_client(on_request=[propagate_context])
    """
    for name, value in outbound_trace_headers():
        if name not in request.headers:
            request.headers[name] = value
