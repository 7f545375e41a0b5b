"""`HardenSettings`: every setting of `harden`, validated, loadable from ``BUTTRESS_*``."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from buttress.asgi._context import trusted_networks
from buttress.asgi._headers import SECURITY_PROFILES, SecurityProfile
from buttress.asgi._idempotency import IdempotencyMode
from buttress.asgi._ratelimit import Limit, RateLimitRule
from buttress.asgi.keys import KeyFunc, api_key, client_ip, jwt_subject, tenant
from buttress.errors import ConfigurationError
from buttress.stores import STORES

__all__ = ["HardenSettings"]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, slots=True, kw_only=True)
class HardenSettings:
    """Everything `harden` does, in one validated object (loadable from ``BUTTRESS_*``).

    Every feature can be switched off. Production defaults: 1 MiB bodies, 30 s request
    deadline, OWASP security headers, no CORS (same-origin only), no trusted proxies.

    Example::

        settings = HardenSettings(cors_origins=("https://shop.example.com",),
                                  max_body_bytes=5 << 20)
        settings = HardenSettings.from_env()   # BUTTRESS_MAX_BODY_BYTES=5242880 ...
    """

    request_id_header: str = "x-request-id"
    trusted_proxies: tuple[str, ...] = ()
    security_headers: bool | SecurityProfile = "api"
    csp_routes: Mapping[str, str | None] = field(default_factory=dict)
    cors_origins: tuple[str, ...] = ()
    cors_origin_regex: str | None = None
    cors_methods: tuple[str, ...] = ("GET", "HEAD", "POST")
    cors_headers: tuple[str, ...] = ()
    cors_credentials: bool = False
    access_log: bool = True
    configure_logging: bool = True
    log_json: bool | None = None
    log_level: str = "INFO"
    health: bool = True
    health_token: str | None = None
    health_cache_ttl: float = 2.0
    health_check_timeout: float = 1.0
    service_version: str | None = None
    metrics: bool = True
    metrics_token: str | None = None
    metrics_exemplars: bool = False
    metrics_expose: Literal["loopback", "token", "public"] = "loopback"
    graceful_shutdown: bool = True
    drain_delay: float = 5.0
    shutdown_grace: float = 25.0
    close_timeout: float = 10.0
    shedding: bool = True
    shed_max_in_flight: int | None = None
    shed_adaptive: str | None = "gradient"
    shed_retry_after: float = 1.0
    max_body_bytes: int | None = 1 << 20
    body_limit_routes: Mapping[str, int] = field(default_factory=dict)
    request_timeout: float | None = 30.0
    timeout_header: str | None = "x-request-timeout"
    deadline_exempt_paths: tuple[str, ...] = ()
    store_url: str | None = None
    rate_limits: tuple[str, ...] = ()
    rate_limit_key: Literal["ip", "api_key", "jwt", "tenant"] = "ip"
    rate_limit_jwt_secret: str | None = field(default=None, repr=False)
    rate_limit_fail_mode: Literal["open", "closed"] = "open"
    rate_limit_legacy_headers: bool = False
    rate_limit_warn_ratio: float | None = 0.8
    rate_limit_store_timeout: float = 1.0
    idempotency: IdempotencyMode = "optional"
    idempotency_routes: Mapping[str, IdempotencyMode] = field(default_factory=dict)
    idempotency_ttl: float = 86400.0
    idempotency_lease: float = 60.0
    idempotency_abandon_after: float = 60.0
    idempotency_max_response_bytes: int = 1 << 20
    idempotency_store_server_errors: bool = False

    def __post_init__(self) -> None:
        trusted_networks(self.trusted_proxies)  # raises ConfigurationError on a bad CIDR
        if not isinstance(self.security_headers, bool) and (
            self.security_headers not in SECURITY_PROFILES
        ):
            raise ConfigurationError(
                f"HardenSettings(security_headers={self.security_headers!r}): 'api', 'full', "
                "True (api) or False (none)"
            )
        self._number("max_body_bytes", 0, integer=True, optional=True, allowed="bytes >= 0")
        for prefix, limit in self.body_limit_routes.items():
            if not isinstance(prefix, str) or not prefix.startswith("/"):
                raise ConfigurationError(
                    f"HardenSettings(body_limit_routes={{{prefix!r}: ...}}): a path prefix "
                    "starting with '/'"
                )
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ConfigurationError(
                    f"HardenSettings(body_limit_routes={{{prefix!r}: {limit!r}}}): bytes >= 0"
                )
        self._number("request_timeout", 0, 3600, low_open=True, optional=True)
        for name in ("drain_delay", "shutdown_grace", "close_timeout", "health_cache_ttl"):
            self._number(name, 0, 3600)
        self._number("health_check_timeout", 0, 60, low_open=True)
        self._number(
            "shed_max_in_flight", 1, integer=True, optional=True, allowed="an integer >= 1"
        )
        self._choice("shed_adaptive", (None, "gradient", "aimd"))
        self._choice("metrics_expose", ("loopback", "token", "public"))
        if self.log_level.upper() not in _LOG_LEVELS:
            raise self._bad("log_level", ", ".join(_LOG_LEVELS))
        self._check_shared_state()
        if "*" in self.cors_origins and self.cors_credentials:
            raise ConfigurationError(
                "HardenSettings(cors_origins=('*',), cors_credentials=True): browsers refuse "
                "credentials with a wildcard origin; list the origins"
            )

    def _check_shared_state(self) -> None:
        if self.store_url is not None:
            scheme = self.store_url.partition("://")[0].lower()
            if "://" not in self.store_url or scheme not in STORES:
                raise ConfigurationError(
                    f"HardenSettings(store_url={self.store_url!r}): a store URL such as "
                    "memory://, sqlite:///path.db, redis://host:6379/0 or "
                    "postgresql://user@host/db"
                )
        self._choice("rate_limit_key", ("ip", "api_key", "jwt", "tenant"))
        if self.rate_limit_key == "jwt" and not self.rate_limit_jwt_secret:
            raise ConfigurationError(
                "HardenSettings(rate_limit_key='jwt'): set rate_limit_jwt_secret (the HMAC "
                "key, >= 32 bytes) so that clients cannot choose their own key"
            )
        self._choice("rate_limit_fail_mode", ("open", "closed"))
        if self.rate_limits:
            self.rate_limit_rule()  # parses every "name=rate" item
        self._choice("idempotency", ("required", "optional", "off"))
        for name in ("idempotency_ttl", "idempotency_lease", "idempotency_abandon_after"):
            self._number(name, 0, low_open=True, allowed="seconds > 0")

    # ------------------------------------------------------------ validation helpers
    def _bad(self, name: str, allowed: str) -> ConfigurationError:
        return ConfigurationError(f"HardenSettings({name}={getattr(self, name)!r}): {allowed}")

    def _number(
        self,
        name: str,
        low: float,
        high: float = math.inf,
        *,
        low_open: bool = False,
        integer: bool = False,
        optional: bool = False,
        allowed: str | None = None,
    ) -> None:
        """Refuse a field that is not a number (an int if ``integer``) in its range."""
        value = getattr(self, name)
        if value is None and optional:
            return
        ok = (
            not isinstance(value, bool)
            and isinstance(value, int if integer else int | float)
            and (low < value if low_open else low <= value)
            and value <= high
        )
        if not ok:
            if allowed is None:
                allowed = f"seconds in {'(' if low_open else '['}{low:g}, {high:g}]"
            raise self._bad(name, allowed + (", or None" if optional else ""))

    def _choice(self, name: str, choices: tuple[str | None, ...]) -> None:
        """Refuse a field that is not one of ``choices``."""
        if getattr(self, name) not in choices:
            names = [str(c) for c in choices]
            raise self._bad(name, ", ".join(names[:-1]) + " or " + names[-1])

    def rate_limit_rule(self) -> RateLimitRule | None:
        """The global rule of ``rate_limits`` (``"name=rate"`` items), or None when empty.

        Example::

            HardenSettings(rate_limits=("burst=20/second", "daily=10000/day")).rate_limit_rule()
        """
        if not self.rate_limits:
            return None
        limits = []
        key = self._rate_limit_key()
        for item in self.rate_limits:
            name, sep, rate = item.partition("=")
            if not sep:
                raise ConfigurationError(
                    f"HardenSettings(rate_limits=...): {item!r} is not 'name=rate' (for "
                    "example 'burst=20/second' or 'daily=10000/day')"
                )
            try:
                limits.append(Limit(name.strip(), rate.strip(), key=key))
            except ConfigurationError as exc:
                raise ConfigurationError(f"HardenSettings(rate_limits=...): {exc}") from exc
        return RateLimitRule(limits)

    def _rate_limit_key(self) -> KeyFunc:
        # invalid credentials count against the client's address: behind a proxy, the
        # real client's, not the proxy's
        proxies = self.trusted_proxies
        if self.rate_limit_key == "api_key":
            return api_key(trusted_proxies=proxies)
        if self.rate_limit_key == "tenant":
            return tenant()
        if self.rate_limit_key == "jwt":
            return jwt_subject(secret=self.rate_limit_jwt_secret, trusted_proxies=proxies)
        return client_ip(proxies)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HardenSettings:
        """Settings from ``BUTTRESS_<FIELD>`` variables (lists comma-separated).

        A bad value raises `ConfigurationError` naming the variable and what is allowed,
        so the service stops at start-up instead of running half-configured.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"BUTTRESS_{f.name.upper()}"
            raw = env.get(name)
            if raw is None or f.name == "csp_routes":
                continue
            if f.name == "idempotency_routes":  # "POST /orders=required,/hooks/{x}=off"
                values[f.name] = _parse_routes(name, raw)
                continue
            if f.name == "body_limit_routes":  # "/uploads=52428800,/avatars=2097152"
                values[f.name] = _parse_sizes(name, raw)
                continue
            values[f.name] = _parse(name, raw.strip(), cls.__dataclass_fields__[f.name].type)
        try:
            return cls(**values)
        except ConfigurationError as exc:
            named = [f"BUTTRESS_{k.upper()}" for k in values if f"({k}=" in str(exc)]
            where = ", ".join(named) if named else "the BUTTRESS_* environment"
            raise ConfigurationError(f"{exc} (set by {where})") from exc


