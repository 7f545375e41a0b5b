"""Whole-program absence rules on two multi-file services: a naive FastAPI one, and the same
hardened with buttress (``harden(app)`` in another module, through an import)."""

from __future__ import annotations

from pathlib import Path

from buttress.audit import audit
from buttress.report import CheckStatus, Level, score

SAMPLES = Path(__file__).parent / "samples"
ABSENCE = {"BTR101", "BTR407", "BTR503", "BTR601", "BTR602"}


def test_naive_service_misses_everything_at_the_app_definition() -> None:
    report = audit(SAMPLES / "naive")
    found = {(f.rule_id, f.location.path, f.location.line) for f in report.findings}
    assert {(rule, "app/main.py", 9) for rule in ABSENCE} <= found
    assert ("BTR001", "app/clients.py", 9) in found  # through an import of the constant URL
    assert ("BTR401", "app/main.py", 10) in found  # ORIGINS from app/settings.py
    assert ("BTR402", "run.py", 6) in found
    assert ("BTR102", "app/main.py", 9) in found  # POST /orders, no rate limit
    assert ("BTR408", "run.py", 6) in found  # uvicorn.run(host="0.0.0.0")
    assert len(found) == len(ABSENCE) + 5
    [idempotency] = [f for f in report.findings if f.rule_id == "BTR101"]
    assert "POST /orders" in idempotency.message  # the route of the included router
    card = score(report.checks)
    assert card.level is Level.NONE
    assert card.aggregate is not None
    assert card.aggregate < 5


def test_hardened_service_findings_vanish() -> None:
    report = audit(SAMPLES / "hardened")
    assert report.findings == ()
    statuses = {c.rule.id: c.status for c in report.checks}
    assert all(statuses[rule] is CheckStatus.PASS for rule in ABSENCE)
    card = score(report.checks)
    assert card.level is Level.GOLD
    assert card.aggregate == 10
