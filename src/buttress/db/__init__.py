"""Deadlines that reach the database: PostgreSQL cancels what the caller stopped waiting for.

The deadline in force (the inbound request's, or any `buttress.deadline`) becomes the
``statement_timeout`` and ``lock_timeout`` of the statements run inside it, so a slow query
is cancelled *on the server* when its caller's time is up, instead of running on for a
client that has gone. Pool checkouts wait at most the time left too. A statement the
server cancels for the deadline raises `buttress.errors.DeadlineExceeded`
(``deadline_exceeded``, from the driver's ``QueryCanceled``), not a server fault.

* psycopg 3: `bounded` / `abounded` around a connection, `connection` / `aconnection`
  to check one out of a psycopg_pool;
* SQLAlchemy: `install_deadlines` on an ``Engine`` or ``AsyncEngine`` (event hooks: every
  statement gets the time left when it starts).

This package may import `buttress.errors`, `buttress.resilience` and the drivers (lazily,
behind the ``postgres`` and ``sqlalchemy`` extras); nothing in buttress imports it.

Example::

    from buttress import deadline
    from buttress.db import connection

    with deadline(1.0), connection(pool) as conn:
        conn.execute("SELECT pg_sleep(5)")     # cancelled by PostgreSQL at ~1 s
"""

from buttress.db._psycopg import abounded, aconnection, bounded, connection
from buttress.db._sqlalchemy import install_deadlines
from buttress.db._timeouts import MIN_TIMEOUT_MS, timeout_ms

__all__ = [
    "MIN_TIMEOUT_MS",
    "abounded",
    "aconnection",
    "bounded",
    "connection",
    "install_deadlines",
    "timeout_ms",
]
