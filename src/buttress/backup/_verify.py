"""``buttress backup verify``: prove that a backup restores, in a database made for it.

The steps, each a check in the shared report (`RULES`): the stored bytes against the
manifest's size and SHA-256; a restore into a scratch database this run creates and always
drops (`scratch_database`; for SQLite a scratch copy checked with ``PRAGMA
integrity_check``); row counts and the schema hash against the manifest; the user's sanity
queries (``--check SQL --expect '>0'``); the restore's time against the RTO and the
backup's age against the RPO. The outcome is recorded beside the manifest
(``verification.json``), where `BackupCheck` and the metrics read it.

Example::

    result = verify_backup(open_destination("/backups"), "latest",
                           VerifyOptions(scratch_dsn="postgresql://postgres@127.0.0.1/postgres"))
    sys.exit(0 if result.passed else 1)
"""

from __future__ import annotations

import datetime as dt
import logging
import operator
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buttress import __version__
from buttress.backup._catalog import (
    Description,
    count_rows,
    count_table,
    describe_postgres,
    describe_sqlite,
    inserted_rows,
)
from buttress.backup._destination import BackupEntry, Destination
from buttress.backup._errors import BackupError, redact
from buttress.backup._manifest import Manifest, Verification
from buttress.backup._pgtools import password_of
from buttress.backup._restore import checksum_problem, restore_backup
from buttress.backup._rules import RULES
from buttress.backup._scratch import scratch_database
from buttress.backup._stream import decrypt_file, load_identities
from buttress.backup._time import (
    SYSTEM_WALL_CLOCK,
    WallClock,
    format_duration,
    in_the_future,
)
from buttress.errors import ConfigurationError
from buttress.report import Check, CheckStatus, Finding, Location, Report

__all__ = ["SanityCheck", "VerifyOptions", "VerifyResult", "verify_backup"]

_log = logging.getLogger("buttress.backup")
PASS, FAIL, NA = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.NOT_APPLICABLE
_EXPECT = re.compile(r"\s*(>=|<=|==|!=|=|>|<)\s*(-?\d+(?:\.\d+)?)\s*")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "=": operator.eq, "==": operator.eq, "!=": operator.ne,
}  # fmt: skip
_SHOWN_DIFFERENCES = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class SanityCheck:
    """A query whose first value must satisfy ``expect`` (``>0``, ``>=100``, ``=0``, ``!=0``).

    Example::

        SanityCheck(sql="select count(*) from orders where created_at > now() - "
                        "interval '2 days'", expect=">0")
    """

    sql: str
    expect: str

    def __post_init__(self) -> None:
        if not self.sql.strip():
            raise ConfigurationError("SanityCheck(sql=''): give a query")
        if _EXPECT.fullmatch(self.expect) is None:
            raise ConfigurationError(
                f"SanityCheck(expect={self.expect!r}): use a comparison and a number: "
                "'>0', '>=100', '=0', '!=0', '<5'"
            )

    def judge(self, value: object) -> bool:
        """Whether ``value`` (the query's first column of its first row) is as expected."""
        match = _EXPECT.fullmatch(self.expect)
        assert match is not None  # noqa: S101 - validated in __post_init__
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return _OPS[match.group(1)](number, float(match.group(2)))


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyOptions:
    """How to verify.

    Attributes:
        scratch_dsn: a PostgreSQL server (and a database to connect to, like ``postgres``)
            where the scratch database is created; its user needs ``CREATEDB``. Not used
            for SQLite backups.
        checks: the sanity queries.
        rto: seconds the restore may take (fetch, decrypt and pg_restore together).
        rpo: seconds old the backup may be.
        jobs: ``pg_restore --jobs``.
        identity_file: the age identity file, for encrypted backups.
        restore_timeout: seconds after which pg_restore is killed (default: 2 x RTO).
        query_timeout: seconds each sanity query may take.
        record: write the outcome to ``verification.json`` beside the manifest.
        scratch_label: the middle of the scratch database's name
            (``buttress_scratch_<label>_<time>_<random>``).
        count: how the restored rows are counted (PostgreSQL). ``"inserted"``: the rows
            pg_restore inserted, read from the server's statistics (exact on PostgreSQL
            15+ once the restore's sessions ended; no table is read; a table that
            differs from the manifest is counted again with ``count(*)`` before it
            fails), falling back to ``"scan"``: ``count(*)`` of every table over
            ``jobs`` connections.
    """

    scratch_dsn: str | None = None
    checks: tuple[SanityCheck, ...] = ()
    rto: float = 4 * 3600.0
    rpo: float = 24 * 3600.0
    jobs: int = 2
    identity_file: Path | None = None
    restore_timeout: float | None = None
    query_timeout: float = 60.0
    record: bool = True
    scratch_label: str = "verify"
    count: str = "inserted"

    def __post_init__(self) -> None:
        if not 1 <= self.jobs <= 64:
            raise ConfigurationError(f"VerifyOptions(jobs={self.jobs}): use 1 to 64")
        if self.count not in {"inserted", "scan"}:
            raise ConfigurationError(f"VerifyOptions(count={self.count!r}): 'inserted' or 'scan'")


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyResult:
    """The report, the backup it judged and the verification recorded."""

    report: Report
    entry: BackupEntry
    verification: Verification

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return self.verification.passed


