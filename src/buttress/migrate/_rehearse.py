"""The rehearsal: lint, run, sample the locks, go back and forth, on a scratch copy.

`rehearse_on` works on a scratch database that already holds the copy (`rehearse` makes
one: `buttress.migrate._source`). In order:

1. ``ANALYZE`` (the copy gets the statistics production has) and the tables' sizes;
   the schema, and the Alembic revision the copy is at.
2. Lint: squawk on the ``--sql`` files, else on Alembic's offline SQL
   (``upgrade START:TARGET --sql``).
3. The command, with ``lock_timeout``/``statement_timeout`` set, timed, while a
   `LockSampler` watches ``pg_locks`` from a second connection. When it fails, the
   schema is compared with the one before (a half-applied migration).
4. The way back, when there is one (``--downgrade-command``, or Alembic's
   ``downgrade START``): downgrade, the schema must be the one before; upgrade again,
   the schema must be the one the first upgrade made.

Nothing here connects anywhere but the scratch database.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buttress.backup import password_of
from buttress.clock import SYSTEM_CLOCK, Clock
from buttress.errors import ButtressError, ConfigurationError
from buttress.migrate._command import AlembicCommand, StepResult, migration_env, run_step
from buttress.migrate._locks import LockHold, LockSampler, relation_sizes
from buttress.migrate._schema import schema_diff, schema_lines
from buttress.migrate._squawk import LintIssue, lint_sql

__all__ = ["Rehearsal", "RehearsalOptions", "rehearse_on", "without_tables"]

_ENV_NAME = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclass(frozen=True, slots=True, kw_only=True)
class RehearsalOptions:
    """What to rehearse and the limits to judge it by (times in seconds).

    Example::

        RehearsalOptions(command=("alembic", "upgrade", "head"), max_lock_seconds=0.5)
    """

    command: tuple[str, ...]
    downgrade_command: tuple[str, ...] | None = None  # None: Alembic's, for an Alembic command
    check_downgrade: bool = True
    sql_files: tuple[Path, ...] = ()
    lint: bool = True
    env_var: str = "DATABASE_URL"
    url_scheme: str = "postgresql"
    cwd: str | None = None
    lock_timeout: float = 5.0
    statement_timeout: float = 300.0
    timeout: float = 1800.0  # per command run, then it is killed
    max_duration: float = 60.0
    max_lock_seconds: float = 1.0
    max_exclusive_seconds: float = 0.1  # ACCESS EXCLUSIVE on a big table held this long
    big_table_rows: int = 100_000
    big_table_bytes: int = 256 * 1024 * 1024
    sample_interval: float = 0.01
    ignore_tables: tuple[str, ...] = ("alembic_version",)

    def __post_init__(self) -> None:
        if not self.command:
            raise ConfigurationError("--command is empty: give the migration command")
        if self.downgrade_command is not None and not self.downgrade_command:
            raise ConfigurationError("--downgrade-command is empty")
        if not self.env_var or set(self.env_var) - _ENV_NAME or self.env_var[0].isdigit():
            raise ConfigurationError(
                f"--env-var {self.env_var!r}: use an environment variable name (DATABASE_URL)"
            )
        for name, value, low, high in (
            ("--lock-timeout", self.lock_timeout, 0.001, 3600.0),
            ("--statement-timeout", self.statement_timeout, 0.001, 86400.0),
            ("--timeout", self.timeout, 1.0, 86400.0),
            ("--max-duration", self.max_duration, 0.0, 86400.0),
            ("--max-lock-seconds", self.max_lock_seconds, 0.0, 86400.0),
            ("--max-exclusive-seconds", self.max_exclusive_seconds, 0.0, 86400.0),
            ("sample_interval", self.sample_interval, 0.005, 5.0),
        ):
            if not low <= value <= high:
                raise ConfigurationError(f"{name} {value:g}: use {low:g} to {high:g} seconds")
        if self.big_table_rows < 1 or self.big_table_bytes < 1:
            raise ConfigurationError("--big-table-rows and the byte limit must be positive")
        for path in self.sql_files:
            if not path.is_file():
                raise ConfigurationError(f"--sql {path}: no such file")

    @property
    def alembic(self) -> AlembicCommand | None:
        """The command taken apart, when it is ``alembic ... upgrade TARGET``."""
        return AlembicCommand.parse(self.command)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rehearsal:
    """Everything one rehearsal measured; `buttress.migrate.to_report` judges it."""

    options: RehearsalOptions
    source: str  # where the copy came from, for people
    restore_seconds: float
    server_version: str
    start_revision: str | None
    lint_sources: tuple[str, ...]
    lint_issues: tuple[LintIssue, ...]
    lint_problem: str | None  # why the SQL was not linted (None: it was)
    upgrade: StepResult
    holds: tuple[LockHold, ...]
    samples: int
    sampler_error: str | None
    partial_change: str | None  # a failed run: what it left changed ("" for nothing)
    downgrade: StepResult | None = None
    again: StepResult | None = None
    roundtrip_problems: tuple[str, ...] = ()
    roundtrip_skipped: str = ""  # why the way back was not checked
    duration: float = 0.0


def _connect(dsn: str) -> Any:
    import psycopg  # noqa: PLC0415 - the postgres extra

    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise ButtressError(f"cannot connect to the scratch database: {exc}") from None


def _start_revision(conn: Any) -> tuple[str | None, str | None]:
    """(the one Alembic revision the copy is at or None, why the range is unknown)."""
    if conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None:
        return None, None
    rows = [r[0] for r in conn.execute("SELECT version_num FROM alembic_version").fetchall()]
    if len(rows) > 1:
        return None, f"the copy is at {len(rows)} Alembic heads ({', '.join(rows)})"
    return (rows[0] if rows else None), None


def _lint(
    opts: RehearsalOptions, env: dict[str, str], start: str | None, pg_version: str,
    secrets: list[str], clock: Clock,
) -> tuple[tuple[str, ...], list[LintIssue], str | None]:  # fmt: skip
    """(sources linted, squawk's issues, why nothing was linted)."""
    if not opts.lint:
        return (), [], "lint switched off (--no-lint)"
    if opts.sql_files:
        issues = []
        for path in opts.sql_files:
            sql = path.read_text(encoding="utf-8")
            issues += lint_sql(sql, source=str(path), pg_version=pg_version)
        return tuple(str(p) for p in opts.sql_files), issues, None
    alembic = opts.alembic
    if alembic is None:
        return (), [], "no SQL to lint: pass --sql FILE (the command is not an Alembic upgrade)"
    argv = alembic.offline(start)
    step = run_step(
        "offline SQL", argv, env=env, cwd=opts.cwd, timeout=min(opts.timeout, 300.0),
        secrets=secrets, clock=clock, keep_stdout=True,
    )  # fmt: skip
    source = shlex.join(argv)
    if not step.ok:
        return (), [], f"{source} failed ({step.outcome}): {step.last_line}"
    sql = without_tables(step.stdout, opts.ignore_tables)
    return (source,), lint_sql(sql, source=source, pg_version=pg_version), None


def without_tables(sql: str, tables: tuple[str, ...]) -> str:
    r"""``sql`` with the statements naming one of ``tables`` blanked (lines kept in place).

    Alembic's offline SQL creates and updates ``alembic_version``: Alembic's business, not
    the migration's, so squawk is not asked about it.

    Example::

        >>> without_tables("CREATE TABLE alembic_version (v varchar(32));\nSELECT 1;\n",
        ...                ("alembic_version",))
        '\nSELECT 1;\n'
    """
    if not tables:
        return sql
    parts = sql.split(";\n")
    out = []
    for i, statement in enumerate(parts):
        end = "" if i == len(parts) - 1 else ";\n"
        words = set(statement.replace("(", " ").replace('"', " ").split())
        if words & set(tables):
            out.append("\n" * statement.count("\n") + ("\n" if end else ""))
        else:
            out.append(statement + end)
    return "".join(out)


def rehearse_on(
    scratch: str,
    opts: RehearsalOptions,
    *,
    source: str,
    restore_seconds: float = 0.0,
    clock: Clock = SYSTEM_CLOCK,
) -> Rehearsal:
    """Rehearse ``opts.command`` on the scratch database at ``scratch`` (a DSN it may write).

    Example::

        with scratch_database(admin_dsn, label="rehearse") as dsn:
            copy_into(source_dsn, dsn)
            rehearsal = rehearse_on(dsn, RehearsalOptions(command=("alembic", "upgrade", "head")),
                                    source="pg_dump of staging")
    """
    started = clock.now()
    secrets = [password_of(scratch)]
    env = migration_env(
        scratch, env_var=opts.env_var, scheme=opts.url_scheme,
        lock_timeout=opts.lock_timeout, statement_timeout=opts.statement_timeout,
    )  # fmt: skip
    with _connect(scratch) as conn:
        conn.execute(f"SET statement_timeout = {round(opts.statement_timeout * 1000)}")
        conn.execute("ANALYZE")
        num = int(conn.execute("SHOW server_version_num").fetchone()[0])
        version = f"{num // 10000}.{num % 10000}"
        sizes = relation_sizes(conn)
        before = schema_lines(conn, ignore=opts.ignore_tables)
        start, heads_problem = _start_revision(conn)
    sources, issues, lint_problem = (
        ((), [], f"{heads_problem}: pass --sql FILE")
        if heads_problem and not opts.sql_files and opts.lint
        else _lint(opts, env, start, version, secrets, clock)
    )
    with LockSampler(
        scratch, sizes=sizes, interval=opts.sample_interval, max_seconds=opts.timeout + 60,
        clock=clock,
    ) as sampler:  # fmt: skip
        upgrade = run_step(
            "upgrade", opts.command, env=env, cwd=opts.cwd, timeout=opts.timeout,
            secrets=secrets, clock=clock,
        )  # fmt: skip
    with _connect(scratch) as conn:
        after = schema_lines(conn, ignore=opts.ignore_tables)
    partial = None if upgrade.ok else schema_diff(before, after)
    result = Rehearsal(
        options=opts, source=source, restore_seconds=restore_seconds, server_version=version,
        start_revision=start, lint_sources=sources, lint_issues=tuple(issues),
        lint_problem=lint_problem, upgrade=upgrade, holds=tuple(sampler.ledger.holds()),
        samples=sampler.ledger.samples, sampler_error=sampler.error, partial_change=partial,
    )  # fmt: skip
    back = _way_back(scratch, opts, env, start, before, after, secrets, clock, upgrade.ok)
    return _replace(result, back, duration=clock.now() - started)


def _way_back(
    scratch: str, opts: RehearsalOptions, env: dict[str, str], start: str | None,
    before: tuple[str, ...], after: tuple[str, ...], secrets: list[str], clock: Clock,
    upgraded: bool,
) -> tuple[StepResult | None, StepResult | None, tuple[str, ...], str]:  # fmt: skip
    """(downgrade, upgrade again, problems, why skipped)."""
    if not opts.check_downgrade:
        return None, None, (), "the way back was not asked for (--no-downgrade)"
    if not upgraded:
        return None, None, (), "the upgrade failed"
    argv: tuple[str, ...] | None = opts.downgrade_command
    if argv is None and opts.alembic is not None:
        argv = tuple(opts.alembic.downgrade(start))
    if argv is None:
        return None, None, (), "no downgrade command (--downgrade-command)"
    down = run_step(
        "downgrade", argv, env=env, cwd=opts.cwd, timeout=opts.timeout, secrets=secrets,
        clock=clock,
    )  # fmt: skip
    if not down.ok:
        return down, None, (f"the downgrade failed ({down.outcome}): {down.last_line}",), ""
    with _connect(scratch) as conn:
        reverted = schema_lines(conn, ignore=opts.ignore_tables)
    problems = []
    if reverted != before:
        problems.append(
            "after the downgrade the schema is not the one before the upgrade: "
            + schema_diff(before, reverted)
        )
    again = run_step(
        "upgrade again", opts.command, env=env, cwd=opts.cwd, timeout=opts.timeout,
        secrets=secrets, clock=clock,
    )  # fmt: skip
    if not again.ok:
        problems.append(f"upgrading again failed ({again.outcome}): {again.last_line}")
    else:
        with _connect(scratch) as conn:
            redone = schema_lines(conn, ignore=opts.ignore_tables)
        if redone != after:
            problems.append(
                "upgrading again gives another schema than the first upgrade: "
                + schema_diff(after, redone)
            )
    return down, again, tuple(problems), ""


def _replace(
    result: Rehearsal,
    back: tuple[StepResult | None, StepResult | None, tuple[str, ...], str],
    *,
    duration: float,
) -> Rehearsal:
    import dataclasses  # noqa: PLC0415

    down, again, problems, skipped = back
    return dataclasses.replace(
        result, downgrade=down, again=again, roundtrip_problems=problems,
        roundtrip_skipped=skipped, duration=duration,
    )  # fmt: skip
