"""Every inbound feature as a middleware of its own, for composing a stack by hand.

`buttress.asgi.harden` composes all of them as stages of one runner (one frame and one
``send`` wrapper per request) and is what most services want; each class here is the same
stage run alone, so ``app = SecurityHeadersMiddleware(app)`` adds just that feature.
Outermost first, in the order `harden` uses:

Example::

    from buttress.asgi.middleware import RequestContextMiddleware, SecurityHeadersMiddleware

    app = SecurityHeadersMiddleware(app)
    app = RequestContextMiddleware(app)   # the outermost: ids reach every response
"""

from buttress.asgi._body_limit import BodyLimitMiddleware
from buttress.asgi._chaos import ChaosMiddleware
from buttress.asgi._context import RequestContextMiddleware
from buttress.asgi._deadline import DeadlineMiddleware
from buttress.asgi._errors import ErrorMiddleware
from buttress.asgi._headers import CORSMiddleware, SecurityHeadersMiddleware
from buttress.asgi._health import HealthMiddleware
from buttress.asgi._idempotency import IdempotencyMiddleware
from buttress.asgi._logging import AccessLogMiddleware
from buttress.asgi._metrics import MetricsMiddleware
from buttress.asgi._ratelimit import RateLimitMiddleware
from buttress.asgi._shedding import LoadSheddingMiddleware
from buttress.asgi._shutdown import GracefulShutdown

__all__ = [
    "AccessLogMiddleware",
    "BodyLimitMiddleware",
    "CORSMiddleware",
    "ChaosMiddleware",
    "DeadlineMiddleware",
    "ErrorMiddleware",
    "GracefulShutdown",
    "HealthMiddleware",
    "IdempotencyMiddleware",
    "LoadSheddingMiddleware",
    "MetricsMiddleware",
    "RateLimitMiddleware",
    "RequestContextMiddleware",
    "SecurityHeadersMiddleware",
]
