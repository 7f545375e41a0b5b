"""Where backups live: a local directory or an S3-compatible bucket, one layout for both.

Each backup is a folder named by its id holding the dump, ``manifest.json`` and, once it
has been verified, ``verification.json``::

    /var/backups/orders/20261207T011352Z-orders-1a2b/orders.dump
    /var/backups/orders/20261207T011352Z-orders-1a2b/manifest.json
    s3://bucket/prefix/20261207T011352Z-orders-1a2b/manifest.json

The manifest is written last, so a backup without one is unfinished and never listed. A
local backup is written under a hidden ``.partial-<id>`` folder and renamed into place; an
S3 backup is staged in a local temporary folder and uploaded from the file (boto3's managed
multipart transfer), the manifest after the dump.

Example::

    dest = open_destination("s3://backups/orders")       # or a directory
    entry = dest.latest(verified_only=True)
    with dest.fetched(entry) as dump:                    # a local path, removed after
        pg_restore_into(dump, scratch_dsn)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from buttress.backup._errors import BackupError
from buttress.backup._manifest import Manifest, Verification, valid_id

if TYPE_CHECKING:
    import datetime as dt

__all__ = [
    "MANIFEST",
    "VERIFICATION",
    "BackupEntry",
    "Destination",
    "LocalDestination",
    "S3Destination",
    "open_destination",
]

MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
_log = logging.getLogger("buttress.backup")
_MULTIPART_CHUNK = 64 * 1024 * 1024  # bytes per part; boto3's transfer reads one part at a time


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupEntry:
    """One finished backup in a destination: its manifest and last verification.

    Attributes:
        id: the backup's id.
        manifest: its `Manifest`.
        verification: the last `Verification`, None when never verified.
        location: where it is (a directory or an ``s3://`` URL of its folder).
    """

    id: str
    manifest: Manifest
    verification: Verification | None
    location: str

    @property
    def created_at(self) -> dt.datetime:
        """The time of the backup's snapshot (UTC)."""
        return self.manifest.created_at

    @property
    def verified_at(self) -> dt.datetime | None:
        """When a verification of this backup last passed; None when none has."""
        return self.verification.last_passed_at if self.verification else None


class Destination(ABC):
    """A place that holds backups (`LocalDestination`, `S3Destination`)."""

    #: where it is, for people (no credentials)
    url: str

    @abstractmethod
    def list(self) -> list[BackupEntry]:
        """Every finished backup, newest first (unreadable manifests are logged, skipped)."""

    def get(self, backup_id: str) -> BackupEntry:
        """The backup ``backup_id``, ``latest`` or ``latest-verified``; `BackupError` if none."""
        if backup_id in ("latest", "latest-verified"):
            entry = self.latest(verified_only=backup_id == "latest-verified")
            if entry is None:
                which = "verified backup" if backup_id == "latest-verified" else "backup"
                raise BackupError(f"{self.url}: no {which} found", step="find")
            return entry
        if not valid_id(backup_id):
            raise BackupError(
                f"{backup_id!r} is not a backup id (like 20261207T011352Z-orders-1a2b), "
                "'latest' or 'latest-verified'",
                step="find",
            )
        for entry in self.list():
            if entry.id == backup_id:
                return entry
        raise BackupError(f"{self.url}: no backup {backup_id}", step="find")

    def latest(self, *, verified_only: bool = False) -> BackupEntry | None:
        """The newest backup (that passed a verification, with ``verified_only``), or None."""
        for entry in self.list():
            if not verified_only or entry.verified_at is not None:
                return entry
        return None

    @abstractmethod
    def fetch(self, entry: BackupEntry, directory: Path | None = None) -> Path:
        """A local path of ``entry``'s dump file.

        A local destination returns the stored file itself (read it, never delete it); S3
        downloads it into ``directory`` (default: a new temporary directory, the caller's
        to remove). `fetched` does the cleaning for you.
        """

    @contextlib.contextmanager
    def fetched(self, entry: BackupEntry) -> Iterator[Path]:
        """``fetch`` as a context manager: a download is removed on exit."""
        with tempfile.TemporaryDirectory(prefix="buttress-fetch-") as folder:
            yield self.fetch(entry, Path(folder))

    @abstractmethod
    @contextlib.contextmanager
    def staging(self, backup_id: str) -> Iterator[Path]:
        """A local directory to write a new backup's dump into (removed on exit)."""

    @abstractmethod
    def commit(self, staged: Path, manifest: Manifest) -> BackupEntry:
        """Store the dump ``staged`` (in `staging`), then its manifest: the backup exists."""

    @abstractmethod
    def record(self, entry: BackupEntry, verification: Verification) -> None:
        """Write ``verification.json`` beside ``entry``'s manifest."""

    @abstractmethod
    def delete(self, entry: BackupEntry) -> None:
        """Remove ``entry`` (manifest first, so a half-deleted backup is never listed)."""


def _parse(raw: bytes, where: str, verification: bytes | None, location: str) -> BackupEntry | None:
    try:
        manifest = Manifest.from_json(raw, where=where)
    except BackupError as exc:
        _log.warning("backup manifest skipped: %s", exc)
        return None
    record = Verification.from_json(verification) if verification is not None else None
    return BackupEntry(id=manifest.id, manifest=manifest, verification=record, location=location)


def _newest_first(entries: list[BackupEntry]) -> list[BackupEntry]:
    return sorted(entries, key=lambda e: (e.created_at, e.id), reverse=True)


class LocalDestination(Destination):
    """Backups in a local directory (created when missing).

    Example::

        dest = LocalDestination(Path("/var/backups/orders"))
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def __repr__(self) -> str:
        return f"LocalDestination({self.url!r})"

    def list(self) -> list[BackupEntry]:
        """Every finished backup, newest first."""
        if not self.root.is_dir():
            return []
        entries = []
        for folder in self.root.iterdir():
            manifest = folder / MANIFEST
            if folder.name.startswith(".") or not manifest.is_file():
                continue
            record = folder / VERIFICATION
            entry = _parse(
                manifest.read_bytes(),
                str(manifest),
                record.read_bytes() if record.is_file() else None,
                str(folder),
            )
            if entry is not None and entry.id == folder.name:
                entries.append(entry)
        return _newest_first(entries)

    def fetch(self, entry: BackupEntry, directory: Path | None = None) -> Path:
        """The stored dump file itself (``directory`` is not used)."""
        path = self.root / entry.id / entry.manifest.file
        if not path.is_file():
            raise BackupError(f"{path}: the dump is missing", step="fetch")
        return path

    @contextlib.contextmanager
    def staging(self, backup_id: str) -> Iterator[Path]:
        """``<root>/.partial-<id>``: the same file system, so `commit` is a rename.

        The run holds a lock on ``.partial-<id>.lock`` while the folder exists; a partial
        folder whose lock nobody holds was left by a killed run (``SIGKILL``, a machine
        that died) and is removed here, before the new one is made. A folder being
        written by a run that is alive is never touched.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.root / f"{_PARTIAL}{backup_id}"
        with _held_lock(self.root / f"{_PARTIAL}{backup_id}{_LOCK}"):
            remove_abandoned(self.root)
            folder.mkdir()
            try:
                yield folder
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    def commit(self, staged: Path, manifest: Manifest) -> BackupEntry:
        """Write the manifest beside the staged dump, fsync, rename the folder into place."""
        folder = staged.parent
        target = self.root / manifest.id
        _write_synced(folder / MANIFEST, manifest.to_json().encode())
        _fsync(staged)
        os.replace(folder, target)
        _fsync_dir(self.root)
        return BackupEntry(
            id=manifest.id, manifest=manifest, verification=None, location=str(target)
        )

    def record(self, entry: BackupEntry, verification: Verification) -> None:
        """Write ``verification.json`` atomically (a temporary file, then a rename)."""
        folder = self.root / entry.id
        partial = folder / f".{VERIFICATION}.partial"
        _write_synced(partial, verification.to_json().encode())
        os.replace(partial, folder / VERIFICATION)

    def delete(self, entry: BackupEntry) -> None:
        """Remove the manifest, then the folder."""
        folder = self.root / entry.id
        (folder / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


_PARTIAL = ".partial-"
_LOCK = ".lock"


@contextlib.contextmanager
def _held_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the file ``path`` (created; removed on exit)."""
    try:
        import fcntl  # noqa: PLC0415 - Unix only
    except ImportError:  # pragma: no cover - no flock: no clean-up of abandoned folders
        yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # still the file at that path (not removed by a clean-up meanwhile)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def remove_abandoned(root: Path) -> list[str]:
    """Remove the ``.partial-*`` folders of ``root`` that no running backup holds.

    Returns their names. A folder without its lock file (written by an older buttress) is
    left alone: nothing says whether its run is alive.
    """
    try:
        import fcntl  # noqa: PLC0415 - Unix only
    except ImportError:  # pragma: no cover
        return []
    removed = []
    for lock in sorted(root.glob(f"{_PARTIAL}*{_LOCK}")):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:  # removed meanwhile by its run
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: a run is writing it
                continue
            folder = lock.with_name(lock.name.removesuffix(_LOCK))
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                lock.unlink()
            removed.append(folder.name)
        finally:
            os.close(fd)
    if removed:
        _log.warning("removed %d abandoned partial backup(s) in %s: %s", len(removed), root,
                     ", ".join(removed))  # fmt: skip
    return removed


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system syncs directories
        _fsync(path)


class S3Destination(Destination):
    """Backups in an S3-compatible bucket, under a prefix (boto3; credentials from its chain).

    Args:
        url: ``s3://bucket/prefix``.
        endpoint_url: an S3-compatible endpoint (MinIO, moto, R2...); else boto3's default,
            which honours ``AWS_ENDPOINT_URL``.
        client: a boto3 S3 client to use instead of building one.
        staging_dir: where a new dump is written before its upload (default: the system's
            temporary directory).

    Example::

        dest = S3Destination("s3://backups/orders", endpoint_url="http://127.0.0.1:9000")
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        client: Any = None,
        staging_dir: Path | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or "@" in parts.netloc:
            raise BackupError(f"{url!r}: expected s3://bucket/prefix", step="destination")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self._endpoint_url = endpoint_url
        self._client = client
        self._staging_dir = staging_dir

    def __repr__(self) -> str:
        return f"S3Destination({self.url!r})"

    @property
    def client(self) -> Any:
        """The boto3 S3 client (built on first use)."""
        if self._client is None:
            try:
                import boto3  # type: ignore[import-untyped]  # noqa: PLC0415
            except ImportError:
                raise BackupError(
                    "an s3:// destination needs boto3: pip install 'buttress[backup]'",
                    step="destination",
                ) from None
            self._client = boto3.client("s3", endpoint_url=self._endpoint_url)
        return self._client

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _errors(self, step: str) -> contextlib.AbstractContextManager[None]:
        return _s3_errors(step, self.url)

    def _get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError  # type: ignore[import-untyped]  # noqa: PLC0415

        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return body

    def list(self) -> list[BackupEntry]:
        """Every finished backup, newest first (one GET per manifest and record)."""
        entries = []
        with self._errors("list"):
            paginator = self.client.get_paginator("list_objects_v2")
            base = self._key("")
            keys: set[str] = set()
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{base}/" if base else ""):
                keys.update(obj["Key"] for obj in page.get("Contents", ()))
            for key in sorted(keys):
                folder, _, name = key.rpartition("/")
                backup_id = folder.rpartition("/")[2]
                if name != MANIFEST or folder != self._key(backup_id):
                    continue
                raw = self._get(key)
                if raw is None:
                    continue
                record_key = f"{folder}/{VERIFICATION}"
                record = self._get(record_key) if record_key in keys else None
                entry = _parse(
                    raw, f"s3://{self.bucket}/{key}", record, f"s3://{self.bucket}/{folder}"
                )
                if entry is not None and entry.id == backup_id:
                    entries.append(entry)
        return _newest_first(entries)

    def fetch(self, entry: BackupEntry, directory: Path | None = None) -> Path:
        """Download the dump into ``directory`` (a new temporary one by default)."""
        from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]  # noqa: PLC0415

        folder = directory or Path(tempfile.mkdtemp(prefix="buttress-fetch-"))
        path = folder / entry.manifest.file
        config = TransferConfig(multipart_chunksize=_MULTIPART_CHUNK, max_concurrency=4)
        with self._errors("fetch"):
            self.client.download_file(
                self.bucket, self._key(entry.id, entry.manifest.file), str(path), Config=config
            )
        return path

    @contextlib.contextmanager
    def staging(self, backup_id: str) -> Iterator[Path]:
        """A temporary local directory (``staging_dir``), removed after the upload."""
        with tempfile.TemporaryDirectory(
            prefix=f"buttress-{backup_id}-", dir=self._staging_dir
        ) as folder:
            yield Path(folder)

    def commit(self, staged: Path, manifest: Manifest) -> BackupEntry:
        """Upload the dump from its file (multipart), then the manifest."""
        from boto3.s3.transfer import TransferConfig  # noqa: PLC0415

        config = TransferConfig(
            multipart_threshold=_MULTIPART_CHUNK, multipart_chunksize=_MULTIPART_CHUNK,
            max_concurrency=4,
        )  # fmt: skip
        with self._errors("upload"):
            self.client.upload_file(
                str(staged), self.bucket, self._key(manifest.id, manifest.file), Config=config
            )
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(manifest.id, MANIFEST),
                Body=manifest.to_json().encode(),
                ContentType="application/json",
            )
        return BackupEntry(
            id=manifest.id,
            manifest=manifest,
            verification=None,
            location=f"s3://{self.bucket}/{self._key(manifest.id)}",
        )

    def record(self, entry: BackupEntry, verification: Verification) -> None:
        """Put ``verification.json`` beside the manifest."""
        with self._errors("record"):
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(entry.id, VERIFICATION),
                Body=verification.to_json().encode(),
                ContentType="application/json",
            )

    def delete(self, entry: BackupEntry) -> None:
        """Delete the manifest first, then the dump and the record."""
        with self._errors("delete"):
            for name in (MANIFEST, entry.manifest.file, VERIFICATION):
                self.client.delete_object(Bucket=self.bucket, Key=self._key(entry.id, name))


