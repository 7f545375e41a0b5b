"""CI gates: ``--fail-on P0``, ``--fail-under 7``, ``--fail-under-level silver``.

Exit codes, the same for every buttress command that reports: `EXIT_OK` (0) when every
gate passes, `EXIT_GATE` (1) when one fails, `EXIT_USAGE` (2) for a usage or
environment error (bad option, missing path), before anything is judged.

Gates judge only *new* findings: a suppressed finding or one in the baseline neither
trips ``--fail-on`` nor fails its check for ``--fail-under``/``--fail-under-level``
(`gate_scorecard`), so a team adopting the tool on an old codebase fails only on what it
adds. The scorecard the report shows still counts baselined findings.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

from buttress.report._model import Check, CheckStatus, Level, Priority, Report
from buttress.report._score import Scorecard, score

__all__ = [
    "EXIT_GATE",
    "EXIT_OK",
    "EXIT_USAGE",
    "GateResult",
    "Gates",
    "evaluate",
    "gate_scorecard",
]

EXIT_OK = 0
EXIT_GATE = 1
EXIT_USAGE = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Gates:
    """The gates a CI run sets; None switches one off."""

    fail_on: Priority | None = None
    fail_under: float | None = None
    fail_under_level: Level | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GateResult:
    """Whether the gates passed, why not, and the exit code to return."""

    passed: bool
    reasons: tuple[str, ...]

    @property
    def exit_code(self) -> int:
        """`EXIT_OK` or `EXIT_GATE`."""
        return EXIT_OK if self.passed else EXIT_GATE


def gate_scorecard(report: Report) -> Scorecard:
    """The scorecard with baselined findings forgiven: the one the gates judge."""
    active = Counter(f.rule_id for f in report.findings if f.active)
    checks: list[Check] = [
        dataclasses.replace(check, status=CheckStatus.PASS)
        if check.status is CheckStatus.FAIL and check.findings and not active[check.rule.id]
        else check
        for check in report.checks
    ]
    return score(checks, (c.rule.category for c in report.checks))


def evaluate(report: Report, gates: Gates) -> GateResult:
    """Judge ``report`` against ``gates``.

    Example::

        result = evaluate(report, Gates(fail_on=Priority.P0, fail_under=7))
        sys.exit(result.exit_code)
    """
    reasons: list[str] = []
    if gates.fail_on is not None:
        threshold = gates.fail_on
        bad = [f for f in report.findings if f.active and f.priority.at_least(threshold)]
        if bad:
            worst = min(f.priority.rank for f in bad)
            reasons.append(
                f"--fail-on {threshold.value}: {len(bad)} new finding"
                f"{'s' if len(bad) != 1 else ''} at {threshold.value} or above (worst P{worst})"
            )
    if gates.fail_under is not None or gates.fail_under_level is not None:
        card = gate_scorecard(report)
        if gates.fail_under is not None:
            got = card.aggregate
            if got is None or got < gates.fail_under:
                reasons.append(
                    f"--fail-under {gates.fail_under:g}: the score is {card.aggregate_shown}"
                )
        if gates.fail_under_level is not None and card.level.rank < gates.fail_under_level.rank:
            reasons.append(
                f"--fail-under-level {gates.fail_under_level.value}: the level is "
                f"{card.level.value}"
            )
    return GateResult(passed=not reasons, reasons=tuple(reasons))
