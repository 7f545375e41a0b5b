"""Faults injected where the data-safety promises of ``buttress backup`` could break.

A signal (SIGTERM, SIGINT, SIGKILL) at each phase of ``backup run`` and ``backup verify``,
a full disk, a destination that turns read-only, a server that drops ``pg_dump``, a scratch
database that cannot be dropped, hand-edited manifests, a password full of ``@:/%`` and
quotes, two runs at once, clocks that disagree. Each test counts what is left: databases,
files, lines holding the password.

Phases are found without sleeping: the command runs under `PAUSE`, a few lines that wrap
one function of buttress so that it prints ``PAUSED <name>`` and waits for a line on
stdin before going on. The test reads that line (the process is then exactly in that
phase), injects its fault, then closes stdin to let it go on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from buttress.backup import (
    SCRATCH_PREFIX,
    BackupCheck,
    BackupError,
    LocalDestination,
    Manifest,
    RetentionPolicy,
    VerifyOptions,
    apply_retention,
    drop_scratch,
    list_scratch,
    password_of,
    run_backup,
    scratch_database,
    verify_backup,
)
from buttress.backup._pgtools import with_dbname
from buttress.cli import main
from buttress.testing import FakeClock
from tests.backup.conftest import admin_dsn, create_database, drop_database, fake_entry
from tests.conftest import POSTGRES_URL

pytestmark = [pytest.mark.postgres]

LABEL = f"rvf{secrets.token_hex(4)}"  # this run's own: a parallel run never sees its databases

PAUSE = """
import importlib, sys
target, argv = sys.argv[1], sys.argv[2:]
module, _, attr = target.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
original = getattr(owner, name)
def paused(*args, **kwargs):
    sys.stdout.write(f"PAUSED {attr}\\n")
    sys.stdout.flush()
    sys.stdin.readline()
    return original(*args, **kwargs)
setattr(owner, name, paused)
from buttress.cli import main
sys.exit(main(argv))
"""


class Paused:
    """``python -m buttress ARGV`` stopped at the first call of ``target`` (module:name)."""

    def __init__(self, target: str, *argv: str) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - this interpreter, buttress's own CLI
            [sys.executable, "-c", PAUSE, target, *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PAUSED"):
            self.proc.wait(timeout=30)
            message = self.stderr()
            self.kill()
            pytest.fail(f"{target} never ran: {message}")

    def children(self) -> list[int]:
        """The processes this one started (pg_dump, pg_restore)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    found.append(int(entry))
        return found

    def go_on(self, signum: int | None = None) -> int:
        """Send ``signum`` (if any), let the paused call go on; the exit status."""
        if signum is not None:
            self.proc.send_signal(signum)
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=60)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def paused() -> Iterator[list[Paused]]:
    started: list[Paused] = []
    yield started
    for proc in started:
        proc.kill()


def _scratch_left(label: str = LABEL) -> list[str]:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
            [f"{SCRATCH_PREFIX}{label}\\_%"],
        ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture(scope="module")
def source() -> Iterator[str]:
    """A small database (two tables, a few hundred KB of dump): ``rv_<random>``."""
    name = f"rv_{secrets.token_hex(4)}"
    dsn = create_database(POSTGRES_URL, name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY, pad text);"
            "INSERT INTO t SELECT g, md5(g::text) || md5((g * 7)::text) "
            "FROM generate_series(1, 30000) g;"
            "CREATE TABLE u (id int); INSERT INTO u SELECT generate_series(1, 10)"
        )
    yield dsn
    drop_database(POSTGRES_URL, name)
    for left in _scratch_left():  # a failed test must not leave its scratch databases
        drop_database(POSTGRES_URL, left)


