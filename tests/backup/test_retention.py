"""Retention over a simulated calendar: a FakeClock moves day by day, backups are taken,
the policy is applied after each, and what is left is exactly what the policy says."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buttress.backup import (
    BackupEntry,
    LocalDestination,
    Manifest,
    RetentionPolicy,
    Verification,
    apply_retention,
    plan_retention,
)
from buttress.errors import ConfigurationError
from buttress.testing import FakeClock
from tests.backup.conftest import fake_entry

DAY = 86_400.0
START = dt.datetime(2026, 1, 1, 2, 0, tzinfo=dt.UTC)


def _expected(
    created: list[dt.datetime], today: dt.date, policy: RetentionPolicy
) -> set[dt.datetime]:
    """The policy computed the slow, obvious way: the newest backup of each period."""
    periods: list[tuple[dt.date, dt.date]] = []  # [first day, last day]
    periods += [(today - dt.timedelta(days=i),) * 2 for i in range(policy.daily)]  # type: ignore[misc]
    monday = today - dt.timedelta(days=today.weekday())
    for i in range(policy.weekly):
        start = monday - dt.timedelta(weeks=i)
        periods.append((start, start + dt.timedelta(days=6)))
    for i in range(policy.monthly):
        year, month = divmod(today.year * 12 + today.month - 1 - i, 12)
        first = dt.date(year, month + 1, 1)
        periods.append(
            (first, (first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1))
        )
    keep = {max(created)}
    for first, last in periods:
        inside = [c for c in created if first <= c.date() <= last]
        if inside:
            keep.add(max(inside))
    return keep


def test_a_year_of_daily_backups(tmp_path: Path) -> None:
    clock = FakeClock(START.timestamp())
    dest = LocalDestination(tmp_path)
    policy = RetentionPolicy(daily=7, weekly=4, monthly=12)
    created: list[dt.datetime] = []
    for day in range(400):
        now = dt.datetime.fromtimestamp(clock.now(), dt.UTC)
        if day % 10 != 3:  # some days have no backup
            fake_entry(tmp_path, now)
            created.append(now)
        if day % 7 == 0:  # and some days two
            later = now + dt.timedelta(hours=12)
            fake_entry(tmp_path, later)
            created.append(later)
        apply_retention(dest, policy, now=clock.now())
        left = {e.created_at for e in dest.list()}
        today = dt.datetime.fromtimestamp(clock.now(), dt.UTC).date()
        # applied every day or once over everything ever taken: the same backups are left
        assert left == _expected(created, today, policy), today
        clock.advance(DAY)
    final = dest.list()
    assert len(final) <= 7 + 4 + 12
    days = sorted({e.created_at.date() for e in final})
    assert days[-1] == START.date() + dt.timedelta(days=399)
    assert days[0] == dt.date(2026, 3, 31)  # the newest of the 12th month back


def test_never_deletes_the_only_verified_backup(tmp_path: Path) -> None:
    clock = FakeClock(START.timestamp())
    dest = LocalDestination(tmp_path)
    policy = RetentionPolicy(daily=3, weekly=0, monthly=0)
    verified = fake_entry(tmp_path, START, verified=True)
    for _ in range(30):
        clock.advance(DAY)
        fake_entry(tmp_path, dt.datetime.fromtimestamp(clock.now(), dt.UTC))
        apply_retention(dest, policy, now=clock.now())
    ids = [e.id for e in dest.list()]
    assert verified in ids  # 3 days + the only verified backup
    assert len(ids) == 4
    plan = plan_retention(dest.list(), policy, now=clock.now())
    assert {e.id: r for e, r in plan.keep}[verified] == ("newest verified",)
    # once a newer backup is verified, the old one goes
    newest = dest.list()[0]
    record = Verification(
        checked_at=newest.created_at, passed=True, last_passed_at=newest.created_at
    )
    (Path(newest.location) / "verification.json").write_text(record.to_json())
    apply_retention(dest, policy, now=clock.now())
    assert verified not in [e.id for e in dest.list()]


def test_backups_that_stop_are_not_all_aged_out(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path)
    fake_entry(tmp_path, START)
    fake_entry(tmp_path, START + dt.timedelta(days=1))
    plan = apply_retention(
        dest, RetentionPolicy(daily=2, weekly=0, monthly=0), now=START.timestamp() + 90 * DAY
    )
    assert [e.created_at for e in dest.list()] == [START + dt.timedelta(days=1)]
    assert len(plan.delete) == 1


def test_dry_run_and_future_backups(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path)
    for days in (-40, -20, 0, 5):
        fake_entry(tmp_path, START + dt.timedelta(days=days))
    plan = apply_retention(
        dest, RetentionPolicy(daily=1, weekly=0, monthly=0), now=START.timestamp(), dry_run=True
    )
    assert len(dest.list()) == 4
    assert len(plan.delete) == 2
    reasons = {e.created_at: r for e, r in plan.keep}
    assert "dated in the future" in reasons[START + dt.timedelta(days=5)]


def test_policy_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="daily"):
        RetentionPolicy(daily=-1)


def _entry(when: dt.datetime, n: int, verified: bool) -> BackupEntry:
    manifest = Manifest(
        id=f"{when:%Y%m%dT%H%M%SZ}-db-{n:04x}", engine="sqlite", source="x", database="db",
        created_at=when, duration_seconds=0, server_version="", tool="", file="db.sqlite3",
        size=0, sha256="", dump_format="sqlite", compression="none",
    )  # fmt: skip
    record = Verification(checked_at=when, passed=True, last_passed_at=when) if verified else None
    return BackupEntry(id=manifest.id, manifest=manifest, verification=record, location="")


@settings(max_examples=150, deadline=None)
@given(
    hours=st.lists(st.integers(0, 24 * 500), min_size=0, max_size=60, unique=True),
    verified=st.sets(st.integers(0, 59)),
    daily=st.integers(0, 10), weekly=st.integers(0, 6), monthly=st.integers(0, 14),
    now_hours=st.integers(0, 24 * 520),
)  # fmt: skip
def test_plan_invariants(
    hours: list[int], verified: set[int], daily: int, weekly: int, monthly: int, now_hours: int
) -> None:
    entries = [_entry(START + dt.timedelta(hours=h), i, i in verified) for i, h in enumerate(hours)]
    policy = RetentionPolicy(daily=daily, weekly=weekly, monthly=monthly)
    now = (START + dt.timedelta(hours=now_hours)).timestamp()
    plan = plan_retention(entries, policy, now=now)
    kept = [e for e, _ in plan.keep]
    assert {e.id for e in kept} | {e.id for e in plan.delete} == {e.id for e in entries}
    assert not {e.id for e in kept} & {e.id for e in plan.delete}
    if entries:
        assert max(entries, key=lambda e: e.created_at) in kept
    ok = [e for e in entries if e.verified_at is not None]
    if ok:
        assert max(ok, key=lambda e: e.created_at) in kept
    # applying the plan again deletes nothing more (stable)
    assert plan_retention(kept, policy, now=now).delete == ()
