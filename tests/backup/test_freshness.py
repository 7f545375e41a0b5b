"""Freshness: `BackupCheck` (a health check) and the metrics collector, on a FakeClock."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from buttress.backup import BackupCheck, BackupCollector, LocalDestination
from buttress.errors import ConfigurationError
from buttress.testing import FakeClock
from tests.backup.conftest import fake_entry

START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
HOUR = 3600.0


async def test_backup_check_judges_age_and_verification(tmp_path: Path) -> None:
    clock = FakeClock(START.timestamp())
    dest = LocalDestination(tmp_path)
    check = BackupCheck(dest, rpo=24 * HOUR, verified_within=7 * 24 * HOUR, cache_seconds=0,
                        clock=clock)  # fmt: skip
    assert not check.critical
    none = await check.run()
    assert (none.status, none.output) == ("fail", "no backup found")
    fake_entry(tmp_path, START - dt.timedelta(hours=2), verified=True)
    fresh = await check.run()
    assert (fresh.status, fresh.observed_value, fresh.observed_unit) == ("pass", 7200, "s")
    clock.advance(23 * HOUR)  # 25 h old: past the RPO
    stale = await check.run()
    assert stale.status == "fail"
    assert "RPO 24h 0m" in (stale.output or "")
    fake_entry(tmp_path, START + dt.timedelta(hours=22))  # a new backup, never verified
    clock.advance(7 * 24 * HOUR)
    fake_entry(tmp_path, dt.datetime.fromtimestamp(clock.now(), dt.UTC))
    unverified = await check.run()
    assert unverified.status == "warn"
    assert "no backup verified within" in (unverified.output or "")


async def test_backup_check_caches_the_listing(tmp_path: Path) -> None:
    clock = FakeClock(START.timestamp())
    check = BackupCheck(LocalDestination(tmp_path), cache_seconds=60, clock=clock)
    assert (await check.run()).status == "fail"
    fake_entry(tmp_path, START, verified=True)
    assert (await check.run()).status == "fail"  # cached for 60 s
    clock.advance(61)
    assert (await check.run()).status == "pass"
    with pytest.raises(ConfigurationError, match="rpo"):
        BackupCheck(LocalDestination(tmp_path), rpo=0)


def test_metrics(tmp_path: Path) -> None:
    clock = FakeClock(START.timestamp())
    registry = CollectorRegistry()
    registry.register(BackupCollector(LocalDestination(tmp_path), cache_seconds=0, clock=clock))
    labels = {"destination": str(tmp_path)}
    assert registry.get_sample_value("buttress_backup_age_seconds", labels) == math.inf
    assert registry.get_sample_value("buttress_backup_last_verified_timestamp", labels) == 0
    fake_entry(tmp_path, START - dt.timedelta(hours=30), verified=True)
    fake_entry(tmp_path, START - dt.timedelta(hours=1))
    assert registry.get_sample_value("buttress_backup_age_seconds", labels) == HOUR
    verified = registry.get_sample_value("buttress_backup_last_verified_timestamp", labels)
    assert verified == (START - dt.timedelta(hours=30)).timestamp()
    text = generate_latest(registry).decode()
    assert "# TYPE buttress_backup_age_seconds gauge" in text
