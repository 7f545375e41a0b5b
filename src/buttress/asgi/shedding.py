"""Load shedding's parts: the concurrency limiter and its adaptive limit algorithms.

`harden` sheds with ``shed_max_in_flight`` / ``shed_adaptive``; these are the pieces for
using the same limiter elsewhere (a worker, a queue consumer) or plugging in an algorithm.

Example::

    from buttress.asgi.shedding import ConcurrencyLimiter, GradientLimit

    limiter = ConcurrencyLimiter(GradientLimit(), max_in_flight=200)
    token = limiter.try_acquire(now=time.monotonic())
    if token is None:
        ...  # shed: answer 503 with Retry-After
    else:
        try:
            ...  # the work
        finally:
            token.release(time.monotonic())
"""

from buttress.asgi._concurrency import ConcurrencyLimiter, ConcurrencyToken, ShedReason
from buttress.asgi._limit_algorithms import AIMDLimit, GradientLimit, LimitAlgorithm

__all__ = [
    "AIMDLimit",
    "ConcurrencyLimiter",
    "ConcurrencyToken",
    "GradientLimit",
    "LimitAlgorithm",
    "ShedReason",
]
