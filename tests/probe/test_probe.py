"""``buttress probe`` against the demo (all pass), a naive app (each gap reported) and
servers that hang, reset, send garbage or answer slowly (failures, quickly, no traceback)."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from rich.console import Console

from buttress.cli import main
from buttress.probe import GROUPS, RULES, ProbeOptions, is_loopback, probe
from buttress.report import CheckStatus, Report, render, schema_path, to_markdown, to_sarif_dict

from .conftest import BadServer

SARIF_SCHEMA = Path(__file__).parents[1] / "audit" / "sarif-schema-2.1.0.json"


def _statuses(report: Report) -> dict[str, str]:
    return {c.rule.id: c.status.value for c in report.checks}


def _run_cli(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    out = tmp_path / "probe.json"
    code = main(["probe", *argv, "--format", "json", "--output", str(out)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    data = json.loads(out.read_text())
    jsonschema.validate(data, json.loads(Path(schema_path()).read_text()))
    return code, data


def test_demo_passes_every_check(
    demo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    code, data = _run_cli([demo_url, "--fail-on", "P2"], tmp_path, capsys)
    assert time.monotonic() - started < 30
    failing = {c["rule"]: c["evidence"] for c in data["checks"] if c["status"] != "pass"}
    assert failing == {}
    assert code == 0
    assert data["tool"]["command"] == "buttress probe"
    assert data["scorecard"]["level"] == "gold"
    assert {c["rule"] for c in data["checks"]} == set(GROUPS["checks"])  # no mode asked
    assert all(c["evidence"] for c in data["checks"])


def test_demo_replays_with_a_given_body(
    demo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "probe.json"
    argv = [
        demo_url,
        "--write-route",
        "POST /orders",
        "--write-body",
        '{"sku": "abc-1", "quantity": 3}',
    ]
    code = main(["probe", *argv, "--burst", "5", "--format", "json", "--output", str(out)])
    assert "Traceback" not in capsys.readouterr().err
    checks = {c["rule"]: c for c in json.loads(out.read_text())["checks"]}
    for rid in ("PRB050", "PRB051", "PRB052"):
        assert checks[rid]["status"] == "pass", checks[rid]["evidence"]
    assert "Idempotent-Replayed: true" in checks["PRB050"]["evidence"]
    assert "422 application/problem+json" in checks["PRB051"]["evidence"]
    assert "gave up" in checks["PRB052"]["evidence"] or "[id" in checks["PRB052"]["evidence"]
    assert code == 0


def test_naive_app_reports_each_missing_protection(
    naive_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = _run_cli([naive_url, "--fail-on", "P0"], tmp_path, capsys)
    got = {c["rule"]: c["status"] for c in data["checks"]}
    assert got == {
        "PRB001": "pass",  # /health answers 200
        "PRB002": "warn",  # ... for readiness too: one endpoint for both
        "PRB003": "warn",  # {"status": "ok"} as application/json
        "PRB004": "pass",
        "PRB010": "fail",  # 404 application/json
        "PRB011": "fail",  # 405 application/json
        "PRB012": "fail",  # 422 application/json
        "PRB013": "fail",  # a 2 MiB body is parsed, 422 application/json
        "PRB014": "pass",  # no 5xx, no traceback (FastAPI's defaults are terse)
        "PRB015": "fail",  # no request id
        "PRB020": "fail",
        "PRB021": "fail",
        "PRB022": "not-applicable",  # http: HSTS is a note
        "PRB023": "fail",
        "PRB024": "fail",  # X-Powered-By: Express 4.17.1
        "PRB025": "fail",  # reflects any origin with credentials
        "PRB026": "fail",  # X-Forwarded-For gets a fresh budget
        "PRB030": "pass",  # a 429 appears
        "PRB031": "fail",  # ... without Retry-After
        "PRB040": "fail",  # no /metrics
        "PRB041": "not-applicable",
        "PRB050": "fail",  # POST /items creates a new id for the same key
        "PRB051": "fail",  # ... and for another body under it
        "PRB052": "fail",  # ... and for every retry
    }
    assert code == 1  # P0 failures: CORS, XFF, idempotency
    failed = [f for f in data["findings"] if f["rule"] == "PRB025"]
    assert failed
    assert failed[0]["path"].startswith(naive_url)
    assert "with credentials" in failed[0]["message"]


def test_no_429_within_the_burst_is_a_warning(naive_url: str) -> None:
    report = probe(ProbeOptions(url=naive_url, burst=20, burst_route="/health", timeout=2))
    statuses = _statuses(report)
    assert statuses["PRB030"] == "warn"
    assert statuses["PRB031"] == "not-applicable"
    check = next(c for c in report.checks if c.rule.id == "PRB030")
    assert "20 sent" in check.evidence
    assert "no 429" in check.evidence


def test_writers_show_the_evidence(naive_url: str) -> None:
    report = probe(ProbeOptions(url=naive_url, burst=5, burst_route="/health", timeout=2))
    console = Console(file=io.StringIO(), width=200, no_color=True)
    render(report, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "PRB025" in text
    assert "requests in" in text
    assert "files" not in text
    markdown = to_markdown(report)
    assert "| Check | Priority | Status | Evidence |" in markdown
    assert "X-Powered-By" in markdown or "x-powered-by" in markdown
    sarif = to_sarif_dict(report)
    jsonschema.validate(sarif, json.loads(SARIF_SCHEMA.read_text()))
    uris = {
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        for r in sarif["runs"][0]["results"]
    }
    assert all(u.startswith(naive_url) for u in uris)


@pytest.mark.parametrize("mode", ["hang", "reset", "garbage", "slow", "trickle"])
def test_misbehaving_servers_fail_fast_without_traceback(
    mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result: dict[str, Any] = {}
    with BadServer(mode) as url:

        def go() -> None:
            result["code"] = main(["probe", url, "--timeout", "0.5", "--format", "json"])

        started = time.monotonic()
        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        thread.join(20)
        elapsed = time.monotonic() - started
        assert not thread.is_alive(), f"the probe hung against a {mode} server"
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert result["code"] == 0  # no gate given
    data = json.loads(captured.out)
    statuses = {c["rule"]: c["status"] for c in data["checks"]}
    assert statuses["PRB001"] == "fail"
    assert statuses["PRB014"] == "fail"
    assert elapsed < 6, elapsed  # a few timeouts, then the client stops sending
    evidence = next(c["evidence"] for c in data["checks"] if c["rule"] == "PRB001")
    assert evidence


def test_a_gate_fails_against_a_hanging_server(capsys: pytest.CaptureFixture[str]) -> None:
    with BadServer("hang") as url:
        code = main(["probe", url, "--timeout", "0.3", "--fail-on", "P0", "--format", "markdown"])
    assert code == 1
    assert "Liveness endpoint answers" in capsys.readouterr().out


def test_connection_refused_is_a_failure_not_a_crash() -> None:
    with BadServer("hang") as url:
        pass  # closed: nothing listens on the port any more
    report = probe(ProbeOptions(url=url, timeout=0.5))
    assert _statuses(report)["PRB001"] == "fail"
    assert report.extra["requests"] == "3"  # gave up after three failures in a row


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "https://10.0.0.1:8443",
        "http://[2001:db8::1]/",
        "http://127.0.0.1.nip.io",
    ],
)
def test_remote_target_is_refused_in_one_line_without_traffic(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_traffic(*args: object, **kwargs: object) -> None:
        raise AssertionError("a request was sent")

    monkeypatch.setattr(httpx.AsyncClient, "send", no_traffic)
    assert main(["probe", url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert "--allow-remote" in lines[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ftp://127.0.0.1"], "not an http"),
        (["http://127.0.0.1:1", "--burst", "501"], "--burst"),
        (["http://127.0.0.1:1", "--timeout", "0"], "--timeout"),
        (["http://127.0.0.1:1", "--write-route", "GET /x"], "--write-route"),
        (["http://127.0.0.1:1", "--health", "live"], "starts with /"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["probe", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_loopback_detection() -> None:
    assert is_loopback("http://127.0.0.1:8000")
    assert is_loopback("http://127.8.9.10")
    assert is_loopback("http://[::1]:8000/")
    assert is_loopback("http://localhost:8000")
    assert not is_loopback("http://localhost.example.com")
    assert not is_loopback("http://0.0.0.0:8000")
    assert not is_loopback("http://192.168.1.10")


def test_help_describes_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    out = capsys.readouterr().out
    assert "--allow-remote" in out
    assert "examples:" in out
    assert "docs/probe.md" in out


def test_warn_lowers_the_score_not_the_level() -> None:
    from buttress.report import Check, score  # noqa: PLC0415

    checks = [
        Check(rule=RULES["PRB001"], status=CheckStatus.PASS),
        Check(rule=RULES["PRB030"], status=CheckStatus.WARN),
    ]
    card = score(checks)
    assert card.level.value == "gold"
    assert card.aggregate is not None
    assert card.aggregate < 10
