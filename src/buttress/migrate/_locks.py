"""What a migration locked, and for how long: ``pg_locks`` sampled from a second connection.

While the migration command runs, a `LockSampler` thread polls ``pg_locks`` joined with
``pg_stat_activity`` every ``interval`` seconds (10 ms in a rehearsal) over its own
connection, keeping the relation locks that any *other* session of the scratch database
holds or waits for. A `LockLedger` folds the samples into `LockHold` records: one per
session, relation and mode, from the first sample that saw it to the last. A hold is
therefore measured to within one interval, and a lock held for less than an interval may
be missed: the locks that matter (a table rewrite under ACCESS EXCLUSIVE) last longer.

The sampler reads only catalogs and ``pg_locks``: nothing it runs waits for a lock the
migration holds (``pg_relation_size`` would: relation sizes are read before the run,
`relation_sizes`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Final

from buttress.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "WRITE_BLOCKING",
    "LockHold",
    "LockLedger",
    "LockSample",
    "LockSampler",
    "RelationSize",
    "relation_sizes",
]

#: Lock modes that block INSERT, UPDATE and DELETE (ROW EXCLUSIVE) on the relation.
WRITE_BLOCKING: Final = frozenset(
    {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}
)

_SAMPLE_SQL: Final = """
SELECT l.pid, l.mode, l.granted, l.relation::bigint,
       coalesce(n.nspname || '.' || c.relname, l.relation::text), coalesce(c.relkind::text, '')
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
LEFT JOIN pg_class c ON c.oid = l.relation
LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE l.locktype = 'relation'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND a.datname = current_database()
  AND l.pid <> pg_backend_pid()
  AND coalesce(n.nspname, '') NOT IN ('pg_catalog', 'information_schema')
  AND coalesce(n.nspname, '') NOT LIKE 'pg\\_toast%'
"""

_SIZES_SQL: Final = """
SELECT c.oid::bigint, n.nspname || '.' || c.relname, c.reltuples::bigint,
       pg_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class RelationSize:
    """A table's size before the migration: estimated rows (None: never analysed), bytes."""

    name: str
    rows: int | None
    size_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LockSample:
    """One row of ``pg_locks``: a session's lock on a relation (held, or waited for)."""

    pid: int
    relation_oid: int
    relation: str  # schema.name, or the oid when the relation is not visible yet
    mode: str  # "AccessExclusiveLock"
    granted: bool
    kind: str = "r"  # pg_class.relkind: r table, i index, p partitioned, ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LockHold:
    """A lock one session held (or waited for) on one relation, from first to last sight."""

    pid: int
    relation_oid: int
    relation: str
    mode: str
    granted: bool
    kind: str
    first_seen: float
    last_seen: float
    rows: int | None = None  # the relation's rows before the run, when known
    size_bytes: int | None = None

    @property
    def seconds(self) -> float:
        """How long it was seen held: a lower bound, exact to within one sample interval."""
        return self.last_seen - self.first_seen

    @property
    def mode_name(self) -> str:
        """The mode as the SQL manual writes it: ``ACCESS EXCLUSIVE``."""
        words = []
        word = ""
        for char in self.mode.removesuffix("Lock"):
            if char.isupper() and word:
                words.append(word)
                word = ""
            word += char
        words.append(word)
        return " ".join(words).upper()

    @property
    def blocks_writes(self) -> bool:
        """True for SHARE and stronger modes (held, not waited for)."""
        return self.granted and self.mode in WRITE_BLOCKING


