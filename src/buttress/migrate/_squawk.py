"""squawk, the maintained PostgreSQL migration linter, run on a migration's SQL.

`lint_sql` runs the ``squawk`` executable (the ``squawk-cli`` package, found beside the
Python interpreter or on ``PATH``) with ``--reporter json`` on SQL text, and turns each
warning into a `LintIssue`: squawk's rule name, the 1-based line, its message and its
help. `lint_findings` makes report `Finding` objects of them, under the ``MIG1xx`` rule
each squawk rule maps to (`buttress.migrate._rules`), with squawk's page for the rule.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from buttress.errors import ConfigurationError
from buttress.migrate._rules import SQUAWK_DOCS, squawk_rule
from buttress.report import Finding, Location

__all__ = ["LintIssue", "find_squawk", "lint_findings", "lint_sql"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LintIssue:
    """One squawk warning: the rule, where (``source``, 1-based ``line``) and what to do."""

    rule: str  # squawk's rule name: "changing-column-type"
    source: str  # the SQL's name in the report: a file, or the command that emitted it
    line: int
    message: str
    help: str


def find_squawk() -> str:
    """The path of the ``squawk`` executable: beside this Python first, then on ``PATH``.

    Raises `ConfigurationError` (with the install command) when there is none.
    """
    beside = Path(sys.executable).with_name("squawk")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("squawk")
    if found is None:
        raise ConfigurationError(
            "squawk (the PostgreSQL migration linter) is not installed: "
            "pip install squawk-cli, or pass --no-lint"
        )
    return found


def lint_sql(
    sql: str, *, source: str, pg_version: str | None = None, timeout: float = 60.0
) -> list[LintIssue]:
    """The warnings squawk gives on ``sql`` (named ``source`` in them), in order of line.

    ``pg_version`` (``"15.4"``) lets squawk drop rules that do not apply to that server
    (a constant default no longer rewrites a table from PostgreSQL 11).

    Example::

        issues = lint_sql("ALTER TABLE t ALTER COLUMN v TYPE bigint;", source="m.sql")
        [i.rule for i in issues]   # ['require-lock-timeout', ..., 'changing-column-type']
    """
    if not sql.strip():
        return []
    args = [find_squawk(), "--reporter", "json"]
    if pg_version:
        args.append(f"--pg-version={pg_version}")
    with tempfile.TemporaryDirectory(prefix="buttress-squawk-") as folder:
        path = Path(folder) / "migration.sql"
        path.write_text(sql, encoding="utf-8")
        try:
            done = subprocess.run(  # noqa: S603 - squawk, on a file of ours
                [*args, str(path)], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ConfigurationError(f"squawk did not finish in {timeout:g} s") from exc
    if done.returncode not in (0, 1):  # 1: warnings found
        raise ConfigurationError(
            f"squawk failed (exit {done.returncode}): {done.stderr.strip()[-500:]}"
        )
    try:
        raw = json.loads(done.stdout or "[]")
    except ValueError as exc:
        raise ConfigurationError(f"squawk's JSON output is unreadable: {exc}") from exc
    return sorted(
        (
            LintIssue(
                rule=str(item.get("rule_name", "")),
                source=source,
                line=int(item.get("line", 0)) + 1,  # squawk counts lines from 0
                message=str(item.get("message", "")),
                help=str(item.get("help") or ""),
            )
            for item in raw
        ),
        key=lambda i: (i.line, i.rule),
    )


def lint_findings(issues: list[LintIssue]) -> list[Finding]:
    """Report findings for squawk's ``issues``, each under the ``MIG1xx`` rule it maps to."""
    findings = []
    for issue in issues:
        rule = squawk_rule(issue.rule)
        findings.append(
            Finding(
                rule_id=rule.id,
                category=rule.category,
                priority=rule.priority,
                message=f"squawk {issue.rule}: {issue.message}",
                location=Location(path=issue.source, line=issue.line),
                fix=issue.help or f"see {SQUAWK_DOCS}{issue.rule}",
                docs=SQUAWK_DOCS + issue.rule,
                fingerprint=f"{rule.id}:{issue.rule}:{issue.source}:{issue.line}",
            )
        )
    return findings
