"""Security headers (the OWASP Secure Headers Project set) and CORS with an allow-list.

Two stages (see `buttress.asgi._runner`): `SecurityHeadersMiddleware` edits the headers of
every response that starts through it; `CORSMiddleware` answers preflights when the request
arrives and adds the CORS headers of an allowed origin when the response starts.

A framework's own documentation pages (FastAPI's Swagger UI and ReDoc, found by
`framework_docs_paths`) get `DOCS_CSP` on exactly their paths: the API's CSP
(``default-src 'none'``) would leave them blank. By default CORS exposes to browser code
the headers it needs to read (`BROWSER_HEADERS`: rate limits, ``Retry-After``, replays,
the request id); a refused preflight names what was refused.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

from buttress.asgi._problem import send_problem
from buttress.asgi._runner import Hooks, Stage
from buttress.asgi._types import ASGIApp, Send
from buttress.errors import ConfigurationError, ErrorCode

__all__ = [
    "API_CSP",
    "API_HEADERS",
    "BROWSER_HEADERS",
    "DEFAULT_CSP",
    "DOCS_CSP",
    "OWASP_HEADERS",
    "SECURITY_PROFILES",
    "CORSMiddleware",
    "SecurityHeadersMiddleware",
    "SecurityProfile",
    "framework_docs_paths",
]


DEFAULT_CSP = (
    "default-src 'self'; form-action 'self'; base-uri 'self'; object-src 'none'; "
    "frame-ancestors 'none'; upgrade-insecure-requests"
)

# The OWASP Secure Headers Project's recommended set; HSTS at two years, as hstspreload.org
# requires, and a CSP suited to an API (no inline script, no framing, no plugins).
OWASP_HEADERS: dict[str, str] = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "deny",
    "content-security-policy": DEFAULT_CSP,
    "x-permitted-cross-domain-policies": "none",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-embedder-policy": "require-corp",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": (
        "accelerometer=(), autoplay=(), camera=(), display-capture=(), encrypted-media=(), "
        "fullscreen=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), "
        "midi=(), payment=(), picture-in-picture=(), publickey-credentials-get=(), "
        "screen-wake-lock=(), sync-xhr=(self), usb=(), web-share=(), xr-spatial-tracking=()"
    ),
    "x-dns-prefetch-control": "off",
    "cache-control": "no-store, max-age=0",
}
# OWASP's REST Security Cheat Sheet: the headers "to be included in all API responses"
# (Content-Type is the application's). Its HTML-only CSP ``default-src 'none'`` rides in
# the same header as ``frame-ancestors 'none'``, so a JSON API gets both for one header.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
API_HEADERS: dict[str, str] = {
    "cache-control": "no-store",
    "content-security-policy": API_CSP,
    "strict-transport-security": OWASP_HEADERS["strict-transport-security"],
    "x-content-type-options": "nosniff",
    "x-frame-options": "deny",
}

# Swagger UI and ReDoc as FastAPI serves them: scripts and styles from jsDelivr, an inline
# start-up script, FastAPI's favicon, ReDoc's Google fonts and its search worker (a blob:),
# the OpenAPI document fetched from the same origin. Nothing else: no framing, no plugins.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src 'self' data: https://fonts.gstatic.com; "
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.jsdelivr.net; "
    "connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'self'; "
    "form-action 'self'"
)
# the attributes of a FastAPI app that name its documentation pages
_DOCS_ATTRIBUTES = ("docs_url", "redoc_url", "swagger_ui_oauth2_redirect_url")


def framework_docs_paths(app: object) -> tuple[str, ...]:
    """The paths of the app's own documentation pages (FastAPI's ``/docs``, ``/redoc``...).

    Read from FastAPI's ``docs_url``, ``redoc_url`` and ``swagger_ui_oauth2_redirect_url``
    (the last only when there is a ``docs_url``); empty for other apps.

    Example::

        framework_docs_paths(FastAPI())   # ('/docs', '/redoc', '/docs/oauth2-redirect')
    """
    paths: list[str] = []
    for name in _DOCS_ATTRIBUTES:
        path = getattr(app, name, None)
        if isinstance(path, str) and path.startswith("/"):
            if name == "swagger_ui_oauth2_redirect_url" and not getattr(app, "docs_url", None):
                continue  # FastAPI serves the redirect page only with Swagger UI
            paths.append(path)
    return tuple(paths)


SecurityProfile: TypeAlias = Literal["api", "full"]
"""A named header set: ``"api"`` (`API_HEADERS`) or ``"full"`` (`OWASP_HEADERS`)."""

SECURITY_PROFILES: dict[str, dict[str, str]] = {"api": API_HEADERS, "full": OWASP_HEADERS}

# Fingerprinting headers the OWASP project recommends removing.
REMOVED_HEADERS = frozenset(
    {b"server", b"x-powered-by", b"x-aspnet-version", b"x-aspnetmvc-version", b"x-runtime"}
)


class SecurityHeadersMiddleware(Stage):
    """Add the OWASP recommended response headers; remove ``Server`` and friends.

    Headers the application sets itself are kept (a route that sets its own
    ``Cache-Control`` or CSP wins).

    Args:
        app: the ASGI application.
        headers: replace the whole set (names are case-insensitive); None keeps OWASP's.
        csp_routes: a Content-Security-Policy per path prefix (longest prefix wins), or
            None for no CSP on those paths (e.g. ``{"/docs": None}`` for Swagger UI).
        remove: fingerprinting headers to strip (default ``Server``, ``X-Powered-By``...).
        docs_paths: exact paths of documentation pages (`framework_docs_paths`): they get
            `DOCS_CSP` and no ``Cross-Origin-Embedder-Policy`` (their scripts come from a
            CDN), unless ``csp_routes`` has an entry for that very path.

    Example::

        app = SecurityHeadersMiddleware(app, csp_routes={"/docs": None})
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        headers: Mapping[str, str] | None = None,
        csp_routes: Mapping[str, str | None] | None = None,
        remove: Iterable[bytes] = REMOVED_HEADERS,
        docs_paths: Iterable[str] = (),
    ) -> None:
        chosen = dict(OWASP_HEADERS if headers is None else headers)
        for name, value in chosen.items():
            if not name or "\n" in value or "\r" in value:
                raise ConfigurationError(
                    f"SecurityHeadersMiddleware(headers={{{name!r}: {value!r}}}): invalid header"
                )
        self.app = app
        self.base = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in chosen.items()]
        self.base_names = frozenset(k for k, _ in self.base)
        self.remove = frozenset(h.lower() for h in remove)
        # response header names that need the careful merge: removed, or set by the app
        self._special = self.remove | self.base_names
        routes = sorted((csp_routes or {}).items(), key=lambda kv: len(kv[0]), reverse=True)
        self.routes: list[tuple[str, list[tuple[bytes, bytes]]]] = []
        for prefix, csp in routes:
            if not prefix.startswith("/"):
                raise ConfigurationError(
                    f"SecurityHeadersMiddleware(csp_routes={{{prefix!r}: ...}}): a path prefix "
                    "starting with /"
                )
            headers_for_route = [h for h in self.base if h[0] != b"content-security-policy"]
            if csp is not None:
                headers_for_route.append((b"content-security-policy", csp.encode("latin-1")))
            self.routes.append((prefix, headers_for_route))
        relaxed = {b"content-security-policy", b"cross-origin-embedder-policy"}
        docs_headers = [h for h in self.base if h[0] not in relaxed]
        docs_headers.append((b"content-security-policy", DOCS_CSP.encode("latin-1")))
        self.exact = {p: docs_headers for p in docs_paths if p not in (csp_routes or {})}

    def _headers_for(self, path: str) -> list[tuple[bytes, bytes]]:
        exact = self.exact.get(path)
        if exact is not None:
            return exact
        for prefix, headers in self.routes:
            if path.startswith(prefix):
                return headers
        return self.base

    def stage_hooks(self) -> Hooks:
        """Start: the headers added, fingerprinting headers removed."""
        return Hooks(start=self.start)

    def start(self, ex: Any, headers: list[tuple[bytes, bytes]]) -> None:
        """Add the set (what the response sets itself wins); remove ``Server`` and friends."""
        add = self._headers_for(ex.scope["path"]) if self.routes or self.exact else self.base
        special = self._special
        for header in headers:
            name = header[0]
            # lower-case names (as ASGI asks) are looked up as they are, without a copy;
            # any other goes the general way below
            if name in special or not name.islower():
                break
        else:  # the common case: nothing to remove, none of ours set
            headers.extend(add)
            return
        remove = self.remove
        kept = []
        present = set()
        for header in headers:
            name = header[0].lower()
            if name not in remove:
                kept.append(header)
                present.add(name)
        if present.isdisjoint(self.base_names):
            kept.extend(add)
        else:
            kept.extend(h for h in add if h[0] not in present)
        headers[:] = kept


