"""The ``buttress migrate rehearse`` command: options, the run, the report and the verdict.

Exit codes as for ``buttress audit``: 0 when every gate passes, 1 when one fails (by
default ``--fail-on P1``: a migration that is not safe to run in production), 2 for a
usage or environment error (a bad option, a backup that cannot be found or restored),
said in one line. The verdict (safe or not, and why) is one more line on stderr.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_command"]

_DESCRIPTION = """\
Rehearse a migration on a restored copy before it touches production. A scratch
database (created on --scratch-dsn, always dropped) is filled from the newest verified
backup (--from latest --backups DEST) or a pg_dump of a non-production database
(--scratch-from DSN). Then: squawk lints the migration's SQL (Alembic's offline SQL, or
--sql FILE); the command runs against the copy (its URL in $DATABASE_URL, or --env-var)
with lock_timeout and statement_timeout set, timed, while pg_locks is sampled from a
second connection (ACCESS EXCLUSIVE on a big table, long write-blocking locks); a failed
run is checked for half-applied changes; downgrade then upgrade again must restore each
schema. The report (scorecard, JSON, Markdown, SARIF, gates) says whether it is safe to
run in production and why not. Production is never connected to. See docs/migrations.md.
Exit status: 0 safe (gates passed), 1 a gate failed, 2 usage or environment error.
"""

_EPILOG = """\
examples:
  buttress migrate rehearse --command "alembic upgrade head" --from latest \\
      --backups s3://backups/orders --scratch-dsn postgresql://ci@127.0.0.1/postgres
  buttress migrate rehearse --command "alembic upgrade head" \\
      --scratch-from postgresql://ro@staging/orders --scratch-dsn postgresql://ci@127.0.0.1/postgres
  buttress migrate rehearse --command "./manage.py migrate" --sql migrate.sql \\
      --downgrade-command "./manage.py migrate orders 0041" ... --format markdown
"""


def add_command(sub: Any) -> None:
    """Add ``buttress migrate rehearse`` to the command line's subparsers ``sub``."""
    from buttress.report._command import add_report_arguments  # noqa: PLC0415 - light

    migrate = sub.add_parser(
        "migrate",
        help="rehearse a migration on a restored copy: lint, locks, timing, the way back",
        description="Database migrations, made safe before production.",
    )
    actions = migrate.add_subparsers(dest="migrate_action", required=True, metavar="ACTION")
    p = actions.add_parser(
        "rehearse",
        help="run a migration on a scratch copy of the latest verified backup and judge it",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--command", required=True, metavar="CMD",
        help="the migration command (split like a shell line, run without a shell)",
    )  # fmt: skip
    origin = p.add_argument_group("the copy (one of)")
    origin.add_argument(
        "--from", dest="backup_id", metavar="ID",
        help="latest (newest verified backup), latest-unverified, or a backup id; "
        "with --backups",
    )  # fmt: skip
    origin.add_argument("--backups", metavar="DEST", help="the backup destination (dir, s3://)")
    origin.add_argument(
        "--scratch-from", metavar="DSN",
        help="pg_dump this non-production database into the scratch copy instead",
    )  # fmt: skip
    origin.add_argument("--identity", metavar="FILE", help="age identity of encrypted backups")
    p.add_argument(
        "--scratch-dsn", metavar="DSN",
        help="a PostgreSQL server (not production) where the scratch database is created "
        "(user with CREATEDB; default $BUTTRESS_BACKUP_SCRATCH_DSN, as backup verify)",
    )  # fmt: skip
    p.add_argument(
        "--env-var", default="DATABASE_URL", metavar="NAME",
        help="the variable the command reads the database URL from (DATABASE_URL)",
    )  # fmt: skip
    p.add_argument(
        "--url-scheme", default="postgresql", metavar="SCHEME",
        help="the URL's scheme (postgresql; postgresql+psycopg for SQLAlchemy with psycopg 3)",
    )  # fmt: skip
    p.add_argument("--cwd", metavar="DIR", help="run the command in DIR (default: here)")
    p.add_argument(
        "--sql", action="append", type=Path, metavar="FILE",
        help="lint this SQL (repeatable; default: Alembic's offline SQL)",
    )  # fmt: skip
    p.add_argument("--no-lint", action="store_true", help="do not run squawk")
    p.add_argument(
        "--downgrade-command", metavar="CMD",
        help="the way back (default for Alembic: downgrade to the copy's revision)",
    )  # fmt: skip
    p.add_argument("--no-downgrade", action="store_true", help="do not check the way back")
    _number(p, "--lock-timeout", 5.0, "lock_timeout the command runs with")
    _number(p, "--statement-timeout", 300.0, "statement_timeout the command runs with")
    _number(p, "--timeout", 1800.0, "each command is killed after this long")
    _number(p, "--max-duration", 60.0, "a longer migration fails MIG003")
    _number(p, "--max-lock-seconds", 1.0, "a write-blocking lock held longer fails MIG011")
    _number(
        p, "--max-exclusive-seconds", 0.1, "ACCESS EXCLUSIVE on a big table this long fails MIG010"
    )
    p.add_argument(
        "--big-table-rows", type=int, default=100_000, metavar="N",
        help="ACCESS EXCLUSIVE on a table this big fails MIG010 (100000)",
    )  # fmt: skip
    add_report_arguments(p, fail_on_help="exit 1 on a finding this severe (default P1)")
    p.set_defaults(handler=_rehearse, fail_on="P1")


