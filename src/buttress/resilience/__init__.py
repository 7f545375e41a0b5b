"""The resilience core: policies composed into pipelines, for threads and asyncio.

Nothing here needs more than the standard library.

Example::

    from buttress.resilience import Pipeline, Timeout, Retry, CircuitBreaker, Bulkhead

    pipe = Pipeline(Timeout(30.0), Retry(attempts=3), CircuitBreaker(), Timeout(10.0),
                    Bulkhead(max_concurrent=25))
    pipe.call(fetch, "https://example.invalid/")
"""

from buttress.resilience._backoff import Backoff
from buttress.resilience._breaker import BreakerSnapshot, CircuitBreaker, default_is_failure
from buttress.resilience._bulkhead import Bulkhead
from buttress.resilience._deadline import current_deadline, deadline, remaining
from buttress.resilience._fallback import Fallback
from buttress.resilience._fleet_breaker import FleetView, SharedBreakerState
from buttress.resilience._hedge import Hedge
from buttress.resilience._pipeline import Pipeline
from buttress.resilience._policy import AsyncLink, BuildContext, Passage, Policy, SyncLink
from buttress.resilience._ratelimit import RateDecision, RateLimiter
from buttress.resilience._registry import Registry, registry
from buttress.resilience._retry import Retry
from buttress.resilience._retry_budget import RetryBudget
from buttress.resilience._timeout import Timeout

__all__ = [
    "AsyncLink",
    "Backoff",
    "BreakerSnapshot",
    "BuildContext",
    "Bulkhead",
    "CircuitBreaker",
    "Fallback",
    "FleetView",
    "Hedge",
    "Passage",
    "Pipeline",
    "Policy",
    "RateDecision",
    "RateLimiter",
    "Registry",
    "Retry",
    "RetryBudget",
    "SharedBreakerState",
    "SyncLink",
    "Timeout",
    "current_deadline",
    "deadline",
    "default_is_failure",
    "registry",
    "remaining",
]
