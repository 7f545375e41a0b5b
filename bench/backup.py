"""``buttress backup run`` / ``verify`` next to plain ``pg_dump -Fc`` / ``pg_restore``, one run.

Builds a database of about 1 GB with generate_series (``--database``, default
``test_bk_bench``; dropped at the end), in two halves: after the first half it measures the
peak RSS of ``buttress backup run`` and ``verify`` (the Python process alone: pg_dump and
pg_restore are its children and are not counted), after the second half it measures
everything again, side by side:

* ``pg_dump -Fc --file`` vs ``buttress backup run DSN --to DIR`` (same compression), once;
* ``createdb`` + ``pg_restore --jobs 2`` + ``dropdb`` vs ``buttress backup verify DIR``
  (checksum while restoring, scratch database, restore with ``--jobs 2``, row counts over
  2 connections, schema hash, drop), ``--repeat`` times each, interleaved plain, buttress,
  buttress, plain, ... so a load that drifts hits both sides alike.

Prints the ratios (target <= 1.10: for verify, of the summed times) and the peak RSS at
both sizes (target: flat). Heavy: minutes of CPU and ~3 GB of disk.

    .venv/bin/python bench/backup.py [--rows 8000000] [--repeat 2] [--database NAME] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import env_info, load_warning, write_json  # noqa: E402

PG = os.environ.get("BUTTRESS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_DB = "test_bk_bench"
DB = DEFAULT_DB  # --database
SERVER = PG.rsplit("/", 1)[0]
ADMIN = f"{SERVER}/postgres"
RSS_SNIPPET = (
    "import resource, sys\n"
    "from buttress.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('peak-rss-kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def psql(sql: str, db: str = "postgres") -> str:
    done = subprocess.run(
        ["psql", f"{SERVER}/{db}", "-v", "ON_ERROR_STOP=1", "-Atqc", sql],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def fill(first: int, last: int) -> None:
    psql(
        "INSERT INTO events SELECT g, now() - g * interval '1 second', g % 1000, "
        "md5(g::text) || md5((g * 7)::text), md5((g * 13)::text) "
        f"FROM generate_series({first}, {last}) g",
        DB,
    )


def plain_restore(dump: Path) -> float:
    """``createdb`` + ``pg_restore --jobs 2`` + ``dropdb``: what verify replaces."""
    scratch = f"{DB}_restore"
    psql(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
    started = time.perf_counter()
    psql(f"CREATE DATABASE {scratch}")
    timed(["pg_restore", "--jobs=2", "--no-owner", "--no-privileges", "--exit-on-error",
           f"--dbname={SERVER}/{scratch}", str(dump)])  # fmt: skip
    psql(f"DROP DATABASE {scratch} WITH (FORCE)")
    return time.perf_counter() - started


def db_size() -> int:
    return int(psql(f"SELECT pg_database_size('{DB}')"))


def timed(args: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(args[:4])}... failed ({done.returncode}): {done.stderr[-2000:]}"
        )
    return elapsed, done.stderr


def buttress(*args: str) -> tuple[float, int]:
    elapsed, err = timed([sys.executable, "-c", RSS_SNIPPET, *args])
    rss = next(int(line.split()[1]) for line in err.splitlines() if line.startswith("peak-rss-kib"))
    return elapsed, rss


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=8_000_000, help="rows at the full size")
    parser.add_argument("--repeat", type=int, default=2, help="verify runs per side (2)")
    parser.add_argument("--database", default=DEFAULT_DB, help=f"default {DEFAULT_DB}")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    global DB  # noqa: PLW0603 - one setting for the helpers above
    DB = args.database
    source = f"{SERVER}/{DB}"
    if (warning := load_warning()) is not None:
        print(warning)
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < 6 * 2**30:
        raise SystemExit(f"needs ~6 GB free in {tempfile.gettempdir()}, {free / 2**30:.1f} GB free")
    work = Path(tempfile.mkdtemp(prefix="buttress-bench-backup-"))
    results: dict[str, object] = {"env": env_info(), "rows": args.rows}
    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    psql(f"CREATE DATABASE {DB}")
    try:
        psql(
            "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, "
            "kind int NOT NULL, payload text NOT NULL, tag text NOT NULL)",
            DB,
        )
        half = args.rows // 2
        started = time.perf_counter()
        fill(1, half)
        psql("VACUUM ANALYZE events", DB)
        small = db_size()
        print(f"built {small / 2**20:,.0f} MiB in {time.perf_counter() - started:.0f} s")
        _, rss_run_small = buttress("backup", "run", source, "--to", str(work / "small"))
        _, rss_verify_small = buttress(
            "backup", "verify", str(work / "small"), "--scratch-dsn", ADMIN,
            "--scratch-label", "bench", "--format", "json", "--output", os.devnull,
        )  # fmt: skip
        shutil.rmtree(work / "small")
        started = time.perf_counter()
        fill(half + 1, args.rows)
        psql("VACUUM ANALYZE events", DB)
        big = db_size()
        print(f"built {big / 2**20:,.0f} MiB in {time.perf_counter() - started:.0f} s")

        plain_dump, _ = timed(
            ["pg_dump", "-Fc", f"--dbname={source}", f"--file={work / 'plain.dump'}"]
        )
        run_time, rss_run = buttress("backup", "run", source, "--to", str(work / "big"))
        verify_args = [
            "backup", "verify", str(work / "big"), "--scratch-dsn", ADMIN, "--jobs", "2",
            "--scratch-label", "bench", "--format", "json", "--output", os.devnull,
        ]  # fmt: skip
        plain_restores: list[float] = []
        verifies: list[float] = []
        rss_verify = 0
        for i in range(args.repeat):  # plain, buttress, buttress, plain, ...
            for side in ("plain", "buttress") if i % 2 == 0 else ("buttress", "plain"):
                if side == "plain":
                    plain_restores.append(plain_restore(work / "plain.dump"))
                else:
                    seconds, rss = buttress(*verify_args)
                    verifies.append(seconds)
                    rss_verify = max(rss_verify, rss)
                print(f"  {side:8} {(plain_restores if side == 'plain' else verifies)[-1]:6.1f} s")
        plain_restore_s = sum(plain_restores)
        verify_time = sum(verifies)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    rows = [
        ("backup", "pg_dump -Fc", plain_dump, "buttress backup run", run_time),
        (
            "verify",
            f"createdb + pg_restore -j2 + dropdb x{args.repeat}",
            plain_restore_s,
            f"buttress backup verify x{args.repeat}",
            verify_time,
        ),
    ]
    print(f"\ndatabase {big / 2**20:,.0f} MiB ({args.rows:,} rows); backup once, verify "
          f"{args.repeat} times each side, interleaved\n")  # fmt: skip
    print(f"{'step':8} {'plain':>36} {'s':>7} {'buttress':>24} {'s':>7} {'ratio':>6}")
    for step, plain_name, plain_s, ours_name, ours_s in rows:
        ratio = ours_s / plain_s
        print(
            f"{step:8} {plain_name:>36} {plain_s:7.1f} {ours_name:>24} {ours_s:7.1f} {ratio:6.2f}"
            f"  {'PASS' if ratio <= 1.10 else 'FAIL'} (target <= 1.10)"
        )
    print(
        f"\npeak RSS of the buttress process, MiB: run {rss_run_small / 1024:.0f} at "
        f"{small / 2**20:,.0f} MiB -> {rss_run / 1024:.0f} at {big / 2**20:,.0f} MiB; verify "
        f"{rss_verify_small / 1024:.0f} -> {rss_verify / 1024:.0f}"
    )
    results.update(
        size_small=small, size_big=big, pg_dump=plain_dump, backup_run=run_time,
        pg_restore=plain_restores, backup_verify=verifies, rss_run_kib=[rss_run_small, rss_run],
        rss_verify_kib=[rss_verify_small, rss_verify],
    )  # fmt: skip
    print(f"results: {write_json('backup', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
