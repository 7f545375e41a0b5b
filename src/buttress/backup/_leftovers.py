"""Leftover scratch databases: found by their prefix, aged by their name, dropped on request.

`scratch_database` drops what it creates, also on Ctrl-C and ``SIGTERM``; only a
``SIGKILL`` (or a machine that dies) can leave one behind. `list_scratch` lists the
databases whose name starts with ``buttress_scratch_`` (nothing else is ever looked at),
with the time their name records and the sessions connected to them; `drop_scratch`
drops those older than a given age. A database with sessions is skipped unless
``force`` (a verification or rehearsal may still be running: a restore of a big database
can take hours, and ``pg_restore`` outlives a killed parent until it finishes).

Example::

    result = drop_scratch(admin_dsn, older_than=3600)
    print(result.dropped, result.skipped)
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from buttress.backup._errors import BackupError, redact
from buttress.backup._pgtools import password_of
from buttress.backup._scratch import SCRATCH_PREFIX
from buttress.backup._time import SYSTEM_WALL_CLOCK, WallClock, format_duration

__all__ = ["DropResult", "ScratchDatabase", "drop_scratch", "list_scratch"]

_NAME = re.compile(
    re.escape(SCRATCH_PREFIX) + r"(?P<label>[a-z0-9_]{1,20}?)(?:_(?P<time>\d{10}))?_[0-9a-f]{12}"
)
_LIST = r"""
SELECT d.datname,
       (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid)::int
FROM pg_database d
WHERE d.datname LIKE 'buttress\_scratch\_%%'
ORDER BY d.datname
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScratchDatabase:
    """One database named like a scratch database: when it was made, who is connected."""

    name: str
    label: str | None  # None: the prefix, but not the rest of the pattern
    created_at: dt.datetime | None  # None: a name without its time (an older buttress)
    connections: int

    def age(self, now: float) -> float | None:
        """Seconds since it was created (at Unix time ``now``); None when unknown."""
        if self.created_at is None:
            return None
        return max(now - self.created_at.timestamp(), 0.0)

    def describe(self, now: float) -> str:
        """One line for people: name, age, sessions."""
        age = self.age(now)
        when = "age unknown" if age is None else f"{format_duration(age)} old"
        return f"{self.name}  {when}  {self.connections} session(s)"


@dataclass(frozen=True, slots=True, kw_only=True)
class DropResult:
    """The scratch databases dropped and those left, each with the reason."""

    dropped: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]


def parse_scratch_name(name: str) -> tuple[str | None, dt.datetime | None]:
    """``(label, created_at)`` of a scratch database name (Nones where it does not say).

    Example::

        >>> parse_scratch_name("buttress_scratch_verify_1765000000_0123456789ab")
        ('verify', datetime.datetime(2025, 12, 6, 5, 46, 40, tzinfo=datetime.timezone.utc))
    """
    match = _NAME.fullmatch(name)
    if match is None:
        return None, None
    stamp = match.group("time")
    created = dt.datetime.fromtimestamp(int(stamp), dt.UTC) if stamp else None
    return match.group("label"), created


def _connect(admin_dsn: str) -> Any:
    import psycopg  # noqa: PLC0415 - the backup extra

    try:
        return psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise BackupError(
            "cannot connect to the PostgreSQL server: "
            f"{redact(str(exc), [password_of(admin_dsn)])}",
            step="scratch",
        ) from None


def _read(conn: Any) -> list[ScratchDatabase]:
    found = []
    for name, connections in conn.execute(_LIST).fetchall():
        if not name.startswith(SCRATCH_PREFIX):  # pragma: no cover - the LIKE says so
            continue
        label, created = parse_scratch_name(name)
        found.append(
            ScratchDatabase(name=name, label=label, created_at=created, connections=connections)
        )
    return found


def list_scratch(admin_dsn: str) -> list[ScratchDatabase]:
    """The databases on ``admin_dsn``'s server whose name starts with ``buttress_scratch_``.

    Example::

        for db in list_scratch("postgresql://postgres@127.0.0.1/postgres"):
            print(db.describe(time.time()))
    """
    with _connect(admin_dsn) as conn:
        return _read(conn)


def drop_scratch(
    admin_dsn: str,
    *,
    older_than: float,
    force: bool = False,
    label: str | None = None,
    clock: WallClock = SYSTEM_WALL_CLOCK,
) -> DropResult:
    """Drop the scratch databases created more than ``older_than`` seconds ago.

    Only names with the ``buttress_scratch_`` prefix and a recorded time are candidates
    (``label``: only that label's). One with sessions is skipped unless ``force``, which
    drops it ``WITH (FORCE)`` (its sessions are terminated).

    Example::

        drop_scratch(admin_dsn, older_than=3600, label="verify")
    """
    import psycopg  # noqa: PLC0415 - the backup extra
    from psycopg import sql  # noqa: PLC0415

    if older_than < 0:
        raise BackupError(f"older_than={older_than!r}: use 0 or more seconds", step="scratch")
    now = clock.now()
    dropped: list[str] = []
    skipped: list[tuple[str, str]] = []
    with _connect(admin_dsn) as conn:
        for db in _read(conn):
            if label is not None and db.label != label:
                continue
            age = db.age(now)
            if age is None:
                why = f"age unknown: if it is a leftover, DROP DATABASE {db.name} WITH (FORCE)"
                skipped.append((db.name, why))
                continue
            if age < older_than:
                continue
            if db.connections and not force:
                why = (
                    f"in use ({db.connections} session(s)): a verification or rehearsal may "
                    "still run; --force drops it anyway"
                )
                skipped.append((db.name, why))
                continue
            statement = sql.SQL("DROP DATABASE {}{}").format(
                sql.Identifier(db.name), sql.SQL(" WITH (FORCE)" if force else "")
            )
            try:
                conn.execute(statement)
            except psycopg.Error as exc:  # a session arrived, or no privilege
                first = redact(str(exc), [password_of(admin_dsn)]).splitlines()[0]
                skipped.append((db.name, f"not dropped: {first}"))
                continue
            dropped.append(db.name)
    return DropResult(dropped=tuple(dropped), skipped=tuple(skipped))
