"""``buttress backup run``: dump, describe, store, then apply retention.

Example::

    from buttress.backup import open_destination, run_backup

    entry = run_backup("postgresql://app@127.0.0.1/orders", open_destination("/backups"))
    print(entry.id, entry.manifest.size, entry.manifest.sha256)
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from buttress import __version__
from buttress.backup._destination import BackupEntry, Destination
from buttress.backup._engines import dump_postgres, dump_sqlite, sqlite_path
from buttress.backup._errors import BackupError, display_dsn
from buttress.backup._manifest import Manifest, new_backup_id
from buttress.backup._scratch import signal_guard
from buttress.backup._time import SYSTEM_WALL_CLOCK, WallClock

__all__ = ["run_backup"]

_log = logging.getLogger("buttress.backup")


def run_backup(
    source: str,
    destination: Destination,
    *,
    recipients: Sequence[Any] = (),
    compress: int | None = None,
    timeout: float | None = None,
    clock: WallClock = SYSTEM_WALL_CLOCK,
) -> BackupEntry:
    """Back ``source`` up into ``destination``; returns the new `BackupEntry`.

    Args:
        source: a PostgreSQL DSN, or a SQLite file (``sqlite:///path`` or a path).
        destination: where to store it (`open_destination`).
        recipients: age recipients to encrypt to (`parse_recipients`); none: plain.
        compress: pg_dump's ``--compress`` level (0-9); None: pg_dump's default.
        timeout: seconds the dump may take (PostgreSQL).
        clock: the wall clock that dates the backup.

    Raises:
        BackupError: a step failed (``store``: the destination could not be written, a
            full disk or a read-only directory); nothing is left in the destination.

    ``SIGTERM`` (in the main thread) stops it in order: ``pg_dump`` is killed and the
    partial backup removed before ``SystemExit(143)`` leaves; a second signal does not cut
    that short.
    """
    with signal_guard() as guard, guard.raising():  # SIGTERM: clean up, then exit 143
        try:
            entry = _take(source, destination, recipients, compress, timeout, clock)
        except OSError as exc:  # a full disk, a destination that became read-only
            where = f" ({exc.filename})" if exc.filename else ""
            raise BackupError(
                f"cannot write the backup to {destination.url}: {exc.strerror or exc}{where}",
                step="store",
            ) from None
    manifest = entry.manifest
    _log.info(
        "backup stored: %s in %s (%d bytes, %d tables, %.1f s)",
        entry.id, destination.url, manifest.size, len(manifest.tables),
        manifest.duration_seconds,
    )  # fmt: skip
    return entry


def _take(
    source: str,
    destination: Destination,
    recipients: Sequence[Any],
    compress: int | None,
    timeout: float | None,
    clock: WallClock,
) -> BackupEntry:
    """Dump ``source`` into a staging folder of ``destination`` and commit it."""
    started = time.perf_counter()
    suffix = secrets.token_hex(2)
    sqlite_file = sqlite_path(source)
    shown = str(sqlite_file) if sqlite_file is not None else display_dsn(source)
    database = sqlite_file.name if sqlite_file is not None else shown.rpartition("/")[2]
    stamp = dt.datetime.fromtimestamp(clock.now(), dt.UTC)
    staging_id = new_backup_id(stamp, database, suffix)
    with destination.staging(staging_id) as folder:
        if sqlite_file is not None:
            name = f"{_safe(database)}.sqlite3"
            dumped = dump_sqlite(
                sqlite_file, folder / _with_age(name, recipients), recipients=recipients,
                wall=clock.now,
            )  # fmt: skip
            engine, dump_format = "sqlite", "sqlite"
        else:
            name = f"{_safe(database)}.dump"
            dumped = dump_postgres(
                source, folder / _with_age(name, recipients), recipients=recipients,
                compress=compress, timeout=timeout, wall=clock.now,
            )  # fmt: skip
            engine, dump_format = "postgresql", "custom"
        staged = folder / _with_age(name, recipients)
        manifest = Manifest(
            id=new_backup_id(dumped.created_at, dumped.database, suffix),
            engine=engine,
            source=shown,
            database=dumped.database,
            created_at=dumped.created_at,
            duration_seconds=round(time.perf_counter() - started, 3),
            server_version=dumped.server_version,
            tool=dumped.tool,
            file=staged.name,
            size=dumped.copied.size,
            sha256=dumped.copied.sha256,
            dump_format=dump_format,
            compression=dumped.compression,
            encryption="age" if recipients else None,
            recipients=tuple(str(r) for r in recipients),
            plain_sha256=dumped.copied.plain_sha256 if recipients else None,
            tables=dumped.description.tables,
            schema_hash=dumped.description.schema_hash,
            table_schemas=dumped.description.table_schemas,
            buttress_version=__version__,
        )
        return destination.commit(staged, manifest)


def _with_age(name: str, recipients: Sequence[Any]) -> str:
    return f"{name}.age" if recipients else name


def _safe(name: str) -> str:
    import re  # noqa: PLC0415

    return re.sub(r"[^A-Za-z0-9_\-]+", "_", Path(name).stem if "." in name else name)[:60] or "db"
