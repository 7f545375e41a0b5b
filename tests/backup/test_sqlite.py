"""SQLite: the online backup API, verification on a scratch copy, age encryption."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from pyrage import x25519

from buttress.backup import (
    BackupError,
    LocalDestination,
    VerifyOptions,
    parse_recipients,
    run_backup,
    verify_backup,
)
from buttress.cli import main


@pytest.fixture
def app_db(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(
        """
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
        CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id),
                             kind TEXT);
        CREATE INDEX events_user ON events (user_id);
        WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 2000)
        INSERT INTO users SELECT n, 'user ' || n FROM g;
        WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 20000)
        INSERT INTO events SELECT n, 1 + n % 2000, 'click' FROM g;
        """
    )
    conn.commit()
    conn.close()
    return path


def test_backup_and_verify(app_db: Path, tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path / "dest")
    writer = sqlite3.connect(app_db)  # an open writer does not stop the online backup
    writer.execute("INSERT INTO users VALUES (2001, 'late')")
    writer.commit()
    try:
        entry = run_backup(f"sqlite:///{app_db}", dest)
    finally:
        writer.close()
    assert entry.manifest.engine == "sqlite"
    assert entry.manifest.tables == {"users": 2001, "events": 20000}
    code = main(["backup", "verify", str(dest.root), "--check", "select count(*) from events",
                 "--expect", "=20000", "--format", "json", "--output", os.devnull])  # fmt: skip
    assert code == 0
    assert dest.latest(verified_only=True) is not None


def test_damaged_copy_fails(app_db: Path, tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path / "dest")
    entry = run_backup(str(app_db), dest)
    stored = Path(entry.location) / entry.manifest.file
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    result = verify_backup(dest, entry.id)
    assert [c.status.value for c in result.report.checks][:1] == ["fail"]
    assert not result.passed


def test_encrypted_backup(app_db: Path, tmp_path: Path) -> None:
    identity = x25519.Identity.generate()
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"# test key\n{identity}\n")
    recipient = str(identity.to_public())
    dest = LocalDestination(tmp_path / "dest")
    entry = run_backup(str(app_db), dest, recipients=parse_recipients([recipient]))
    stored = Path(entry.location) / entry.manifest.file
    assert stored.name.endswith(".age")
    assert not stored.read_bytes().startswith(b"SQLite")
    assert entry.manifest.encryption == "age"
    assert entry.manifest.recipients == (recipient,)
    assert str(identity) not in entry.manifest.to_json()
    without = verify_backup(dest, "latest")
    assert not without.passed
    assert "--identity" in without.report.checks[1].evidence
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(f"{x25519.Identity.generate()}\n")
    assert not verify_backup(dest, "latest", VerifyOptions(identity_file=wrong)).passed
    assert verify_backup(dest, "latest", VerifyOptions(identity_file=key_file)).passed
    with pytest.raises(BackupError, match="not an age recipient"):
        parse_recipients(["age1-not-a-key"])
