"""Key resolvers for inbound rate limits: who (or what) a request is counted against.

A resolver is any callable ``(scope) -> str | None``. The string is the key whose budget
the request spends; None means the limit does not apply to this request (an anonymous
request under a per-user limit, say). Resolvers never raise on client input: a missing
header is None, garbage is handled as documented per resolver. The middleware prefixes
each key with its limit's name, bounds its length and never logs it in clear (events
carry an HMAC of it).

Untrusted input, and what it means for a limit:

* `client_ip` only believes ``X-Forwarded-For`` hops added by *your* proxies. When the
  server itself rewrote the client address from such a header (uvicorn's default for
  loopback peers) and you listed no proxies, every such request counts against one key,
  ``ip:unknown`` (see `buttress.asgi.client_address`).
* `jwt_subject` verifies the token (HS256/384/512, ``exp``/``nbf``) before trusting its
  ``sub``: an unverified subject would let a client pick any key, spreading its traffic over
  fresh buckets or spending a victim's. An invalid token (forged, expired, ``alg: none``,
  malformed) never gets a key of its own per request: by default it is counted against the
  client's address (``on_invalid="client_ip"``), so a flood of junk tokens from one client
  shares one bucket.
* `api_key` cannot tell a real key from an invented one (that is the application's job):
  each well-formed key gets its own bucket, so pair it with a `client_ip` limit, which
  bounds what unauthenticated traffic can do. Malformed values follow ``on_invalid``.
* `header` and `tenant` trust whatever the client sends; use them behind a gateway that
  sets (and strips) the header, or prefer a verified identity (`principal`, `jwt_subject`).

Example::

    from buttress.asgi import Limit, RateLimitRule, keys

    RateLimitRule([
        Limit("per-key", "100/minute", key=keys.api_key()),
        Limit("per-org", "10000/day", key=keys.tenant("x-org-id")),
    ])
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, Literal

from buttress.asgi._context import client_address, found_client, trusted_networks
from buttress.asgi._logging import _state_principal
from buttress.asgi._types import Scope
from buttress.errors import ConfigurationError

__all__ = [
    "KeyFunc",
    "api_key",
    "client_ip",
    "header",
    "jwt_subject",
    "principal",
    "route",
    "tenant",
]

KeyFunc = Callable[[Scope], "str | None"]
"""A key resolver: the key a request is counted against, or None (the limit does not apply)."""

OnInvalid = Literal["client_ip", "shared", "skip"]
_ON_INVALID = ("client_ip", "shared", "skip")

#: the scope entry where `RateLimitMiddleware` puts the matched rule's path template
ROUTE_TEMPLATE_KEY = "buttress.route_template"

_MAX_TOKEN = 8192  # longer bearer tokens are invalid (servers cap headers near 8-16 KiB)
_MAX_API_KEY = 512
_B64URL = re.compile(rb"^[A-Za-z0-9_-]*$")
_HASHES: dict[str, Any] = {
    "HS256": hashlib.sha256,
    "HS384": hashlib.sha384,
    "HS512": hashlib.sha512,
}
_MIN_SECRET = 32  # RFC 7518 3.2: at least 256 bits


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def _visible_ascii(value: bytes, limit: int) -> bool:
    return 0 < len(value) <= limit and all(0x21 <= c <= 0x7E for c in value)


@lru_cache(maxsize=4096)
def _group_ipv6(address: str, prefix: int) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        if prefix < 128:
            return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
    return str(ip)


def _check_on_invalid(owner: str, on_invalid: str) -> None:
    if on_invalid not in _ON_INVALID:
        raise ConfigurationError(
            f"{owner}(on_invalid={on_invalid!r}): must be 'client_ip', 'shared' or 'skip'"
        )


def _check_header_name(owner: str, option: str, name: str) -> bytes:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ConfigurationError(f"{owner}({option}={name!r}): must be an HTTP header name")
    return name.lower().encode("ascii")


class _ClientIP:
    __slots__ = ("ipv6_prefix", "trusted", "walks")

    def __init__(self, trusted_proxies: Iterable[str], ipv6_prefix: int) -> None:
        if isinstance(trusted_proxies, str):
            trusted_proxies = (trusted_proxies,)
        self.trusted = trusted_networks(trusted_proxies)
        if (
            isinstance(ipv6_prefix, bool)
            or not isinstance(ipv6_prefix, int)
            or not 32 <= ipv6_prefix <= 128
        ):
            raise ConfigurationError(
                f"client_ip(ipv6_prefix={ipv6_prefix!r}): must be an integer in [32, 128]"
            )
        self.ipv6_prefix = ipv6_prefix
        self.walks: dict[tuple[str, bytes], str] = {}  # behind proxies: see resolve_client

    def address(self, scope: Scope) -> str | None:
        address = client_address(scope, self.trusted)
        if address is None:
            return None
        if ":" in address:
            return _group_ipv6(address, self.ipv6_prefix)
        return address

    def from_found(self, scope: Scope, found: dict[bytes, list[bytes]]) -> str | None:
        """The key from headers already scanned (`buttress.asgi._context.found_client`)."""
        address = found_client(scope, found, self.trusted, self.walks)
        if address is None:
            return None
        if ":" in address:
            address = _group_ipv6(address, self.ipv6_prefix)
        return "ip:" + address

    def __call__(self, scope: Scope) -> str | None:
        address = self.address(scope)
        return None if address is None else "ip:" + address

    def __repr__(self) -> str:
        return f"client_ip(trusted_proxies={tuple(map(str, self.trusted))!r})"


def client_ip(trusted_proxies: Iterable[str] = (), *, ipv6_prefix: int = 64) -> KeyFunc:
    """Key by the client's address, trusted-proxy aware (`buttress.asgi.client_address`).

    Behind your proxies (CIDRs in ``trusted_proxies``) the key is the right-most
    ``X-Forwarded-For`` hop that is not one of them; with none trusted it is the peer,
    whatever the headers say. A peer that is not an IP address, or one the server rewrote
    from a forwarding header while you trust no proxy, is ``ip:unknown``: one shared key,
    never a fresh one per forged address.
    IPv6 clients are grouped by their ``/64`` (one subscriber usually holds a whole /64 and
    could otherwise rotate addresses to dodge the limit); ``ipv6_prefix=128`` keys each
    address. None when the server gives no client address (a Unix socket).

    Example::

        Limit("per-ip", "100/minute", key=client_ip(["10.0.0.0/8"]))
    """
    return _ClientIP(trusted_proxies, ipv6_prefix)


class _Invalid:
    """What a resolver answers for an invalid credential."""

    __slots__ = ("ip", "kind", "mode")

    def __init__(self, kind: str, mode: str, trusted_proxies: Iterable[str]) -> None:
        self.kind = kind
        self.mode = mode
        self.ip = _ClientIP(trusted_proxies, 64)

    def __call__(self, scope: Scope) -> str | None:
        if self.mode == "skip":
            return None
        if self.mode == "client_ip":
            address = self.ip.address(scope)
            if address is not None:
                return f"{self.kind}:invalid:ip:{address}"
        return f"{self.kind}:invalid"


class _ApiKey:
    __slots__ = ("bearer", "header", "invalid")

    def __init__(
        self, header: str, bearer: bool, on_invalid: str, trusted_proxies: Iterable[str]
    ) -> None:
        self.header = _check_header_name("api_key", "header", header)
        _check_on_invalid("api_key", on_invalid)
        self.bearer = bool(bearer)
        self.invalid = _Invalid("apikey", on_invalid, trusted_proxies)

    def __call__(self, scope: Scope) -> str | None:
        value = _header(scope, self.header)
        if value is None and self.bearer:
            auth = _header(scope, b"authorization")
            if auth is not None and auth[:7].lower() == b"bearer ":
                value = auth[7:].strip()
        if value is None:
            return None
        if not _visible_ascii(value, _MAX_API_KEY):
            return self.invalid(scope)
        return "apikey:" + value.decode("ascii")

    def __repr__(self) -> str:
        return f"api_key(header={self.header.decode()!r}, bearer={self.bearer!r})"


def api_key(
    header: str = "x-api-key",
    *,
    bearer: bool = False,
    on_invalid: OnInvalid = "client_ip",
    trusted_proxies: Iterable[str] = (),
) -> KeyFunc:
    """Key by the API key in ``header`` (and, with ``bearer=True``, ``Authorization: Bearer``).

    A missing key is None (the limit does not apply: cover anonymous traffic with a
    `client_ip` limit). A malformed one (empty, over 512 bytes, not visible ASCII) is not a
    key of its own: ``on_invalid="client_ip"`` (default) counts it against the client's
    address, ``"shared"`` against one bucket for every malformed key, ``"skip"`` exempts it.
    Keys are not verified here; invented keys each get a bucket until your application
    refuses them, which is why a per-IP limit belongs next to a per-key one.

    Example::

        Limit("per-key", "1000/hour", key=api_key("x-api-key", bearer=True))
    """
    return _ApiKey(header, bearer, on_invalid, trusted_proxies)


class _Principal:
    __slots__ = ("resolver",)

    def __init__(self, resolver: Callable[[Scope], object] | None) -> None:
        if resolver is not None and not callable(resolver):
            raise ConfigurationError(f"principal(resolver={resolver!r}): must be callable")
        self.resolver = resolver

    def __call__(self, scope: Scope) -> str | None:
        value = _state_principal(scope) if self.resolver is None else self.resolver(scope)
        if value is None or value == "":
            return None
        return f"principal:{value}"

    def __repr__(self) -> str:
        return f"principal(resolver={self.resolver!r})"


def principal(resolver: Callable[[Scope], object] | None = None) -> KeyFunc:
    """Key by the authenticated principal (default ``scope["state"]["principal"]``).

    The authentication layer must run *outside* the rate-limit middleware for the state to
    be set; None (the limit does not apply) when there is no principal.

    Example::

        Limit("per-user", "100/minute", key=principal())
        Limit("per-org", "5000/minute", key=principal(lambda s: s["state"]["user"].org_id))
    """
    return _Principal(resolver)


class _Header:
    __slots__ = ("name", "prefix")

    def __init__(self, name: str) -> None:
        self.name = _check_header_name("header", "name", name)
        self.prefix = f"header:{self.name.decode()}:"

    def __call__(self, scope: Scope) -> str | None:
        value = _header(scope, self.name)
        if not value:
            return None
        return self.prefix + value.decode("latin-1")

    def __repr__(self) -> str:
        return f"header({self.name.decode()!r})"


def header(name: str) -> KeyFunc:
    """Key by the value of request header ``name`` (None when absent or empty).

    The client chooses the value: use it only for headers your gateway sets and strips.

    Example::

        Limit("per-device", "10/second", key=header("x-device-id"))
    """
    return _Header(name)


class _Tenant:
    __slots__ = ("header", "state_key")

    def __init__(self, header: str | None, state_key: str | None) -> None:
        self.header = None if header is None else _check_header_name("tenant", "header", header)
        if header is None and state_key is None:
            raise ConfigurationError("tenant(header=None, state_key=None): nothing to read")
        self.state_key = state_key

    def __call__(self, scope: Scope) -> str | None:
        if self.state_key is not None:
            state = scope.get("state")
            if isinstance(state, dict):
                value = state.get(self.state_key)
                if value is not None and value != "":
                    return f"tenant:{value}"
        if self.header is not None:
            raw = _header(scope, self.header)
            if raw:
                return "tenant:" + raw.decode("latin-1")
        return None

    def __repr__(self) -> str:
        name = None if self.header is None else self.header.decode()
        return f"tenant(header={name!r}, state_key={self.state_key!r})"


def tenant(header: str | None = "x-tenant-id", *, state_key: str | None = "tenant") -> KeyFunc:
    """Key by tenant: ``scope["state"][state_key]`` when authentication set it, else the header.

    The header is client-chosen (see the module notes); prefer the state, which your
    authentication sets from a verified identity.

    Example::

        RateLimitRule([Limit("per-org", "5000/minute", key=tenant())])
    """
    return _Tenant(header, state_key)


class _Route:
    __slots__ = ()

    def __call__(self, scope: Scope) -> str | None:
        matched = scope.get("route")
        template = getattr(matched, "path_format", None) if matched is not None else None
        if not isinstance(template, str):
            template = scope.get(ROUTE_TEMPLATE_KEY) or scope.get("path")
        return None if template is None else f"route:{template}"

    def __repr__(self) -> str:
        return "route()"


def route() -> KeyFunc:
    """One key per route, shared by every client (a global budget for an endpoint).

    The route is the framework's template when routing already ran, else the template of
    the rule that matched (``"/orders/{id}"``), else the raw path.

    Example::

        RateLimitRule([Limit("export", "10/minute", key=route())], path="/exports/{id}")
    """
    return _Route()


# ---------------------------------------------------------------- JWT
class _InvalidTokenError(ValueError):
    """A bearer token failed verification (resolvers then answer per ``on_invalid``)."""


def _b64url(part: bytes) -> bytes:
    if not _B64URL.match(part):
        raise _InvalidTokenError("not base64url")
    try:
        return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _InvalidTokenError("bad base64url") from exc


def _json_object(part: bytes) -> dict[str, Any]:
    value = json.loads(_b64url(part))
    if not isinstance(value, dict):
        raise _InvalidTokenError("not a JSON object")
    return value


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _JWTSubject:
    __slots__ = (
        "algorithms",
        "audience",
        "cache",
        "claim",
        "header",
        "invalid",
        "issuer",
        "leeway",
        "secret",
        "verify",
        "wall_clock",
    )

    def __init__(
        self,
        secret: str | bytes | None,
        algorithms: Iterable[str],
        leeway: float,
        header: str,
        audience: str | None,
        issuer: str | None,
        claim: str,
        verify: bool,
        on_invalid: str,
        trusted_proxies: Iterable[str],
        wall_clock: Callable[[], float],
    ) -> None:
        owner = "jwt_subject"
        algs = (algorithms,) if isinstance(algorithms, str) else tuple(algorithms)
        unknown = [a for a in algs if a not in _HASHES]
        if not algs or unknown:
            raise ConfigurationError(
                f"{owner}(algorithms={algorithms!r}): only HS256, HS384 and HS512 are "
                "supported (never 'none'; verify RS/ES tokens at your gateway and pass "
                "verify=False)"
            )
        self.algorithms = frozenset(algs)
        self.verify = bool(verify)
        if self.verify:
            if secret is None:
                raise ConfigurationError(
                    f"{owner}(secret=None): a secret is needed to verify tokens (or "
                    "verify=False when a gateway already verified them)"
                )
            raw = secret.encode("utf-8") if isinstance(secret, str) else secret
            if not isinstance(raw, bytes) or len(raw) < _MIN_SECRET:
                raise ConfigurationError(
                    f"{owner}(secret=...): must be at least {_MIN_SECRET} bytes (RFC 7518 "
                    "3.2: an HMAC key as long as the hash output)"
                )
            self.secret: bytes = raw
        else:
            if secret is not None:
                raise ConfigurationError(
                    f"{owner}(verify=False): a secret was given but would not be used"
                )
            self.secret = b""
        if (
            isinstance(leeway, bool)
            or not isinstance(leeway, int | float)
            or not 0 <= leeway <= 600
        ):
            raise ConfigurationError(f"{owner}(leeway={leeway!r}): seconds in [0, 600]")
        self.leeway = float(leeway)
        self.header = _check_header_name(owner, "header", header)
        self.audience = audience
        self.issuer = issuer
        if not isinstance(claim, str) or not claim:
            raise ConfigurationError(f"{owner}(claim={claim!r}): must be a claim name")
        self.claim = claim
        _check_on_invalid(owner, on_invalid)
        self.invalid = _Invalid("jwt", on_invalid, trusted_proxies)
        if not callable(wall_clock):
            raise ConfigurationError(f"{owner}(wall_clock={wall_clock!r}): must be callable")
        self.wall_clock = wall_clock
        # verified tokens -> (subject, exp, nbf); a hit skips the HMAC and JSON work
        self.cache: dict[bytes, tuple[str, float, float]] = {}

    def token(self, scope: Scope) -> bytes | None:
        value = _header(scope, self.header)
        if value is None:
            return None
        value = value.strip()
        if value[:7].lower() == b"bearer ":
            return value[7:].strip()
        if self.header == b"authorization":
            return b""  # another scheme (Basic...): not a token
        return value

    def decode(self, token: bytes) -> tuple[str, float, float]:
        """(subject, exp, nbf) of a token whose signature and claims are valid."""
        if not token or len(token) > _MAX_TOKEN:
            raise _InvalidTokenError("empty or oversized")
        parts = token.split(b".")
        if len(parts) != 3:
            raise _InvalidTokenError("not a compact JWS")
        head = _json_object(parts[0])
        alg = head.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise _InvalidTokenError("algorithm not allowed")
        if "crit" in head:
            raise _InvalidTokenError("critical extensions are not supported")
        if self.verify:
            expected = hmac.new(self.secret, parts[0] + b"." + parts[1], _HASHES[alg]).digest()
            if not hmac.compare_digest(expected, _b64url(parts[2])):
                raise _InvalidTokenError("bad signature")
        claims = _json_object(parts[1])
        subject = claims.get(self.claim)
        if isinstance(subject, int) and not isinstance(subject, bool):
            subject = str(subject)
        if not isinstance(subject, str) or not subject or len(subject) > 1024:
            raise _InvalidTokenError("no subject")
        exp = claims.get("exp", float("inf"))
        nbf = claims.get("nbf", float("-inf"))
        if not _number(exp) or not _number(nbf):
            raise _InvalidTokenError("exp and nbf must be numbers")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise _InvalidTokenError("wrong issuer")
        if self.audience is not None:
            aud = claims.get("aud")
            audiences = aud if isinstance(aud, list) else [aud]
            if self.audience not in audiences:
                raise _InvalidTokenError("wrong audience")
        return subject, float(exp), float(nbf)

    def __call__(self, scope: Scope) -> str | None:
        token = self.token(scope)
        if token is None:
            return None
        found = self.cache.get(token)
        if found is None:
            try:
                found = self.decode(token)
            # buttress: ignore[BTR303] any malformed token (JSON depth, unicode...) is invalid
            except Exception:
                return self.invalid(scope)
            cache = self.cache
            if len(cache) >= 1024:
                cache.clear()
            cache[token] = found
        subject, exp, nbf = found
        now = self.wall_clock()
        if now > exp + self.leeway or now < nbf - self.leeway:
            return self.invalid(scope)
        return "jwt:" + subject

    def __repr__(self) -> str:
        return f"jwt_subject(algorithms={sorted(self.algorithms)!r}, verify={self.verify!r})"


def jwt_subject(
    secret: str | bytes | None = None,
    *,
    algorithms: Iterable[str] = ("HS256",),
    leeway: float = 30.0,
    header: str = "authorization",
    audience: str | None = None,
    issuer: str | None = None,
    claim: str = "sub",
    verify: bool = True,
    on_invalid: OnInvalid = "client_ip",
    trusted_proxies: Iterable[str] = (),
    wall_clock: Callable[[], float] = time.time,
) -> KeyFunc:
    """Key by the verified subject (``sub``) of a bearer JWT.

    The token (``Authorization: Bearer ...``, or the raw value of another ``header``) is
    verified with the standard library: an HMAC signature with one of ``algorithms``
    (HS256, HS384, HS512; ``none`` and anything else are refused), ``exp`` and ``nbf`` within
    ``leeway`` seconds, and ``iss``/``aud`` when given. No token: None (the limit does not
    apply). An invalid one follows ``on_invalid``: ``"client_ip"`` (default) counts it
    against the client's address, ``"shared"`` against one bucket for all invalid tokens,
    ``"skip"`` exempts it. Never a fresh key per request.

    ``verify=False`` skips the signature check (``exp``/``nbf`` are still checked): only for
    services behind a gateway that already verified the token, since otherwise a client
    could write any ``sub`` and pick its own bucket.

    Example::

        Limit("per-user", "100/minute", key=jwt_subject(os.environ["JWT_SECRET"]))
        Limit("per-user", "100/minute", key=jwt_subject(verify=False))  # gateway verified
    """
    return _JWTSubject(
        secret,
        algorithms,
        leeway,
        header,
        audience,
        issuer,
        claim,
        verify,
        on_invalid,
        trusted_proxies,
        wall_clock,
    )