@pytest.fixture(scope="module")
def stored(source: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stored")
    run_backup(source, LocalDestination(root))
    return root


def _copy(stored: Path, target: Path) -> LocalDestination:
    shutil.copytree(stored, target)
    return LocalDestination(target)


def _verify_argv(dest: Path, *extra: str) -> list[str]:
    return [
        "backup", "verify", str(dest), "latest", "--scratch-dsn", admin_dsn(POSTGRES_URL),
        "--scratch-label", LABEL, "--no-record", "--format", "json", "--output", os.devnull,
        *extra,
    ]  # fmt: skip


# ------------------------------------------------------------------ credentials


def test_an_unparsable_dsn_never_quotes_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """libpq quotes the piece it cannot parse, and that piece is the password."""
    for password, dsn in (
        ("50%off", "postgresql://postgres:50%off@127.0.0.1:5432/rv_x"),  # % not encoded
        ("rd%'\"x", "postgresql://postgres:p@ss:w/rd%'\"x@127.0.0.1:5432/rv_x"),
        ("s3cret", "host=127.0.0.1 user=postgres password=my s3cret"),  # not quoted
    ):
        with pytest.raises(BackupError) as caught:
            password_of(dsn)
        assert password not in str(caught.value)
        assert "percent-encode" in str(caught.value)
        with pytest.raises(BackupError) as caught:
            run_backup(dsn, LocalDestination(tmp_path / "dest"))
        assert password not in str(caught.value)
        with pytest.raises(BackupError) as caught, scratch_database(dsn, label=LABEL):
            pass
        assert password not in str(caught.value)
        assert main(["backup", "run", dsn, "--to", str(tmp_path / "dest")]) == 1
        assert main(_verify_argv(tmp_path / "dest") + ["--scratch-dsn", dsn]) == 2
        out, err = capsys.readouterr()
        assert "not a PostgreSQL connection string" in err
        assert password not in out + err
    assert LocalDestination(tmp_path / "dest").list() == []


def test_a_password_with_special_characters_stays_out_of_ps_files_and_reports(
    source: str, tmp_path: Path, paused: list[Paused]
) -> None:
    password = "p@ss:w/rd%'\"x"
    encoded = urllib.parse.quote(password, safe="")
    dbname = source.split("dbname=")[1].split(maxsplit=1)[0]
    url = f"postgresql://postgres:{encoded}@127.0.0.1:5432/{dbname}"
    admin = f"postgresql://postgres:{encoded}@127.0.0.1:5432/postgres"
    dest = tmp_path / "dest"
    texts = []
    for target, argv in (
        ("buttress.backup._engines:copy_stream", ["backup", "run", url, "--to", str(dest)]),
        ("buttress.backup._restore:_Hasher.run", _verify_argv(dest, "--scratch-dsn", admin)),
    ):
        run = Paused(target, *argv)
        paused.append(run)
        (child,) = (c for c in run.children() if b"pg_" in Path(f"/proc/{c}/comm").read_bytes())
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()  # what ps shows everyone
        assert b"--dbname=" in cmdline
        assert password.encode() not in cmdline
        assert encoded.encode() not in cmdline
        assert f"PGPASSWORD={password}".encode() in Path(f"/proc/{child}/environ").read_bytes()
        assert run.go_on() == 0, run.stderr()
        texts.append(run.stderr())
    check = ["--check", f"select count(*) from nowhere where x = '{password}'", "--expect", ">0"]
    for fmt in ("json", "markdown", "sarif"):
        report = tmp_path / f"report.{fmt}"
        proc = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "buttress", *_verify_argv(dest, "--scratch-dsn", admin),
             *check, "--format", fmt, "--output", str(report)],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 1  # the sanity query fails: its error is quoted, redacted
        texts += [proc.stdout, proc.stderr, report.read_text()]
    texts += [p.read_bytes().decode(errors="replace") for p in dest.rglob("*") if p.is_file()]
    leaks = [t for t in texts if password in t or encoded in t or "rd%'" in t]
    assert leaks == []
    assert _scratch_left() == []


# ------------------------------------------------------------------ hand-edited manifests


