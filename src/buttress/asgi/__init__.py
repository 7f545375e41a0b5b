"""Inbound hardening for any ASGI application (and WSGI ones, through a2wsgi).

``app = harden(app)`` adds, outermost first: request ids and W3C trace context, a JSON
access log, Prometheus metrics, security headers, CORS, graceful shutdown, problem+json
errors, health/live/ready endpoints, rate limits, adaptive load shedding, body size limits,
a request deadline and ``Idempotency-Key`` handling. This module holds what a service
calls; the parts live in named modules:

* `buttress.asgi.middleware`: each feature as a middleware of its own;
* `buttress.asgi.health`: the health checks (``harden(app, checks=[PostgresCheck(...)])``);
* `buttress.asgi.keys`: rate-limit keys (``Limit(..., key=api_key())``);
* `buttress.asgi.context`: the request's id, trace context, scope and client address;
* `buttress.asgi.shedding`, `buttress.asgi.security`, `buttress.asgi.metrics`,
  `buttress.asgi.problems`, `buttress.asgi.idempotency`: the rest, by feature.

Example::

    from fastapi import FastAPI
    from buttress.asgi import HardenSettings, harden

    app = harden(FastAPI(), HardenSettings(cors_origins=("https://shop.example.com",)))
"""

from buttress._startup import SettingsWarning
from buttress.asgi import (
    context,
    health,
    idempotency,
    keys,
    metrics,
    middleware,
    problems,
    quotas,
    security,
    shedding,
)
from buttress.asgi._context import current_request_id
from buttress.asgi._harden import HardenedApp, HardenedParts, HardenSettings, harden
from buttress.asgi._logging import configure_logging, redact
from buttress.asgi._ratelimit_rules import Limit, RateLimitRule

__all__ = [
    "HardenSettings",
    "HardenedApp",
    "HardenedParts",
    "Limit",
    "RateLimitRule",
    "SettingsWarning",
    "configure_logging",
    "context",
    "current_request_id",
    "harden",
    "health",
    "idempotency",
    "keys",
    "metrics",
    "middleware",
    "problems",
    "quotas",
    "redact",
    "security",
    "shedding",
]
