"""The idempotency checks (PRB050-PRB052) against the naive app, a GET-only app and schemas
(the demo's replays are in test_probe.py, which owns the demo process)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from buttress.cli import main
from buttress.probe import ProbeOptions, probe
from buttress.probe._idem import example_body, other_body
from buttress.report import Report

from .conftest import ServerThread

IDEM = ("PRB050", "PRB051", "PRB052")


def _idem(report: Report) -> dict[str, tuple[str, str]]:
    return {c.rule.id: (c.status.value, c.evidence) for c in report.checks if c.rule.id in IDEM}


def test_naive_app_creates_a_new_resource_per_request(naive_url: str) -> None:
    got = _idem(probe(ProbeOptions(url=naive_url, burst=1, timeout=2)))
    assert got["PRB050"][0] == "fail"
    assert "second answer differs" in got["PRB050"][1]
    assert got["PRB051"][0] == "fail"
    assert got["PRB052"][0] in ("fail", "warn")
    assert "[id " in got["PRB052"][1]


def test_a_refused_body_warns_instead_of_judging(naive_url: str) -> None:
    got = _idem(probe(ProbeOptions(url=naive_url, burst=1, timeout=2, write_body="{}")))
    for rid in IDEM:
        status, evidence = got[rid]
        assert status == "warn"
        assert "--write-body" in evidence


def test_no_write_route_is_not_applicable() -> None:
    app = FastAPI(openapi_url=None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "pass"}

    with ServerThread(app) as url:
        got = _idem(probe(ProbeOptions(url=url, burst=1, timeout=2)))
    assert {status for status, _ in got.values()} == {"not-applicable"}
    assert all("--write-route" in evidence for _, evidence in got.values())


def test_example_body_follows_the_schema() -> None:
    doc = {
        "components": {
            "schemas": {
                "OrderIn": {
                    "type": "object",
                    "required": ["sku", "quantity", "when", "tags"],
                    "properties": {
                        "sku": {"type": "string", "minLength": 8, "maxLength": 64},
                        "quantity": {"type": "integer", "minimum": 5, "maximum": 10},
                        "when": {"anyOf": [{"type": "null"}, {"type": "string", "format": "date"}]},
                        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1},
                        "note": {"type": "string"},
                    },
                }
            }
        }
    }
    body = example_body({"$ref": "#/components/schemas/OrderIn"}, doc)
    assert body == {"sku": "probexxx", "quantity": 5, "when": "2024-01-01", "tags": ["a"]}
    assert other_body(body)["quantity"] == 6
    assert "buttress_probe" in other_body({"name": "x"})
    assert example_body({"$ref": "#/nowhere"}, doc) is None


def test_write_body_must_be_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "http://127.0.0.1:1", "--write-body", "{nope"]) == 2
    err = capsys.readouterr().err
    assert "--write-body" in err
    assert len(err.strip().splitlines()) == 1
