"""The rehearsal's parts that need no database: squawk, Alembic commands, the lock ledger,
schema diffs, the environment of the command, and the judging of a rehearsal."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from buttress.errors import ConfigurationError
from buttress.migrate import (
    RULES,
    AlembicCommand,
    LockHold,
    LockLedger,
    LockSample,
    Rehearsal,
    RehearsalOptions,
    StepResult,
    lint_findings,
    lint_sql,
    schema_diff,
    to_report,
    verdict,
)
from buttress.migrate._command import as_url, migration_env, run_step
from buttress.migrate._rehearse import without_tables
from buttress.migrate._rules import squawk_rule
from buttress.report import CheckStatus, Priority, Report, to_dict

RISKY = """BEGIN;
ALTER TABLE big ALTER COLUMN v TYPE bigint;
ALTER TABLE orders ADD COLUMN tenant bigint NOT NULL;
COMMIT;
"""


def test_squawk_warnings_become_findings_with_rule_ids_lines_and_docs() -> None:
    issues = lint_sql(RISKY, source="m.sql", pg_version="15.0")
    by_rule = {i.rule: i for i in issues}
    assert by_rule["changing-column-type"].line == 2  # squawk counts from 0, reports from 1
    assert by_rule["adding-required-field"].line == 3
    findings = {f.rule_id: f for f in lint_findings(issues)}
    column = findings["MIG101"]
    assert column.priority is Priority.P0
    assert column.message.startswith("squawk changing-column-type: ")
    assert column.docs == "https://squawkhq.com/docs/changing-column-type"
    assert (column.location.path, column.location.line) == ("m.sql", 2)
    assert findings["MIG102"].fix == "Make the field nullable or add a non-VOLATILE DEFAULT"


def test_squawk_finds_nothing_in_safe_sql_and_an_unknown_rule_maps_to_mig199() -> None:
    assert lint_sql("", source="empty.sql") == []
    assert lint_sql("SELECT 1;\n", source="s.sql") == []
    assert squawk_rule("a-rule-from-a-newer-squawk").id == "MIG199"
    assert all(rule.id[:3] == "MIG" and len(rule.id) == 6 for rule in RULES.values())


def test_alembic_commands_are_taken_apart() -> None:
    cmd = AlembicCommand.parse([sys.executable, "-m", "alembic", "-c", "x.ini", "upgrade", "head"])
    assert cmd is not None
    assert cmd.offline("ab12")[-3:] == ["upgrade", "ab12:head", "--sql"]
    assert cmd.offline(None)[-3:] == ["upgrade", "head", "--sql"]
    assert cmd.downgrade("ab12")[-2:] == ["downgrade", "ab12"]
    assert cmd.downgrade(None)[-2:] == ["downgrade", "base"]
    assert AlembicCommand.parse(["poetry", "run", "alembic", "upgrade", "+1"]) is not None
    for other in (
        ["./manage.py", "migrate"],
        ["alembic", "upgrade", "head", "--sql"],  # already offline
        ["alembic", "downgrade", "-1"],
        ["alembic", "upgrade", "a:b"],
    ):
        assert AlembicCommand.parse(other) is None


def _sample(mode: str, *, pid: int = 7, oid: int = 1, granted: bool = True) -> LockSample:
    return LockSample(pid=pid, relation_oid=oid, relation="public.t", mode=mode, granted=granted)


def test_the_ledger_folds_samples_into_holds_longest_first() -> None:
    ledger = LockLedger()
    ledger.observe(10.00, [_sample("AccessExclusiveLock"), _sample("RowExclusiveLock", oid=2)])
    ledger.observe(10.25, [_sample("AccessExclusiveLock")])
    ledger.observe(10.50, [_sample("AccessExclusiveLock"), _sample("ShareLock", granted=False)])
    holds = ledger.holds()
    assert ledger.samples == 3
    assert [(h.mode, h.seconds) for h in holds] == [
        ("AccessExclusiveLock", 0.5),
        ("RowExclusiveLock", 0.0),
        ("ShareLock", 0.0),
    ]
    assert holds[0].mode_name == "ACCESS EXCLUSIVE"
    assert holds[0].blocks_writes
    assert not holds[1].blocks_writes  # ROW EXCLUSIVE: what writes themselves take
    assert not holds[2].blocks_writes  # waited for, not held


def test_schema_diff_and_alembic_statements_left_out_of_the_lint() -> None:
    assert schema_diff(("table public.a",), ("table public.a", "table public.b")) == (
        "+ table public.b"
    )
    many = schema_diff((), tuple(f"table public.t{i}" for i in range(8)), limit=2)
    assert many.endswith("; ... and 6 more")
    sql = "BEGIN;\nCREATE TABLE alembic_version (\n  v varchar(32)\n);\nALTER TABLE t ADD x int;\n"
    kept = without_tables(sql, ("alembic_version",))
    assert kept.count("\n") == sql.count("\n")  # squawk's line numbers still point right
    assert "alembic_version" not in kept
    assert kept.splitlines()[4] == "ALTER TABLE t ADD x int;"


def test_the_command_sees_only_the_scratch_database_with_timeouts() -> None:
    scratch = "host=127.0.0.1 port=5432 user=ci password=p@ss dbname=buttress_scratch_x"
    base = {"DATABASE_URL": "postgresql://prod/orders", "PGSERVICE": "prod", "PGOPTIONS": "-c a=b"}
    env = migration_env(
        scratch, env_var="DATABASE_URL", scheme="postgresql+psycopg",
        lock_timeout=2.5, statement_timeout=60, base=base,
    )  # fmt: skip
    assert env["DATABASE_URL"] == (
        "postgresql+psycopg://ci:p%40ss@127.0.0.1:5432/buttress_scratch_x"
    )
    assert "PGSERVICE" not in env
    assert (env["PGHOST"], env["PGDATABASE"]) == ("127.0.0.1", "buttress_scratch_x")
    assert env["PGOPTIONS"] == "-c a=b -c lock_timeout=2500 -c statement_timeout=60000"
    assert as_url("host=/var/run/postgresql port=5433 dbname=x") == (
        "postgresql:///x?host=/var/run/postgresql&port=5433"
    )


def test_a_command_past_its_time_limit_is_killed() -> None:
    step = run_step(
        "upgrade", [sys.executable, "-c", "import time; time.sleep(30)"], env={}, cwd=None,
        timeout=0.5,
    )  # fmt: skip
    assert step.returncode is None
    assert step.outcome == "killed at the time limit"
    assert step.seconds < 10


def test_the_error_line_is_found_in_sqlalchemy_output() -> None:
    output = (
        "Traceback ...\nsqlalchemy.exc.IntegrityError: (psycopg.errors.NotNullViolation) "
        'column "tenant" contains null values\n[SQL: ALTER TABLE ...]\n'
        "(Background on this error at: https://sqlalche.me/e/21/gkpj)"
    )
    step = StepResult(name="upgrade", argv=("x",), returncode=1, seconds=1.0, output=output)
    assert step.last_line.startswith("sqlalchemy.exc.IntegrityError")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"command": ()}, "--command is empty"),
        ({"env_var": "DATABASE-URL"}, "--env-var"),
        ({"lock_timeout": 0}, "--lock-timeout"),
        ({"timeout": 10**6}, "--timeout"),
        ({"sql_files": (Path("/nonexistent/m.sql"),)}, "no such file"),
    ],
)
def test_bad_options_are_refused_with_the_option_named(
    changes: dict[str, object], message: str
) -> None:
    options = {"command": ("alembic", "upgrade", "head"), **changes}
    with pytest.raises(ConfigurationError, match=message):
        RehearsalOptions(**options)  # type: ignore[arg-type]


def _rehearsal(**changes: object) -> Rehearsal:
    upgrade = StepResult(name="upgrade", argv=("alembic", "upgrade", "head"), returncode=0,
                         seconds=0.8, output="")  # fmt: skip
    base = Rehearsal(
        options=RehearsalOptions(command=("alembic", "upgrade", "head")),
        source="a pg_dump of postgresql://127.0.0.1/staging", restore_seconds=1.0,
        server_version="15.20", start_revision=None, lint_sources=("m.sql",), lint_issues=(),
        lint_problem=None, upgrade=upgrade, holds=(), samples=50, sampler_error=None,
        partial_change=None, roundtrip_skipped="no downgrade command (--downgrade-command)",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _hold(rows: int, seconds: float, mode: str = "AccessExclusiveLock") -> LockHold:
    ledger = LockLedger()
    sample = LockSample(pid=9, relation_oid=5, relation="public.big", mode=mode, granted=True)
    ledger.observe(0.0, [sample])
    ledger.observe(seconds, [sample])
    return dataclasses.replace(ledger.holds()[0], rows=rows)


def _status(report: Report, rid: str) -> CheckStatus:
    return next(c.status for c in report.checks if c.rule.id == rid)


def test_a_clean_rehearsal_is_safe_and_reports_duration_and_locks() -> None:
    report = to_report(_rehearsal(holds=(_hold(rows=500, seconds=0.3),)))
    assert verdict(report) == (True, [])
    assert _status(report, "MIG010") is CheckStatus.PASS  # a small table
    evidence = {c.rule.id: c.evidence for c in report.checks}
    assert "exit 0 in 0.80 s" in evidence["MIG001"]
    assert "ACCESS EXCLUSIVE on public.big (500 rows) held 0.30 s" in evidence["MIG010"]
    assert _status(report, "MIG020") is CheckStatus.NOT_APPLICABLE
    assert to_dict(report)["tool"]["command"] == "buttress migrate rehearse"


def test_access_exclusive_on_a_big_table_and_long_write_locks_are_not_safe() -> None:
    report = to_report(_rehearsal(holds=(_hold(rows=200_000, seconds=1.5),)))
    safe, reasons = verdict(report)
    assert not safe
    assert _status(report, "MIG010") is CheckStatus.FAIL
    assert _status(report, "MIG011") is CheckStatus.FAIL  # 1.5 s > --max-lock-seconds 1
    assert any("ACCESS EXCLUSIVE on public.big (200,000 rows) held 1.50 s" in r for r in reasons)
    brief = to_report(_rehearsal(holds=(_hold(rows=200_000, seconds=0.05),)))
    assert verdict(brief)[0]  # a brief metadata-only lock (ADD COLUMN NULL) is fine


def test_a_failed_run_that_left_changes_and_an_unsampled_run_are_reported() -> None:
    failed = StepResult(name="upgrade", argv=("alembic",), returncode=1, seconds=0.4,
                        output="psycopg.errors.DivisionByZero: division by zero")  # fmt: skip
    report = to_report(_rehearsal(upgrade=failed, partial_change="+ table public.invoices"))
    safe, reasons = verdict(report)
    assert not safe
    assert _status(report, "MIG001") is CheckStatus.FAIL
    assert _status(report, "MIG002") is CheckStatus.FAIL
    assert "division by zero" in reasons[0]
    blind = to_report(_rehearsal(sampler_error="OperationalError: gone", samples=0))
    assert _status(blind, "MIG010") is CheckStatus.WARN
    unlinted = to_report(_rehearsal(lint_problem="no SQL to lint: pass --sql FILE"))
    assert _status(unlinted, "MIG030") is CheckStatus.WARN
