"""``buttress migrate rehearse`` on real PostgreSQL, against the sample Alembic project.

A "production" database (``test_mig_prod_*``: orders, and ``big`` with 200,000 rows) is
made once; every rehearsal copies it into a scratch database (``--scratch-from``, or a
backup of it with ``--from``) and must leave it exactly as it was: schema dump and row
counts compared after every test. Scratch databases must all be gone afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from buttress.cli import main
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.postgres

PROJECT = Path(__file__).with_name("project")


def _dsn(dbname: str) -> str:
    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + dbname


def _snapshot(dsn: str) -> tuple[str, dict[str, int]]:
    """The database's schema (pg_dump --schema-only) and the row count of every table."""
    schema = subprocess.run(  # noqa: S603 - pg_dump, on the test's own database
        ["pg_dump", "--schema-only", "--no-owner", f"--dbname={dsn}"],  # noqa: S607
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    # pg_dump's \restrict line carries a random key per run
    schema = "\n".join(line for line in schema.splitlines() if "restrict " not in line)
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()]  # fmt: skip
        counts = {}
        for table in tables:
            row = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
            assert row is not None
            counts[table] = int(row[0])
    return schema, counts


def _scratch_databases() -> set[str]:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'buttress\\_scratch\\_rehearse%'"
        ).fetchall()
    return {r[0] for r in rows}


@pytest.fixture(scope="module")
def production() -> Iterator[str]:
    """A filled database standing in for production; dropped after the module."""
    name = f"test_mig_prod_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=2)
    except psycopg.Error as exc:  # pragma: no cover - environment failure
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} does not answer ({exc}); .ci/run starts it")
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        with psycopg.connect(_dsn(name), autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE orders (id bigserial PRIMARY KEY, sku text NOT NULL,"
                " qty integer NOT NULL)"
            )
            conn.execute(
                "INSERT INTO orders (sku, qty) SELECT 'sku-' || i, 1 + i % 5"
                " FROM generate_series(1, 1000) i"
            )
            conn.execute("CREATE TABLE big (id integer PRIMARY KEY, v integer NOT NULL)")
            conn.execute("INSERT INTO big SELECT i, i FROM generate_series(1, 200000) i")
            conn.execute("CREATE INDEX big_v ON big (v)")
            conn.execute("ANALYZE")
        yield _dsn(name)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def untouched(production: str) -> Iterator[str]:
    """Production, checked unchanged (schema and row counts) and no scratch left, after."""
    before = _snapshot(production)
    scratch_before = _scratch_databases()
    yield production
    assert _snapshot(production) == before
    assert _scratch_databases() == scratch_before


def _rehearse(
    capsys: pytest.CaptureFixture[str], scenario: str, *origin: str, extra: tuple[str, ...] = ()
) -> tuple[int, dict[str, Any], str]:
    command = f"{sys.executable} -m alembic -c {PROJECT / scenario}.ini upgrade head"
    code = main([
        "migrate", "rehearse", "--command", command, *origin,
        "--scratch-dsn", POSTGRES_URL, "--url-scheme", "postgresql+psycopg",
        "--format", "json", *extra,
    ])  # fmt: skip
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def _checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["rule"]: c for c in report["checks"]}


def _rules(report: dict[str, Any]) -> set[str]:
    return {f["rule"] for f in report["findings"]}


