"""SQLAlchemy: every statement run under a deadline gets the time left as its timeouts.

`install_deadlines(engine)` adds two event hooks to an ``Engine`` (or an ``AsyncEngine``'s
``sync_engine``) on PostgreSQL:

* ``before_cursor_execute``: with a deadline in force, one more round trip first sets
  ``statement_timeout`` and ``lock_timeout`` to the milliseconds left *for this
  statement* (``set_config(..., true)``: local to the transaction SQLAlchemy has begun; on
  an ``AUTOCOMMIT`` connection, for the session, and put back to the server's defaults
  before the next statement that runs without a deadline). A deadline already passed
  raises `DeadlineExceeded` before anything is sent. Without a deadline it does nothing.
* ``handle_error``: PostgreSQL cancelling the statement at that timeout is raised as
  `DeadlineExceeded` (``deadline_exceeded``, chained to the driver's ``QueryCanceled``),
  not as a server fault, and the connection is not invalidated: the rollback SQLAlchemy
  does anyway leaves it idle and healthy in the pool.

SQLAlchemy's own pool ``pool_timeout`` is fixed when the engine is created; under a
deadline shorter than it, a checkout may wait longer than the time left (the statement
then fails at once with `DeadlineExceeded`).
"""

from __future__ import annotations

import weakref
from typing import Any, Final

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.db._timeouts import (
    SET_LOCAL_SQL,
    SET_SESSION_SQL,
    deadline_error,
    is_cancellation,
    timeout_ms,
)
from buttress.errors import ConfigurationError
from buttress.resilience import remaining

__all__ = ["install_deadlines"]

_LIMIT: Final = "buttress_deadline_ms"  # conn.info: the timeout set for the running statement
_SESSION: Final = "buttress_session_timeouts"  # conn.info: session-level values to undo
_RESET_SQL: Final = (
    "SELECT set_config(name, reset_val, false) FROM pg_settings "
    "WHERE name IN ('statement_timeout', 'lock_timeout')"
)
_SLACK = 0.05
_installed: weakref.WeakSet[Any] = weakref.WeakSet()


def _autocommit(conn: Any) -> bool:
    dbapi = getattr(getattr(conn, "connection", None), "dbapi_connection", None)
    return bool(getattr(dbapi, "autocommit", False))


class _Hooks:
    """The two listeners, sharing the clock."""

    __slots__ = ("clock",)

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def before(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        info = conn.info
        limit = timeout_ms(self.clock)  # DeadlineExceeded when it has passed
        if limit is None:
            info.pop(_LIMIT, None)
            if info.pop(_SESSION, False):
                cursor.execute(_RESET_SQL)
            return
        value = f"{limit}ms"
        if _autocommit(conn):
            cursor.execute(SET_SESSION_SQL, (value, value))
            info[_SESSION] = True
        else:
            cursor.execute(SET_LOCAL_SQL, (value, value))
        info[_LIMIT] = limit

    def error(self, ctx: Any) -> BaseException | None:
        conn = ctx.connection
        limit = None if conn is None else conn.info.get(_LIMIT)
        original = ctx.original_exception
        if limit is None or not is_cancellation(original):
            return None
        left = remaining(self.clock)
        if left is not None and left > max(_SLACK, limit / 1000.0 * 0.05):
            return None  # cancelled for another reason (an operator, NOWAIT)
        ctx.is_disconnect = False  # a cancelled statement leaves a healthy connection
        return deadline_error(original, limit)


def install_deadlines(engine: Any, *, clock: Clock = SYSTEM_CLOCK) -> None:
    """Make statements on ``engine`` (``Engine`` or ``AsyncEngine``) follow the deadline.

    Installing twice on one engine does nothing more.

    Example::

        engine = create_engine("postgresql+psycopg://app@db/app")
        install_deadlines(engine)
        with deadline(1.0), engine.connect() as conn:
            conn.execute(text("SELECT pg_sleep(5)"))   # DeadlineExceeded at ~1 s
    """
    from sqlalchemy import event  # noqa: PLC0415 - only with the sqlalchemy extra

    target = getattr(engine, "sync_engine", engine)
    dialect = getattr(getattr(target, "dialect", None), "name", None)
    if dialect != "postgresql":
        raise ConfigurationError(
            f"install_deadlines(engine={engine!r}): a PostgreSQL engine "
            f"(postgresql+psycopg://...), not {dialect!r}"
        )
    if target in _installed:
        return
    hooks = _Hooks(clock)
    event.listen(target, "before_cursor_execute", hooks.before)
    event.listen(target, "handle_error", hooks.error)
    _installed.add(target)
