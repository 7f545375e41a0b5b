"""SQLAlchemy: every statement run under a deadline gets the time left as its timeouts.

`install_deadlines(engine)` adds event hooks to an ``Engine`` (or an ``AsyncEngine``'s
``sync_engine``) on PostgreSQL:

* ``before_cursor_execute``: with a deadline in force, one more round trip first sets
  ``statement_timeout`` and ``lock_timeout`` to the milliseconds left *for this
  statement* (``set_config(..., true)``: local to the transaction SQLAlchemy has begun; on
  an ``AUTOCOMMIT`` connection, for the session). The first such statement also reads the
  values in force before, and the next statement that runs without a deadline on the
  connection first puts them back (one more round trip, once): a statement after the
  deadline's block, in the same transaction or session, does not inherit its timeout. A
  deadline already passed raises `DeadlineExceeded` before anything is sent. Without a
  deadline, and nothing to put back, it does nothing.
* ``commit`` / ``rollback`` (and the pool's ``reset``): values set local to a transaction
  are gone with it, so there is nothing left to put back.
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
    SAVE_AND_SET_LOCAL_SQL,
    SAVE_AND_SET_SESSION_SQL,
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
# conn.info: [statement_timeout, lock_timeout as they were before a deadline set them,
#             set for the session (AUTOCOMMIT), set local to the open transaction]
_SAVED: Final = "buttress_saved_timeouts"
_SLACK = 0.05
_installed: weakref.WeakSet[Any] = weakref.WeakSet()


def _autocommit(conn: Any) -> bool:
    dbapi = getattr(getattr(conn, "connection", None), "dbapi_connection", None)
    return bool(getattr(dbapi, "autocommit", False))


def _transaction_ended(info: dict[str, Any]) -> None:
    """A transaction ends: what it set locally is gone with it."""
    saved = info.get(_SAVED)
    if saved is not None:
        saved[3] = False
        if not saved[2]:
            del info[_SAVED]


class _Hooks:
    """The listeners, sharing the clock."""

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
        saved = info.get(_SAVED)
        if limit is None:
            info.pop(_LIMIT, None)
            if saved is not None:  # put back what the connection had before the deadline
                del info[_SAVED]
                values = (saved[0], saved[1])
                if saved[2]:
                    cursor.execute(SET_SESSION_SQL, values)
                if saved[3] and not _autocommit(conn):
                    cursor.execute(SET_LOCAL_SQL, values)
            return
        value = f"{limit}ms"
        session = _autocommit(conn)
        if saved is None:
            cursor.execute(
                SAVE_AND_SET_SESSION_SQL if session else SAVE_AND_SET_LOCAL_SQL, (value, value)
            )
            row = cursor.fetchone()
            info[_SAVED] = [row[0], row[1], session, not session]
        else:
            cursor.execute(SET_SESSION_SQL if session else SET_LOCAL_SQL, (value, value))
            saved[2 if session else 3] = True
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

    def ended(self, conn: Any) -> None:
        """``commit`` / ``rollback`` of a Connection."""
        _transaction_ended(conn.info)

    def reset(self, dbapi_connection: Any, record: Any, reset_state: Any) -> None:
        """The pool's reset on return (a rollback SQLAlchemy does without the events)."""
        _transaction_ended(record.info)


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
    event.listen(target, "commit", hooks.ended)
    event.listen(target, "rollback", hooks.ended)
    event.listen(target, "reset", hooks.reset)  # the pool's, kept across dispose()
    _installed.add(target)
