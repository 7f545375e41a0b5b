"""buttress: make a Python service production-grade.

The resilience core (`Pipeline` and its policies, `deadline`) is importable from here;
inbound hardening lives in `buttress.asgi`, outbound HTTP in `buttress.http`, the error
taxonomy in `buttress.errors`, the `Clock` protocol in `buttress.clock`, test helpers in
`buttress.testing`.

Example::

    from buttress import Pipeline, Timeout, Retry, CircuitBreaker

    pipe = Pipeline(Timeout(5.0), Retry(attempts=3), CircuitBreaker(name="inventory"))
    stock = pipe.call(inventory.get_stock, sku)
"""

from buttress.clock import Clock
from buttress.errors import (
    BackendError,
    BulkheadFull,
    ButtressError,
    CircuitOpen,
    ConfigurationError,
    DeadlineExceeded,
    ErrorCode,
    RateLimited,
    Rejected,
    classify,
)
from buttress.resilience import (
    Backoff,
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Hedge,
    Pipeline,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
    deadline,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "BackendError",
    "Backoff",
    "Bulkhead",
    "BulkheadFull",
    "ButtressError",
    "CircuitBreaker",
    "CircuitOpen",
    "Clock",
    "ConfigurationError",
    "DeadlineExceeded",
    "ErrorCode",
    "Fallback",
    "Hedge",
    "Pipeline",
    "RateLimited",
    "RateLimiter",
    "Rejected",
    "Retry",
    "RetryBudget",
    "Timeout",
    "__version__",
    "classify",
    "deadline",
]
