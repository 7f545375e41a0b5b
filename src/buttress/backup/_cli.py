"""``buttress backup run|verify|list|scratch``: the command line of `buttress.backup`.

Exit codes: ``run``, ``list`` and ``scratch list|drop`` exit 0 on success, 1 when a step
failed (one line on stderr naming the step, credentials removed; ``scratch drop``: a
database it meant to drop is still there), 2 for a usage error. ``verify`` ends like
``buttress audit`` and ``buttress probe`` (`buttress.report.finish`): 0 when every gate
passes, 1 when one fails (by default ``--fail-on P1``: any failed check), 2 for a usage
error or a backup that cannot be found.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_command"]

_DESCRIPTION = """\
Back up a PostgreSQL database (pg_dump, custom format, in an exported snapshot) or a
SQLite file (the online backup API) into a local directory or S3-compatible storage, with
a manifest (SHA-256, size, server version, row counts and a schema hash from the same
snapshot), retention and optional age encryption; then prove it restores: `verify`
restores into a scratch database it creates and always drops, and compares.
"""

_EPILOG = """\
examples:
  buttress backup run postgresql://app@127.0.0.1/orders --to /var/backups/orders \\
      --keep-daily 7 --keep-weekly 4 --keep-monthly 12
  buttress backup run sqlite:///var/lib/app/app.db --to s3://backups/app
  buttress backup verify /var/backups/orders latest \\
      --scratch-dsn postgresql://postgres@127.0.0.1/postgres --rto 4h --rpo 24h \\
      --check "select count(*) from orders where created_at > now() - interval '2 days'" \\
      --expect '>0'
  buttress backup list s3://backups/orders
  buttress backup scratch list --scratch-dsn postgresql://postgres@127.0.0.1/postgres
  buttress backup scratch drop --older-than 1h

