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
7. `RateLimitMiddleware` (when limits are configured): 429 rate-limited before an
   abusive client takes a shedding slot; with it `TopKeysView` (``/health/ratelimit``,
   the noisy neighbours, behind the health token);
8. `LoadSheddingMiddleware`: a hard in-flight cap and an adaptive concurrency limit
   (Gradient2) answer 503 + ``Retry-After`` before the service tips over; its latency
   samples include the deadline's 504s;
   then `ChaosMiddleware` (only when ``chaos_faults`` are set): injected faults reach
   the handler's side only, after health, limits and shedding have seen the request;
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

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from buttress import process_errors, telemetry
from buttress._startup import configuration_boundary, require_modules
from buttress.asgi._body_limit import BodyLimitMiddleware
from buttress.asgi._chaos import ChaosMiddleware
from buttress.asgi._context import RequestContextMiddleware, current_trace
from buttress.asgi._deadline import DeadlineMiddleware
from buttress.asgi._errors import ErrorMiddleware, install_exception_handlers
from buttress.asgi._headers import (
    SECURITY_PROFILES,
    CORSMiddleware,
    SecurityHeadersMiddleware,
    framework_docs_paths,
)
from buttress.asgi._health import HealthMiddleware
from buttress.asgi._health_checks import Check
from buttress.asgi._heavy_hitters import NoisyNeighbours
from buttress.asgi._idempotency import IdempotencyMiddleware
from buttress.asgi._logging import AccessLogMiddleware, configure_logging
from buttress.asgi._metrics import HttpMetrics, MetricsMiddleware
from buttress.asgi._noisy import mount_top_keys
from buttress.asgi._openapi import document_answers
from buttress.asgi._ratelimit import Limit, RateLimitMiddleware, RateLimitRule
from buttress.asgi._runner import Runner, Stage
from buttress.asgi._settings import HardenSettings
from buttress.asgi._shedding import LoadSheddingMiddleware
from buttress.asgi._shutdown import GracefulShutdown
from buttress.asgi._types import ASGIApp, Scope
from buttress.asgi._wsgi import asgi_app
from buttress.auditlog import AuditLog, configure_audit_log
from buttress.stores import Store, metered, open_store