@dataclass(slots=True)
class _Run:
    outcomes: dict[str, tuple[CheckStatus, str]] = field(default_factory=dict)
    restore_seconds: float | None = None

    def set(self, rid: str, status: CheckStatus, evidence: str) -> None:
        self.outcomes[rid] = (status, evidence)


def verify_backup(
    destination: Destination,
    backup_id: str = "latest",
    options: VerifyOptions | None = None,
    *,
    clock: WallClock = SYSTEM_WALL_CLOCK,
) -> VerifyResult:
    """Verify backup ``backup_id`` (an id, ``latest`` or ``latest-verified``) of ``destination``.

    Raises `BackupError` only when the backup cannot be found or its manifest read; every
    other failure is a failed check in the report.
    """
    opts = options or VerifyOptions()
    started = time.perf_counter()
    entry = destination.get(backup_id)
    manifest = entry.manifest
    run = _Run()
    if manifest.engine == "sqlite":
        with tempfile.TemporaryDirectory(prefix="buttress-verify-") as folder:
            work = Path(folder)
            fetch_started = time.perf_counter()
            stored = _fetch(destination, entry, work, run)
            if stored is not None and _checksum(stored, manifest, run):
                plain = _decrypt(stored, manifest, work, opts, run)
                if plain is not None:
                    prepare = time.perf_counter() - fetch_started
                    _restore_sqlite(plain, manifest, work, opts, run, prepare)
    else:
        _restore_postgres(destination, entry, opts, run)
    _judge_rto(opts, run)
    _judge_rpo(manifest, opts, run, clock.now())
    report = _report(run, destination, entry, time.perf_counter() - started)
    verification = _record(destination, entry, run, opts, clock)
    return VerifyResult(report=report, entry=entry, verification=verification)


def _fetch(destination: Destination, entry: BackupEntry, work: Path, run: _Run) -> Path | None:
    try:
        return destination.fetch(entry, work)
    except BackupError as exc:
        run.set("BKP001", FAIL, str(exc))
        return None


def _checksum(stored: Path, manifest: Manifest, run: _Run) -> bool:
    problem = checksum_problem(stored, manifest.size, manifest.sha256)
    if problem is not None:
        run.set("BKP001", FAIL, problem)
        return False
    run.set("BKP001", PASS, f"{manifest.size} bytes, SHA-256 {manifest.sha256[:16]}... as recorded")
    return True


