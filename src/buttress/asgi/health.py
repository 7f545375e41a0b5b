"""Health checks for ``/health/ready`` and ``/health``: pass them to `harden` as ``checks=``.

Each check is a `Check` (an async callable returning a `CheckResult`); the built-in ones
are `BaseCheck` subclasses with a name, a timeout and a ``critical`` flag (a failing
non-critical check warns, it does not take the instance out of the load balancer).

Example::

    from buttress.asgi import harden
    from buttress.asgi.health import PostgresCheck, RedisCheck

    app = harden(app, checks=[PostgresCheck(DATABASE_URL), RedisCheck(REDIS_URL)])
"""

from buttress.asgi._health import HEALTH_CONTENT_TYPE
from buttress.asgi._health_checks import (
    BaseCheck,
    BreakersCheck,
    CallableCheck,
    Check,
    CheckResult,
    DiskCheck,
    HttpCheck,
    MemoryCheck,
    PostgresCheck,
    RedisCheck,
    SQLiteCheck,
)

__all__ = [
    "HEALTH_CONTENT_TYPE",
    "BaseCheck",
    "BreakersCheck",
    "CallableCheck",
    "Check",
    "CheckResult",
    "DiskCheck",
    "HttpCheck",
    "MemoryCheck",
    "PostgresCheck",
    "RedisCheck",
    "SQLiteCheck",
]
