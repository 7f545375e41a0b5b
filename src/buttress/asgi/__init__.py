"""Inbound hardening for any ASGI application: pure ASGI, no BaseHTTPMiddleware.

``app = harden(app)`` adds, outermost first: request ids and W3C trace context, a JSON
access log, Prometheus metrics, security headers, CORS, graceful shutdown, problem+json
errors, health/live/ready endpoints, adaptive load shedding, body size limits and a request
deadline. Each feature is also its own middleware class.

Example::

    from fastapi import FastAPI
    from buttress.asgi import HardenSettings, harden

    app = harden(FastAPI(), HardenSettings(cors_origins=("https://shop.example.com",)))
"""

from buttress.asgi import keys
from buttress.asgi._body_limit import BodyLimitMiddleware
from buttress.asgi._concurrency import (
    AIMDLimit,
    ConcurrencyLimiter,
    ConcurrencyToken,
    GradientLimit,
    LimitAlgorithm,
    ShedReason,
)
from buttress.asgi._context import (
    RequestContextMiddleware,
    TraceContext,
    client_address,
    current_request_id,
    current_trace,
    parse_traceparent,
    propagate_context,
    trusted_networks,
)
from buttress.asgi._deadline import DeadlineMiddleware
from buttress.asgi._errors import ErrorMiddleware, install_exception_handlers
from buttress.asgi._harden import HardenedApp, HardenedParts, HardenSettings, harden
from buttress.asgi._headers import (
    API_HEADERS,
    OWASP_HEADERS,
    SECURITY_PROFILES,
    CORSMiddleware,
    SecurityHeadersMiddleware,
    SecurityProfile,
)
from buttress.asgi._health import HEALTH_CONTENT_TYPE, HealthMiddleware
from buttress.asgi._health_checks import (
    BaseCheck,
    BreakersCheck,
    Check,
    CheckResult,
    DiskCheck,
    HttpCheck,
    MemoryCheck,
    PostgresCheck,
    RedisCheck,
    SQLiteCheck,
)
from buttress.asgi._idempotency import (
    IdempotencyMiddleware,
    IdempotencyMode,
    parse_idempotency_key,
)
from buttress.asgi._logging import AccessLogMiddleware, configure_logging, redact
from buttress.asgi._metrics import HttpMetrics, MetricsMiddleware, RequestMetrics
from buttress.asgi._problem import problem_body, send_problem
from buttress.asgi._ratelimit import Limit, RateLimitMiddleware, RateLimitRule
from buttress.asgi._shedding import LoadSheddingMiddleware
from buttress.asgi._shutdown import GracefulShutdown

__all__ = [
    "API_HEADERS",
    "HEALTH_CONTENT_TYPE",
    "OWASP_HEADERS",
    "SECURITY_PROFILES",
    "AIMDLimit",
    "AccessLogMiddleware",
    "BaseCheck",
    "BodyLimitMiddleware",
    "BreakersCheck",
    "CORSMiddleware",
    "Check",
    "CheckResult",
    "ConcurrencyLimiter",
    "ConcurrencyToken",
    "DeadlineMiddleware",
    "DiskCheck",
    "ErrorMiddleware",
    "GracefulShutdown",
    "GradientLimit",
    "HardenSettings",
    "HardenedApp",
    "HardenedParts",
    "HealthMiddleware",
    "HttpCheck",
    "HttpMetrics",
    "IdempotencyMiddleware",
    "IdempotencyMode",
    "Limit",
    "LimitAlgorithm",
    "LoadSheddingMiddleware",
    "MemoryCheck",
    "MetricsMiddleware",
    "PostgresCheck",
    "RateLimitMiddleware",
    "RateLimitRule",
    "RedisCheck",
    "RequestContextMiddleware",
    "RequestMetrics",
    "SQLiteCheck",
    "SecurityHeadersMiddleware",
    "SecurityProfile",
    "ShedReason",
    "TraceContext",
    "client_address",
    "configure_logging",
    "current_request_id",
    "current_trace",
    "harden",
    "install_exception_handlers",
    "keys",
    "parse_idempotency_key",
    "parse_traceparent",
    "problem_body",
    "propagate_context",
    "redact",
    "send_problem",
    "trusted_networks",
]
