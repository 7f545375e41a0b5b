"""The terminal scorecard, with rich (the ``audit`` extra).

The scorecard table first (per category score, a bar, passing/applicable), the aggregate
and the level, then the findings grouped by priority, each with its fix hint, then what
was skipped. `render` writes to a rich ``Console`` the caller owns, so the command line
decides on colour and width (and tests render into a string).
"""

from __future__ import annotations

from typing import Any

from buttress.report._gate import GateResult
from buttress.report._json import sort_key
from buttress.report._model import Priority, Report
from buttress.report._score import score

__all__ = ["render"]

_STYLE = {Priority.P0: "bold red", Priority.P1: "yellow", Priority.P2: "cyan"}
_LEVEL_STYLE = {"none": "red", "bronze": "yellow", "silver": "white", "gold": "bold yellow"}


def _bar(value: float | None) -> str:
    if value is None:
        return "[dim]" + "·" * 10 + "[/dim]"
    full = round(value)
    colour = "green" if value >= 8 else "yellow" if value >= 5 else "red"
    return f"[{colour}]{'█' * full}[/{colour}][dim]{'·' * (10 - full)}[/dim]"


_STATUS_STYLE = {"pass": "green", "fail": "red", "warn": "yellow", "not-applicable": "dim"}


def _inputs(report: Report) -> str:
    """What was judged: files and lines, or (black box) the requests sent."""
    if "requests" in report.extra:
        return f"{report.extra['requests']} requests"
    return f"{report.files} files, {report.lines} lines"


def _render_evidence(report: Report, console: Any) -> None:
    """Black-box reports: one line per check with its status and what was seen."""
    from rich.markup import escape  # noqa: PLC0415 - the audit extra

    if not any(c.evidence for c in report.checks):
        return
    console.print()
    for check in report.checks:
        status = check.status.value
        style = _STATUS_STYLE[status]
        label = "n/a" if status == "not-applicable" else status
        console.print(
            f"  [{style}]{label:>4}[/{style}]  {check.rule.id} {escape(check.rule.title)}"
            f" [dim]({check.rule.priority.value})[/dim]"
        )
        if check.evidence:
            console.print(f"        [dim]{escape(check.evidence)}[/dim]")


def render(
    report: Report, console: Any, gate: GateResult | None = None, *, limit: int = 100
) -> None:
    """Print the scorecard and findings of ``report`` on ``console`` (a rich Console)."""
    from rich.markup import escape  # noqa: PLC0415 - the audit extra
    from rich.table import Table  # noqa: PLC0415

    card = score(report.checks)
    table = Table(title=f"{report.tool} {escape(report.target)}", title_justify="left")
    table.add_column("category")
    table.add_column("score", justify="right")
    table.add_column("", no_wrap=True)
    table.add_column("passing", justify="right")
    for row in card.categories:
        table.add_row(row.category, row.shown, _bar(row.score), f"{row.passed}/{row.applicable}")
    console.print(table)
    level = card.level.value
    console.print(
        f"score [bold]{card.aggregate_shown}[/bold]/10 (risk-weighted)   level "
        f"[{_LEVEL_STYLE[level]}]{level}[/{_LEVEL_STYLE[level]}]   "
        f"{_inputs(report)} in {report.duration:.2f} s"
    )
    _render_evidence(report, console)
    shown = [f for f in report.findings if not f.suppressed]
    for priority in Priority:
        mine = sorted((f for f in shown if f.priority is priority), key=sort_key)
        if not mine:
            continue
        style = _STYLE[priority]
        console.print(f"\n[{style}]{priority.value}[/{style}] ({len(mine)})")
        for finding in mine[:limit]:
            loc = finding.location
            where = f"{loc.path}:{loc.line}:{loc.column}" if loc.line else loc.path
            mark = " [dim](baselined)[/dim]" if finding.baselined else ""
            console.print(
                f"  {escape(where)}  [{style}]{finding.rule_id}[/{style}]{mark} "
                f"{escape(finding.message)}"
            )
            console.print(f"      [dim]fix: {escape(finding.fix)}[/dim]")
        if len(mine) > limit:
            console.print(f"  ... and {len(mine) - limit} more (--format json lists them all)")
    suppressed = sum(1 for f in report.findings if f.suppressed)
    if suppressed:
        console.print(f"\n[dim]{suppressed} suppressed (# buttress: ignore[...])[/dim]")
    if report.skipped:
        console.print(f"\n[yellow]skipped {len(report.skipped)}[/yellow]")
        for skipped in report.skipped:
            console.print(f"  {escape(skipped.path)}: {escape(skipped.reason)}")
    if gate is not None:
        if gate.passed:
            console.print("\n[green]gate passed[/green]")
        else:
            for reason in gate.reasons:
                console.print(f"\n[red]gate failed[/red] {escape(reason)}")
