"""Scratch databases left by a killed run, the checksum read while restoring, parallel counts.

Each test uses a label of its own (``buttress_scratch_<label>_*``) and passes it to
``scratch drop``, so the databases of other tests and other runs are never touched.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from buttress.backup import (
    SCRATCH_PREFIX,
    BackupError,
    LocalDestination,
    drop_scratch,
    list_scratch,
    restore_checked,
    scratch_database,
    sha256_file,
)
from buttress.backup._catalog import count_rows, describe_postgres, inserted_rows
from buttress.backup._leftovers import parse_scratch_name
from buttress.cli import main
from buttress.testing import FakeClock
from tests.backup.conftest import admin_dsn, copy_destination, create_database, drop_database

pytestmark = [pytest.mark.postgres]


def _named(postgres_url: str, label: str) -> list[str]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
            [f"{SCRATCH_PREFIX}{label}\\_%"],
        ).fetchall()
    return [r[0] for r in rows]


def test_names_carry_their_creation_time() -> None:
    label, created = parse_scratch_name("buttress_scratch_bk_old_1765000000_0123456789ab")
    assert label == "bk_old"
    assert created is not None
    assert created.timestamp() == 1_765_000_000
    assert parse_scratch_name("buttress_scratch_verify_0123456789ab") == ("verify", None)
    assert parse_scratch_name("buttress_scratch_x") == (None, None)


def test_drop_takes_only_old_enough_scratch_databases(postgres_url: str) -> None:
    label = "bkage"
    two_hours_ago = FakeClock(time.time() - 2 * 3600)
    decoy = f"test_bk_decoy_{SCRATCH_PREFIX}{secrets.token_hex(3)}"
    create_database(postgres_url, decoy)
    try:
        with scratch_database(admin_dsn(postgres_url), label=label, clock=two_hours_ago) as dsn:
            (name,) = _named(postgres_url, label)
            assert name in dsn
            listed = {db.name: db for db in list_scratch(admin_dsn(postgres_url))}
            assert decoy not in listed
            age = listed[name].age(time.time())
            assert age is not None
            assert 2 * 3600 - 60 < age < 2 * 3600 + 60
            kept = drop_scratch(admin_dsn(postgres_url), older_than=3 * 3600, label=label)
            assert kept.dropped == ()
            assert _named(postgres_url, label) == [name]
            result = drop_scratch(admin_dsn(postgres_url), older_than=3600, label=label)
            assert result.dropped == (name,)
            assert _named(postgres_url, label) == []
        with psycopg.connect(postgres_url, autocommit=True) as conn:  # the decoy is untouched
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [decoy]).fetchone()
        assert row is not None
    finally:
        drop_database(postgres_url, decoy)


@pytest.mark.process
def test_a_sigkilled_verify_leaves_a_scratch_database_the_command_drops(
    stored_backup: Path, postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    label = "bkkill"
    dest, _ = copy_destination(stored_backup, tmp_path / "dest")
    admin = admin_dsn(postgres_url)
    proc = subprocess.Popen(  # noqa: S603 - this interpreter, the command line under test
        [sys.executable, "-m", "buttress", "backup", "verify", str(dest.root), "latest",
         "--scratch-dsn", admin, "--scratch-label", label, "--no-record",
         "--check", "select 1 from pg_sleep(20)", "--expect", "=1", "--format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _sleeping(postgres_url, label):  # restored and counted: in the sanity query
            assert proc.poll() is None, "verify ended before its sanity query"
            assert time.monotonic() < deadline, "the sanity query never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    (left,) = _named(postgres_url, label)  # nothing could drop it
    argv = ["backup", "scratch"]
    assert main([*argv, "list", "--scratch-dsn", admin]) == 0
    out = capsys.readouterr().out
    assert f"{left}  " in out
    assert "1 session(s)" in out  # pg_sleep still runs on the server
    assert (
        main([*argv, "drop", "--older-than", "1h", "--label", label, "--scratch-dsn", admin]) == 0
    )
    assert "no scratch database older than 1h" in capsys.readouterr().out
    assert (
        main([*argv, "drop", "--older-than", "0s", "--label", label, "--scratch-dsn", admin]) == 0
    )
    assert f"kept {left}: in use (1 session(s))" in capsys.readouterr().out
    assert _named(postgres_url, label) == [left]
    drop = [*argv, "drop", "--older-than", "0s", "--label", label, "--force"]
    assert main([*drop, "--scratch-dsn", admin]) == 0
    assert f"dropped {left}" in capsys.readouterr().out
    assert _named(postgres_url, label) == []


def _sleeping(postgres_url: str, label: str) -> bool:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s AND query LIKE %s",
            [f"{SCRATCH_PREFIX}{label}\\_%", "%pg_sleep(20)%"],
        ).fetchone()
    return row is not None and row[0] > 0


def test_scratch_commands_need_a_server(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BUTTRESS_BACKUP_SCRATCH_DSN", raising=False)
    assert main(["backup", "scratch", "list"]) == 2
    assert "--scratch-dsn" in capsys.readouterr().err
    argv = ["backup", "scratch", "drop", "--older-than", "soon", "--scratch-dsn", "x"]
    assert main(argv) == 2
    assert "--older-than" in capsys.readouterr().err


def test_a_checksum_that_differs_fails_even_when_the_restore_would_finish(
    stored_backup: Path, postgres_url: str
) -> None:
    (entry,) = LocalDestination(stored_backup).list()
    dump = Path(entry.location) / entry.manifest.file
    size, digest = sha256_file(dump)
    with scratch_database(admin_dsn(postgres_url), label="bksum") as dsn:
        with pytest.raises(BackupError) as caught:  # an intact dump, a manifest that lies
            restore_checked(dump, dsn, size=size, sha256="0" * 64, jobs=2)
        assert caught.value.step == "checksum"
        assert "the manifest says 0000000000000000..." in str(caught.value)
        with pytest.raises(BackupError, match="bytes stored, the manifest says 1") as short:
            restore_checked(dump, dsn, size=1, sha256=digest)
        assert short.value.step == "checksum"
    with scratch_database(admin_dsn(postgres_url), label="bksum") as dsn:
        seconds = restore_checked(dump, dsn, size=size, sha256=digest, jobs=2)
        assert seconds > 0
        inserted = inserted_rows(dsn)  # the restore's sessions are gone: exact
        assert inserted is not None
        assert inserted == count_rows(dsn) == entry.manifest.tables
        with psycopg.connect(dsn):  # a session that might still write: no answer
            assert inserted_rows(dsn, wait=1.0, clock=FakeClock()) is None
    assert _named(postgres_url, "bksum") == []


def test_parallel_counts_equal_the_snapshot_counts(source_dsn: str) -> None:
    with psycopg.connect(source_dsn) as conn:
        expected = describe_postgres(conn).tables
    for jobs in (1, 3):
        assert count_rows(source_dsn, jobs=jobs) == expected


def test_an_encrypted_postgres_backup_is_checked_in_the_decrypting_pass(
    source_dsn: str, postgres_url: str, tmp_path: Path
) -> None:
    from pyrage import x25519

    from buttress.backup import VerifyOptions, parse_recipients, run_backup, verify_backup

    identity, wrong = x25519.Identity.generate(), x25519.Identity.generate()
    key, wrong_key = tmp_path / "key.txt", tmp_path / "wrong.txt"
    key.write_text(f"{identity}\n")
    wrong_key.write_text(f"{wrong}\n")
    dest = LocalDestination(tmp_path / "dest")
    entry = run_backup(source_dsn, dest, recipients=parse_recipients([str(identity.to_public())]))
    assert entry.manifest.encryption == "age"

    def verify(identity_file: Path) -> dict[str, tuple[str, str]]:
        options = VerifyOptions(
            scratch_dsn=admin_dsn(postgres_url), scratch_label="bkage", identity_file=identity_file
        )
        report = verify_backup(dest, "latest", options).report
        return {c.rule.id: (c.status.value, c.evidence) for c in report.checks}

    good = verify(key)
    assert {status for status, _ in good.values()} == {"pass", "not-applicable"}, good
    assert "(read while decrypting)" in good["BKP001"][1]
    bad_key = verify(wrong_key)
    assert (bad_key["BKP001"][0], bad_key["BKP002"][0]) == ("pass", "fail")
    assert "cannot decrypt" in bad_key["BKP002"][1]
    stored = Path(entry.location) / entry.manifest.file
    with open(stored, "r+b") as f:
        f.seek(stored.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    damaged = verify(key)
    assert damaged["BKP001"][0] == "fail"
    assert "SHA-256" in damaged["BKP001"][1]
    assert _named(postgres_url, "bkage") == []
