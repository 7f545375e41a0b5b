"""`HardenSettings`: every setting of `harden`, validated; from code, ``BUTTRESS_*`` or both.

The text syntax of the variables (and of strings given to a pydantic-settings field) is in
`buttress.asgi._settings_env`. A ``BUTTRESS_*`` variable that nothing reads (a typo) is
reported by `from_env` with a `SettingsWarning` naming the closest real one.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from buttress._startup import SettingsWarning, configuration_boundary
from buttress.asgi._chaos import Fault, is_production
from buttress.asgi._context import trusted_networks
from buttress.asgi._errors import check_retry_after
from buttress.asgi._headers import BROWSER_HEADERS, SECURITY_PROFILES, SecurityProfile
from buttress.asgi._idempotency import IdempotencyMode
from buttress.asgi._quotas import check_plan_source, plan_rates
from buttress.asgi._ratelimit import Limit, RateLimitRule
from buttress.asgi._settings_env import parse_value, unknown_variables
from buttress.asgi.keys import KeyFunc, api_key, client_ip, jwt_subject, tenant
from buttress.errors import ConfigurationError
from buttress.stores import STORES

__all__ = ["HardenSettings", "SettingsWarning"]


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../buttress


@dataclass(frozen=True, slots=True, kw_only=True)
class HardenSettings:
    """Everything `harden` does, in one validated object (loadable from ``BUTTRESS_*``).

    Every feature can be switched off. Production defaults: 1 MiB bodies, 30 s request
    deadline, OWASP security headers, no CORS (same-origin only), no trusted proxies.

    A tuple setting also takes one string as a one-item tuple (``cors_origins=
    "https://shop.example.com"``); a string with a comma is refused (write the tuple).

    Example::

        settings = HardenSettings(cors_origins=("https://shop.example.com",),
                                  max_body_bytes=5 << 20)
        settings = HardenSettings.from_env()   # BUTTRESS_MAX_BODY_BYTES=5242880 ...

    Settings in code, with ``BUTTRESS_*`` overrides (a variable wins over ``base``)::

        BASE = HardenSettings(cors_origins=("https://shop.example.com",))
        app = harden(app, HardenSettings.from_env(base=BASE))

    As a field of a pydantic-settings class (strings use the ``BUTTRESS_*`` syntax; with
    ``nested_model_default_partial_update`` a variable overrides one setting of the
    default and keeps the others)::

        class AppSettings(BaseSettings):
            model_config = SettingsConfigDict(
                env_prefix="APP_", env_nested_delimiter="__",
                nested_model_default_partial_update=True)
            harden: HardenSettings = HardenSettings(max_body_bytes=5 << 20)

        # APP_HARDEN__CORS_ORIGINS=https://a.example,https://b.example
        app = harden(app, AppSettings().harden)
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
    cors_expose_headers: tuple[str, ...] = ()
    access_log: bool = True
    configure_logging: bool = True
    log_json: bool | None = None
    log_level: str = "INFO"
    log_events: bool = True  # with configure_logging: log retries, breakers, fallbacks
    process_errors: bool = True  # log uncaught thread, task and start-up exceptions
    tracing: bool | None = None  # OpenTelemetry server span: None = when OTel is active
    health: bool = True
    health_token: str | None = None
    health_cache_ttl: float = 2.0
    health_check_timeout: float = 1.0
    service_version: str | None = None
    health_live_paths: tuple[str, ...] = ("/health/live",)
    health_ready_paths: tuple[str, ...] = ("/health/ready",)
    health_report_paths: tuple[str, ...] = ("/health",)
    health_startup_paths: tuple[str, ...] = ("/health/startup",)
    metrics: bool = True
    metrics_token: str | None = None
    metrics_exemplars: bool = False
    metrics_detail: bool = False
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
    retry_after: Mapping[str, float] = field(default_factory=dict)
    environment: str = "production"
    chaos: bool = False
    chaos_faults: tuple[str, ...] = ()
    chaos_seed: int | None = None
    chaos_allow_production: bool = False
    store_url: str | None = None
    rate_limits: tuple[str, ...] = ()
    rate_limit_key: Literal["ip", "api_key", "jwt", "tenant"] = "ip"
    rate_limit_jwt_secret: str | None = field(default=None, repr=False)
    rate_limit_fail_mode: Literal["open", "closed"] = "open"
    rate_limit_legacy_headers: bool = False
    rate_limit_warn_ratio: float | None = 0.8
    rate_limit_store_timeout: float = 1.0
    rate_limit_plan: str = "state:plan"
    rate_limit_top_keys: int = 10
    audit_url: str | None = None
    audit_key: str | None = field(default=None, repr=False)
    audit_retention: float = 7776000.0
    idempotency: IdempotencyMode = "optional"
    idempotency_routes: Mapping[str, IdempotencyMode] = field(default_factory=dict)
    idempotency_ttl: float = 86400.0
    idempotency_lease: float = 60.0
    idempotency_abandon_after: float = 60.0
    idempotency_max_response_bytes: int = 1 << 20
    idempotency_store_server_errors: bool = False

    @configuration_boundary
    def __post_init__(self) -> None:
        self._coerce_collections()
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
        self._check_csp_routes()
        self._check_health_errors_chaos()
        if "*" in self.cors_origins and self.cors_credentials:
            raise ConfigurationError(
                "HardenSettings(cors_origins=('*',), cors_credentials=True): browsers refuse "
                "credentials with a wildcard origin; list the origins"
            )

    def _coerce_collections(self) -> None:
        """One string becomes a one-item tuple; lists become tuples; mappings are checked."""
        for f in fields(self):
            kind = str(f.type)
            value = getattr(self, f.name)
            if kind.startswith("tuple["):
                object.__setattr__(self, f.name, _as_tuple(f.name, value))
            elif kind.startswith("Mapping[") and not isinstance(value, Mapping):
                raise self._bad(f.name, "a mapping such as {'/path': ...}")

    def _check_health_errors_chaos(self) -> None:
        """Health paths, Retry-After overrides, the environment and chaos (issue 16)."""
        seen: dict[str, str] = {}
        for name in ("live", "ready", "report", "startup"):
            option = f"health_{name}_paths"
            for path in getattr(self, option):
                if not path.startswith("/") or any(c in path for c in "?# "):
                    raise self._bad(option, "paths starting with '/' (no query or spaces)")
                if path in seen:
                    raise self._bad(option, f"{path!r} is also in {seen[path]}")
                seen[path] = option
        check_retry_after("HardenSettings", self.retry_after)
        if not isinstance(self.environment, str) or not self.environment.strip():
            raise self._bad("environment", "a name such as production, staging or dev")
        self._number("chaos_seed", 0, integer=True, optional=True, allowed="an integer >= 0")
        for spec in self.chaos_faults:
            try:
                Fault.parse(spec)
            except ConfigurationError as exc:
                raise ConfigurationError(f"HardenSettings(chaos_faults=...): {exc}") from exc
        if self.chaos and is_production(self.environment) and not self.chaos_allow_production:
            raise ConfigurationError(
                f"HardenSettings(chaos=True): environment={self.environment!r} is production; "
                "set environment to where this runs (staging), or chaos_allow_production=True "
                "if you mean production"
            )

    def _check_csp_routes(self) -> None:
        for prefix, csp in self.csp_routes.items():
            if not isinstance(prefix, str) or not prefix.startswith("/"):
                raise ConfigurationError(
                    f"HardenSettings(csp_routes={{{prefix!r}: ...}}): a path prefix "
                    "starting with '/'"
                )
            if csp is not None and (not isinstance(csp, str) or "\n" in csp or "\r" in csp):
                raise ConfigurationError(
                    f"HardenSettings(csp_routes={{{prefix!r}: {csp!r}}}): a "
                    "Content-Security-Policy on one line, or None for no policy"
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
        check_plan_source(self.rate_limit_plan)
        self._number("rate_limit_top_keys", 0, 64, integer=True, allowed="an integer in [0, 64]")
        self._number("audit_retention", 0, low_open=True, allowed="seconds > 0")
        if self.audit_url is not None and not self.audit_key:
            raise ConfigurationError(
                "HardenSettings(audit_url=...): a durable audit log needs audit_key "
                "(BUTTRESS_AUDIT_KEY, 16+ bytes), or its subject ids change at every restart"
            )
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

    def cors_expose(self) -> tuple[str, ...]:
        """The response headers CORS lets browser code read.

        The request id header, ``RateLimit``, ``RateLimit-Policy``, ``Retry-After``,
        ``Idempotent-Replayed`` (the legacy ``X-RateLimit-*`` too when they are sent), then
        ``cors_expose_headers``.

        Example::

            HardenSettings(cors_expose_headers=("x-total-count",)).cors_expose()[-1]
            # 'x-total-count'
        """
        legacy: tuple[str, ...] = ()
        if self.rate_limit_legacy_headers:
            legacy = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
        return (self.request_id_header, *BROWSER_HEADERS, *legacy, *self.cors_expose_headers)

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
                limits.append(Limit(name.strip(), plan_rates(rate, self.rate_limit_plan), key=key))
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
    @configuration_boundary
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, base: HardenSettings | None = None
    ) -> HardenSettings:
        """Settings from ``BUTTRESS_<FIELD>`` variables, over ``base`` (default: the defaults).

        Lists are comma-separated (``BUTTRESS_CORS_ORIGINS=https://a.example,https://b.example``),
        mappings are ``KEY=VALUE`` items (``BUTTRESS_CSP_ROUTES=/docs=none``), switches
        ``true``/``false``, optional values ``none``. A bad value raises
        `ConfigurationError` naming the variable and what is allowed, so the service stops
        at start-up instead of running half-configured; a ``BUTTRESS_*`` variable that no
        setting reads (``BUTTRESS_REQUEST_TIMOUT``) gets a `SettingsWarning` naming the
        closest real one.

        Example::

            BASE = HardenSettings(cors_origins=("https://shop.example.com",))
            settings = HardenSettings.from_env(base=BASE)  # BUTTRESS_* override BASE
        """
        env = os.environ if environ is None else environ
        _warn_unknown(env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"BUTTRESS_{f.name.upper()}"
            raw = env.get(name)
            if raw is not None:
                values[f.name] = parse_value(f.name, str(f.type), raw, name)
        try:
            return cls(**values) if base is None else dataclasses.replace(base, **values)
        except ConfigurationError as exc:
            named = [f"BUTTRESS_{k.upper()}" for k in values if f"({k}=" in str(exc)]
            where = ", ".join(named) if named else "the BUTTRESS_* environment"
            if base is not None and not named:
                where = "the settings given as base"
            raise ConfigurationError(f"{exc} (set by {where})") from exc

    # ------------------------------------------------------------ pydantic integration
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """Let a pydantic model or pydantic-settings class have a ``HardenSettings`` field.

        It accepts a ``HardenSettings`` or a mapping of settings, whose strings follow the
        ``BUTTRESS_*`` syntax; it dumps to a dict of settings.
        """
        from pydantic_core import core_schema  # noqa: PLC0415 - only with pydantic

        return core_schema.no_info_plain_validator_function(
            cls._from_any,
            serialization=core_schema.plain_serializer_function_ser_schema(cls._as_dict),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        """An object of settings (the field names of `HardenSettings`)."""
        return {"type": "object", "title": cls.__name__, "description": "buttress settings"}

    @classmethod
    def _from_any(cls, value: Any) -> HardenSettings:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                f"HardenSettings: a HardenSettings or a mapping of settings, not {value!r}"
            )
        names = {f.name: str(f.type) for f in fields(cls)}
        values = {}
        for key, item in value.items():
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigurationError(f"HardenSettings: no setting named {key!r}{hint}")
            text = isinstance(item, str)
            values[key] = parse_value(key, names[key], item, key) if text else item
        return cls(**values)

    def _as_dict(self) -> dict[str, Any]:
        return {
            f.name: dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v
            for f in fields(self)
        }


def _as_tuple(name: str, value: Any) -> tuple[str, ...]:
    """A tuple setting's value: one string is a one-item tuple; a list is a tuple."""
    if isinstance(value, str):
        if "," in value:
            items = tuple(p.strip() for p in value.split(",") if p.strip())
            raise ConfigurationError(
                f"HardenSettings({name}={value!r}): one string is one item; for several, "
                f"give a tuple: {name}={items!r}"
            )
        return (value,)
    if isinstance(value, bytes | Mapping) or not hasattr(value, "__iter__"):
        raise ConfigurationError(
            f"HardenSettings({name}={value!r}): a tuple of strings, or one string"
        )
    items = tuple(value)
    if not all(isinstance(i, str) for i in items):
        raise ConfigurationError(f"HardenSettings({name}={value!r}): a tuple of strings")
    return items


def _warn_unknown(env: Mapping[str, str]) -> None:
    """A `SettingsWarning` per ``BUTTRESS_*`` variable that nothing reads, at the caller."""
    unknown = unknown_variables(env, (f.name for f in fields(HardenSettings)))
    if not unknown:
        return
    here = inspect.currentframe()
    level, frame = 2, here.f_back if here is not None else None  # stacklevel 2: our caller
    while (
        frame is not None
        and frame.f_back is not None
        and frame.f_code.co_filename.startswith(_PACKAGE)
    ):
        level, frame = level + 1, frame.f_back  # the first frame outside buttress
    for name, close in unknown:
        hint = f"; did you mean {close}?" if close else ""
        warnings.warn(
            f"{name} is not a buttress setting and is ignored{hint}",
            SettingsWarning,
            stacklevel=level,
        )
