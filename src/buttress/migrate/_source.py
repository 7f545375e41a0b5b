"""Where the rehearsal's copy comes from: a verified backup, or a ``pg_dump`` of staging.

`scratch_copy` creates a scratch database on the ``--scratch-dsn`` (through
`buttress.backup.scratch_database`: a new name, always dropped, never anything it did
not create) and fills it, either

- from a backup (``--from latest --backups DEST``): the newest *verified* backup of the
  destination (or the one named), restored with `buttress.backup.restore_backup`
  (decrypted with ``--identity`` when encrypted; its SHA-256 checked against the manifest
  while ``pg_restore`` reads it); production is not contacted at all, or
- from a database (``--scratch-from DSN``): ``pg_dump`` of it piped straight into
  ``pg_restore`` (nothing written to disk). ``pg_dump`` only reads, in one snapshot; use
  a staging or replica DSN, not the primary, if the dump's load matters.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from buttress.backup import (
    BackupError,
    display_dsn,
    open_destination,
    password_of,
    redact,
    restore_backup,
    tool_invocation,
    tool_path,
    tool_stderr,
)
from buttress.backup import scratch_database as _scratch_database
from buttress.clock import SYSTEM_CLOCK, Clock
from buttress.errors import BackendError
from buttress.migrate._rehearse import Rehearsal, RehearsalOptions, rehearse_on

__all__ = ["ScratchCopy", "copy_database", "rehearse", "scratch_copy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScratchCopy:
    """A scratch database holding the copy: its DSN, where it came from, how long it took."""

    dsn: str
    source: str
    restore_seconds: float


def copy_database(
    source: str, target: str, *, timeout: float | None = None, clock: Clock = SYSTEM_CLOCK
) -> float:
    """``pg_dump`` of ``source`` piped into ``pg_restore`` into ``target``; seconds taken.

    Raises `BackupError` (step ``copy``) quoting either tool's redacted stderr.

    Example::

        with scratch_database(admin_dsn, label="rehearse") as dsn:
            copy_database("postgresql://app@staging/orders", dsn, timeout=3600)
    """
    secrets = [password_of(source), password_of(target)]
    src, src_env = tool_invocation(source)
    dst, dst_env = tool_invocation(target)
    started = clock.now()
    with tempfile.TemporaryFile() as dump_err, tempfile.TemporaryFile() as restore_err:
        dump = subprocess.Popen(  # noqa: S603 - pg_dump found by tool_path
            [tool_path("pg_dump"), "--format=custom", "--compress=0", f"--dbname={src}"],
            env=src_env, stdout=subprocess.PIPE, stderr=dump_err, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            restore = subprocess.Popen(  # noqa: S603 - pg_restore found by tool_path
                [
                    tool_path("pg_restore"), "--exit-on-error", "--no-owner",
                    "--no-privileges", f"--dbname={dst}",
                ],
                env=dst_env, stdin=dump.stdout, stdout=subprocess.DEVNULL, stderr=restore_err,
            )  # fmt: skip
        except BaseException:
            dump.kill()
            dump.wait(timeout=30)
            raise
        assert dump.stdout is not None  # noqa: S101 - stdout=PIPE above
        dump.stdout.close()  # pg_restore holds the only reading end now
        try:
            restore.wait(timeout=timeout)
            dump.wait(timeout=30 if restore.returncode == 0 else 5)
        except BaseException as exc:  # the time limit, or Ctrl-C: stop both
            for proc in (dump, restore):
                proc.kill()
                proc.wait(timeout=30)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise BackupError(
                    f"copying {display_dsn(source)} did not finish within {timeout:g} s",
                    step="copy",
                ) from None
            raise
        for name, proc, err in (("pg_dump", dump, dump_err), ("pg_restore", restore, restore_err)):
            if proc.returncode != 0:
                err.seek(0)
                raise BackupError(
                    f"{name} exited {proc.returncode} copying {display_dsn(source)}: "
                    f"{tool_stderr(err.read(), secrets)}",
                    step="copy",
                )
    return clock.now() - started


@contextlib.contextmanager
def scratch_copy(
    scratch_server: str,
    *,
    scratch_from: str | None = None,
    backups: str | None = None,
    backup_id: str = "latest",
    identity: Path | None = None,
    jobs: int = 2,
    timeout: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Iterator[ScratchCopy]:
    """A scratch database on ``scratch_server`` filled from ``backups`` or ``scratch_from``.

    ``backup_id`` ``latest`` means the newest backup that passed a verification
    (``buttress backup verify``); ``latest-unverified`` the newest of all; else an id.
    The database is dropped on exit, whatever happens.

    Example::

        with scratch_copy(admin_dsn, backups="/var/backups/orders") as copy:
            rehearse_on(copy.dsn, options, source=copy.source)
    """
    if (scratch_from is None) == (backups is None):
        raise BackupError(
            "give the copy's origin: --from latest --backups DEST, or --scratch-from DSN",
            step="copy",
        )
    with _scratch_database(scratch_server, label="rehearse") as dsn:
        if scratch_from is not None:
            seconds = copy_database(scratch_from, dsn, timeout=timeout, clock=clock)
            yield ScratchCopy(
                dsn=dsn, source=f"a pg_dump of {display_dsn(scratch_from)}",
                restore_seconds=seconds,
            )  # fmt: skip
            return
        assert backups is not None  # noqa: S101 - checked above
        dest = open_destination(backups)
        which = {"latest": "latest-verified", "latest-unverified": "latest"}.get(
            backup_id, backup_id
        )
        entry = dest.get(which)
        if entry.manifest.engine != "postgresql":
            raise BackupError(
                f"backup {entry.id} is a {entry.manifest.engine} backup: a rehearsal needs a "
                "PostgreSQL one",
                step="find",
            )
        try:
            restored = restore_backup(
                dest, entry, dsn, identity_file=identity, jobs=jobs, timeout=timeout
            )
        except BackupError as exc:
            if exc.step == "checksum":
                raise BackupError(
                    f"backup {entry.id}: {exc} (damaged or replaced): run buttress backup "
                    "verify on it",
                    step="checksum",
                ) from None
            raise
        seconds = restored.seconds
        verified = entry.verified_at
        state = f"verified {verified:%Y-%m-%d %H:%M}Z" if verified else "never verified"
        yield ScratchCopy(
            dsn=dsn, source=f"backup {entry.id} ({state}) from {dest.url}",
            restore_seconds=seconds,
        )  # fmt: skip


def rehearse(
    options: RehearsalOptions,
    *,
    scratch_server: str,
    scratch_from: str | None = None,
    backups: str | None = None,
    backup_id: str = "latest",
    identity: Path | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Rehearsal:
    """Copy (`scratch_copy`), rehearse (`rehearse_on`), drop the copy; the `Rehearsal`.

    Example::

        rehearsal = rehearse(
            RehearsalOptions(command=("alembic", "upgrade", "head")),
            scratch_server="postgresql://postgres@127.0.0.1/postgres",
            backups="/var/backups/orders",
        )
        print(to_markdown(to_report(rehearsal)))
    """
    import psycopg  # noqa: PLC0415 - the postgres extra

    try:
        with scratch_copy(
            scratch_server, scratch_from=scratch_from, backups=backups, backup_id=backup_id,
            identity=identity, timeout=options.timeout, clock=clock,
        ) as copy:  # fmt: skip
            return rehearse_on(
                copy.dsn, options, source=copy.source, restore_seconds=copy.restore_seconds,
                clock=clock,
            )  # fmt: skip
    except psycopg.Error as exc:  # the scratch database went away, a catalog query failed
        raise BackendError(
            f"the scratch database failed during the rehearsal: {redact(str(exc))}"
        ) from exc
