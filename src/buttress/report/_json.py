"""The JSON report: a stable schema (``schema/report.schema.json``), versioned.

``version`` is the schema's version (bumped on any incompatible change; fields are only
ever added within one version); ``tool.version`` is the version of buttress that wrote it.
Keys are in a fixed order and findings sorted by path, line, column and rule, so two runs
on the same tree give byte-identical files.
"""

from __future__ import annotations

import json
from typing import Any

from buttress.report._gate import GateResult, gate_scorecard
from buttress.report._model import Finding, Report
from buttress.report._score import Scorecard, score

__all__ = ["SCHEMA_VERSION", "to_dict", "to_json"]

SCHEMA_VERSION = 1


def _scorecard(card: Scorecard) -> dict[str, Any]:
    return {
        "categories": [
            {
                "category": c.category,
                "score": c.score,
                "passed": c.passed,
                "applicable": c.applicable,
                "total": c.total,
            }
            for c in card.categories
        ],
        "aggregate": card.aggregate,
        "level": card.level.value,
    }


def finding_dict(finding: Finding) -> dict[str, Any]:
    """One finding as the JSON report writes it."""
    loc = finding.location
    return {
        "rule": finding.rule_id,
        "category": finding.category,
        "priority": finding.priority.value,
        "message": finding.message,
        "path": loc.path,
        "line": loc.line,
        "column": loc.column,
        "end_line": loc.end_line,
        "end_column": loc.end_column,
        "fix": finding.fix,
        "docs": finding.docs,
        "suppressed": finding.suppressed,
        "suppression_reason": finding.suppression_reason,
        "baselined": finding.baselined,
        "fingerprint": finding.fingerprint,
    }


def sort_key(finding: Finding) -> tuple[str, int, int, str, str]:
    """The order every writer lists findings in."""
    loc = finding.location
    return (loc.path, loc.line, loc.column, finding.rule_id, finding.message)


def to_dict(report: Report, gate: GateResult | None = None) -> dict[str, Any]:
    """The report as plain data (what `to_json` serialises)."""
    card = score(report.checks)
    data: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "tool": {"name": "buttress", "command": report.tool, "version": report.version},
        "target": report.target,
        "summary": {
            "files": report.files,
            "lines": report.lines,
            "duration_seconds": round(report.duration, 3),
            "findings": sum(1 for f in report.findings if not f.suppressed),
            "new_findings": sum(1 for f in report.findings if f.active),
            "suppressed": sum(1 for f in report.findings if f.suppressed),
            "baselined": sum(1 for f in report.findings if f.baselined),
            "skipped": len(report.skipped),
            "baseline_used": report.baseline_used,
        },
        "scorecard": _scorecard(card),
        "gate_scorecard": _scorecard(gate_scorecard(report)),
        "checks": [
            {
                "rule": c.rule.id,
                "title": c.rule.title,
                "category": c.rule.category,
                "priority": c.rule.priority.value,
                "status": c.status.value,
                "findings": c.findings,
                "scored": c.rule.scored,
                "evidence": c.evidence,
            }
            for c in report.checks
        ],
        "findings": [finding_dict(f) for f in sorted(report.findings, key=sort_key)],
        "skipped": [{"path": s.path, "reason": s.reason} for s in report.skipped],
    }
    if gate is not None:
        data["gate"] = {"passed": gate.passed, "reasons": list(gate.reasons)}
    return data


def to_json(report: Report, gate: GateResult | None = None) -> str:
    """The JSON report, indented, ending with a newline."""
    return json.dumps(to_dict(report, gate), indent=2, ensure_ascii=False) + "\n"
