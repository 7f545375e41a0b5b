"""Retention: which backups a ``--keep-daily/--keep-weekly/--keep-monthly`` policy keeps.

`plan_retention` is pure: backups and "now" in, a `RetentionPlan` out; `apply_retention`
deletes what the plan says from a destination. Calendar periods are UTC days, ISO weeks and
months, counted back from now (read from an injected clock): ``--keep-daily 7`` keeps the
newest backup of each of the 7 days ending today, ``--keep-weekly 4`` the newest of each of
the 4 ISO weeks ending this week, ``--keep-monthly 12`` the newest of each of the 12 months
ending this month. Whatever the policy says, three backups are always kept:

* the newest backup (when backups stop, the last one is never aged out);
* the newest backup that passed a verification (never delete the only verified backup);
* any backup dated in the future (a clock that was wrong is not a reason to delete).

Example::

    plan = plan_retention(dest.list(), RetentionPolicy(daily=7, weekly=4, monthly=12),
                          now=clock.now())
    for entry in plan.delete: ...
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from buttress.backup._destination import BackupEntry, Destination
from buttress.errors import ConfigurationError

__all__ = ["RetentionPlan", "RetentionPolicy", "apply_retention", "plan_retention"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionPolicy:
    """How many days, ISO weeks and months keep their newest backup (0: none by that rule).

    Example::

        RetentionPolicy(daily=7, weekly=4, monthly=12)
    """

    daily: int = 7
    weekly: int = 4
    monthly: int = 12

    def __post_init__(self) -> None:
        for name in ("daily", "weekly", "monthly"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10_000:
                raise ConfigurationError(
                    f"RetentionPolicy({name}={value!r}): must be an integer from 0 to 10000"
                )


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionPlan:
    """What to keep (each with its reasons) and what to delete, newest first."""

    keep: tuple[tuple[BackupEntry, tuple[str, ...]], ...]
    delete: tuple[BackupEntry, ...]


def _month_index(day: dt.date) -> int:
    return day.year * 12 + day.month - 1


def _week_start(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())  # ISO weeks start on Monday


def plan_retention(
    entries: Sequence[BackupEntry], policy: RetentionPolicy, *, now: float
) -> RetentionPlan:
    """The plan for ``entries`` under ``policy`` at ``now`` (Unix seconds).

    Example::

        plan = plan_retention(dest.list(), RetentionPolicy(), now=time.time())
        [e.id for e in plan.delete]
    """
    ordered = sorted(entries, key=lambda e: (e.created_at, e.id), reverse=True)
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    reasons: dict[str, list[str]] = {e.id: [] for e in ordered}
    if ordered:
        reasons[ordered[0].id].append("newest")
    verified = next((e for e in ordered if e.verified_at is not None), None)
    if verified is not None:
        reasons[verified.id].append("newest verified")
    seen_day: set[dt.date] = set()
    seen_week: set[dt.date] = set()
    seen_month: set[int] = set()
    first_day = today - dt.timedelta(days=policy.daily - 1)
    first_week = _week_start(today) - dt.timedelta(weeks=policy.weekly - 1)
    first_month = _month_index(today) - (policy.monthly - 1)
    for entry in ordered:  # newest first: the first one seen in a period is its newest
        day = entry.created_at.date()
        if day > today:
            reasons[entry.id].append("dated in the future")
            continue
        if policy.daily and day >= first_day and day not in seen_day:
            seen_day.add(day)
            reasons[entry.id].append(f"daily {day.isoformat()}")
        week = _week_start(day)
        if policy.weekly and week >= first_week and week not in seen_week:
            seen_week.add(week)
            iso = day.isocalendar()
            reasons[entry.id].append(f"weekly {iso.year}-W{iso.week:02d}")
        month = _month_index(day)
        if policy.monthly and month >= first_month and month not in seen_month:
            seen_month.add(month)
            reasons[entry.id].append(f"monthly {day:%Y-%m}")
    keep = tuple((e, tuple(reasons[e.id])) for e in ordered if reasons[e.id])
    delete = tuple(e for e in ordered if not reasons[e.id])
    return RetentionPlan(keep=keep, delete=delete)


def apply_retention(
    destination: Destination, policy: RetentionPolicy, *, now: float, dry_run: bool = False
) -> RetentionPlan:
    """Plan retention over ``destination.list()`` and delete what it says (unless ``dry_run``)."""
    plan = plan_retention(destination.list(), policy, now=now)
    if not dry_run:
        for entry in plan.delete:
            destination.delete(entry)
    return plan
