"""The two engines: ``pg_dump`` in an exported snapshot, SQLite's online backup API.

PostgreSQL: one connection opens a ``REPEATABLE READ, READ ONLY`` transaction and exports
its snapshot (``pg_export_snapshot()``); ``pg_dump --snapshot=...`` dumps exactly that
state while the same connection counts the rows and hashes the schema in it, at the same
time (the counting runs on the server while this process copies the dump). The dump is
custom format (``-Fc``), compressed by pg_dump: a single file that ``pg_restore`` can
restore in parallel (``--jobs``). Parallel *dumping* needs the directory format (many
files), so it is not used: one file streams to S3 and has one checksum, and on a small
machine the dump is bound by compression, which ``-Z`` tunes.

SQLite: ``sqlite3.Connection.backup`` copies every page in one step (a consistent
snapshot, readers and WAL writers not blocked), then the copy is described.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buttress.backup._catalog import Description, describe_postgres, describe_sqlite
from buttress.backup._errors import BackupError, redact
from buttress.backup._pgtools import password_of, tool_invocation, tool_path, tool_stderr
from buttress.backup._stream import Copied, copy_stream, sha256_file

__all__ = ["Dumped", "dump_postgres", "dump_sqlite", "sqlite_path"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Dumped:
    """What an engine wrote and read: the file, its hashes, the snapshot's description."""

    copied: Copied
    description: Description
    created_at: dt.datetime
    database: str
    server_version: str
    tool: str
    compression: str


def sqlite_path(source: str) -> Path | None:
    """The file a SQLite source names (``sqlite:///path`` or a path), None for PostgreSQL."""
    if source.startswith("sqlite:///"):
        return Path(source.removeprefix("sqlite:///").partition("?")[0])
    if source.startswith(("postgresql://", "postgres://")) or "=" in source:
        return None
    return Path(source)


def dump_postgres(
    dsn: str,
    target: Path,
    *,
    recipients: Sequence[Any] = (),
    compress: int | None = None,
    timeout: float | None = None,
    wall: Callable[[], float] = time.time,
) -> Dumped:
    """Dump ``dsn`` into the new file ``target`` (custom format) in an exported snapshot."""
    import psycopg  # noqa: PLC0415 - the backup extra

    secret = [password_of(dsn)]
    if compress is not None and not 0 <= compress <= 9:
        raise BackupError(f"--compress {compress}: use 0 (none) to 9", step="dump")
    try:
        conn = psycopg.connect(dsn, connect_timeout=10, autocommit=True)
    except psycopg.Error as exc:
        raise BackupError(f"cannot connect: {redact(str(exc), secret)}", step="connect") from None
    with conn, contextlib.ExitStack() as stack:
        stack.callback(_end, conn)  # read only: nothing to keep
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute(
                "SELECT pg_export_snapshot(), current_setting('server_version'), current_database()"
            ).fetchone()
            if row is None:  # pragma: no cover - a SELECT of constants returns a row
                raise BackupError("pg_export_snapshot() returned nothing", step="snapshot")
            snapshot, version, database = row
        except psycopg.Error as exc:
            raise BackupError(
                f"cannot export a snapshot: {redact(str(exc), secret)}", step="snapshot"
            ) from None
        created_at = dt.datetime.fromtimestamp(wall(), dt.UTC)
        target_dsn, env = tool_invocation(dsn)
        pg_dump = tool_path("pg_dump")
        args = [pg_dump, "--format=custom", f"--snapshot={snapshot}", f"--dbname={target_dsn}"]
        if compress is not None:
            args.append(f"--compress={compress}")
        errors = stack.enter_context(tempfile.TemporaryFile())
        proc = subprocess.Popen(  # noqa: S603 - pg_dump found on PATH
            args, env=env, stdout=subprocess.PIPE, stderr=errors
        )
        stack.callback(_reap, proc)
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1, "buttress-describe"))
        described = pool.submit(_describe_in_savepoint, conn)
        stack.push(_cancel_on_error(conn))  # first on the way out: the pool waits for it
        assert proc.stdout is not None  # noqa: S101 - stdout=PIPE
        copied = copy_stream(proc.stdout, target, recipients)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BackupError(f"pg_dump did not finish within {timeout:g} s", step="dump") from None
        if code != 0:
            errors.seek(0)
            raise BackupError(
                f"pg_dump exited {code}: {tool_stderr(errors.read(), secret)}", step="dump"
            )
        try:
            description = described.result()
        except psycopg.Error as exc:
            raise BackupError(
                f"cannot count rows in the snapshot: {redact(str(exc), secret)}", step="describe"
            ) from None
        tool = subprocess.run(  # noqa: S603 - pg_dump found on PATH
            [pg_dump, "--version"], capture_output=True, text=True, check=False, timeout=30
        ).stdout.strip()
    return Dumped(
        copied=copied,
        description=description,
        created_at=created_at,
        database=str(database),
        server_version=str(version),
        tool=tool,
        compression="pg_dump default (gzip)" if compress is None else f"gzip:{compress}",
    )


def _describe_in_savepoint(conn: Any) -> Description:
    """`describe_postgres` in a savepoint, which a failing query leaves.

    Without it a failing query would end the transaction that holds the snapshot pg_dump
    imports, and fail the dump too.
    """
    import psycopg  # noqa: PLC0415

    conn.execute("SAVEPOINT buttress_describe")
    try:
        description = describe_postgres(conn)
    except psycopg.Error:
        conn.execute("ROLLBACK TO SAVEPOINT buttress_describe")
        raise
    conn.execute("RELEASE SAVEPOINT buttress_describe")
    return description


def _cancel_on_error(conn: Any) -> Callable[..., bool]:
    """An exit callback cancelling the snapshot's count on an error or a signal.

    Counting a big database takes as long as reading it; without the cancel, a ``SIGTERM``
    would wait for it (the thread pool joins its thread) before ``pg_dump`` is stopped.
    """

    def on_exit(exc_type: type[BaseException] | None, *_: object) -> bool:
        if exc_type is not None:
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=5.0)
        return False

    return on_exit


def _end(conn: Any) -> None:
    """Roll the snapshot's transaction back (a broken connection is closed anyway)."""
    import psycopg  # noqa: PLC0415

    with contextlib.suppress(psycopg.Error):
        conn.execute("ROLLBACK")


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` if it still runs (an error or an interrupt on our side), then wait."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def dump_sqlite(
    source: Path,
    target: Path,
    *,
    recipients: Sequence[Any] = (),
    wall: Callable[[], float] = time.time,
) -> Dumped:
    """Copy the SQLite database ``source`` with the online backup API into ``target``."""
    if not source.is_file():
        raise BackupError(f"{source}: no such SQLite database", step="connect")
    copy = target if not recipients else target.with_name(target.name + ".plain")
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
        try:
            created_at = dt.datetime.fromtimestamp(wall(), dt.UTC)
            dst = sqlite3.connect(copy)
            try:
                src.backup(dst)
                description = describe_sqlite(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{source}: SQLite backup failed: {exc}", step="dump") from None
    if recipients:
        try:
            with open(copy, "rb") as plain:
                copied = copy_stream(plain, target, recipients)
        finally:
            copy.unlink(missing_ok=True)
    else:
        size, digest = sha256_file(copy)
        copied = Copied(size=size, sha256=digest, plain_sha256=digest)
    return Dumped(
        copied=copied,
        description=description,
        created_at=created_at,
        database=source.name,
        server_version=f"SQLite {sqlite3.sqlite_version}",
        tool=f"sqlite3 online backup API (SQLite {sqlite3.sqlite_version})",
        compression="none",
    )