Passwords: prefer PGPASSWORD or ~/.pgpass to a password in the DSN (a command line is
visible to other users in ps). buttress hands pg_dump the password through its
environment and never writes it to a manifest, a log line or an error.
"""


def add_command(sub: Any) -> None:
    """Add ``buttress backup`` and its subcommands to the ``buttress`` parser."""
    raw = argparse.RawDescriptionHelpFormatter
    backup = sub.add_parser(
        "backup",
        help="back up PostgreSQL or SQLite with manifests and retention; verify restores",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=raw,
    )
    commands = backup.add_subparsers(dest="backup_command", required=True, metavar="ACTION")

    run = commands.add_parser(
        "run", help="take a backup", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=raw
    )
    run.add_argument("source", metavar="DSN", help="postgresql://... or sqlite:///path")
    run.add_argument(
        "--to", required=True, metavar="DEST", help="a directory or s3://bucket/prefix"
    )
    for period, help_text in (("daily", "days"), ("weekly", "ISO weeks"), ("monthly", "months")):
        run.add_argument(
            f"--keep-{period}",
            type=int,
            metavar="N",
            help=f"keep the newest backup of each of the last N {help_text} (retention runs "
            "only when a --keep option is given; the others then default to 0)",
        )
    run.add_argument(
        "--recipient",
        action="append",
        metavar="AGE1...",
        help="encrypt to this age public key (repeatable); default: not encrypted",
    )
    run.add_argument("--compress", type=int, metavar="0-9", help="pg_dump --compress level")
    run.add_argument("--timeout", metavar="DURATION", help="stop pg_dump after this (e.g. 2h)")
    _add_s3(run)
    run.add_argument("--staging-dir", metavar="DIR", help="where an S3 upload is staged")
    run.set_defaults(handler=_run)

    verify = commands.add_parser(
        "verify",
        help="restore a backup into a scratch database and compare with its manifest",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=raw,
    )
    verify.add_argument("destination", metavar="DEST", help="a directory or s3://bucket/prefix")
    verify.add_argument("backup", nargs="?", default="latest", metavar="latest|latest-verified|ID")
    verify.add_argument(
        "--scratch-dsn",
        metavar="DSN",
        help="the PostgreSQL server to create the scratch database on (user with CREATEDB; "
        "default $BUTTRESS_BACKUP_SCRATCH_DSN)",
    )
    verify.add_argument("--check", action="append", metavar="SQL", help="a sanity query")
    verify.add_argument(
        "--expect", action="append", metavar="'>0'", help="what the --check before it returns"
    )
    verify.add_argument("--rto", default="4h", metavar="DURATION", help="restore time objective")
    verify.add_argument("--rpo", default="24h", metavar="DURATION", help="recovery point objective")
    verify.add_argument("--jobs", type=int, default=2, metavar="N", help="pg_restore --jobs (2)")
    verify.add_argument("--identity", metavar="FILE", help="age identity file (encrypted backups)")
    verify.add_argument("--no-record", action="store_true", help="do not write verification.json")
    verify.add_argument(
        "--count", choices=("inserted", "scan"), default="inserted",
        help="row counts: the rows pg_restore inserted, from the server's statistics (exact "
        "on PostgreSQL 15+, no table read; a difference is re-counted; the default), or "
        "count(*) of every table (scan)",
    )  # fmt: skip
    verify.add_argument(
        "--scratch-label",
        default="verify",
        metavar="LABEL",
        help="name scratch databases buttress_scratch_LABEL_<random> (verify)",
    )
    _add_s3(verify)
    from buttress.report import add_report_arguments  # noqa: PLC0415 - light

    add_report_arguments(verify, fail_on_help="exit 1 when a check this severe fails (P1)")
    verify.set_defaults(handler=_verify, fail_on="P1")

    listing = commands.add_parser("list", help="the backups in a destination, newest first")
    listing.add_argument("destination", metavar="DEST")
    _add_s3(listing)
    listing.set_defaults(handler=_list)

    scratch = commands.add_parser(
        "scratch",
        help="list or drop scratch databases a killed verify or rehearsal left behind",
        description="Scratch databases (buttress_scratch_*) are dropped by the run that made "
        "them, also on Ctrl-C and SIGTERM; a SIGKILL can leave one. Nothing without that "
        "prefix is ever listed or dropped.",
    )
    actions = scratch.add_subparsers(dest="scratch_command", required=True, metavar="ACTION")
    scratch_list = actions.add_parser("list", help="the scratch databases, their age, sessions")
    scratch_drop = actions.add_parser("drop", help="drop the scratch databases older than AGE")
    scratch_drop.add_argument(
        "--older-than", required=True, metavar="AGE",
        help="only those created longer ago than this (1h, 30m; 0s: all)",
    )  # fmt: skip
    scratch_drop.add_argument(
        "--force", action="store_true",
        help="drop one with sessions too (WITH (FORCE): they are terminated)",
    )  # fmt: skip
    scratch_drop.add_argument("--label", metavar="LABEL", help="only buttress_scratch_LABEL_*")
    for parser in (scratch_list, scratch_drop):
        parser.add_argument(
            "--scratch-dsn", metavar="DSN",
            help="the PostgreSQL server (default $BUTTRESS_BACKUP_SCRATCH_DSN)",
        )  # fmt: skip
    scratch_list.set_defaults(handler=_scratch_list)
    scratch_drop.set_defaults(handler=_scratch_drop)


def _add_s3(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="an S3-compatible endpoint (MinIO, R2...); default boto3's ($AWS_ENDPOINT_URL)",
    )


def _say(message: str) -> None:
    sys.stdout.write(message + "\n")


def _fail(command: str, message: str, code: int) -> int:
    sys.stderr.write(f"buttress backup {command}: {message}\n")
    return code


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from buttress.backup._destination import open_destination  # noqa: PLC0415
    from buttress.backup._errors import BackupError  # noqa: PLC0415
    from buttress.backup._retention import RetentionPolicy, apply_retention  # noqa: PLC0415
    from buttress.backup._run import run_backup  # noqa: PLC0415
    from buttress.backup._stream import parse_recipients  # noqa: PLC0415
    from buttress.backup._time import SYSTEM_WALL_CLOCK, parse_duration  # noqa: PLC0415
    from buttress.errors import ConfigurationError  # noqa: PLC0415

    keeps = (args.keep_daily, args.keep_weekly, args.keep_monthly)
    try:
        policy = (
            RetentionPolicy(daily=keeps[0] or 0, weekly=keeps[1] or 0, monthly=keeps[2] or 0)
            if any(k is not None for k in keeps)
            else None
        )
        timeout = parse_duration(args.timeout) if args.timeout else None
        recipients = parse_recipients(args.recipient or [])
        destination = open_destination(
            args.to,
            endpoint_url=args.s3_endpoint,
            staging_dir=Path(args.staging_dir) if args.staging_dir else None,
        )
    except (ConfigurationError, BackupError) as exc:
        return _fail("run", str(exc), 2)
    try:
        entry = run_backup(
            args.source, destination, recipients=recipients, compress=args.compress,
            timeout=timeout,
        )  # fmt: skip
    except BackupError as exc:
        return _fail("run", f"{exc.step}: {exc}", 1)
    manifest = entry.manifest
    rows = sum(manifest.tables.values())
    _say(
        f"backup {entry.id}: {manifest.size} bytes, {len(manifest.tables)} tables, {rows} rows, "
        f"{manifest.duration_seconds:.1f} s -> {entry.location}"
    )
    if policy is not None:
        try:
            plan = apply_retention(destination, policy, now=SYSTEM_WALL_CLOCK.now())
        except BackupError as exc:
            return _fail("run", f"retention: {exc}", 1)
        deleted = ", ".join(e.id for e in plan.delete) or "none"
        _say(f"retention: kept {len(plan.keep)}, deleted {len(plan.delete)} ({deleted})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from buttress.backup._destination import open_destination  # noqa: PLC0415
    from buttress.backup._errors import BackupError  # noqa: PLC0415
    from buttress.backup._time import parse_duration  # noqa: PLC0415
    from buttress.backup._verify import SanityCheck, VerifyOptions, verify_backup  # noqa: PLC0415
    from buttress.errors import ConfigurationError  # noqa: PLC0415
    from buttress.report import EXIT_USAGE, finish  # noqa: PLC0415

    checks, expects = args.check or [], args.expect or []
    if len(checks) != len(expects):
        return _fail("verify", "give one --expect after each --check", EXIT_USAGE)
    try:
        options = VerifyOptions(
            scratch_dsn=args.scratch_dsn or os.environ.get("BUTTRESS_BACKUP_SCRATCH_DSN"),
            checks=tuple(
                SanityCheck(sql=c, expect=e) for c, e in zip(checks, expects, strict=True)
            ),
            rto=parse_duration(args.rto),
            rpo=parse_duration(args.rpo),
            jobs=args.jobs,
            identity_file=Path(args.identity) if args.identity else None,
            record=not args.no_record,
            scratch_label=args.scratch_label,
            count=args.count,
        )
        if not 1 <= args.jobs <= 64:
            raise ConfigurationError(f"--jobs {args.jobs}: use 1 to 64")
        destination = open_destination(args.destination, endpoint_url=args.s3_endpoint)
        result = verify_backup(destination, args.backup, options)
    except (ConfigurationError, BackupError) as exc:
        return _fail("verify", str(exc), EXIT_USAGE)
    return finish(result.report, args, tool="backup verify")


def _list(args: argparse.Namespace) -> int:
    from buttress.backup._destination import open_destination  # noqa: PLC0415
    from buttress.backup._errors import BackupError  # noqa: PLC0415

    try:
        entries = open_destination(args.destination, endpoint_url=args.s3_endpoint).list()
    except BackupError as exc:
        return _fail("list", str(exc), 1)
    for entry in entries:
        verified = f"{entry.verified_at:%Y-%m-%d %H:%M}" if entry.verified_at else "never"
        m = entry.manifest
        _say(
            f"{entry.id}  {m.created_at:%Y-%m-%d %H:%M:%S}Z  {m.size:>12} bytes  "
            f"{sum(m.tables.values()):>10} rows  verified {verified}"
        )
    if not entries:
        _say(f"no backups in {args.destination}")
    return 0


def _scratch_server(args: argparse.Namespace, command: str) -> str | None:
    dsn = args.scratch_dsn or os.environ.get("BUTTRESS_BACKUP_SCRATCH_DSN")
    if not dsn:
        _fail(command, "pass --scratch-dsn DSN (or set BUTTRESS_BACKUP_SCRATCH_DSN)", 2)
    return dsn or None


def _scratch_list(args: argparse.Namespace) -> int:
    from buttress.backup._errors import BackupError  # noqa: PLC0415
    from buttress.backup._leftovers import list_scratch  # noqa: PLC0415
    from buttress.backup._time import SYSTEM_WALL_CLOCK  # noqa: PLC0415

    dsn = _scratch_server(args, "scratch list")
    if dsn is None:
        return 2
    try:
        found = list_scratch(dsn)
    except BackupError as exc:
        return _fail("scratch list", str(exc), 1)
    now = SYSTEM_WALL_CLOCK.now()
    for db in found:
        _say(db.describe(now))
    if not found:
        _say("no scratch databases")
    return 0


def _scratch_drop(args: argparse.Namespace) -> int:
    from buttress.backup._errors import BackupError  # noqa: PLC0415
    from buttress.backup._leftovers import drop_scratch  # noqa: PLC0415
    from buttress.backup._time import parse_duration  # noqa: PLC0415
    from buttress.errors import ConfigurationError  # noqa: PLC0415

    dsn = _scratch_server(args, "scratch drop")
    if dsn is None:
        return 2
    try:
        text = args.older_than.strip()
        older_than = 0.0 if text.rstrip("smhdw") in {"0", "0.0"} else parse_duration(text)
    except ConfigurationError as exc:
        return _fail("scratch drop", f"--older-than: {exc}", 2)
    try:
        result = drop_scratch(dsn, older_than=older_than, force=args.force, label=args.label)
    except BackupError as exc:
        return _fail("scratch drop", str(exc), 1)
    for name in result.dropped:
        _say(f"dropped {name}")
    for name, why in result.skipped:
        _say(f"kept {name}: {why}")
    if not result.dropped and not result.skipped:
        _say(f"no scratch database older than {args.older_than}")
    return 1 if any(why.startswith("not dropped") for _, why in result.skipped) else 0