__all__ = ["HardenSettings", "HardenedApp", "HardenedParts", "harden"]


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
        chaos: the `ChaosMiddleware` (``enable()``, ``disable()``, ``apply_settings()``),
            or None when no fault is configured.
    """

    health: HealthMiddleware | None = None
    metrics: HttpMetrics | None = None
    shutdown: GracefulShutdown | None = None
    shedding: LoadSheddingMiddleware | None = None
    store: Store | None = None
    rate_limits: RateLimitMiddleware | None = None
    idempotency: IdempotencyMiddleware | None = None
    chaos: ChaosMiddleware | None = None


class HardenedApp(Runner):
    """The app `harden` returns: a `Runner` of the stages, with ``parts`` to reach features.

    ``stages`` holds the stage objects, outermost first; each also wraps the next as a
    middleware, so ``stages[0]`` called as an app runs the same features stacked.
    """

    parts: HardenedParts


@configuration_boundary  # a ConfigurationError while a server loads the app stops it
def _operator_paths(s: HardenSettings) -> tuple[str, ...]:
    """The paths probes and scrapers poll: never shed, counted, timed or logged per request."""
    paths = ["/metrics"]
    if s.health:
        for probe in (
            s.health_live_paths,
            s.health_ready_paths,
            s.health_report_paths,
            s.health_startup_paths,
        ):
            paths.extend(probe)
    return tuple(dict.fromkeys(paths))


def _meter_otel() -> None:
    """Give the call measurements to OpenTelemetry too, when an SDK MeterProvider is set."""
    if "opentelemetry.metrics" not in sys.modules:
        return
    from buttress import otel  # noqa: PLC0415 - only with OpenTelemetry

    if otel.metrics_configured() and not any(
        isinstance(m, otel.OtelMeter) for m in telemetry.meters()
    ):
        otel.enable_metrics()


def harden(
    app: ASGIApp,
    settings: HardenSettings | None = None,
    *,
    checks: Sequence[Check] = (),
    registry: Any = None,
    store: Store | None = None,
    rate_limits: Sequence[RateLimitRule | Limit] = (),
    principal: Callable[[Scope], str | None] | None = None,
    startup_checks: Sequence[Check | Callable[[], object]] = (),
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
    ``startup_checks`` (checks, or functions sync or async) gate ``/health/startup`` and
    readiness until they pass once (migrations applied, caches warm).

    Example::

        from fastapi import FastAPI
        from buttress.asgi import harden

        app = FastAPI()
        app = harden(app)           # uvicorn main:app --no-proxy-headers
    """
    app = asgi_app(app)  # a WSGI app (Flask, Django's WSGIHandler): through a2wsgi
    s = settings if settings is not None else HardenSettings.from_env()
    if s.configure_logging or s.access_log:  # named, not a bare ModuleNotFoundError
        require_modules("harden()", ("structlog",), "asgi")
    parts = HardenedParts()
    if s.configure_logging:
        configure_logging(
            json=s.log_json, level=s.log_level, access_log=s.access_log, events=s.log_events
        )
    if s.process_errors:  # threads and sys.excepthook now; the event loop at lifespan startup
        process_errors.install()
    install_exception_handlers(app)
    audit_log: AuditLog | None = None
    if s.audit_url is not None or s.audit_key is not None:  # refused without a key: settings
        audit_log = AuditLog(url=s.audit_url, key=s.audit_key, retention=s.audit_retention)
        configure_audit_log(audit_log)
    if s.metrics:  # built first: inner stages report to it (shedding counts its 503s)
        parts.metrics = HttpMetrics(
            registry=registry,
            exemplars=s.metrics_exemplars,
            trace_id=_current_trace_id,
            detail=s.metrics_detail,
        )
    rules = list(rate_limits)
    global_rule = s.rate_limit_rule()
    if global_rule is not None:
        rules.append(global_rule)
    if store is None and (rules or s.idempotency != "off" or s.idempotency_routes):
        store = open_store(s.store_url)  # the URL is None: $BUTTRESS_STORE_URL, else memory
    if s.metrics_detail:
        _meter_otel()
    if store is not None and s.metrics_detail:
        store = metered(store)  # every round trip timed (a memory store stays as it is)
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
    if s.max_body_bytes is not None or s.body_limit_routes:  # routes limit alone, too
        stages.append(
            BodyLimitMiddleware(
                wrapped(), max_bytes=s.max_body_bytes, routes=dict(s.body_limit_routes) or None
            )
        )
    if s.chaos or s.chaos_faults:  # inside health and the limits: probes never see it
        parts.chaos = ChaosMiddleware(
            wrapped(),
            faults=s.chaos_faults,
            enabled=s.chaos,
            seed=s.chaos_seed,
            environment=s.environment,
            allow_production=s.chaos_allow_production,
        )
        stages.append(parts.chaos)
    if s.shedding and (s.shed_max_in_flight is not None or s.shed_adaptive is not None):
        parts.shedding = LoadSheddingMiddleware(
            wrapped(),
            max_in_flight=s.shed_max_in_flight,
            adaptive=s.shed_adaptive,  # type: ignore[arg-type] # validated by the middleware
            retry_after=s.shed_retry_after,
            on_shed=parts.metrics.shed if parts.metrics is not None else None,
            exempt_paths=_operator_paths(s),
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
            top_keys=(
                NoisyNeighbours(top=s.rate_limit_top_keys) if s.rate_limit_top_keys else None
            ),
        )
        stages.append(parts.rate_limits)
        if parts.rate_limits.top_keys is not None:  # /health/ratelimit and the metric
            stages.append(
                mount_top_keys(
                    wrapped(),
                    parts.rate_limits.top_keys,
                    parts.rate_limits.key_hash,
                    parts.metrics,
                    s.health_token,
                )
            )
    if s.health:
        parts.health = HealthMiddleware(
            wrapped(),
            checks=checks,
            startup_checks=startup_checks,
            live_path=s.health_live_paths,
            ready_path=s.health_ready_paths,
            health_path=s.health_report_paths,
            startup_path=s.health_startup_paths,
            token=s.health_token,
            cache_ttl=s.health_cache_ttl,
            check_timeout=s.health_check_timeout,
            version=s.service_version,
        )
        stages.append(parts.health)
    stages.append(ErrorMiddleware(wrapped(), retry_after=s.retry_after))
    if s.graceful_shutdown:
        parts.shutdown = GracefulShutdown(
            wrapped(),
            drain_delay=s.drain_delay,
            grace=s.shutdown_grace,
            close_timeout=s.close_timeout,
        )
        if s.process_errors:  # the server's event loop exists from lifespan startup on
            parts.shutdown.on_startup.append(process_errors.install)
        if parts.health is not None:
            parts.shutdown.on_drain.append(parts.health.mark_draining)
        if store is not None:
            parts.shutdown.add_close_hook(store.aclose, name="buttress store")
        if audit_log is not None:  # flushed (within its timeout) after the handlers ended
            parts.shutdown.add_close_hook(audit_log.close, name="buttress audit log")
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
                expose_headers=s.cors_expose(),
            )
        )
    if s.security_headers is not False:
        profile = "api" if s.security_headers is True else s.security_headers
        stages.append(
            SecurityHeadersMiddleware(
                wrapped(),
                headers=SECURITY_PROFILES[profile],
                csp_routes=s.csp_routes or None,
                docs_paths=framework_docs_paths(app),  # FastAPI's /docs and /redoc work
            )
        )
    if parts.metrics is not None:
        stages.append(
            MetricsMiddleware(
                wrapped(),
                metrics=parts.metrics,
                token=s.metrics_token,
                expose=s.metrics_expose,
                exempt_paths=_operator_paths(s),
            )
        )
    if s.access_log:
        stages.append(
            AccessLogMiddleware(
                wrapped(), trusted_proxies=s.trusted_proxies, exclude_paths=_operator_paths(s)
            )
        )
    stages.append(
        RequestContextMiddleware(wrapped(), header=s.request_id_header, tracing=s.tracing)
    )
    document_answers(app, s, parts)  # FastAPI: buttress's answers in app.openapi()
    hardened = HardenedApp(stages[::-1], handler)
    hardened.parts = parts
    return hardened
