"""The issue's "done means": ``backup run`` + ``verify`` on the demo's PostgreSQL store.

The demo serves with ``--store-url postgresql://.../test_bk2_demo_*`` (its idempotency
records and rate-limit state live there); a few orders give the tables rows; the database
is backed up while the demo keeps serving, and the backup is verified in a scratch database.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

import httpx
import psycopg
import pytest

from buttress.backup import LocalDestination
from buttress.cli import main
from tests.backup.conftest import LABEL, admin_dsn, create_database, drop_database, scratch_left
from tests.conftest import free_port, served

pytestmark = [pytest.mark.postgres, pytest.mark.process]

ROOT = Path(__file__).resolve().parents[2]
ORDERS = 4


def test_backup_and_verify_the_demo_store(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"test_bk2_demo_{secrets.token_hex(3)}"
    store = create_database(postgres_url, name)
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    demo = [sys.executable, "-m", "buttress", "demo", "--port", str(port), "--store-url", url]
    dest = tmp_path / "backups"
    env = {"BUTTRESS_DEMO_DB": str(tmp_path / "orders.sqlite3")}
    try:
        with served(demo, base + "/health/ready", cwd=ROOT, env=_env(env), timeout=60):
            with httpx.Client(base_url=base, timeout=10.0) as client:
                for i in range(ORDERS):
                    response = client.post(
                        "/orders", json={"sku": f"sku-{i}", "quantity": 1 + i},
                        headers={"Idempotency-Key": f'"order-{i}-{secrets.token_hex(4)}"'},
                    )  # fmt: skip
                    assert response.status_code == 201, response.text
                assert client.get("/orders").status_code == 200
            with psycopg.connect(store) as conn:
                row = conn.execute("SELECT count(*) FROM buttress_idempotency").fetchone()
            assert row is not None
            assert row[0] >= ORDERS
            assert main(["backup", "run", url, "--to", str(dest)]) == 0  # the demo still serves
        out = capsys.readouterr().out  # (log lines of earlier tests' handlers may be there too)
        assert any(line.startswith("backup ") for line in out.splitlines()), out[-2000:]
        code = main([
            "backup", "verify", str(dest), "latest", "--scratch-dsn", admin_dsn(postgres_url),
            "--scratch-label", LABEL, "--format", "json",
            "--check", "select count(*) from buttress_idempotency", "--expect", f">={ORDERS}",
        ])  # fmt: skip
        report = _last_json(capsys.readouterr().out)
    finally:
        drop_database(postgres_url, name)
    statuses = {c["rule"]: c["status"] for c in report["checks"]}
    assert code == 0, report
    assert set(statuses.values()) == {"pass"}, statuses
    (entry,) = LocalDestination(dest).list()
    assert entry.manifest.tables["public.buttress_idempotency"] >= ORDERS
    assert {"public.buttress_schema", "public.buttress_rate"} <= entry.manifest.tables.keys()
    assert entry.verified_at is not None
    assert scratch_left(postgres_url) == []


def _last_json(out: str) -> dict[str, object]:
    """The report: the JSON document at the end of stdout (after any stray log lines)."""
    start = out.rfind("\n{\n") + 1 if "\n{\n" in out else out.index("{")
    report: dict[str, object] = json.loads(out[start:])
    return report


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BUTTRESS_STORE_URL", None)
    env.update(extra)
    return env