@pytest.mark.parametrize(
    ("field", "value"),
    [("tables", [1]), ("tables", "x"), ("id", 5), ("file", 5), ("table_schemas", 5),
     ("sha256", 5), ("size", "12"), ("recipients", 5), ("tables", {"t": True})],
)  # fmt: skip
def test_a_manifest_with_a_wrong_type_is_skipped_not_fatal(
    tmp_path: Path, field: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    good = fake_entry(tmp_path, when, verified=True)
    bad = fake_entry(tmp_path, when + dt.timedelta(days=1))
    path = tmp_path / bad / "manifest.json"
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    dest = LocalDestination(tmp_path)
    assert [e.id for e in dest.list()] == [good]  # not a crash of every listing
    assert "not a valid buttress manifest" in caplog.text
    plan = apply_retention(
        dest, RetentionPolicy(daily=0, weekly=0, monthly=0), now=when.timestamp()
    )
    assert plan.delete == ()
    assert (tmp_path / bad / "manifest.json").exists()  # retention never sees it: kept


def test_unparsable_or_tampered_manifests_and_a_missing_dump(stored: Path, tmp_path: Path) -> None:
    dest = _copy(stored, tmp_path / "dest")
    (entry,) = dest.list()
    folder = Path(entry.location)
    options = VerifyOptions(scratch_dsn=admin_dsn(POSTGRES_URL), scratch_label=LABEL)
    manifest = Manifest.from_json((folder / "manifest.json").read_text())
    tampered = dataclasses.replace(manifest, sha256="0" * 64)
    (folder / "manifest.json").write_text(tampered.to_json())
    result = verify_backup(dest, entry.id, options)
    assert result.verification.failed == ("BKP001",)
    (folder / manifest.file).unlink()
    (folder / "manifest.json").write_text(manifest.to_json())
    result = verify_backup(dest, entry.id, options)
    assert result.verification.failed == ("BKP001",)
    assert "the dump is missing" in result.report.checks[0].evidence
    (folder / "manifest.json").write_text('{"format_version": 1, "id": ')
    assert dest.list() == []
    with pytest.raises(BackupError, match="no backup"):
        verify_backup(dest, entry.id, options)
    assert _scratch_left() == []


# ------------------------------------------------------------------ backup run interrupted


@pytest.mark.process
@pytest.mark.parametrize(
    "target", ["buttress.backup._engines:copy_stream", "buttress.backup._destination:_write_synced"]
)
def test_sigterm_during_run_stops_pg_dump_and_leaves_nothing(
    source: str, tmp_path: Path, paused: list[Paused], target: str
) -> None:
    dest = tmp_path / "dest"
    run = Paused(target, "backup", "run", source, "--to", str(dest))
    paused.append(run)
    dumps = run.children()  # pg_dump, still running (copy_stream) or already done
    assert run.go_on(signal.SIGTERM) == 143, run.stderr()
    assert list(dest.iterdir()) == []  # no .partial-*, no lock file
    assert [pid for pid in dumps if Path(f"/proc/{pid}").exists()] == []


@pytest.mark.process
def test_sigkill_leaves_a_partial_that_is_never_listed_and_the_next_run_removes(
    source: str, tmp_path: Path, paused: list[Paused]
) -> None:
    dest = LocalDestination(tmp_path / "dest")
    killed = Paused("buttress.backup._engines:copy_stream", "backup", "run", source, "--to",
                    str(dest.root))  # fmt: skip
    paused.append(killed)
    assert killed.go_on(signal.SIGKILL) == -signal.SIGKILL
    (partial,) = (p for p in dest.root.iterdir() if p.is_dir())
    assert partial.name.startswith(".partial-")
    assert dest.list() == []
    # a second run, alive and writing, at the same time as a third one
    alive = Paused("buttress.backup._engines:copy_stream", "backup", "run", source, "--to",
                   str(dest.root))  # fmt: skip
    paused.append(alive)
    (writing,) = (p for p in dest.root.iterdir() if p.is_dir() and p != partial)
    third = run_backup(source, dest)
    assert not partial.exists()  # the abandoned one is gone
    assert writing.is_dir()  # the one being written is not touched
    plan = apply_retention(dest, RetentionPolicy(daily=0, weekly=0, monthly=0), now=2e9)
    assert writing.is_dir()  # nor by retention
    assert [e.id for e, _ in plan.keep] == [third.id]
    assert alive.go_on() == 0, alive.stderr()
    ids = {e.id for e in dest.list()}
    assert third.id in ids
    assert len(ids) == 2
    assert sorted(p.name for p in dest.root.iterdir() if p.name.startswith(".")) == []


@pytest.mark.process
def test_a_full_disk_is_a_one_line_error_and_leaves_nothing(source: str, tmp_path: Path) -> None:
    import resource

    def small_disk() -> None:  # files of 64 KiB at most: EFBIG on write (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    dest = tmp_path / "dest"
    proc = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "buttress", "backup", "run", source, "--to", str(dest)],
        capture_output=True, text=True, check=False, timeout=120, preexec_fn=small_disk,  # noqa: PLW1509
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("buttress backup run: store: cannot write the backup to ")
    assert "File too large" in proc.stderr
    assert list(dest.iterdir()) == []


