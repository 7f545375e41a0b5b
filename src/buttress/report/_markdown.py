"""The Markdown report: what a team pastes into a pull request.

A summary line (score, level, counts), the scorecard table (one row per category), then
the findings table by priority (P0 first) with the fix for each, and the skipped files.
Cells are escaped (``|`` and newlines) so any message keeps the table whole.
"""

from __future__ import annotations

from buttress.report._gate import GateResult
from buttress.report._json import sort_key
from buttress.report._model import Report
from buttress.report._score import score

__all__ = ["to_markdown"]


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def to_markdown(report: Report, gate: GateResult | None = None, *, limit: int = 200) -> str:
    """The report as Markdown; at most ``limit`` findings are listed (the rest counted)."""
    card = score(report.checks)
    active = [f for f in report.findings if not f.suppressed]
    lines = [
        f"## {report.tool}: {report.target}",
        "",
        f"**Score {card.aggregate_shown}/10, level {card.level.value}** - "
        f"{len(active)} finding{'s' if len(active) != 1 else ''} "
        f"({sum(1 for f in active if f.priority.value == 'P0')} P0), "
        f"{sum(1 for f in report.findings if f.suppressed)} suppressed, "
        + (
            f"{report.extra['requests']} requests"
            if "requests" in report.extra
            else f"{report.files} files"
        )
        + f", buttress {report.version}",
        "",
    ]
    if gate is not None:
        lines += [
            "Gate: " + ("passed" if gate.passed else "**failed**: " + "; ".join(gate.reasons)),
            "",
        ]
    lines += ["| Category | Score | Passing checks |", "| --- | ---: | ---: |"]
    for row in card.categories:
        lines.append(f"| {_cell(row.category)} | {row.shown} | {row.passed}/{row.applicable} |")
    lines.append("")
    if any(c.evidence for c in report.checks):  # black box: what was sent and seen
        lines += ["| Check | Priority | Status | Evidence |", "| --- | --- | --- | --- |"]
        for check in report.checks:
            lines.append(
                f"| {check.rule.id} {_cell(check.rule.title)} | {check.rule.priority.value} | "
                f"{check.status.value} | {_cell(check.evidence)} |"
            )
        lines.append("")
    failing = [c for c in report.checks if c.status.value == "fail"]
    if failing:
        lines += ["| Check | Priority | Rule | Status |", "| --- | --- | --- | --- |"]
        for check in sorted(failing, key=lambda c: (c.rule.priority.rank, c.rule.id)):
            lines.append(
                f"| {_cell(check.rule.title)} | {check.rule.priority.value} | "
                f"[{check.rule.id}]({check.rule.docs}) | {check.findings} finding"
                f"{'s' if check.findings != 1 else ''} |"
            )
        lines.append("")
    if active:
        lines += [
            "| Priority | Rule | Location | Message | Fix |",
            "| --- | --- | --- | --- | --- |",
        ]
        ordered = sorted(active, key=lambda f: (f.priority.rank, *sort_key(f)))
        for finding in ordered[:limit]:
            loc = finding.location
            where = f"{loc.path}:{loc.line}" if loc.line else loc.path
            mark = " (baselined)" if finding.baselined else ""
            lines.append(
                f"| {finding.priority.value} | {finding.rule_id}{mark} | `{_cell(where)}` | "
                f"{_cell(finding.message)} | {_cell(finding.fix)} |"
            )
        if len(ordered) > limit:
            lines.append(f"\n... and {len(ordered) - limit} more (see the JSON report).")
        lines.append("")
    if report.skipped:
        lines += ["Skipped:", ""]
        lines += [f"- `{_cell(s.path)}`: {_cell(s.reason)}" for s in report.skipped]
        lines.append("")
    return "\n".join(lines)
