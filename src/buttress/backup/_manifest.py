"""The manifest written beside every backup, and the record of its last verification.

A `Manifest` says what the dump holds and how to check it: its SHA-256 and size (of the
stored bytes: the ciphertext when encrypted), the server's version, how long the dump took,
the exact row count of every table and a hash of the schema, both read in the snapshot the
dump was taken from. It never holds a credential: the source is shown as
``postgresql://host:port/database`` (`display_dsn`).

A `Verification` is what ``buttress backup verify`` found the last time it ran, kept in
``verification.json`` beside the manifest, with the time of the last verification that
passed (what `BackupCheck` and the metrics read).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from buttress.backup._errors import BackupError

__all__ = ["FORMAT_VERSION", "Manifest", "Verification", "new_backup_id", "parse_time"]

FORMAT_VERSION = 1
_ID = re.compile(r"\d{8}T\d{6}Z-[a-z0-9_\-]{1,40}-[0-9a-f]{4}")


def parse_time(value: str) -> dt.datetime:
    """An ISO 8601 time from a manifest, as an aware UTC datetime."""
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def new_backup_id(created_at: dt.datetime, database: str, suffix: str) -> str:
    """``20261207T011352Z-orders-1a2b``: sorts by time, names the database, stays unique.

    Example::

        >>> import datetime as dt
        >>> new_backup_id(dt.datetime(2026, 12, 7, 1, 13, 52, tzinfo=dt.UTC), "Orders DB", "1a2b")
        '20261207T011352Z-orders_db-1a2b'
    """
    name = re.sub(r"[^a-z0-9_\-]+", "_", database.lower()).strip("_")[:40] or "db"
    return f"{created_at.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{name}-{suffix}"


def valid_id(backup_id: str) -> bool:
    """True when ``backup_id`` has the shape `new_backup_id` gives (no path tricks)."""
    return _ID.fullmatch(backup_id) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """What a backup holds and how to check it (``manifest.json``).

    Attributes:
        id: the backup's id (`new_backup_id`).
        engine: ``postgresql`` or ``sqlite``.
        source: where it came from, without credentials.
        database: the database's name (PostgreSQL) or file name (SQLite).
        created_at: the time of the snapshot (UTC).
        duration_seconds: how long taking the backup took.
        server_version: the server's (or SQLite library's) version.
        tool: the program that wrote the dump (``pg_dump (PostgreSQL) 15.20``).
        file: the dump's name beside the manifest.
        size: bytes stored.
        sha256: hex SHA-256 of the bytes stored.
        dump_format: ``custom`` (pg_dump -Fc) or ``sqlite`` (a database file).
        compression: ``gzip:6``, ``none``...
        encryption: ``age`` or None.
        recipients: the age recipients (public keys) it is encrypted to.
        plain_sha256: hex SHA-256 of the dump before encryption (None when not encrypted).
        tables: exact row count per table (``schema.table``); large objects count as
            ``pg_catalog.pg_largeobject_metadata``.
        schema_hash: SHA-256 of the schema as the catalog describes it.
        table_schemas: a hash per table, to name the table whose schema differs.
        buttress_version: the version of buttress that wrote it.
    """

    id: str
    engine: str
    source: str
    database: str
    created_at: dt.datetime
    duration_seconds: float
    server_version: str
    tool: str
    file: str
    size: int
    sha256: str
    dump_format: str
    compression: str
    encryption: str | None = None
    recipients: tuple[str, ...] = ()
    plain_sha256: str | None = None
    tables: dict[str, int] = field(default_factory=dict)
    schema_hash: str = ""
    table_schemas: dict[str, str] = field(default_factory=dict)
    buttress_version: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The manifest as indented JSON (times in ISO 8601 UTC)."""
        data = asdict(self)
        data["created_at"] = _iso(self.created_at)
        data["recipients"] = list(self.recipients)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = "manifest.json") -> Manifest:
        """Parse a manifest; `BackupError` (step ``manifest``) naming what is wrong."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            version = data.get("format_version")
            if version != FORMAT_VERSION:
                raise ValueError(f"format_version {version!r}, expected {FORMAT_VERSION}")
            known = {f.name for f in fields(cls)}
            values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
            _check_types(values)
            values["created_at"] = parse_time(values["created_at"])
            values["recipients"] = tuple(values.get("recipients") or ())
            values["tables"] = dict(values.get("tables") or {})
            values["table_schemas"] = dict(values.get("table_schemas") or {})
            values["duration_seconds"] = float(values["duration_seconds"])
            manifest = cls(**values)
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupError(
                f"{where}: not a valid buttress manifest ({exc})", step="manifest"
            ) from None
        if not valid_id(manifest.id) or "/" in manifest.file or manifest.file.startswith("."):
            raise BackupError(f"{where}: invalid id or file name", step="manifest")
        return manifest


_STRINGS = ("id", "engine", "source", "database", "created_at", "server_version", "tool",
            "file", "sha256", "dump_format", "compression")  # fmt: skip
_OPTIONAL_STRINGS = ("encryption", "plain_sha256", "schema_hash", "buttress_version")


def _check_types(values: dict[str, Any]) -> None:
    """`TypeError` naming the first field of a (hand-edited) manifest with the wrong type.

    A manifest is read by every listing of its destination (``backup list``, retention,
    `BackupCheck`): one with a number where a name belongs must be skipped, not crash them.
    """

    def bad(name: str, what: str) -> TypeError:
        return TypeError(f"{name} must be {what}, not {type(values.get(name)).__name__}")

    for name in _STRINGS:
        if not isinstance(values[name], str):
            raise bad(name, "a string")
    for name in _OPTIONAL_STRINGS:
        if values.get(name) is not None and not isinstance(values[name], str):
            raise bad(name, "a string")
    for name in ("size", "duration_seconds"):
        if isinstance(values[name], bool) or not isinstance(values[name], int | float):
            raise bad(name, "a number")
    if not isinstance(values["size"], int) or values["size"] < 0:
        raise TypeError(f"size must be a whole number of bytes, not {values['size']!r}")
    recipients = values.get("recipients") or []
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise bad("recipients", "a list of strings")
    for name, kind in (("tables", int), ("table_schemas", str)):
        mapping = values.get(name) or {}
        if not isinstance(mapping, dict) or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in mapping.values()
        ):
            raise bad(name, f"an object of {kind.__name__}s")


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    """The last verification of one backup (``verification.json``).

    Attributes:
        checked_at: when the last verification ran.
        passed: whether it passed.
        last_passed_at: when a verification last passed (this one or an earlier one).
        restore_seconds: how long the restore took (None when it did not get that far).
        failed: ids of the checks that failed.
        summary: one line per check.
    """

    checked_at: dt.datetime
    passed: bool
    last_passed_at: dt.datetime | None
    restore_seconds: float | None = None
    failed: tuple[str, ...] = ()
    summary: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The record as indented JSON."""
        data = asdict(self)
        data["checked_at"] = _iso(self.checked_at)
        data["last_passed_at"] = _iso(self.last_passed_at) if self.last_passed_at else None
        data["failed"] = list(self.failed)
        data["summary"] = list(self.summary)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Verification | None:
        """Parse a record; None when it is unreadable (as if never verified)."""
        try:
            data = json.loads(text)
            last = data.get("last_passed_at")
            return cls(
                checked_at=parse_time(str(data["checked_at"])),
                passed=bool(data["passed"]),
                last_passed_at=parse_time(str(last)) if last else None,
                restore_seconds=(
                    None if data.get("restore_seconds") is None else float(data["restore_seconds"])
                ),
                failed=tuple(str(x) for x in data.get("failed") or ()),
                summary=tuple(str(x) for x in data.get("summary") or ()),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
