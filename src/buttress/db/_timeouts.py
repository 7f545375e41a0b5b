"""The time left as PostgreSQL timeouts, and the driver's cancellation as a deadline error.

One place decides what ``statement_timeout`` a statement gets (`timeout_ms`), the SQL that
sets it (`SET_LOCAL_SQL`: ``set_config(..., true)``, gone when the transaction ends; the
``SAVE_AND_SET`` forms also return the values they replace, to be put back when the
setting would outlive the deadline), and when a driver error is the deadline's doing
(`deadline_error`).
"""

from __future__ import annotations

import math
from typing import Final

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import DeadlineExceeded, ErrorCode
from buttress.resilience import remaining

__all__ = [
    "MIN_TIMEOUT_MS",
    "SAVE_AND_SET_LOCAL_SQL",
    "SAVE_AND_SET_SESSION_SQL",
    "SET_LOCAL_SQL",
    "SET_SESSION_SQL",
    "deadline_error",
    "expired",
    "is_cancellation",
    "timeout_ms",
]

MIN_TIMEOUT_MS: Final = 1
"""The smallest timeout sent: PostgreSQL reads 0 as "no timeout"."""

# both timeouts in one round trip; psycopg's %s placeholders (SQLAlchemy's drivers too)
SET_LOCAL_SQL: Final = (
    "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)"
)
SET_SESSION_SQL: Final = (
    "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)"
)
# the same, returning first the values in force before (to put them back): PostgreSQL
# evaluates a select list from left to right
_SAVED = "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
SAVE_AND_SET_LOCAL_SQL: Final = (
    _SAVED + "set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)"
)
SAVE_AND_SET_SESSION_SQL: Final = (
    _SAVED + "set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)"
)
# the SQLSTATEs a timeout we set raises: query_canceled, lock_not_available
_CANCELLED: Final = frozenset({"57014", "55P03"})


def timeout_ms(clock: Clock = SYSTEM_CLOCK) -> int | None:
    """Milliseconds left before the deadline in force (at least 1), or None without one.

    Raises `DeadlineExceeded` when the deadline has already passed: a statement that
    cannot finish in time is not sent at all.

    Example::

        with deadline(2.0):
            timeout_ms()      # 2000 (or a little less)
    """
    left = remaining(clock)
    if left is None:
        return None
    if left <= 0:
        raise expired()
    return max(MIN_TIMEOUT_MS, math.floor(left * 1000.0))


def expired(cause: str = "before the statement was sent") -> DeadlineExceeded:
    """The error of a statement whose deadline ran out (``deadline_exceeded``)."""
    return DeadlineExceeded(f"the deadline passed {cause}", code=ErrorCode.DEADLINE_EXCEEDED)


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL cancelling a statement or a lock wait (a timeout)."""
    state = getattr(exc, "sqlstate", None)
    if state is None:  # SQLAlchemy's wrapper: the driver's error is .orig
        state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return state in _CANCELLED


def deadline_error(exc: BaseException, limit_ms: int) -> DeadlineExceeded:
    """``exc`` (a cancellation under a timeout we set) as `DeadlineExceeded`, chained."""
    error = expired(f"while the statement ran: PostgreSQL cancelled it after {limit_ms} ms")
    error.__cause__ = exc
    return error