@contextlib.contextmanager
def _s3_errors(step: str, url: str) -> Iterator[None]:
    """boto3 and botocore failures as `BackupError` (step ``step``), with the reason."""
    try:
        from boto3.exceptions import Boto3Error  # type: ignore[import-untyped]  # noqa: PLC0415
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415
    except ImportError:  # pragma: no cover - checked when the client is built
        yield
        return
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise BackupError(
            f"{url}: S3 {step} failed: {error.get('Code', '?')} {error.get('Message', '')}".strip(),
            step=step,
        ) from exc
    except (BotoCoreError, Boto3Error) as exc:
        raise BackupError(f"{url}: S3 {step} failed: {exc}", step=step) from exc


def open_destination(
    target: str | Path, *, endpoint_url: str | None = None, staging_dir: Path | None = None
) -> Destination:
    """The destination at ``target``: ``s3://bucket/prefix`` or a local directory.

    Example::

        dest = open_destination("/var/backups/orders")
        for entry in dest.list():
            print(entry.id, entry.created_at, entry.verified_at)
    """
    text = str(target)
    if text.startswith("s3://"):
        return S3Destination(text, endpoint_url=endpoint_url, staging_dir=staging_dir)
    if "://" in text:
        raise BackupError(
            f"{text!r}: a destination is a local directory or s3://bucket/prefix",
            step="destination",
        )
    return LocalDestination(Path(text))