def test_a_safe_migration_passes_with_its_duration_locks_and_way_back(
    untouched: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report, err = _rehearse(capsys, "safe", "--scratch-from", untouched)
    checks = _checks(report)
    assert code == 0, err
    assert "buttress migrate: safe to run in production" in err
    assert checks["MIG001"]["status"] == "pass"
    assert "exit 0 in " in checks["MIG001"]["evidence"]
    assert "lock_timeout 5 s, statement_timeout 300 s" in checks["MIG001"]["evidence"]
    assert "samples every 10 ms" in checks["MIG010"]["evidence"]
    assert checks["MIG020"]["status"] == "pass"  # downgrade, upgrade again: same schemas
    assert "downgrade exit 0" in checks["MIG020"]["evidence"]
    assert checks["MIG030"]["status"] == "pass"  # Alembic's offline SQL went through squawk
    assert {f["priority"] for f in report["findings"]} <= {"P2"}


def test_access_exclusive_on_a_big_table_is_flagged(
    untouched: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report, err = _rehearse(capsys, "big_lock", "--scratch-from", untouched)
    checks = _checks(report)
    assert code == 1
    assert "NOT safe to run in production" in err
    assert {"MIG010", "MIG101"} <= _rules(report)  # measured, and linted
    lock = next(f for f in report["findings"] if f["rule"] == "MIG010")
    assert lock["message"].startswith("ACCESS EXCLUSIVE on public.big (200,000 rows")
    assert checks["MIG001"]["status"] == "pass"
    assert checks["MIG020"]["status"] == "pass"  # its downgrade works


def test_a_not_null_column_without_default_is_flagged_and_fails_on_the_data(
    untouched: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report, _ = _rehearse(capsys, "not_null", "--scratch-from", untouched)
    checks = _checks(report)
    assert code == 1
    assert {"MIG001", "MIG102"} <= _rules(report)
    assert (
        'column "tenant" of relation "orders" contains null values'
        in (checks["MIG001"]["evidence"])
    )
    assert checks["MIG002"]["status"] == "pass"  # one transaction: nothing left behind


def test_a_migration_failing_half_way_is_reported_with_what_it_left(
    untouched: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report, _ = _rehearse(capsys, "half_way", "--scratch-from", untouched)
    checks = _checks(report)
    assert code == 1
    assert checks["MIG001"]["status"] == "fail"
    assert "division by zero" in checks["MIG001"]["evidence"]
    assert checks["MIG002"]["status"] == "fail"  # the first migration was committed
    assert "+ table public.invoices" in checks["MIG002"]["evidence"]


def test_a_downgrade_that_does_not_undo_the_upgrade_is_reported(
    untouched: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report, _ = _rehearse(capsys, "no_way_back", "--scratch-from", untouched)
    assert code == 1
    messages = [f["message"] for f in report["findings"] if f["rule"] == "MIG020"]
    assert any("+ column public.orders.archived boolean" in m for m in messages)


def test_rehearsal_from_the_latest_verified_backup(
    untouched: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from buttress.backup import LocalDestination

    dest = LocalDestination(tmp_path / "backups")
    assert main(["backup", "run", untouched, "--to", str(dest.root)]) == 0
    (entry,) = dest.list()
    origin = ("--from", "latest", "--backups", str(dest.root))
    code = main([
        "migrate", "rehearse", "--command", "true", *origin, "--scratch-dsn", POSTGRES_URL,
    ])  # fmt: skip
    assert code == 2  # never verified: latest means the latest *verified* backup
    assert "no verified backup" in capsys.readouterr().err
    code = main([
        "backup", "verify", str(dest.root), "latest", "--scratch-dsn", POSTGRES_URL,
        "--scratch-label", "rehearse_verify", "--format", "json",
    ])  # fmt: skip
    verified = json.loads(capsys.readouterr().out)
    assert code == 0, verified
    assert {c["status"] for c in verified["checks"]} == {"pass", "not-applicable"}  # no --check
    (entry,) = dest.list()
    assert entry.verified_at is not None
    code, report, err = _rehearse(capsys, "safe", *origin)
    assert code == 0, err
    assert (
        f"on backup {entry.id} (verified {entry.verified_at:%Y-%m-%d %H:%M}Z)" in report["target"]
    )


def test_usage_errors_exit_2_before_anything_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BUTTRESS_BACKUP_SCRATCH_DSN", raising=False)
    command = ["migrate", "rehearse", "--command", "alembic upgrade head"]
    assert main([*command, "--scratch-from", "y"]) == 2
    assert "--scratch-dsn (or $BUTTRESS_BACKUP_SCRATCH_DSN)" in capsys.readouterr().err
    base = [*command, "--scratch-dsn", "x"]
    assert main(base) == 2
    assert "give the copy's origin" in capsys.readouterr().err
    assert main([*base, "--scratch-from", "y", "--env-var", "1BAD"]) == 2
    assert "--env-var" in capsys.readouterr().err
    assert main([*base, "--backups", "/tmp/b"]) == 2
    assert "--backups needs --from" in capsys.readouterr().err


def test_ctrl_c_stops_the_migration_and_drops_the_scratch_database(
    untouched: str, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    pid_file = tmp_path / "pid"
    script = tmp_path / "slow_migration.py"
    script.write_text(
        "import os, sys, time\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        f"open({str(started)!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(  # noqa: S603 - this interpreter, the command line under test
        [
            sys.executable, "-m", "buttress", "migrate", "rehearse",
            "--command", f"{sys.executable} {script}", "--no-lint",
            "--scratch-from", untouched, "--scratch-dsn", POSTGRES_URL,
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the migration command never started"
        assert len(_scratch_databases()) >= 1  # the copy exists while the command runs
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130, err
    migration = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed with its process group, not orphaned
        os.kill(migration, 0)