def _decrypt(
    stored: Path, manifest: Manifest, work: Path, opts: VerifyOptions, run: _Run
) -> Path | None:
    if manifest.encryption is None:
        return stored
    if manifest.encryption != "age":
        run.set("BKP002", FAIL, f"unknown encryption {manifest.encryption!r}")
        return None
    if opts.identity_file is None:
        run.set("BKP002", FAIL, "the backup is encrypted (age): pass --identity FILE")
        return None
    plain = work / manifest.file.removesuffix(".age")
    try:
        copied = decrypt_file(stored, plain, load_identities(opts.identity_file))
    except BackupError as exc:
        run.set("BKP002", FAIL, str(exc))
        return None
    if manifest.plain_sha256 and copied.plain_sha256 != manifest.plain_sha256:
        run.set("BKP002", FAIL, "the decrypted dump does not match the manifest's plain SHA-256")
        return None
    return plain


_STEP_RULE = {"fetch": "BKP001", "checksum": "BKP001"}  # decrypt, restore: BKP002


def _restore_postgres(
    destination: Destination, entry: BackupEntry, opts: VerifyOptions, run: _Run
) -> None:
    manifest = entry.manifest
    if not opts.scratch_dsn:
        try:
            with destination.fetched(entry) as stored:  # the checksum can still be judged
                _checksum(stored, manifest, run)
        except BackupError as exc:
            run.set("BKP001", FAIL, str(exc))
        run.set(
            "BKP002", FAIL, "no PostgreSQL server to restore into: pass --scratch-dsn "
            "(or set BUTTRESS_BACKUP_SCRATCH_DSN)",
        )  # fmt: skip
        return
    import psycopg  # noqa: PLC0415

    timeout = opts.restore_timeout if opts.restore_timeout is not None else 2 * opts.rto
    secret = [password_of(opts.scratch_dsn)]
    with scratch_database(opts.scratch_dsn, label=opts.scratch_label) as dsn:
        try:
            restored = restore_backup(
                destination, entry, dsn, identity_file=opts.identity_file, jobs=opts.jobs,
                timeout=timeout,
            )  # fmt: skip
        except BackupError as exc:
            rule = _STEP_RULE.get(exc.step, "BKP002")
            if rule == "BKP002":  # restore_backup checked the file before saying so
                m = manifest
                run.set("BKP001", PASS, f"{m.size} bytes, SHA-256 {m.sha256[:16]}... as recorded")
            run.set(rule, FAIL, str(exc))
            if "did not finish within" in str(exc):
                run.set("BKP006", FAIL, f"the restore was stopped after {timeout:g} s")
            return
        when = "while decrypting" if manifest.encryption else "while pg_restore ran"
        run.set("BKP001", PASS, f"{restored.size} bytes, SHA-256 {restored.sha256[:16]}... as "
                f"recorded (read {when})")  # fmt: skip
        run.restore_seconds = restored.seconds
        run.set(
            "BKP002", PASS,
            f"pg_restore --jobs {opts.jobs} into a scratch database in "
            f"{restored.restore_seconds:.1f} s ({restored.prepare_seconds:.1f} s to fetch"
            f"{' and decrypt' if manifest.encryption else ''} it first)",
        )  # fmt: skip
        try:
            counts, how = _counts(dsn, manifest, opts)  # first: it waits for no other session
            with psycopg.connect(dsn, connect_timeout=10) as conn:
                schema = describe_postgres(conn, counts=False)
                conn.rollback()
                found = Description(
                    tables=counts, schema_hash=schema.schema_hash,
                    table_schemas=schema.table_schemas,
                )  # fmt: skip
                _compare(found, manifest, run, how)
                _sanity(opts, run, lambda sql: _pg_value(conn, sql, opts.query_timeout), secret)
        except psycopg.Error as exc:
            run.set("BKP003", FAIL, f"cannot read the restored copy: {redact(str(exc), secret)}")


