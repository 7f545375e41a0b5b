"""The report model shared by ``buttress audit`` and the commands that follow it (``probe``).

A `Rule` is a check a tool knows how to run: an id, a category, a priority, a fix hint
and a docs link. Running it gives a `Check` (pass, fail, or not applicable when the
code or service gives no signal for it) and zero or more `Finding` objects, the evidence
of a failed check with a `Location`. The `Scorecard` is computed from the checks only
(`buttress.report.score`), so any producer that fills checks gets the same scores,
levels, writers and gates.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Check",
    "CheckStatus",
    "Finding",
    "Level",
    "Location",
    "Priority",
    "Report",
    "Rule",
    "Skipped",
]


class Priority(enum.Enum):
    """How soon a failed check must be fixed (the checklists' P0/P1/P2 levels).

    P0: must have before production; P1: should have for scale; P2: maturity.
    """

    P0 = "P0"
    P1 = "P1"
    P2 = "P2"

    @property
    def rank(self) -> int:
        """0 for P0 (most severe), 2 for P2."""
        return int(self.value[1])

    @property
    def weight(self) -> int:
        """The weight of a check of this priority in the risk-weighted aggregate: 3, 2, 1."""
        return 3 - self.rank

    def at_least(self, other: Priority) -> bool:
        """True when this priority is as severe as ``other`` or more (P0 is at least P1)."""
        return self.rank <= other.rank


class Level(enum.Enum):
    """The maturity level: the highest whose required checks all pass.

    ``bronze`` needs every applicable P0 check to pass, ``silver`` every P0 and P1 check,
    ``gold`` every check. ``none`` when a P0 check fails.
    """

    NONE = "none"
    BRONZE = "bronze"
    SILVER = "silver"
    GOLD = "gold"

    @property
    def rank(self) -> int:
        """0 for none up to 3 for gold."""
        return list(Level).index(self)


class CheckStatus(enum.Enum):
    """The outcome of one check."""

    PASS = "pass"  # noqa: S105 - a status, not a password
    FAIL = "fail"
    NOT_APPLICABLE = "not-applicable"
    #: Ran, but could not confirm the protection (``buttress probe``: no 429 within the
    #: burst). Applicable and not passing in the scores; lowers neither the level nor
    #: trips ``--fail-on`` (a warn has no findings).
    WARN = "warn"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A check a tool runs, as its reports and SARIF describe it.

    Example::

        Rule(id="BTR001", title="HTTP call without a timeout", category="external-calls",
             priority=Priority.P0, fix="pass timeout=(3.05, 27)", docs="https://.../audit.md#btr001")
    """

    id: str
    title: str
    category: str
    priority: Priority
    fix: str
    docs: str
    scored: bool = True  # False for rules about the tool itself (suppressions)


@dataclass(frozen=True, slots=True, kw_only=True)
class Location:
    """Where a finding is: a path relative to the target (posix), 1-based line and column.

    ``line`` 0 means the whole file or target (a finding with no place in the source).
    Black-box reports (``buttress probe``) put the absolute URL requested in ``path``
    (``http://...``), line 0; the writers show it as it is (`is_url`).
    """

    path: str
    line: int = 0
    column: int = 0
    end_line: int = 0
    end_column: int = 0

    @property
    def is_url(self) -> bool:
        """True when ``path`` is an absolute http(s) URL (a black-box finding)."""
        return self.path.startswith(("http://", "https://"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One piece of evidence that a check failed.

    ``suppressed`` findings (an inline ``# buttress: ignore[...] reason``) and ``baselined``
    ones (in the baseline file given) stay in the report but fail neither a check nor a gate
    (baselined ones still lower the score shown, not the score gated).
    """

    rule_id: str
    category: str
    priority: Priority
    message: str
    location: Location
    fix: str = ""
    docs: str = ""
    suppressed: bool = False
    suppression_reason: str = ""
    baselined: bool = False
    fingerprint: str = ""  # stable across line moves: the baseline's key

    @property
    def active(self) -> bool:
        """Neither suppressed nor baselined: a finding that fails its check and the gates."""
        return not (self.suppressed or self.baselined)


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """The outcome of one `Rule` on the whole target."""

    rule: Rule
    status: CheckStatus
    findings: int = 0  # unsuppressed findings (baselined included)
    evidence: str = ""  # for black-box checks: what was sent and seen


@dataclass(frozen=True, slots=True, kw_only=True)
class Skipped:
    """An input the tool could not analyse (unparsable, not UTF-8, too large, a loop)."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """What one run found: the checks, the findings, what was skipped, and the target."""

    tool: str  # "buttress audit"
    version: str  # the tool's version
    target: str
    rules: tuple[Rule, ...]
    checks: tuple[Check, ...]
    findings: tuple[Finding, ...]
    skipped: tuple[Skipped, ...] = ()
    files: int = 0  # inputs analysed
    lines: int = 0
    duration: float = 0.0  # seconds
    baseline_used: bool = False
    extra: dict[str, str] = field(default_factory=dict)
