"""The backup alerts of ``buttress slo`` read the series `BackupCollector` really exports.

The collector is scraped (prometheus-client's text format, parsed back); every metric name
in the generated backup alert expressions must be one it exports, with the ``destination``
label the expressions aggregate by; then promtool evaluates the alerts on exactly the
scraped samples: a backup older than the RPO fires, a fresh and verified one does not.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from buttress.backup import BackupCollector, LocalDestination
from buttress.slo import generate, parse_spec
from buttress.testing import FakeClock
from tests.backup.conftest import fake_entry
from tests.slo.test_promtool import case, fires, run_cases, silent

SPEC = """\
service: orders
slos:
  - name: availability
    objective: 99.9
    sli: {buttress: availability}
backups: {rpo: 24h, verify_within: 8d}
"""
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
RPO_ALERT, VERIFY_ALERT = "OrdersBackupRpoMissed", "OrdersBackupNotVerified"


def _scrape(root: Path) -> list[tuple[str, dict[str, str], float]]:
    registry = CollectorRegistry()
    registry.register(BackupCollector(LocalDestination(root), clock=FakeClock(NOW.timestamp())))
    text = generate_latest(registry).decode()
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def _backup_alerts(out: Path) -> list[dict[str, str]]:
    groups = yaml.safe_load((out / "alerts.yml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    return [r for r in rules if r.get("alert") in {RPO_ALERT, VERIFY_ALERT}]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("slo-backup")
    generate(parse_spec(SPEC, "spec.yml"), out)
    return out


def test_alert_expressions_name_what_the_collector_exports(generated: Path, tmp_path: Path) -> None:
    fake_entry(tmp_path, NOW - dt.timedelta(hours=2), verified=True)
    scraped = _scrape(tmp_path)
    exported = {name: labels for name, labels, _ in scraped}
    alerts = _backup_alerts(generated)
    assert {a["alert"] for a in alerts} == {RPO_ALERT, VERIFY_ALERT}
    for alert in alerts:
        names = set(re.findall(r"\bbuttress_backup_\w+", alert["expr"]))
        assert names, alert["expr"]
        assert names <= exported.keys(), (names, sorted(exported))
        for grouped in re.findall(r"by \(([^)]*)\)", alert["expr"]):
            for label in (g.strip() for g in grouped.split(",")):
                assert all(label in exported[n] for n in names), (label, exported)
    assert exported["buttress_backup_age_seconds"] == {"destination": str(tmp_path)}


def _series(scraped: list[tuple[str, dict[str, str], float]], *, shift: float) -> dict[str, str]:
    """promtool input series: each scraped sample held for 20 minutes.

    ``shift``: seconds added to timestamps (promtool's evaluation starts at Unix time 0,
    so a verification time is moved by the distance between the fake clock and 0).
    """
    series = {}
    for name, labels, value in scraped:
        body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        held = value + shift if name.endswith("_timestamp") else value
        series[f"{name}{{{body}}}"] = f"{held:g}x20"
    return series


def test_the_alerts_fire_on_the_scraped_series(generated: Path, tmp_path: Path) -> None:
    stale, fresh = tmp_path / "stale", tmp_path / "fresh"
    fake_entry(stale, NOW - dt.timedelta(hours=30), verified=True)  # RPO 24 h
    fake_entry(fresh, NOW - dt.timedelta(hours=1), verified=True)
    stale_series = _scrape(stale)
    fresh_series = _scrape(fresh)
    ages = {n: v for n, _, v in stale_series}
    assert ages["buttress_backup_age_seconds"] == 30 * 3600
    shift = -NOW.timestamp()  # the scrape's "now" becomes promtool's t=0
    run_cases(
        generated,
        "scraped_backup",
        case(_series(stale_series, shift=shift), fire=[fires(RPO_ALERT, "10m")]),
        case(
            _series(fresh_series, shift=shift),
            quiet=[silent(RPO_ALERT, "10m"), silent(VERIFY_ALERT, "10m")],
        ),
    )