@pytest.mark.process
def test_a_destination_that_turns_read_only_mid_run(
    source: str, tmp_path: Path, paused: list[Paused]
) -> None:
    dest = tmp_path / "dest"
    run = Paused("buttress.backup._destination:_write_synced", "backup", "run", source,
                 "--to", str(dest))  # fmt: skip
    paused.append(run)
    immutable = subprocess.run(["chattr", "+i", str(dest)], capture_output=True, check=False)  # noqa: S607
    if immutable.returncode != 0:
        run.kill()
        pytest.skip(f"chattr +i is not allowed here: {immutable.stderr.decode().strip()}")
    try:
        code = run.go_on()
        err = run.stderr()
    finally:
        subprocess.run(["chattr", "-i", str(dest)], check=True)  # noqa: S607
    assert code == 1
    assert "Traceback" not in err
    assert err.startswith("buttress backup run: store: cannot write the backup to ")
    assert LocalDestination(dest).list() == []
    entry = run_backup(source, LocalDestination(dest))  # writable again: the leftover goes
    assert sorted(p.name for p in dest.iterdir()) == [entry.id]


@pytest.mark.process
def test_a_server_that_drops_pg_dump_mid_way(
    source: str, tmp_path: Path, paused: list[Paused]
) -> None:
    dest = tmp_path / "dest"
    run = Paused("buttress.backup._engines:copy_stream", "backup", "run", source, "--to",
                 str(dest))  # fmt: skip
    paused.append(run)
    dbname = source.split("dbname=")[1].split(maxsplit=1)[0]
    query = (  # pg_dump copying a table, stopped by the full pipe nobody reads
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'pg_dump' "
        "AND query LIKE 'COPY %%'"
    )
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        for _ in range(3000):  # a condition on the server, polled (pg_dump is connecting)
            if (row := conn.execute(query, [dbname]).fetchone()) is not None:
                break
            conn.execute("SELECT pg_sleep(0.01)")
        else:
            pytest.fail("pg_dump never started copying")
        assert conn.execute("SELECT pg_terminate_backend(%s)", [row[0]]).fetchone() == (True,)
    assert run.go_on() == 1
    err = run.stderr()
    assert err.startswith("buttress backup run: dump: pg_dump exited 1"), err
    assert list(dest.iterdir()) == []


# ------------------------------------------------------------------ verify interrupted


@pytest.mark.process
@pytest.mark.parametrize(
    ("target", "signum"),
    [("buttress.backup._restore:_Hasher.run", signal.SIGTERM),  # pg_restore running
     ("buttress.backup._verify:_counts", signal.SIGTERM),  # the checks
     ("buttress.backup._scratch:_drop", signal.SIGTERM),  # a signal while it drops
     ("buttress.backup._scratch:_drop", signal.SIGINT)],  # a second Ctrl-C
)  # fmt: skip
def test_a_signal_at_any_phase_of_verify_leaves_no_scratch_database(
    stored: Path, paused: list[Paused], target: str, signum: int
) -> None:
    run = Paused(target, *_verify_argv(stored))
    paused.append(run)
    restores = run.children()
    assert run.go_on(signum) == 128 + signum, run.stderr()
    assert _scratch_left() == []
    assert [pid for pid in restores if Path(f"/proc/{pid}").exists()] == []