def _number(parser: argparse.ArgumentParser, flag: str, default: float, what: str) -> None:
    parser.add_argument(
        flag, type=float, default=default, metavar="S", help=f"{what} ({default:g} s)"
    )


def _usage(message: str) -> int:
    print(  # buttress: ignore[BTR501] the command line's one-line answer
        f"buttress migrate: {message}", file=sys.stderr
    )
    return 2


def _rehearse(args: argparse.Namespace) -> int:
    from buttress.errors import ButtressError, ConfigurationError  # noqa: PLC0415
    from buttress.migrate import RehearsalOptions, rehearse, to_report, verdict  # noqa: PLC0415
    from buttress.report import finish  # noqa: PLC0415

    scratch = args.scratch_dsn or os.environ.get("BUTTRESS_BACKUP_SCRATCH_DSN")
    if not scratch:
        return _usage("--scratch-dsn (or $BUTTRESS_BACKUP_SCRATCH_DSN): where to create the copy")
    if (args.scratch_from is None) == (args.backups is None):
        return _usage("give the copy's origin: --from latest --backups DEST, or --scratch-from DSN")
    if args.backups is not None and args.backup_id is None:
        return _usage("--backups needs --from (latest, latest-unverified or a backup id)")
    if args.scratch_from is not None and args.backup_id is not None:
        return _usage("--from reads a backup (--backups): not with --scratch-from")
    try:
        options = RehearsalOptions(
            command=tuple(shlex.split(args.command)),
            downgrade_command=(
                tuple(shlex.split(args.downgrade_command)) if args.downgrade_command else None
            ),
            check_downgrade=not args.no_downgrade,
            sql_files=tuple(args.sql or ()),
            lint=not args.no_lint,
            env_var=args.env_var,
            url_scheme=args.url_scheme,
            cwd=args.cwd,
            lock_timeout=args.lock_timeout,
            statement_timeout=args.statement_timeout,
            timeout=args.timeout,
            max_duration=args.max_duration,
            max_lock_seconds=args.max_lock_seconds,
            max_exclusive_seconds=args.max_exclusive_seconds,
            big_table_rows=args.big_table_rows,
        )
    except (ConfigurationError, ValueError) as exc:  # ValueError: shlex, unbalanced quotes
        return _usage(str(exc))
    try:
        rehearsal = rehearse(
            options,
            scratch_server=scratch,
            scratch_from=args.scratch_from,
            backups=args.backups,
            backup_id=args.backup_id or "latest",
            identity=Path(args.identity) if args.identity else None,
        )
    except ButtressError as exc:
        return _usage(str(exc))
    report = to_report(rehearsal)
    code = finish(report, args, tool="migrate")
    safe, reasons = verdict(report)
    line = (
        "safe to run in production"
        if safe
        else f"NOT safe to run in production ({len(reasons)} reason"
        f"{'s' if len(reasons) != 1 else ''}): " + "; ".join(reasons[:3])
    )
    print(  # buttress: ignore[BTR501] the command line's one-line verdict
        f"buttress migrate: {line}", file=sys.stderr
    )
    return code
