"""The scorecard: per-category scores, a risk-weighted aggregate and a maturity level.

- A category's score is ``passing / applicable * 10`` over its scored checks, ``None``
  (shown ``?``) when none of them applies: no signal is not a pass.
- The aggregate weighs each applicable check by its priority (P0 x3, P1 x2, P2 x1):
  ``10 * sum(weight of passing) / sum(weight of applicable)``.
- The level is the highest whose checks all pass: bronze = every applicable P0 check,
  silver = every P0 and P1 check, gold = every check; ``none`` when a P0 check fails.
  A target where no check applies has level ``none`` too (nothing was shown).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from buttress.report._model import Check, CheckStatus, Level, Priority

__all__ = ["CategoryScore", "Scorecard", "score"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CategoryScore:
    """One category: how many of its applicable checks pass, and the 0-10 score."""

    category: str
    passed: int
    applicable: int
    total: int

    @property
    def score(self) -> float | None:
        """``passed / applicable * 10`` rounded to one decimal, None when nothing applies."""
        if not self.applicable:
            return None
        return round(10 * self.passed / self.applicable, 1)

    @property
    def shown(self) -> str:
        """The score as reports print it: ``7.5`` or ``?``."""
        value = self.score
        return "?" if value is None else f"{value:g}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Scorecard:
    """Per-category scores, the weighted aggregate and the level."""

    categories: tuple[CategoryScore, ...]
    aggregate: float | None
    level: Level

    @property
    def aggregate_shown(self) -> str:
        """The aggregate as reports print it: ``8.3`` or ``?``."""
        return "?" if self.aggregate is None else f"{self.aggregate:g}"


def score(checks: Iterable[Check], categories: Iterable[str] = ()) -> Scorecard:
    """The scorecard of ``checks`` (unscored rules left out); ``categories`` fixes the order.

    Example::

        card = score(report.checks)
        card.level, card.aggregate
    """
    scored = [c for c in checks if c.rule.scored]
    order = list(dict.fromkeys([*categories, *(c.rule.category for c in scored)]))
    rows = []
    for category in order:
        mine = [c for c in scored if c.rule.category == category]
        applicable = [c for c in mine if c.status is not CheckStatus.NOT_APPLICABLE]
        passed = sum(1 for c in applicable if c.status is CheckStatus.PASS)
        rows.append(
            CategoryScore(
                category=category, passed=passed, applicable=len(applicable), total=len(mine)
            )
        )
    applicable = [c for c in scored if c.status is not CheckStatus.NOT_APPLICABLE]
    weight = sum(c.rule.priority.weight for c in applicable)
    won = sum(c.rule.priority.weight for c in applicable if c.status is CheckStatus.PASS)
    aggregate = round(10 * won / weight, 1) if weight else None
    return Scorecard(categories=tuple(rows), aggregate=aggregate, level=_level(applicable))


def _level(applicable: list[Check]) -> Level:
    if not applicable:
        return Level.NONE
    failed = {c.rule.priority for c in applicable if c.status is CheckStatus.FAIL}
    if Priority.P0 in failed:
        return Level.NONE
    if Priority.P1 in failed:
        return Level.BRONZE
    if Priority.P2 in failed:
        return Level.SILVER
    return Level.GOLD
