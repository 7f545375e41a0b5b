"""`harden(app, settings)`: every inbound feature, composed as stages of one runner.

The stages, outermost first (each is also its own middleware class), and why this order:

1. `RequestContextMiddleware`: ids and trace context exist before anything can fail, and
   the id header reaches every response, 500s included;
2. `AccessLogMiddleware`, then `MetricsMiddleware` (``/metrics``; counts, latency, in
   flight): one line and one count per request with the final status, 500s and the
   answers of every stage below included;
3. `SecurityHeadersMiddleware`, `CORSMiddleware`: they decorate every answer below them,
   errors included (a preflight is answered by CORS itself);
4. `GracefulShutdown`: SIGTERM turns readiness 503 at once, serves on for the drain delay,
   lets in-flight requests finish, then runs close hooks; a request arriving while it
   drains gets ``Connection: close``, whoever answers it;
5. `ErrorMiddleware`: whatever escapes below becomes problem+json, which the stages above
   then log, count and decorate;
6. `HealthMiddleware`: ``/health/live``, ``/health/ready``, ``/health`` answered before
   any limit or deadline applies;
7. `RateLimitMiddleware` (when limits are configured): 429 quota-exceeded before an
   abusive client takes a shedding slot;
8. `LoadSheddingMiddleware`: a hard in-flight cap and an adaptive concurrency limit
   (Gradient2) answer 503 + ``Retry-After`` before the service tips over; its latency
   samples include the deadline's 504s;
9. `BodyLimitMiddleware`, then `DeadlineMiddleware`: cheap refusals before the handler,
   and the handler runs under the request deadline (the one stage "around" it);
10. `IdempotencyMiddleware`, innermost, as the handler the deadline runs: the deadline
    stops the client's wait, not a keyed handler that has started (it runs on, bounded by
    ``idempotency_abandon_after``, and its response is recorded for the retry); the stored
    response holds only the app's own headers (a replay gets fresh ids and headers).

`HardenedApp` runs them in one coroutine frame per request with one ``send`` wrapper (see
`buttress.asgi._runner`); each stage also wraps the next as a middleware, so
``hardened.stages[0]`` is the same features stacked as separate layers.

Rate limits and idempotency records live in one store (``store=``, else
``settings.store_url``, else ``$BUTTRESS_STORE_URL``, else memory), closed at shutdown.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from buttress.asgi._body_limit import BodyLimitMiddleware
from buttress.asgi._context import RequestContextMiddleware, current_trace, trusted_networks
from buttress.asgi._deadline import DeadlineMiddleware
from buttress.asgi._errors import ErrorMiddleware, install_exception_handlers
from buttress.asgi._headers import (
    SECURITY_PROFILES,
    CORSMiddleware,
    SecurityHeadersMiddleware,
    SecurityProfile,
)
from buttress.asgi._health import HealthMiddleware
from buttress.asgi._health_checks import Check
from buttress.asgi._idempotency import IdempotencyMiddleware, IdempotencyMode
from buttress.asgi._logging import AccessLogMiddleware, configure_logging
from buttress.asgi._metrics import HttpMetrics, MetricsMiddleware
from buttress.asgi._ratelimit import Limit, RateLimitMiddleware, RateLimitRule
from buttress.asgi._runner import Runner, Stage
from buttress.asgi._shedding import LoadSheddingMiddleware
from buttress.asgi._shutdown import GracefulShutdown
from buttress.asgi._types import ASGIApp, Scope
from buttress.asgi.keys import KeyFunc, api_key, client_ip, jwt_subject, tenant
from buttress.errors import ConfigurationError
from buttress.stores import STORES, Store, open_store

__all__ = ["HardenSettings", "HardenedApp", "HardenedParts", "harden"]


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


def _current_trace_id(scope: Scope) -> str | None:
    trace = current_trace()
    return None if trace is None else trace.trace_id


@dataclass(slots=True)
class HardenedParts:
    """The feature objects inside a hardened app, for the code that needs to reach them.

    Attributes:
        health: the `HealthMiddleware` (``mark_draining()``, ``checks``), or None.
        metrics: the `HttpMetrics` (``shed()``, ``limited()``, ``render()``), or None.
        shutdown: the `GracefulShutdown` (``add_close_hook()``, ``draining``), or None.
        shedding: the `LoadSheddingMiddleware` (``limiter.limit``, ``limiter.in_flight``).
        store: the shared `buttress.stores.Store` (rate limits, idempotency records).
        rate_limits: the `RateLimitMiddleware`, or None when no limit is configured.
        idempotency: the `IdempotencyMiddleware`, or None when switched off.
    """

    health: HealthMiddleware | None = None
    metrics: HttpMetrics | None = None
    shutdown: GracefulShutdown | None = None
    shedding: LoadSheddingMiddleware | None = None
    store: Store | None = None
    rate_limits: RateLimitMiddleware | None = None
    idempotency: IdempotencyMiddleware | None = None


class HardenedApp(Runner):
    """The app `harden` returns: a `Runner` of the stages, with ``parts`` to reach features.

    ``stages`` holds the stage objects, outermost first; each also wraps the next as a
    middleware, so ``stages[0]`` called as an app runs the same features stacked.
    """

    parts: HardenedParts


def harden(
    app: ASGIApp,
    settings: HardenSettings | None = None,
    *,
    checks: Sequence[Check] = (),
    registry: Any = None,
    store: Store | None = None,
    rate_limits: Sequence[RateLimitRule | Limit] = (),
    principal: Callable[[Scope], str | None] | None = None,
) -> HardenedApp:
    """Wrap any ASGI app (FastAPI, Starlette, bare) in buttress's inbound hardening.

    Call it once, before the first request; it is the outermost layer, so request ids,
    security headers, CORS and problem+json also reach responses to unhandled exceptions.
    For Starlette and FastAPI apps it also installs problem+json exception handlers (404,
    405, validation errors). ``checks`` are the health checks (`PostgresCheck`,
    `RedisCheck`...); ``registry`` is the Prometheus registry (default: the global one).
    ``store`` holds the state that processes share (default: opened from
    ``settings.store_url``, else ``$BUTTRESS_STORE_URL``, else in memory); ``rate_limits``
    are per-route `RateLimitRule` objects, added to the global ``settings.rate_limits``;
    ``principal`` names the caller for idempotency scoping (default: the authenticated
    ``scope["state"]["principal"]``, else a hash of the Authorization header).

    Example::

        from fastapi import FastAPI
        from buttress.asgi import harden

        app = FastAPI()
        app = harden(app)           # uvicorn main:app --no-proxy-headers
    """
    s = settings if settings is not None else HardenSettings.from_env()
    parts = HardenedParts()
    if s.configure_logging:
        configure_logging(json=s.log_json, level=s.log_level)
    install_exception_handlers(app)
    if s.metrics:  # built first: inner stages report to it (shedding counts its 503s)
        parts.metrics = HttpMetrics(
            registry=registry,
            exemplars=s.metrics_exemplars,
            trace_id=_current_trace_id,
        )
    rules = list(rate_limits)
    global_rule = s.rate_limit_rule()
    if global_rule is not None:
        rules.append(global_rule)
    if store is None and (rules or s.idempotency != "off" or s.idempotency_routes):
        store = open_store(s.store_url)  # the URL is None: $BUTTRESS_STORE_URL, else memory
    parts.store = store
    handler: ASGIApp = app
    if s.idempotency != "off" or s.idempotency_routes:
        parts.idempotency = IdempotencyMiddleware(
            app,
            store=store,
            routes=s.idempotency_routes,
            default=s.idempotency,
            ttl=s.idempotency_ttl,
            lease=s.idempotency_lease,
            abandon_after=s.idempotency_abandon_after,
            max_request_body=s.max_body_bytes if s.max_body_bytes is not None else 1 << 20,
            max_response_body=s.idempotency_max_response_bytes,
            store_server_errors=s.idempotency_store_server_errors,
            principal=principal,
        )
        handler = parts.idempotency
    # the stages, innermost first: each wraps the next (see HardenedApp)
    stages: list[Stage] = []

    def wrapped() -> ASGIApp:
        return stages[-1] if stages else handler

    if s.request_timeout is not None:
        stages.append(
            DeadlineMiddleware(
                wrapped(),
                timeout=s.request_timeout,
                header=s.timeout_header,
                exempt_paths=s.deadline_exempt_paths,
            )
        )
    if s.max_body_bytes is not None:
        stages.append(
            BodyLimitMiddleware(
                wrapped(), max_bytes=s.max_body_bytes, routes=dict(s.body_limit_routes) or None
            )
        )
    if s.shedding and (s.shed_max_in_flight is not None or s.shed_adaptive is not None):
        parts.shedding = LoadSheddingMiddleware(
            wrapped(),
            max_in_flight=s.shed_max_in_flight,
            adaptive=s.shed_adaptive,  # type: ignore[arg-type] # validated by the middleware
            retry_after=s.shed_retry_after,
            on_shed=parts.metrics.shed if parts.metrics is not None else None,
        )
        stages.append(parts.shedding)
    if rules:
        parts.rate_limits = RateLimitMiddleware(
            wrapped(),
            rules,
            store=store,
            fail_mode=s.rate_limit_fail_mode,
            legacy_headers=s.rate_limit_legacy_headers,
            warn_ratio=s.rate_limit_warn_ratio,
            trusted_proxies=s.trusted_proxies,
            store_timeout=s.rate_limit_store_timeout,
            on_limited=parts.metrics.limited if parts.metrics is not None else None,
        )
        stages.append(parts.rate_limits)
    if s.health:
        parts.health = HealthMiddleware(
            wrapped(),
            checks=checks,
            token=s.health_token,
            cache_ttl=s.health_cache_ttl,
            check_timeout=s.health_check_timeout,
            version=s.service_version,
        )
        stages.append(parts.health)
    stages.append(ErrorMiddleware(wrapped()))
    if s.graceful_shutdown:
        parts.shutdown = GracefulShutdown(
            wrapped(),
            drain_delay=s.drain_delay,
            grace=s.shutdown_grace,
            close_timeout=s.close_timeout,
        )
        if parts.health is not None:
            parts.shutdown.on_drain.append(parts.health.mark_draining)
        if store is not None:
            parts.shutdown.add_close_hook(store.aclose, name="buttress store")
        if parts.idempotency is not None:  # hooks run last-added first: before the store
            parts.shutdown.add_close_hook(
                parts.idempotency.adrain, name="idempotent handlers still running"
            )
        stages.append(parts.shutdown)
    if s.cors_origins or s.cors_origin_regex:
        stages.append(
            CORSMiddleware(
                wrapped(),
                allow_origins=s.cors_origins,
                allow_origin_regex=s.cors_origin_regex,
                allow_methods=s.cors_methods,
                allow_headers=s.cors_headers,
                allow_credentials=s.cors_credentials,
            )
        )
    if s.security_headers is not False:
        profile = "api" if s.security_headers is True else s.security_headers
        stages.append(
            SecurityHeadersMiddleware(
                wrapped(),
                headers=SECURITY_PROFILES[profile],
                csp_routes=s.csp_routes or None,
            )
        )
    if parts.metrics is not None:
        stages.append(
            MetricsMiddleware(
                wrapped(), metrics=parts.metrics, token=s.metrics_token, expose=s.metrics_expose
            )
        )
    if s.access_log:
        stages.append(AccessLogMiddleware(wrapped(), trusted_proxies=s.trusted_proxies))
    stages.append(RequestContextMiddleware(wrapped(), header=s.request_id_header))
    hardened = HardenedApp(stages[::-1], handler)
    hardened.parts = parts
    return hardened