_BY_NAME = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname || '.' || c.relname = ANY(%s)
"""


def _counts(dsn: str, manifest: Manifest, opts: VerifyOptions) -> tuple[dict[str, int], str]:
    """Row counts of the restored copy, and how they were taken (for the evidence)."""
    inserted = inserted_rows(dsn) if opts.count == "inserted" else None
    if inserted is None:
        return count_rows(dsn, jobs=opts.jobs), f"count(*) over {opts.jobs} connection(s)"
    differ = [t for t, n in inserted.items() if manifest.tables.get(t) != n]
    if differ:  # a failure is always confirmed by reading the table
        import psycopg  # noqa: PLC0415

        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            pairs = conn.execute(_BY_NAME, [differ]).fetchall()  # a '.' may be in a name
            for schema, table in pairs:
                inserted[f"{schema}.{table}"] = count_table(conn, schema, table)
    return inserted, "rows pg_restore inserted, from the server's statistics" + (
        f"; {len(differ)} table(s) re-counted with count(*)" if differ else ""
    )


def _pg_value(conn: Any, sql: str, timeout: float) -> object:
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute(f"SET LOCAL statement_timeout = {int(timeout * 1000)}")
        row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def _restore_sqlite(
    copy: Path, manifest: Manifest, work: Path, opts: VerifyOptions, run: _Run, prepare: float
) -> None:
    started = time.perf_counter()
    scratch = work / "scratch.sqlite3"
    if copy != scratch:
        shutil.copyfile(copy, scratch)  # never open what is stored
    try:
        conn = sqlite3.connect(f"{scratch.as_uri()}?mode=ro", uri=True)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchone()
            if result is None or result[0] != "ok":
                run.set("BKP002", FAIL, f"PRAGMA integrity_check: {result[0] if result else '?'}")
                return
            seconds = time.perf_counter() - started
            run.restore_seconds = prepare + seconds
            run.set(
                "BKP002", PASS, f"a scratch copy passed PRAGMA integrity_check ({seconds:.1f} s)"
            )
            _compare(describe_sqlite(conn), manifest, run)
            _sanity(opts, run, lambda sql: _sqlite_value(conn, sql), [])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        run.set("BKP002", FAIL, f"not a SQLite database: {exc}")


def _sqlite_value(conn: sqlite3.Connection, sql: str) -> object:
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def _compare(found: Description, manifest: Manifest, run: _Run, how: str = "") -> None:
    problems = []
    for table, expected in sorted(manifest.tables.items()):
        got = found.tables.get(table)
        if got is None:
            problems.append(f"{table} is missing ({expected} rows expected)")
        elif got != expected:
            problems.append(f"{table}: {got} rows, the manifest says {expected}")
    problems += [
        f"{t} is not in the manifest" for t in sorted(found.tables.keys() - manifest.tables.keys())
    ]
    total = sum(manifest.tables.values())
    if problems:
        shown = "; ".join(problems[:_SHOWN_DIFFERENCES])
        more = len(problems) - _SHOWN_DIFFERENCES
        run.set("BKP003", FAIL, shown + (f"; and {more} more" if more > 0 else ""))
    else:
        note = f" ({how})" if how else ""
        run.set("BKP003", PASS, f"{len(manifest.tables)} tables, {total} rows, as recorded{note}")
    if found.schema_hash == manifest.schema_hash:
        run.set("BKP004", PASS, f"schema hash {found.schema_hash[:16]}... as recorded")
        return
    names = sorted(
        name
        for name in manifest.table_schemas.keys() | found.table_schemas.keys()
        if manifest.table_schemas.get(name) != found.table_schemas.get(name)
    )
    run.set(
        "BKP004", FAIL,
        f"schema hash {found.schema_hash[:16]}..., the manifest says "
        f"{manifest.schema_hash[:16]}...; differs: {', '.join(names[:8]) or '?'}",
    )  # fmt: skip


def _sanity(
    opts: VerifyOptions, run: _Run, value_of: Callable[[str], object], secret: Sequence[str]
) -> None:
    if not opts.checks:
        run.set("BKP005", NA, "no --check given")
        return
    failed = []
    for check in opts.checks:
        try:
            value = value_of(check.sql)
        except Exception as exc:
            failed.append(f"{check.sql!r} failed: {redact(str(exc), secret).splitlines()[0]}")
            continue
        if not check.judge(value):
            failed.append(f"{check.sql!r} returned {value!r}, expected {check.expect}")
    if failed:
        run.set("BKP005", FAIL, "; ".join(failed))
    else:
        run.set(
            "BKP005",
            PASS,
            f"{len(opts.checks)} sanity quer{'y' if len(opts.checks) == 1 else 'ies'} as expected",
        )


def _judge_rpo(manifest: Manifest, opts: VerifyOptions, run: _Run, now: float) -> None:
    taken = manifest.created_at.timestamp()
    when = f"{manifest.created_at:%Y-%m-%d %H:%M} UTC"
    if in_the_future(taken, now):
        run.set(
            "BKP007", FAIL,
            f"dated {format_duration(taken - now)} in the future ({when}): the clock of the "
            "machine that took it, or of this one, is wrong, so its age proves nothing; "
            f"RPO {format_duration(opts.rpo)}",
        )  # fmt: skip
        return
    age = now - taken
    run.set(
        "BKP007",
        PASS if age <= opts.rpo else FAIL,
        f"taken {format_duration(max(age, 0.0))} ago, at {when}; RPO {format_duration(opts.rpo)}",
    )


def _judge_rto(opts: VerifyOptions, run: _Run) -> None:
    if "BKP006" in run.outcomes:  # the restore was stopped
        return
    if run.restore_seconds is None:
        run.set("BKP006", NA, "no restore completed")
        return
    ok = run.restore_seconds <= opts.rto
    run.set(
        "BKP006",
        PASS if ok else FAIL,
        f"restored in {format_duration(run.restore_seconds)}; RTO {format_duration(opts.rto)}",
    )


def _report(run: _Run, destination: Destination, entry: BackupEntry, duration: float) -> Report:
    checks = []
    findings = []
    target = f"{destination.url.rstrip('/')}/{entry.id}"
    for rid, rule in RULES.items():
        status, evidence = run.outcomes.get(rid, (NA, "not run: an earlier step failed"))
        checks.append(
            Check(rule=rule, status=status, findings=int(status is FAIL), evidence=evidence)
        )
        if status is FAIL:
            findings.append(
                Finding(
                    rule_id=rid,
                    category=rule.category,
                    priority=rule.priority,
                    message=f"{rule.title}: no. {evidence}"[:1000],
                    location=Location(path=target),
                    fix=rule.fix,
                    docs=rule.docs,
                    fingerprint=f"{rid}:{entry.id}",
                )
            )
    extra = {"backup": entry.id, "engine": entry.manifest.engine}
    if run.restore_seconds is not None:
        extra["restore_seconds"] = f"{run.restore_seconds:.1f}"
    return Report(
        tool="buttress backup verify",
        version=__version__,
        target=target,
        rules=tuple(RULES.values()),
        checks=tuple(checks),
        findings=tuple(findings),
        duration=duration,
        extra=extra,
    )


def _record(
    destination: Destination, entry: BackupEntry, run: _Run, opts: VerifyOptions, clock: WallClock
) -> Verification:
    now = dt.datetime.fromtimestamp(clock.now(), dt.UTC)
    failed = tuple(rid for rid, (status, _) in sorted(run.outcomes.items()) if status is FAIL)
    passed = not failed
    previous = entry.verification.last_passed_at if entry.verification else None
    verification = Verification(
        checked_at=now,
        passed=passed,
        last_passed_at=now if passed else previous,
        restore_seconds=None if run.restore_seconds is None else round(run.restore_seconds, 3),
        failed=failed,
        summary=tuple(
            f"{rid} {status.value}: {text}"[:300]
            for rid, (status, text) in sorted(run.outcomes.items())
        ),
    )
    if opts.record:
        try:
            destination.record(entry, verification)
        except (BackupError, OSError) as exc:
            _log.warning("could not record the verification of %s: %s", entry.id, exc)
    return verification
