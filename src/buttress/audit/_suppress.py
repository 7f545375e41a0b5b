"""Inline suppressions and the baseline file.

``# buttress: ignore[BTR001] reason`` (several ids: ``ignore[BTR001, BTR402]``) on any
line a finding spans suppresses it, and so does the same comment alone on the line just
above the finding's first line (for a reason too long to share a line); the reason is
required: a suppression without one
still suppresses, and is itself reported (BTR900) so it shows up in review. Comments are
read with `tokenize`, so the text inside a string never counts.

The baseline (``--write-baseline FILE``, then ``--baseline FILE``) lists the active
findings by fingerprint: a hash of the rule, the path and the finding's source line with
its whitespace collapsed, so a finding keeps its fingerprint when lines above it move.
The same fingerprint may appear several times; each occurrence in the baseline forgives
one finding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import tokenize
from collections import Counter
from pathlib import Path

from buttress.audit._rules import RULES
from buttress.errors import ConfigurationError
from buttress.report import Finding, Location

__all__ = [
    "Suppression",
    "apply_baseline",
    "apply_suppressions",
    "fingerprint",
    "line_fingerprint",
    "read_baseline",
    "suppressions",
    "text_suppressions",
    "write_baseline",
]

_COMMENT = re.compile(r"#\s*buttress:\s*ignore\[([^\]]*)\]\s*(.*)$")


@dataclasses.dataclass(frozen=True, slots=True)
class Suppression:
    """One ``# buttress: ignore[...]`` comment."""

    line: int
    column: int
    rules: frozenset[str]
    reason: str


def suppressions(text: str) -> list[Suppression]:
    """The suppression comments of a module's source."""
    if "buttress:" not in text:
        return []
    found: list[Suppression] = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return found
    for token in tokens:
        if token.type != tokenize.COMMENT:
            continue
        match = _COMMENT.search(token.string)
        if match is None:
            continue
        rules = frozenset(r.strip().upper() for r in match.group(1).split(",") if r.strip())
        reason = match.group(2).split("#", 1)[0].strip()  # another comment is no reason
        line = token.start[0]
        if token.line[: token.start[1]].strip() == "":  # alone on its line: the next one
            line += 1
        found.append(Suppression(line, token.start[1] + 1, rules, reason))
    return found


def text_suppressions(text: str) -> list[Suppression]:
    """The suppression comments of a non-Python file (``#`` comments, read line by line)."""
    if "buttress:" not in text:
        return []
    found: list[Suppression] = []
    for number, line in enumerate(text.splitlines(), 1):
        match = _COMMENT.search(line)
        if match is None:
            continue
        rules = frozenset(r.strip().upper() for r in match.group(1).split(",") if r.strip())
        reason = match.group(2).split("#", 1)[0].strip()
        alone = line[: match.start()].strip() == ""
        found.append(Suppression(number + alone, match.start() + 1, rules, reason))
    return found


def apply_suppressions(
    findings: list[Finding], marks: list[Suppression], rel: str, *, report_bare: bool
) -> list[Finding]:
    """``findings`` with the suppressed ones marked, plus BTR900 for reasonless comments."""
    if not marks:
        return findings
    out: list[Finding] = []
    for finding in findings:
        loc = finding.location
        last = max(loc.end_line, loc.line)
        mark = next(
            (m for m in marks if finding.rule_id in m.rules and loc.line <= m.line <= last), None
        )
        if mark is None:
            out.append(finding)
        else:
            out.append(
                dataclasses.replace(finding, suppressed=True, suppression_reason=mark.reason)
            )
    if report_bare:
        rule = RULES["BTR900"]
        for mark in marks:
            if not mark.reason:
                ids = ", ".join(sorted(mark.rules)) or "nothing"
                out.append(
                    Finding(
                        rule_id="BTR900",
                        category=rule.category,
                        priority=rule.priority,
                        message=f"ignore[{ids}] without a reason",
                        location=Location(
                            path=rel, line=mark.line, column=mark.column, end_line=mark.line
                        ),
                        fix=rule.fix,
                        docs=rule.docs,
                    )
                )
    return out


def fingerprint(finding: Finding, lines: list[str]) -> str:
    """A fingerprint that survives lines moving: rule, path, the line's text."""
    line = finding.location.line
    text = " ".join(lines[line - 1].split()) if 0 < line <= len(lines) else ""
    return line_fingerprint(finding, text)


def line_fingerprint(finding: Finding, text: str) -> str:
    """`fingerprint`, given the finding's line with its whitespace collapsed."""
    key = f"{finding.rule_id}\0{finding.location.path}\0{text}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def write_baseline(path: Path, findings: list[Finding]) -> None:
    """Write the active findings' fingerprints to ``path``."""
    entries = sorted(
        (f.rule_id, f.location.path, f.fingerprint) for f in findings if not f.suppressed
    )
    data = {
        "version": 1,
        "tool": "buttress audit",
        "findings": [{"rule": r, "path": p, "fingerprint": fp} for r, p, fp in entries],
    }
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_baseline(path: Path) -> Counter[str]:
    """The fingerprints of a baseline file, counted."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["findings"]
        return Counter(str(e["fingerprint"]) for e in entries)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"--baseline {path}: not a buttress baseline ({exc})") from exc


def apply_baseline(findings: list[Finding], baseline: Counter[str]) -> list[Finding]:
    """Mark as baselined the findings the baseline forgives (one per occurrence)."""
    left = Counter(baseline)
    out = []
    for finding in findings:
        if not finding.suppressed and left[finding.fingerprint] > 0:
            left[finding.fingerprint] -= 1
            out.append(dataclasses.replace(finding, baselined=True))
        else:
            out.append(finding)
    return out
