"""What the SQL stores (PostgreSQL, SQLite) share: scripts, their drivers' loop, the sweep.

An operation is a *script*: a generator that yields `Query` objects, receives each one's
rows, and returns the operation's result. Scripts are pure code (no I/O), so each
operation is written once; a store sends the queries with one sync driver (`drive`) and
one async driver (`adrive`)::

    def count(table: str) -> Script[int]:
        rows = yield Query(f"SELECT count(*) FROM {table}")
        return int(rows[0][0])

    drive(count("buttress_rate"), lambda q: conn.execute(q.sql, q.params).fetchall())

Expired rows are deleted by a bounded *sweep* (`Sweeper`): every ``every`` operations a
store examines the next ``batch`` rows of each table in primary-key order, from a cursor
that walks the namespace's key range (hashed keys spread evenly over it) and wraps
around, and deletes the expired ones among them. A sweep never scans a whole table, needs
no index on the expiry column (so rate-limit updates stay HOT in PostgreSQL), and only
touches its own namespace, whose clock it knows.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from buttress.errors import BackendError, ConfigurationError
from buttress.stores._base import Begin, BeginOutcome, StoredResponse

__all__ = [
    "TABLES",
    "Query",
    "Rows",
    "Script",
    "Sweeper",
    "Table",
    "adrive",
    "begin_outcome",
    "check_namespace",
    "check_version",
    "drive",
]

T = TypeVar("T")

Rows = list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Query:
    """One SQL statement and its parameters (the driver's placeholder style)."""

    sql: str
    params: Sequence[Any] | None = None


Script = Generator[Query, Rows, T]


def drive(script: Script[T], execute: Callable[[Query], Rows]) -> T:
    """Run ``script`` to its end, sending each query with ``execute`` (the sync driver)."""
    try:
        query = next(script)
        while True:
            query = script.send(execute(query))
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        script.close()


async def adrive(script: Script[T], execute: Callable[[Query], Awaitable[Rows]]) -> T:
    """Run ``script`` to its end, awaiting ``execute`` for each query (the async driver)."""
    try:
        query = next(script)
        while True:
            query = script.send(await execute(query))
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        script.close()


# ---------------------------------------------------------------- checks
_NAMESPACE_RE = re.compile(r"^[^{}\x00-\x1f]{1,100}$")


def check_namespace(store: str, namespace: str) -> str:
    """``namespace``, or `ConfigurationError` (1-100 characters, no braces or controls).

    Braces are refused so that a namespace's key range holds its own keys only.
    """
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
        raise ConfigurationError(
            f"{store} namespace must be 1-100 characters without '{{', '}}' or control "
            f"characters, got {namespace!r}"
        )
    return namespace


def check_version(store: str, found: int | None, known: int) -> None:
    """Refuse tables written by a newer buttress (`BackendError` naming both versions).

    ``known`` is the store's own schema version (each SQL store versions its tables and
    functions on its own).
    """
    if found is not None and found > known:
        raise BackendError(
            f"{store}: the tables are at schema version {found}, newer than this buttress "
            f"knows ({known}); upgrade buttress on this host (or use another "
            "schema or file for older versions)"
        )


def begin_outcome(
    stored: tuple[str, float, bytes | None] | None, fingerprint: str, now: float
) -> Begin | None:
    """The answer of ``begin`` for a live record, or None when the key is free to take.

    ``stored`` is ``(fingerprint, expires_at, response)``; a record is live while
    ``expires_at > now`` (a lease while in flight, the replay window once completed).
    """
    if stored is None or stored[1] <= now:
        return None
    stored_fingerprint, expires_at, response = stored
    if stored_fingerprint != fingerprint:
        return Begin(BeginOutcome.MISMATCH)
    if response is not None:
        return Begin(BeginOutcome.REPLAY, response=StoredResponse.decode(bytes(response)))
    return Begin(BeginOutcome.IN_FLIGHT, retry_after=expires_at - now)


# ---------------------------------------------------------------- sweeps
@dataclass(frozen=True, slots=True)
class Table:
    """A table the sweep walks: its name, key kind, primary key and expiry column."""

    name: str
    kind: str  # the `store_key` kind of the first key column
    keys: tuple[str, ...]  # the primary key, in index order
    expiry: str  # a row is dead once ``expiry <= now``

    def scan(self, placeholder: str, table: str) -> str:
        """``SELECT`` of the next batch after a cursor (params: cursor..., upper, limit)."""
        cols = ", ".join(self.keys)
        marks = ", ".join(placeholder for _ in self.keys)
        return (
            f"SELECT {cols}, {self.expiry} AS e FROM {table} "  # noqa: S608 - constant names
            f"WHERE ({cols}) > ({marks}) AND {self.keys[0]} < {placeholder} "
            f"ORDER BY {cols} LIMIT {placeholder}"
        )


TABLES = (
    Table("buttress_rate", "rl", ("key",), "tat"),
    Table("buttress_idempotency", "idem", ("key",), "expires_at"),
    Table("buttress_breaker", "br", ("name", "instance"), "expires_at"),
)


class Sweeper:
    """When to sweep, and where each table's walk stopped (one per store object).

    Args:
        namespace: the store's namespace (a sweep stays inside its key range).
        every: sweep after every ``every`` operations (0: never on the request path;
            call the store's ``sweep()`` yourself).
        batch: rows examined per table per sweep (the bound on a sweep's work).

    The cursors start at a random point of each range, so the processes of a fleet
    sweep different parts of it.
    """

    __slots__ = ("_count", "batch", "cursors", "every", "namespace")

    def __init__(self, namespace: str, every: int, batch: int) -> None:
        for name, value, low in (("sweep_every", every, 0), ("sweep_batch", batch, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigurationError(f"{name} must be an integer >= {low}, got {value!r}")
        self.namespace = namespace
        self.every = every
        self.batch = batch
        self._count = itertools.count(1)
        self.cursors = {
            t.name: (self.lower(t)[0] + "{" + secrets.token_hex(16), *self.lower(t)[1:])
            for t in TABLES
        }

    def due(self) -> bool:
        """Count one operation; True when it is time to sweep."""
        return self.every > 0 and next(self._count) % self.every == 0

    def lower(self, table: Table) -> tuple[str, ...]:
        """The cursor before the first key of ``table`` in this namespace."""
        return (f"{self.namespace}:{table.kind}:",) + ("",) * (len(table.keys) - 1)

    def upper(self, table: Table) -> str:
        """Above every first-key value of ``table`` in this namespace."""
        return f"{self.namespace}:{table.kind};"  # ';' follows ':'

    def params(self, table: Table) -> list[Any]:
        """The scan's parameters: the cursor, the upper bound, the batch size."""
        return [*self.cursors[table.name], self.upper(table), self.batch]

    def advance(self, table: Table, last: Sequence[str] | None, scanned: int) -> None:
        """Move ``table``'s cursor past the batch; back to the start after a short one."""
        if last is None or scanned < self.batch:
            self.cursors[table.name] = self.lower(table)
        else:
            self.cursors[table.name] = tuple(last)