def _parse(name: str, raw: str, kind: Any) -> Any:
    text = str(kind)
    if "SecurityProfile" in text:  # a profile name, or a switch
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        if raw.lower() in SECURITY_PROFILES:
            return raw.lower()
        raise ConfigurationError(f"{name}={raw!r}: must be api, full, true or false")
    if "tuple" in text:
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if text.startswith("bool"):
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigurationError(f"{name}={raw!r}: must be true or false")
    if raw.lower() in {"", "none", "off"} and "None" in text:
        return None
    if text.startswith("int"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r}: must be a whole number") from None
    if text.startswith("float"):
        try:
            return float(raw)
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r}: must be a number of seconds") from None
    return raw


def _parse_sizes(name: str, raw: str) -> dict[str, int]:
    sizes = {}
    for item in filter(None, (i.strip() for i in raw.split(","))):
        prefix, sep, size = item.rpartition("=")
        if not sep or not size.strip().isdigit():
            raise ConfigurationError(
                f"{name}={raw!r}: comma-separated 'PREFIX=BYTES' items (for example "
                "'/uploads=52428800')"
            )
        sizes[prefix.strip()] = int(size)
    return sizes


def _parse_routes(name: str, raw: str) -> dict[str, str]:
    routes = {}
    for item in raw.split(","):
        route, sep, mode = item.strip().rpartition("=")
        if not item.strip():
            continue
        if not sep or mode.strip() not in ("required", "optional", "off"):
            raise ConfigurationError(
                f"{name}={raw!r}: comma-separated 'ROUTE=MODE' items, MODE one of required, "
                "optional, off (for example 'POST /orders=required')"
            )
        routes[route.strip()] = mode.strip()
    return routes