BROWSER_HEADERS = ("RateLimit", "RateLimit-Policy", "Retry-After", "Idempotent-Replayed")
"""Response headers of buttress's that browser code needs to read (CORS exposes them)."""

_SAFE_METHODS = ("GET", "HEAD", "POST")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP field name (RFC 9110)
_CORS_REQUEST_HEADERS = frozenset(
    {b"origin", b"access-control-request-method", b"access-control-request-headers"}
)
_CORS_CACHE_MAX = 1024  # origins whose answer is kept
_CORS_KEY_MAX = 256  # bytes: a real origin is short


class CORSMiddleware(Stage):
    """CORS with an explicit allow-list (a settings mistake fails at start-up).

    Args:
        app: the ASGI application.
        allow_origins: exact origins (``https://app.example.com``), or ``["*"]`` for any
            origin without credentials.
        allow_origin_regex: a full-match regular expression for origins.
        allow_methods: methods allowed cross-origin (default GET, HEAD, POST).
        allow_headers: request headers allowed (default none beyond the CORS-safelisted).
        allow_credentials: send ``Access-Control-Allow-Credentials: true``. Refused with
            ``*`` (browsers forbid it, and reflecting any origin with credentials is a hole).
        expose_headers: response headers the browser may read (default: ``x-request-id``
            and `BROWSER_HEADERS`: ``RateLimit``, ``RateLimit-Policy``, ``Retry-After``,
            ``Idempotent-Replayed``).
        max_age: how long a browser may cache a preflight (default 600 s).

    A preflight from a disallowed origin, method or header gets a 403 problem+json whose
    ``detail`` names what was refused (``header 'x-debug' is not allowed (allowed:
    authorization)``); the allowed methods and headers are listed only to an allowed origin.

    Example::

        app = CORSMiddleware(app, allow_origins=["https://shop.example.com"],
                             allow_credentials=True, allow_headers=["authorization"])
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allow_origins: Sequence[str] = (),
        allow_origin_regex: str | None = None,
        allow_methods: Sequence[str] = _SAFE_METHODS,
        allow_headers: Sequence[str] = (),
        allow_credentials: bool = False,
        expose_headers: Sequence[str] = ("x-request-id", *BROWSER_HEADERS),
        max_age: int = 600,
    ) -> None:
        origins = [o.rstrip("/") for o in allow_origins]
        self.any_origin = "*" in origins
        if self.any_origin and allow_credentials:
            raise ConfigurationError(
                "CORSMiddleware(allow_origins=['*'], allow_credentials=True): browsers refuse "
                "credentials with a wildcard origin; list the allowed origins instead"
            )
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ConfigurationError(
                    f"CORSMiddleware(allow_origins=[{origin!r}]): must be scheme://host[:port]"
                )
        try:
            self.origin_regex = re.compile(allow_origin_regex) if allow_origin_regex else None
        except re.error as exc:
            raise ConfigurationError(
                f"CORSMiddleware(allow_origin_regex={allow_origin_regex!r}): {exc}"
            ) from exc
        if isinstance(max_age, bool) or not isinstance(max_age, int) or not 0 <= max_age <= 86400:
            raise ConfigurationError(
                f"CORSMiddleware(max_age={max_age!r}): must be an integer in [0, 86400]"
            )
        self.app = app
        self.origins = frozenset(o for o in origins if o != "*")
        self.methods = frozenset(m.upper() for m in allow_methods)
        self.allow_all_headers = "*" in allow_headers
        if self.allow_all_headers and allow_credentials:
            raise ConfigurationError(
                "CORSMiddleware(allow_headers=['*'], allow_credentials=True): list the headers"
            )
        self.headers = frozenset(h.lower() for h in allow_headers)
        self.credentials = allow_credentials
        exposed: dict[str, str] = {}
        for name in expose_headers:
            if not isinstance(name, str) or not _TOKEN.fullmatch(name):
                raise ConfigurationError(
                    f"CORSMiddleware(expose_headers=[{name!r}]): not a header name"
                )
            exposed.setdefault(name.lower(), name)  # once each, whatever the case
        self.expose = ", ".join(exposed.values()).encode("latin-1")
        self.preflight_common = [
            (b"access-control-allow-methods", ", ".join(sorted(self.methods)).encode("latin-1")),
            (b"access-control-max-age", str(max_age).encode("ascii")),
            (b"vary", b"Origin"),
        ]
        if allow_credentials:
            self.preflight_common.append((b"access-control-allow-credentials", b"true"))
        self._simple: dict[bytes, list[tuple[bytes, bytes]]] = {}  # origin -> its headers

    def allowed(self, origin: str) -> bool:
        """Whether ``origin`` may make cross-origin requests."""
        if self.any_origin or origin in self.origins:
            return True
        return bool(self.origin_regex and self.origin_regex.fullmatch(origin))

    def stage_hooks(self) -> Hooks:
        """Arrive: a preflight answered, or the origin checked; start: the CORS headers."""
        return Hooks(
            arrive=self.arrive,
            start=self.start,
            reads=_CORS_REQUEST_HEADERS,
            fields=("cors_headers",),
        )

    def arrive(self, ex: Any) -> Awaitable[bool] | None:
        """Answer a preflight; find the CORS headers of a request from an allowed origin."""
        found = ex.found
        ex.cors_headers = None
        origins = found.get(b"origin")
        if origins is None:
            return None
        origin_raw = origins[-1]
        methods = found.get(b"access-control-request-method")
        if methods is not None and ex.scope["method"] == "OPTIONS":
            asked = found.get(b"access-control-request-headers")
            return self._preflight(
                ex.send, origin_raw.decode("latin-1"), methods[-1], asked[-1] if asked else None
            )
        headers = self._simple.get(origin_raw)
        if headers is None:
            headers = self._simple_headers(origin_raw)
        ex.cors_headers = headers
        return None

    def start(self, ex: Any, headers: list[tuple[bytes, bytes]]) -> None:
        """Add the CORS headers of an allowed origin."""
        extra = ex.cors_headers
        if extra:
            headers.extend(extra)

    def _simple_headers(self, origin_raw: bytes) -> list[tuple[bytes, bytes]]:
        """The CORS headers for a request (not a preflight) from ``origin_raw``.

        Empty when the origin is not allowed (the browser then blocks the response). Kept
        per origin while fewer than 1,024 are kept and for origins up to 256 bytes: the
        distinct ``Origin`` values a client sends cannot grow the table without bound.
        """
        headers: list[tuple[bytes, bytes]] = []
        if self.allowed(origin_raw.decode("latin-1")):
            allow = b"*" if self.any_origin and not self.credentials else origin_raw
            headers = [(b"access-control-allow-origin", allow), (b"vary", b"Origin")]
            if self.credentials:
                headers.append((b"access-control-allow-credentials", b"true"))
            if self.expose:
                headers.append((b"access-control-expose-headers", self.expose))
        if len(self._simple) < _CORS_CACHE_MAX and len(origin_raw) <= _CORS_KEY_MAX:
            self._simple[origin_raw] = headers
        return headers

    async def _preflight(
        self, send: Send, origin: str, method: bytes, headers: bytes | None
    ) -> bool:
        problems = []
        allowed_origin = self.allowed(origin)
        if not allowed_origin:
            problems.append(f"origin {_shown(origin)} is not allowed")
        asked_method = method.decode("latin-1").upper()
        if asked_method not in self.methods:
            allowed = f" (allowed: {', '.join(sorted(self.methods))})" if allowed_origin else ""
            problems.append(f"method {_shown(asked_method)} is not allowed{allowed}")
        asked = [h.strip().lower() for h in (headers or b"").decode("latin-1").split(",")]
        asked = [h for h in asked if h]
        refused = [] if self.allow_all_headers else [h for h in asked if h not in self.headers]
        if refused:
            names = ", ".join(_shown(h) for h in refused[:5])
            if len(refused) > 5:
                names += f" and {len(refused) - 5} more"
            allowed = ""
            if allowed_origin:
                allowed = f" (allowed: {', '.join(sorted(self.headers)) or 'none'})"
            noun = "header" if len(refused) == 1 else "headers"
            verb = "is" if len(refused) == 1 else "are"
            problems.append(f"{noun} {names} {verb} not allowed{allowed}")
        if problems:
            await send_problem(
                send,
                ErrorCode.FORBIDDEN,
                detail=f"CORS preflight refused: {'; '.join(problems)}",
            )
            return True
        allow_origin = b"*" if self.any_origin and not self.credentials else origin.encode()
        response = [
            (b"access-control-allow-origin", allow_origin),
            *self.preflight_common,
            (b"content-length", b"0"),
        ]
        if asked:
            response.append((b"access-control-allow-headers", ", ".join(asked).encode()))
        await send({"type": "http.response.start", "status": 204, "headers": response})
        await send({"type": "http.response.body", "body": b""})
        return True


def _shown(text: str) -> str:
    """A client's value quoted for a message, cut at 100 characters."""
    return repr(text if len(text) <= 100 else text[:100] + "...")
