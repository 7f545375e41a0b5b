"""``buttress migrate rehearse``: a migration run on a restored copy before production.

The copy is a scratch database (created, always dropped: `buttress.backup`) filled from
the newest verified backup or a ``pg_dump`` of a non-production database. On it the
migration's SQL is linted with squawk, the command is run with ``lock_timeout`` and
``statement_timeout`` set while ``pg_locks`` is sampled from a second connection, and the
way back (downgrade, then upgrade again) is checked. `to_report` judges the measurements
in the shared report model (`buttress.report`); `verdict` says whether it is safe to run
in production and why not. Production is never connected to.

May import the ground floor (``buttress.errors``, ``buttress.clock``), ``buttress.report``
and ``buttress.backup``; psycopg is imported when used.

Example::

    from buttress.migrate import RehearsalOptions, rehearse, to_report, verdict

    rehearsal = rehearse(
        RehearsalOptions(command=("alembic", "upgrade", "head")),
        scratch_server="postgresql://postgres@127.0.0.1/postgres",
        scratch_from="postgresql://app@staging.internal/orders",
    )
    safe, reasons = verdict(to_report(rehearsal))
"""

from buttress.migrate._command import AlembicCommand, StepResult
from buttress.migrate._locks import LockHold, LockLedger, LockSample, LockSampler
from buttress.migrate._rehearse import Rehearsal, RehearsalOptions, rehearse_on
from buttress.migrate._report import to_report, verdict
from buttress.migrate._rules import RULES, squawk_rule
from buttress.migrate._schema import schema_diff, schema_lines
from buttress.migrate._source import ScratchCopy, copy_database, rehearse, scratch_copy
from buttress.migrate._squawk import LintIssue, lint_findings, lint_sql

__all__ = [
    "RULES",
    "AlembicCommand",
    "LintIssue",
    "LockHold",
    "LockLedger",
    "LockSample",
    "LockSampler",
    "Rehearsal",
    "RehearsalOptions",
    "ScratchCopy",
    "StepResult",
    "copy_database",
    "lint_findings",
    "lint_sql",
    "rehearse",
    "rehearse_on",
    "schema_diff",
    "schema_lines",
    "scratch_copy",
    "squawk_rule",
    "to_report",
    "verdict",
]
