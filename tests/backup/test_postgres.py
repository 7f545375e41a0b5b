"""Backup and verify on a real PostgreSQL with the real pg_dump and pg_restore.

Every damaged backup (bytes flipped, truncated, a manifest that lies, a table missing)
must fail its check, exit non-zero through the command line, and leave no scratch database.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from buttress.backup import (
    BackupError,
    LocalDestination,
    Manifest,
    SanityCheck,
    VerifyOptions,
    pg_restore_into,
    run_backup,
    scratch_database,
    verify_backup,
)
from buttress.backup._pgtools import tool_invocation
from buttress.backup._stream import sha256_file
from buttress.cli import main
from buttress.report import CheckStatus
from tests.backup.conftest import LABEL, ROWS, admin_dsn, copy_destination, scratch_left

pytestmark = [pytest.mark.postgres]


def _options(postgres_url: str, **changes: object) -> VerifyOptions:
    return dataclasses.replace(
        VerifyOptions(scratch_dsn=admin_dsn(postgres_url), scratch_label=LABEL), **changes
    )


def _statuses(result: object) -> dict[str, str]:
    report = result.report  # type: ignore[attr-defined]
    return {c.rule.id: c.status.value for c in report.checks}


def _cli_verify(dest: Path, postgres_url: str, *extra: str) -> int:
    return main(
        ["backup", "verify", str(dest), "latest", "--scratch-dsn", admin_dsn(postgres_url),
         "--scratch-label", LABEL, "--format", "json", "--output", os.devnull, *extra]
    )  # fmt: skip


def _rewrite_manifest(folder: Path, **changes: object) -> None:
    path = folder / "manifest.json"
    manifest = Manifest.from_json(path.read_text())
    path.write_text(dataclasses.replace(manifest, **changes).to_json())


def test_manifest_records_the_snapshot(stored_backup: Path) -> None:
    (entry,) = LocalDestination(stored_backup).list()
    m = entry.manifest
    assert m.engine == "postgresql"
    assert m.dump_format == "custom"
    assert {k: v for k, v in m.tables.items() if not k.startswith("pg_catalog")} == ROWS
    assert m.tables["pg_catalog.pg_largeobject_metadata"] == 2
    assert (m.size, m.sha256) == sha256_file(Path(entry.location) / m.file)
    assert m.server_version.startswith(("15", "16", "17"))
    assert m.tool.startswith("pg_dump")
    assert {"public.orders", "shop.big_orders", "enum shop.status"} <= m.table_schemas.keys()
    assert any(name.startswith("routine shop.order_count") for name in m.table_schemas)
    assert m.source.startswith("postgresql://127.0.0.1")
    assert "postgres@" not in m.source


def test_backup_then_verify_passes(stored_backup: Path, postgres_url: str, tmp_path: Path) -> None:
    dest, _ = copy_destination(stored_backup, tmp_path / "dest")
    checks = (
        SanityCheck(sql="select count(*) from orders where created_at > now() - interval '2 days'",
                    expect=">0"),
        SanityCheck(sql="select shop.order_count()", expect="=150000"),
    )  # fmt: skip
    result = verify_backup(dest, "latest", _options(postgres_url, checks=checks))
    assert _statuses(result) == dict.fromkeys(
        ["BKP001", "BKP002", "BKP003", "BKP004", "BKP005", "BKP006", "BKP007"], "pass"
    ), result.report.checks
    assert result.passed
    assert result.verification.restore_seconds is not None
    evidence = {c.rule.id: c.evidence for c in result.report.checks}
    assert "(read while pg_restore ran)" in evidence["BKP001"]
    assert "rows pg_restore inserted, from the server's statistics" in evidence["BKP003"]
    (entry,) = dest.list()
    assert entry.verified_at == result.verification.last_passed_at
    assert dest.latest(verified_only=True) == entry
    assert scratch_left(postgres_url) == []
    # a P1 fails the default gate: an RPO no backup can meet (this one may be < 1 s old)
    assert _cli_verify(dest.root, postgres_url, "--rpo", "0.01s") == 1


def test_flipped_bytes_are_detected(stored_backup: Path, postgres_url: str, tmp_path: Path) -> None:
    dest, folder = copy_destination(stored_backup, tmp_path / "dest")
    dump = next(folder.glob("*.dump"))
    with open(dump, "r+b") as f:
        f.seek(dump.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = verify_backup(dest, "latest", _options(postgres_url))
    assert _statuses(result)["BKP001"] == "fail"
    assert "SHA-256" in result.report.checks[0].evidence
    assert not result.passed
    assert result.verification.failed == ("BKP001",)
    assert _cli_verify(dest.root, postgres_url) == 1
    assert _cli_verify(dest.root, postgres_url, "--fail-on", "P0") == 1  # BKP001 is a P0
    assert dest.latest(verified_only=True) is None
    assert scratch_left(postgres_url) == []


def test_truncated_dump_is_detected_even_with_a_matching_manifest(
    stored_backup: Path, postgres_url: str, tmp_path: Path
) -> None:
    dest, folder = copy_destination(stored_backup, tmp_path / "dest")
    dump = next(folder.glob("*.dump"))
    os.truncate(dump, dump.stat().st_size * 2 // 3)
    result = verify_backup(dest, "latest", _options(postgres_url))
    assert _statuses(result)["BKP001"] == "fail"
    assert "bytes stored" in result.report.checks[0].evidence
    # the manifest rewritten to match the truncated file: only the restore can tell
    size, digest = sha256_file(dump)
    _rewrite_manifest(folder, size=size, sha256=digest)
    result = verify_backup(dest, "latest", _options(postgres_url))
    statuses = _statuses(result)
    assert statuses["BKP001"] == "pass", statuses
    assert statuses["BKP002"] == "fail", statuses
    assert "pg_restore" in result.report.checks[1].evidence
    assert _cli_verify(dest.root, postgres_url) == 1
    assert scratch_left(postgres_url) == []


def test_a_lying_manifest_is_detected(
    stored_backup: Path, postgres_url: str, tmp_path: Path
) -> None:
    dest, folder = copy_destination(stored_backup, tmp_path / "dest")
    manifest = Manifest.from_json((folder / "manifest.json").read_text())
    _rewrite_manifest(
        folder,
        tables={**manifest.tables, "public.orders": 150_001},
        schema_hash="f" * 64,
        table_schemas={**manifest.table_schemas, "public.orders": "0" * 64},
    )
    for count in ("inserted", "scan"):  # a difference is always confirmed by count(*)
        result = verify_backup(dest, "latest", _options(postgres_url, count=count))
        statuses = _statuses(result)
        assert (statuses["BKP003"], statuses["BKP004"]) == ("fail", "fail"), statuses
        evidence = {c.rule.id: c.evidence for c in result.report.checks}
        assert "public.orders: 150000 rows, the manifest says 150001" in evidence["BKP003"]
        assert "public.orders" in evidence["BKP004"]
        assert {f.rule_id for f in result.report.findings} == {"BKP003", "BKP004"}
    assert scratch_left(postgres_url) == []


def test_a_missing_table_is_detected(
    stored_backup: Path, source_dsn: str, postgres_url: str, tmp_path: Path
) -> None:
    dest, folder = copy_destination(stored_backup, tmp_path / "dest")
    dump = next(folder.glob("*.dump"))
    dump.unlink()
    target, env = tool_invocation(source_dsn)
    subprocess.run(
        ["pg_dump", "-Fc", "--exclude-table=shop.items", f"--dbname={target}", f"--file={dump}"],
        env=env, check=True, timeout=60,
    )  # fmt: skip
    size, digest = sha256_file(dump)
    _rewrite_manifest(folder, size=size, sha256=digest)
    result = verify_backup(dest, "latest", _options(postgres_url))
    statuses = _statuses(result)
    assert (statuses["BKP002"], statuses["BKP003"], statuses["BKP004"]) == ("pass", "fail", "fail")
    evidence = {c.rule.id: c.evidence for c in result.report.checks}
    assert "shop.items is missing (100000 rows expected)" in evidence["BKP003"]
    assert not result.passed
    assert scratch_left(postgres_url) == []


def test_sanity_checks_rto_and_rpo_can_fail(
    stored_backup: Path, postgres_url: str, tmp_path: Path
) -> None:
    dest, _ = copy_destination(stored_backup, tmp_path / "dest")
    checks = (
        SanityCheck(sql="select count(*) from orders where total > 5000", expect=">0"),
        SanityCheck(sql="select count(*) from no_such_table", expect=">0"),
    )
    options = _options(postgres_url, checks=checks, rto=0.001, rpo=0.001, restore_timeout=600)
    result = verify_backup(dest, "latest", options)
    statuses = _statuses(result)
    assert statuses["BKP005"] == statuses["BKP006"] == statuses["BKP007"] == "fail"
    evidence = {c.rule.id: c.evidence for c in result.report.checks}
    assert "returned 0, expected >0" in evidence["BKP005"]
    assert "no_such_table" in evidence["BKP005"]
    assert set(result.verification.failed) == {"BKP005", "BKP006", "BKP007"}
    assert scratch_left(postgres_url) == []


@pytest.mark.process
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_verify_drops_the_scratch_database(
    stored_backup: Path, postgres_url: str, tmp_path: Path, signum: int
) -> None:
    dest, _ = copy_destination(stored_backup, tmp_path / "dest")
    errors = open(tmp_path / "stderr", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(  # a sanity query that sleeps keeps the scratch database busy
        [sys.executable, "-m", "buttress", "backup", "verify", str(dest.root), "latest",
         "--scratch-dsn", admin_dsn(postgres_url), "--scratch-label", LABEL,
         "--check", "select 1 from pg_sleep(30)", "--expect", "=1", "--format", "json"],
        stdout=subprocess.DEVNULL, stderr=errors,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not scratch_left(postgres_url):
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "no scratch database appeared"
            time.sleep(0.05)
        time.sleep(1.5)  # the restore is running, or the sleeping query
        proc.send_signal(signum)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        errors.close()
    assert "interrupted" in (tmp_path / "stderr").read_text() or signum == signal.SIGTERM
    assert code == (130 if signum == signal.SIGINT else 143)
    assert scratch_left(postgres_url) == []


def test_scratch_database_is_always_dropped(postgres_url: str, tmp_path: Path) -> None:
    def fail_inside() -> None:
        with scratch_database(admin_dsn(postgres_url), label=LABEL) as dsn:
            with psycopg.connect(dsn) as conn:  # an open connection does not stop the drop
                row = conn.execute("select current_database()").fetchone()
                assert row is not None
                assert row[0].startswith(f"buttress_scratch_{LABEL}_")
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_inside()
    assert scratch_left(postgres_url) == []
    with (
        pytest.raises(BackupError, match="label"),
        scratch_database(admin_dsn(postgres_url), label="Bad Label; drop"),
    ):
        pass
    dump = tmp_path / "garbage.dump"
    dump.write_bytes(b"PGDMP not really")
    with scratch_database(admin_dsn(postgres_url), label=LABEL) as dsn:
        with pytest.raises(BackupError) as caught:
            pg_restore_into(dump, dsn)
        assert caught.value.step == "restore"
        assert "pg_restore exited" in str(caught.value)
    assert scratch_left(postgres_url) == []


def test_credentials_never_reach_manifests_logs_or_errors(
    source_dsn: str, postgres_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    secret = "bk-Sup3r-s3cret-pw"
    user_dsn = source_dsn.replace("user=postgres", f"user=postgres password={secret}")
    assert secret in user_dsn
    target, env = tool_invocation(user_dsn)
    assert secret not in target
    assert env["PGPASSWORD"] == secret
    url = (
        "postgresql://postgres:"
        + secret
        + "@127.0.0.1:5432/"
        + source_dsn.split("dbname=")[1].split(maxsplit=1)[0]
    )
    dest = tmp_path / "dest"
    assert main(["backup", "run", url, "--to", str(dest)]) == 0
    assert main(["backup", "run", user_dsn, "--to", str(dest), "--keep-daily", "1"]) == 0
    assert main(["backup", "verify", str(dest), "--scratch-dsn",
                 admin_dsn(postgres_url).replace("user=postgres", f"user=postgres password={secret}"),
                 "--scratch-label", LABEL, "--format", "markdown"]) == 0  # fmt: skip
    bad = "postgresql://postgres:" + secret + "@127.0.0.1:5432/test_bk_no_such_db"
    assert main(["backup", "run", bad, "--to", str(dest)]) == 1
    out, err = capfd.readouterr()
    assert "test_bk_no_such_db" in err
    assert "connect" in err
    files = [p for p in dest.rglob("*") if p.is_file()]
    assert any(p.name == "verification.json" for p in files)
    for text in [out, err, *(p.read_bytes().decode(errors="replace") for p in files)]:
        assert secret not in text
    assert json.loads(next(dest.rglob("manifest.json")).read_text())["source"].startswith(
        "postgresql://127.0.0.1"
    )
    assert scratch_left(postgres_url) == []


def test_run_errors_name_the_step(tmp_path: Path, postgres_url: str) -> None:
    with pytest.raises(BackupError) as caught:
        run_backup(postgres_url.rsplit("/", 1)[0] + "/test_bk_absent", LocalDestination(tmp_path))
    assert caught.value.step == "connect"
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


def test_status_enum_is_shared() -> None:
    assert CheckStatus.PASS.value == "pass"
