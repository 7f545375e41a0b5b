"""Backups that are proven to restore: ``buttress backup run`` and ``buttress backup verify``.

The real tools do the work (``pg_dump`` in custom format, ``pg_restore``, SQLite's online
backup API); buttress adds a `Manifest` beside each dump (SHA-256, size, server version,
exact row counts and a schema hash read in the dump's own snapshot), destinations (a local
directory, S3-compatible storage), retention, optional age encryption, verification in a
scratch database it creates and always drops (`scratch_database`; leftovers of a killed
run: `list_scratch`, `drop_scratch`), RPO/RTO checks in the shared report model, and
freshness for operators (`BackupCheck`, `BackupCollector`).

The pieces other packages build on (``buttress.migrate`` uses these and nothing private):
`restore_backup` (fetch, decrypt, checksum while restoring), `restore_checked`,
`pg_restore_into`; the PostgreSQL client tools with credentials kept out of command lines
(`tool_path`, `tool_invocation`, `tool_stderr`, `password_of`, `with_dbname`); streams
(`sha256_file`, `decrypt_file`, `load_identities`); `redact` and `display_dsn`.

May import the ground floor (``buttress.errors``, ``buttress.clock``), ``buttress.report``
and ``buttress.asgi``'s health-check base; drivers (psycopg, boto3, pyrage) are imported
when used.

Example::

    from buttress.backup import open_destination, restore_backup, scratch_database

    dest = open_destination("s3://backups/orders")
    entry = dest.get("latest-verified")
    with scratch_database(admin_dsn, label="rehearse") as dsn:
        restore_backup(dest, entry, dsn, jobs=2)
"""

from typing import TYPE_CHECKING, Any

from buttress.backup._destination import (
    BackupEntry,
    Destination,
    LocalDestination,
    S3Destination,
    open_destination,
)
from buttress.backup._errors import BackupError, display_dsn, redact
from buttress.backup._leftovers import DropResult, ScratchDatabase, drop_scratch, list_scratch
from buttress.backup._manifest import Manifest, Verification
from buttress.backup._pgtools import (
    password_of,
    tool_invocation,
    tool_path,
    tool_stderr,
    with_dbname,
)
from buttress.backup._restore import Restored, pg_restore_into, restore_backup, restore_checked
from buttress.backup._retention import (
    RetentionPlan,
    RetentionPolicy,
    apply_retention,
    plan_retention,
)
from buttress.backup._run import run_backup
from buttress.backup._scratch import SCRATCH_PREFIX, scratch_database
from buttress.backup._stream import (
    Copied,
    decrypt_file,
    load_identities,
    parse_recipients,
    sha256_file,
)
from buttress.backup._time import SYSTEM_WALL_CLOCK, WallClock, parse_duration
from buttress.backup._verify import SanityCheck, VerifyOptions, VerifyResult, verify_backup

if TYPE_CHECKING:
    from buttress.backup._freshness import BackupCheck, BackupCollector

_LAZY = {"BackupCheck", "BackupCollector"}  # they import buttress.asgi: only when asked


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from buttress.backup import _freshness  # noqa: PLC0415

        return getattr(_freshness, name)
    raise AttributeError(f"module 'buttress.backup' has no attribute {name!r}")


__all__ = [
    "SCRATCH_PREFIX",
    "SYSTEM_WALL_CLOCK",
    "BackupCheck",
    "BackupCollector",
    "BackupEntry",
    "BackupError",
    "Copied",
    "Destination",
    "DropResult",
    "LocalDestination",
    "Manifest",
    "Restored",
    "RetentionPlan",
    "RetentionPolicy",
    "S3Destination",
    "SanityCheck",
    "ScratchDatabase",
    "Verification",
    "VerifyOptions",
    "VerifyResult",
    "WallClock",
    "apply_retention",
    "decrypt_file",
    "display_dsn",
    "drop_scratch",
    "list_scratch",
    "load_identities",
    "open_destination",
    "parse_duration",
    "parse_recipients",
    "password_of",
    "pg_restore_into",
    "plan_retention",
    "redact",
    "restore_backup",
    "restore_checked",
    "run_backup",
    "scratch_database",
    "sha256_file",
    "tool_invocation",
    "tool_path",
    "tool_stderr",
    "verify_backup",
    "with_dbname",
]