@pytest.mark.process
def test_a_sigkilled_verify_leaves_a_database_scratch_list_finds(
    stored: Path, paused: list[Paused]
) -> None:
    run = Paused("buttress.backup._verify:_counts", *_verify_argv(stored))
    paused.append(run)
    assert run.go_on(signal.SIGKILL) == -signal.SIGKILL
    (left,) = _scratch_left()
    assert left in {db.name for db in list_scratch(admin_dsn(POSTGRES_URL))}
    assert drop_scratch(admin_dsn(POSTGRES_URL), older_than=0, label=LABEL).dropped == (left,)
    assert _scratch_left() == []


# ------------------------------------------------------------------ the scratch database rule


def test_an_existing_name_is_refused_and_never_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(1_800_000_000.0)
    name = f"{SCRATCH_PREFIX}{LABEL}_1800000000_{'ab' * 6}"
    dsn = create_database(POSTGRES_URL, name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE precious (x int)")
        monkeypatch.setattr(secrets, "token_hex", lambda n: "ab" * n)  # the one name it tries
        with (
            pytest.raises(BackupError, match="exists already: refusing it"),
            scratch_database(admin_dsn(POSTGRES_URL), label=LABEL, clock=clock),
        ):
            pytest.fail("a database it did not create was adopted")
        with psycopg.connect(dsn, autocommit=True) as conn:  # still there, untouched
            assert conn.execute("SELECT to_regclass('precious')").fetchone() == ("precious",)
    finally:
        drop_database(POSTGRES_URL, name)


def test_a_scratch_database_that_cannot_be_dropped_is_said_and_listed() -> None:
    """The server refuses connections to the admin database as the drop comes."""
    admin_db = f"rv_admin_{secrets.token_hex(3)}"
    admin = create_database(POSTGRES_URL, admin_db)
    try:
        names: list[str] = []

        def refuse_connections_then_leave() -> None:
            with scratch_database(admin, label=LABEL) as dsn:
                names.append(str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]))
                with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                    conn.execute(f'ALTER DATABASE "{admin_db}" ALLOW_CONNECTIONS false')

        with pytest.raises(BackupError) as caught:
            refuse_connections_then_leave()
        (name,) = names
        assert caught.value.step == "scratch"
        assert f"drop it by hand with DROP DATABASE {name} WITH (FORCE)" in str(caught.value)
        assert _scratch_left() == [name]
        other = with_dbname(POSTGRES_URL, "postgres")  # another way in
        assert name in {db.name for db in list_scratch(other)}
        assert drop_scratch(other, older_than=0, label=LABEL).dropped == (name,)
    finally:
        drop_database(POSTGRES_URL, admin_db)
    assert _scratch_left() == []


# ------------------------------------------------------------------ clocks


def test_a_backup_dated_in_the_future_proves_no_freshness(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    taken = FakeClock(dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp())
    dest = LocalDestination(tmp_path / "dest")
    run_backup(f"sqlite:///{db}", dest, clock=taken)
    options = VerifyOptions(record=False, rpo=24 * 3600)

    def rpo(now: float) -> tuple[str, str]:
        report = verify_backup(dest, "latest", options, clock=FakeClock(now)).report
        check = next(c for c in report.checks if c.rule.id == "BKP007")
        return check.status.value, check.evidence

    assert rpo(taken.now() + 3600)[0] == "pass"
    assert rpo(taken.now() - 60)[0] == "pass"  # a minute of skew is no reason to fail
    status, evidence = rpo(taken.now() - 2 * 86_400)  # this clock, or that one, is wrong
    assert status == "fail"
    assert "in the future" in evidence
    # freshness: a backup from the future must not hide that backups stopped 10 days ago
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    fake_entry(tmp_path / "f", now - dt.timedelta(days=10))
    check = BackupCheck(LocalDestination(tmp_path / "f"), rpo=86_400, cache_seconds=0,
                        clock=FakeClock(now.timestamp()))  # fmt: skip
    assert asyncio.run(check.run()).status == "fail"
    fake_entry(tmp_path / "f", now + dt.timedelta(days=30))
    result = asyncio.run(check.run())
    assert result.status == "fail"
    assert "10d 0h old" in (result.output or "")
