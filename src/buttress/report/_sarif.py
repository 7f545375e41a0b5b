"""SARIF 2.1.0, as GitHub code scanning accepts it.

Every rule run is described in ``runs[0].tool.driver.rules`` (id, name, descriptions,
``helpUri``, the priority as ``defaultConfiguration.level`` and a ``security-severity``
GitHub sorts by); each finding is a result with ``ruleId``, ``ruleIndex``, ``level``
(P0 error, P1 warning, P2 note), one physical location relative to ``%SRCROOT%`` and a
``partialFingerprints`` entry. Absence findings are located where the producer put them
(``buttress audit``: the app's definition; ``buttress probe``: the absolute URL
requested, with no ``uriBaseId``). Suppressed findings carry an ``inSource``
suppression with its justification; with a baseline, results carry ``baselineState``.
Skipped inputs become tool execution notifications.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from buttress.report._json import sort_key
from buttress.report._model import Finding, Priority, Report

__all__ = ["SARIF_SCHEMA", "to_sarif", "to_sarif_dict"]

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"

_LEVEL = {Priority.P0: "error", Priority.P1: "warning", Priority.P2: "note"}
_SEVERITY = {Priority.P0: "8.0", Priority.P1: "5.0", Priority.P2: "2.0"}


def _region(finding: Finding) -> dict[str, int]:
    loc = finding.location
    region = {"startLine": max(loc.line, 1)}
    if loc.column:
        region["startColumn"] = loc.column
    if loc.end_line >= region["startLine"]:
        region["endLine"] = loc.end_line
        if loc.end_column and (loc.end_line > region["startLine"] or loc.end_column > loc.column):
            region["endColumn"] = loc.end_column
    return region


def _artifact(finding: Finding) -> dict[str, str]:
    if finding.location.is_url:  # a black-box finding: the URL requested, absolute
        return {"uri": finding.location.path}
    return {"uri": finding.location.path or ".", "uriBaseId": "%SRCROOT%"}


def to_sarif_dict(report: Report) -> dict[str, Any]:
    """The SARIF log as plain data."""
    rules = sorted(report.rules, key=lambda r: r.id)
    index = {rule.id: i for i, rule in enumerate(rules)}
    results = []
    for finding in sorted(report.findings, key=sort_key):
        result: dict[str, Any] = {
            "ruleId": finding.rule_id,
            "level": _LEVEL[finding.priority],
            "message": {"text": f"{finding.message} Fix: {finding.fix}".strip()},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": _artifact(finding),
                        "region": _region(finding),
                    }
                }
            ],
            "properties": {"priority": finding.priority.value, "category": finding.category},
        }
        if finding.rule_id in index:
            result["ruleIndex"] = index[finding.rule_id]
        if finding.fingerprint:
            result["partialFingerprints"] = {"buttressFingerprint/v1": finding.fingerprint}
        if finding.suppressed:
            result["suppressions"] = [
                {"kind": "inSource", "justification": finding.suppression_reason or "(none)"}
            ]
        if report.baseline_used:
            result["baselineState"] = "unchanged" if finding.baselined else "new"
        results.append(result)
    driver = {
        "name": "buttress",
        "semanticVersion": report.version,
        "version": report.version,
        "informationUri": "https://github.com/buttress-dev/buttress",
        "rules": [
            {
                "id": rule.id,
                "name": "".join(w.capitalize() for w in rule.title.replace("-", " ").split())[:100],
                "shortDescription": {"text": rule.title},
                "fullDescription": {"text": f"{rule.title}. Fix: {rule.fix}"},
                "help": {"text": rule.fix, "markdown": f"{rule.fix}\n\n[Docs]({rule.docs})"},
                "helpUri": rule.docs,
                "defaultConfiguration": {"level": _LEVEL[rule.priority]},
                "properties": {
                    "priority": rule.priority.value,
                    "category": rule.category,
                    "tags": [rule.category, rule.priority.value],
                    "security-severity": _SEVERITY[rule.priority],
                },
            }
            for rule in rules
        ],
    }
    notifications = [
        {
            "level": "warning",
            "message": {"text": f"skipped: {s.reason}"},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": s.path or ".", "uriBaseId": "%SRCROOT%"}
                    }
                }
            ],
        }
        for s in report.skipped
    ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": driver},
                "invocations": [
                    {
                        "executionSuccessful": True,
                        "toolExecutionNotifications": notifications,
                    }
                ],
                "originalUriBaseIds": {"%SRCROOT%": {"uri": _root_uri(report.target)}},
                "columnKind": "unicodeCodePoints",
                "results": results,
            }
        ],
    }


def _root_uri(target: str) -> str:
    if target.startswith(("http://", "https://")):  # buttress probe: the service's URL
        return target if target.endswith("/") else target + "/"
    path = Path(target).resolve()
    uri = path.as_uri()
    return uri if uri.endswith("/") else uri + "/"


def to_sarif(report: Report) -> str:
    """The SARIF log as JSON text, ending with a newline."""
    return json.dumps(to_sarif_dict(report), indent=2, ensure_ascii=False) + "\n"
