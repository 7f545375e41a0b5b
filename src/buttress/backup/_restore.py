"""Restoring a stored backup: its checksum proven while ``pg_restore`` reads it.

`pg_restore_into` runs ``pg_restore`` on a custom-format dump. `restore_checked` does the
same while a thread reads the same file for its SHA-256 (``pg_restore --jobs`` needs a file
it can seek in, so the dump cannot be piped through a hash; a second reader of a file the
restore is reading costs page-cache reads, not a second pass of the disk, and no time
before the restore starts). When the hash differs from the manifest's, ``pg_restore`` is
stopped at once and the result is a checksum failure, also when the restore had finished:
a dump that does not match its manifest never passes. `restore_backup` is the whole way
from a destination to a database: fetch, decrypt (age, one pass that hashes both the
stored and the decrypted bytes), check, restore. ``buttress backup verify`` and
``buttress migrate rehearse`` both use it.

Example::

    with scratch_database(admin_dsn, label="drill") as dsn:
        restored = restore_backup(dest, dest.get("latest"), dsn, jobs=4)
        print(f"restored in {restored.seconds:.1f} s")
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from buttress.backup._destination import BackupEntry, Destination
from buttress.backup._errors import BackupError
from buttress.backup._pgtools import password_of, run_tool, tool_invocation, tool_path, tool_stderr
from buttress.backup._stream import CHUNK, decrypt_file, load_identities, sha256_file

__all__ = ["Restored", "pg_restore_into", "restore_backup", "restore_checked"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Restored:
    """What `restore_backup` did: the stored file's size and SHA-256, and the time taken.

    ``prepare_seconds`` covers the download and the decryption, ``restore_seconds`` the
    ``pg_restore`` run (the checksum runs alongside it).
    """

    size: int
    sha256: str
    prepare_seconds: float
    restore_seconds: float

    @property
    def seconds(self) -> float:
        """The whole restore, from the destination to a filled database."""
        return self.prepare_seconds + self.restore_seconds


def _restore_args(dump: Path, target: str, jobs: int) -> list[str]:
    if not 1 <= jobs <= 64:
        raise BackupError(f"pg_restore jobs={jobs}: use 1 to 64", step="restore")
    if not dump.is_file():
        raise BackupError(f"{dump}: no such dump file", step="restore")
    return [
        tool_path("pg_restore"),
        "--exit-on-error",
        "--no-owner",
        "--no-privileges",
        f"--jobs={jobs}",
        f"--dbname={target}",
        str(dump),
    ]


def pg_restore_into(dump: Path, dsn: str, *, jobs: int = 2, timeout: float | None = None) -> float:
    """Restore the custom-format ``dump`` into ``dsn``; returns the seconds it took.

    Runs ``pg_restore --exit-on-error --no-owner --no-privileges --jobs N``. Raises
    `BackupError` (step ``restore``) quoting pg_restore's redacted stderr when it fails or
    runs past ``timeout`` seconds (then it is killed).

    Example::

        seconds = pg_restore_into(Path("orders.dump"), scratch_dsn, jobs=4, timeout=3600)
    """
    target, env = tool_invocation(dsn)
    args = _restore_args(dump, target, jobs)
    started = time.perf_counter()
    run_tool(args, env=env, step="restore", secrets=[password_of(dsn)], timeout=timeout)
    return time.perf_counter() - started


class _Hasher(threading.Thread):
    """Reads a file for its SHA-256 beside the restore; calls ``on_mismatch`` at once."""

    def __init__(self, path: Path, expected: str, on_mismatch: Callable[[], None]) -> None:
        super().__init__(name="buttress-restore-sha256", daemon=True)
        self.path = path
        self.expected = expected
        self.on_mismatch = on_mismatch
        self.stop = threading.Event()
        self.digest: str | None = None
        self.size = 0
        self.error: OSError | None = None

    def run(self) -> None:
        digest = hashlib.sha256()
        try:
            with open(self.path, "rb") as inp:
                while not self.stop.is_set() and (chunk := inp.read(CHUNK)):
                    digest.update(chunk)
                    self.size += len(chunk)
        except OSError as exc:
            self.error = exc
            self.on_mismatch()
            return
        if self.stop.is_set():
            return
        self.digest = digest.hexdigest()
        if self.digest != self.expected:
            self.on_mismatch()


def restore_checked(
    dump: Path,
    dsn: str,
    *,
    size: int,
    sha256: str,
    jobs: int = 2,
    timeout: float | None = None,
) -> float:
    """`pg_restore_into`, with the file's size and SHA-256 checked while it restores.

    The size is checked before anything starts; the SHA-256 in a thread alongside
    ``pg_restore``. A mismatch stops ``pg_restore`` and raises `BackupError` with step
    ``checksum`` (whether or not the restore had finished: then the database holds what
    the damaged file held, and the caller must not trust it); a failed (or timed out)
    restore of a file that matches raises step ``restore``. Returns the seconds taken.

    Example::

        m = entry.manifest
        restore_checked(dump, scratch_dsn, size=m.size, sha256=m.sha256, jobs=2)
    """
    try:
        stored = dump.stat().st_size
    except OSError as exc:
        raise BackupError(f"{dump}: {exc.strerror or exc}", step="checksum") from None
    if stored != size:
        raise BackupError(f"{stored} bytes stored, the manifest says {size}", step="checksum")
    target, env = tool_invocation(dsn)
    args = _restore_args(dump, target, jobs)
    secrets = [password_of(dsn)]
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(  # noqa: S603 - pg_restore found by tool_path
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise BackupError(f"cannot run {args[0]}: {exc.strerror or exc}", step="restore") from None
    hasher = _Hasher(dump, sha256, lambda: _kill(proc))
    try:
        # started inside the try: a SIGTERM (SystemExit) while the thread starts must
        # still stop pg_restore
        hasher.start()
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.communicate()
        hasher.join()  # the rest of the file is quick to read: a damaged one says so
        _check_hash(hasher, sha256)
        raise BackupError(
            f"pg_restore did not finish within {timeout:g} s", step="restore"
        ) from None
    except BaseException:  # Ctrl-C, SIGTERM as SystemExit: leave nothing running
        _kill(proc)
        proc.wait()
        _stop(hasher)
        raise
    hasher.join()
    _check_hash(hasher, sha256)
    if proc.returncode != 0:
        raise BackupError(
            f"pg_restore exited {proc.returncode}: {tool_stderr(err, secrets)}", step="restore"
        )
    return time.perf_counter() - started


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()


def _stop(hasher: _Hasher) -> None:
    hasher.stop.set()
    if hasher.ident is not None:  # it started
        hasher.join()


def _check_hash(hasher: _Hasher, expected: str) -> None:
    if hasher.error is not None:
        raise BackupError(
            f"{hasher.path}: cannot read the dump ({hasher.error.strerror or hasher.error})",
            step="checksum",
        )
    if hasher.digest != expected:
        raise BackupError(
            f"SHA-256 {(hasher.digest or '?')[:16]}..., the manifest says {expected[:16]}...",
            step="checksum",
        )


def restore_backup(
    destination: Destination,
    entry: BackupEntry,
    dsn: str,
    *,
    identity_file: Path | None = None,
    jobs: int = 2,
    timeout: float | None = None,
) -> Restored:
    """Restore PostgreSQL backup ``entry`` of ``destination`` into the database ``dsn``.

    Fetches the dump (a download for S3, removed after), decrypts it with
    ``identity_file`` when it is encrypted, checks it against the manifest (size, SHA-256,
    and the plaintext's SHA-256 for an encrypted one) and restores it with
    `restore_checked`. Raises `BackupError` whose ``step`` says what failed: ``fetch``,
    ``checksum`` (damaged or replaced), ``decrypt``, ``restore``; after ``decrypt`` or
    ``restore`` the stored file is known to match its manifest.

    Example::

        with scratch_database(admin_dsn, label="drill") as dsn:
            restore_backup(dest, dest.get("latest-verified"), dsn, jobs=4, timeout=4 * 3600)
    """
    manifest = entry.manifest
    if manifest.engine != "postgresql":
        raise BackupError(
            f"backup {entry.id} is a {manifest.engine} backup, not a PostgreSQL dump",
            step="restore",
        )
    started = time.perf_counter()
    with destination.fetched(entry) as stored:
        if not manifest.encryption:
            prepare = time.perf_counter() - started
            seconds = restore_checked(
                stored, dsn, size=manifest.size, sha256=manifest.sha256, jobs=jobs,
                timeout=_left(timeout, prepare),
            )  # fmt: skip
            return Restored(
                size=manifest.size, sha256=manifest.sha256, prepare_seconds=prepare,
                restore_seconds=seconds,
            )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="buttress-restore-") as folder:
            os.chmod(folder, 0o700)
            plain = _decrypted(stored, Path(folder), entry, identity_file)
            prepare = time.perf_counter() - started
            seconds = pg_restore_into(plain, dsn, jobs=jobs, timeout=_left(timeout, prepare))
    return Restored(
        size=manifest.size, sha256=manifest.sha256, prepare_seconds=prepare,
        restore_seconds=seconds,
    )  # fmt: skip


def _left(timeout: float | None, spent: float) -> float | None:
    return None if timeout is None else max(timeout - spent, 1.0)


def _decrypted(stored: Path, folder: Path, entry: BackupEntry, identity: Path | None) -> Path:
    """Decrypt ``stored`` into ``folder`` in one pass that hashes both sides; check both."""
    manifest = entry.manifest
    if manifest.encryption != "age":
        raise BackupError(f"unknown encryption {manifest.encryption!r}", step="decrypt")
    if identity is None:
        raise BackupError(
            "the backup is encrypted (age): pass --identity FILE (the age secret key)",
            step="decrypt",
        )
    plain = folder / manifest.file.removesuffix(".age")
    try:
        copied = decrypt_file(stored, plain, load_identities(identity))
    except BackupError as exc:
        if exc.step != "decrypt":
            raise
        size, digest = sha256_file(stored)  # damaged in storage, or only the wrong key?
        if (size, digest) != (manifest.size, manifest.sha256):
            raise _mismatch(size, digest, manifest.size, manifest.sha256) from None
        raise
    if (copied.size, copied.sha256) != (manifest.size, manifest.sha256):
        raise _mismatch(copied.size, copied.sha256, manifest.size, manifest.sha256)
    if manifest.plain_sha256 and copied.plain_sha256 != manifest.plain_sha256:
        raise BackupError(
            "the decrypted dump does not match the manifest's plain SHA-256", step="decrypt"
        )
    return plain


def _mismatch(size: int, digest: str, want_size: int, want: str) -> BackupError:
    if size != want_size:
        return BackupError(f"{size} bytes stored, the manifest says {want_size}", step="checksum")
    return BackupError(
        f"SHA-256 {digest[:16]}..., the manifest says {want[:16]}...", step="checksum"
    )


def checksum_problem(path: Path, size: int, sha256: str) -> str | None:
    """Why the file at ``path`` does not match ``size`` and ``sha256`` (None: it does)."""
    got_size, digest = sha256_file(path)
    if (got_size, digest) == (size, sha256):
        return None
    return str(_mismatch(got_size, digest, size, sha256))