class LockLedger:
    """Folds samples taken at known times into `LockHold` records (no I/O, no clock).

    Example::

        ledger = LockLedger()
        ledger.observe(0.00, [LockSample(pid=7, relation_oid=1, relation="public.t",
                                         mode="AccessExclusiveLock", granted=True)])
        ledger.observe(0.02, [...same...])
        ledger.holds()[0].seconds   # 0.02
    """

    def __init__(self, sizes: dict[int, RelationSize] | None = None) -> None:
        self._sizes = sizes or {}
        self._holds: dict[tuple[int, int, str, bool], LockHold] = {}
        self.samples = 0

    def observe(self, at: float, rows: list[LockSample]) -> None:
        """Record the locks seen at time ``at`` (seconds, any monotonic scale)."""
        self.samples += 1
        for row in rows:
            key = (row.pid, row.relation_oid, row.mode, row.granted)
            seen = self._holds.get(key)
            if seen is None:
                size = self._sizes.get(row.relation_oid)
                self._holds[key] = LockHold(
                    pid=row.pid,
                    relation_oid=row.relation_oid,
                    relation=size.name if size else row.relation,
                    mode=row.mode,
                    granted=row.granted,
                    kind=row.kind,
                    first_seen=at,
                    last_seen=at,
                    rows=size.rows if size else None,
                    size_bytes=size.size_bytes if size else None,
                )
            else:
                relation = row.relation if seen.relation.isdigit() else seen.relation
                self._holds[key] = LockHold(
                    pid=seen.pid,
                    relation_oid=seen.relation_oid,
                    relation=relation,
                    mode=seen.mode,
                    granted=seen.granted,
                    kind=row.kind or seen.kind,
                    first_seen=seen.first_seen,
                    last_seen=at,
                    rows=seen.rows,
                    size_bytes=seen.size_bytes,
                )

    def holds(self) -> list[LockHold]:
        """Every hold seen, the longest first."""
        return sorted(self._holds.values(), key=lambda h: (-h.seconds, h.relation, h.mode))


def relation_sizes(conn: Any) -> dict[int, RelationSize]:
    """The tables of the database ``conn`` is connected to, by oid (a psycopg connection)."""
    sizes = {}
    for oid, name, rows, size in conn.execute(_SIZES_SQL).fetchall():
        sizes[int(oid)] = RelationSize(
            name=str(name), rows=int(rows) if rows is not None and rows >= 0 else None,
            size_bytes=int(size),
        )  # fmt: skip
    return sizes


class LockSampler:
    """A thread that samples the locks of every other session of the database at ``dsn``.

    Use it as a context manager around the migration; ``ledger`` holds what it saw. The
    sampler's own queries are bounded (``statement_timeout`` 2 s), and so is the sampling
    (``max_seconds``, an hour by default); a sampling error ends
    the sampling and is kept in ``error`` (the rehearsal reports it, it does not crash).

    Example::

        with LockSampler(scratch_dsn, sizes=sizes) as sampler:
            subprocess.run(command, ...)
        sampler.ledger.holds()
    """

    def __init__(
        self,
        dsn: str,
        *,
        sizes: dict[int, RelationSize] | None = None,
        interval: float = 0.02,
        max_seconds: float = 3600.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._dsn = dsn
        self._interval = interval
        self._max_seconds = max_seconds
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self.ledger = LockLedger(sizes)
        self.error: str | None = None

    def __enter__(self) -> LockSampler:
        import psycopg  # noqa: PLC0415 - the postgres extra

        self._conn = psycopg.connect(
            self._dsn,
            autocommit=True,
            connect_timeout=5,
            options="-c statement_timeout=2000",
            application_name="buttress-lock-sampler",
        )
        self._thread = threading.Thread(target=self._run, name="buttress-lock-sampler")
        self._thread.daemon = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        started = self._clock.now()
        try:
            while not self._stop.is_set() and self._clock.now() - started < self._max_seconds:
                rows = self._conn.execute(_SAMPLE_SQL).fetchall()
                self.ledger.observe(
                    self._clock.now(),
                    [
                        LockSample(
                            pid=int(pid),
                            mode=str(mode),
                            granted=bool(granted),
                            relation_oid=int(oid),
                            relation=str(name),
                            kind=str(kind),
                        )
                        for pid, mode, granted, oid, name, kind in rows
                    ],
                )
                self._stop.wait(self._interval)
        except Exception as exc:  # kept and reported: the rehearsal goes on
            self.error = f"{type(exc).__name__}: {exc}"
