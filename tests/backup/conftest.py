"""Fixtures of the backup tests: a filled PostgreSQL source, scratch bookkeeping, fake entries.

Source databases are named ``test_bk_*`` and dropped after; scratch databases are created
by the code under test with the label ``bktest`` (``buttress_scratch_bktest_*``), so these
tests can check that none is left without looking at anyone else's.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from buttress.backup import LocalDestination, Manifest, Verification
from buttress.backup._manifest import new_backup_id
from buttress.backup._pgtools import with_dbname

LABEL = "bktest"
ROWS = {"public.customers": 50_000, "public.orders": 150_000, "shop.items": 100_000}


def admin_dsn(postgres_url: str) -> str:
    return with_dbname(postgres_url, "postgres")


def scratch_left(postgres_url: str) -> list[str]:
    """Scratch databases of these tests that still exist."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", [f"buttress_scratch_{LABEL}_%"]
        ).fetchall()
    return [r[0] for r in rows]


def create_database(postgres_url: str, name: str) -> str:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_dbname(postgres_url, name)


def drop_database(postgres_url: str, name: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


FILL = """
CREATE SCHEMA shop;
CREATE TYPE shop.status AS ENUM ('new', 'paid', 'shipped');
CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL UNIQUE,
                        created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY,
                     customer_id bigint NOT NULL REFERENCES customers(id),
                     total numeric(12, 2) NOT NULL CHECK (total >= 0),
                     status shop.status NOT NULL DEFAULT 'new',
                     created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX orders_customer ON orders (customer_id);
CREATE TABLE shop.items (order_id bigint NOT NULL, sku text NOT NULL, quantity int NOT NULL);
CREATE VIEW shop.big_orders AS SELECT id, total FROM orders WHERE total > 900;
CREATE FUNCTION shop.order_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM orders';
INSERT INTO customers SELECT g, 'c' || g || '@example.test', now() FROM generate_series(1, 50000) g;
INSERT INTO orders (customer_id, total, created_at)
    SELECT 1 + g % 50000, (g % 1000)::numeric, now() - (g % 30) * interval '1 day'
    FROM generate_series(1, 150000) g;
INSERT INTO shop.items SELECT g, 'sku-' || (g % 500), 1 + g % 3 FROM generate_series(1, 100000) g;
SELECT lo_from_bytea(0, convert_to(repeat('large object ', 1000), 'UTF8'));
SELECT lo_from_bytea(0, '\\x00ff00ff'::bytea);
"""


@pytest.fixture(scope="module")
def source_dsn() -> Iterator[str]:
    """A database filled with three tables (350,000 rows), a view, a function, an enum and
    two large objects; dropped after the module."""
    from tests.conftest import POSTGRES_URL

    name = f"test_bk_src_{secrets.token_hex(3)}"
    try:
        dsn = create_database(POSTGRES_URL, name)
    except psycopg.Error as exc:  # pragma: no cover - environment failure
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} does not answer ({exc}); .ci/run starts it")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(FILL)
        conn.execute("ANALYZE")
    yield dsn
    drop_database(POSTGRES_URL, name)


@pytest.fixture(scope="module")
def stored_backup(source_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One backup of the source, taken once per module; copy it before changing it."""
    from buttress.backup import run_backup

    root = tmp_path_factory.mktemp("stored")
    run_backup(source_dsn, LocalDestination(root))
    return root


def copy_destination(stored: Path, target: Path) -> tuple[LocalDestination, Path]:
    """A copy of the stored destination and the folder of its only backup."""
    shutil.copytree(stored, target)
    (folder,) = [p for p in target.iterdir() if p.is_dir()]
    return LocalDestination(target), folder


def fake_entry(
    root: Path, when: dt.datetime, *, verified: bool = False, suffix: str | None = None
) -> str:
    """A minimal backup folder (a few bytes of dump, a manifest) dated ``when``."""
    backup_id = new_backup_id(when, "fake", suffix or secrets.token_hex(2))
    folder = root / backup_id
    folder.mkdir(parents=True)
    (folder / "fake.dump").write_bytes(b"fake")
    manifest = Manifest(
        id=backup_id, engine="postgresql", source="postgresql://127.0.0.1/fake",
        database="fake", created_at=when, duration_seconds=0.1, server_version="15",
        tool="test", file="fake.dump", size=4, sha256="0" * 64, dump_format="custom",
        compression="none",
    )  # fmt: skip
    (folder / "manifest.json").write_text(manifest.to_json())
    if verified:
        record = Verification(checked_at=when, passed=True, last_passed_at=when)
        (folder / "verification.json").write_text(record.to_json())
    return backup_id
