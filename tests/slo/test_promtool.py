"""The generated rules under Prometheus' own tool: ``promtool check rules`` and ``test rules``.

For each alert kind (page burn, ticket burn, 5xx threshold, p95 threshold, failed health
probe, backup RPO, backup verification) synthetic series that must make it fire and
series that must not. promtool comes from scripts/install-tools; without it these tests
fail (never skip).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from buttress.slo import generate, parse_spec

SPEC = """\
service: orders
labels: {team: shop}
slos:
  - name: availability
    objective: 99.9
    sli: {buttress: availability}
  - name: latency
    objective: 99
    sli: {buttress: latency, threshold: 500ms}
alerts: {error_rate: true, latency_p95: true}
probes: {targets: ["http://127.0.0.1:8000"]}
backups: {rpo: 26h, verify_within: 8d}
"""

REQ = 'buttress_http_requests_total{job="orders",method="GET",route="/orders",status="%s"}'
BUCKET = 'buttress_http_request_duration_seconds_bucket{job="orders",method="GET",route="/orders",le="%s"}'
COUNT = 'buttress_http_request_duration_seconds_count{job="orders",method="GET",route="/orders"}'
PROBE = (
    'probe_success{job="buttress-blackbox-orders",instance="http://127.0.0.1:8000/health/ready"}'
)
UP = 'up{job="buttress-blackbox-orders",instance="http://127.0.0.1:8000/health/ready"}'


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: run scripts/install-tools (Debian's prometheus package)"
        )
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("slo")
    generate(parse_spec(SPEC, "spec.yml"), out)
    return out


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def fires(alert: str, at: str) -> dict[str, Any]:
    """A check that ``alert`` is firing at ``at`` (through the ALERTS series)."""
    return {
        "expr": f'count(ALERTS{{alertname="{alert}",alertstate="firing"}})',
        "eval_time": at,
        "exp_samples": [{"labels": "{}", "value": 1}],
    }


def silent(alert: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def case(
    series: dict[str, str], *, interval: str = "1m", fire: list[Any] = (), quiet: list[Any] = ()
) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "interval": interval,
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "promql_expr_test": list(fire),
        "alert_rule_test": list(quiet),
    }


def run_cases(generated: Path, name: str, *cases: dict[str, Any]) -> None:
    test = {
        "rule_files": [str(generated / "rules.yml"), str(generated / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": list(cases),
    }
    path = generated / f"test_{name}.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    result = run_promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def requests(good: str, bad: str) -> dict[str, str]:
    return {REQ % "200": good, REQ % "500": bad}


def test_check_rules_accepts_every_generated_file(generated: Path) -> None:
    result = run_promtool(
        "check", "rules", str(generated / "rules.yml"), str(generated / "alerts.yml")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 31 rules found" in result.stdout  # 12 + 3 per SLO, 5 service-wide
    assert "SUCCESS: 9 rules found" in result.stdout


def test_page_burn_fires_at_14_4x_and_stops_with_the_short_window(generated: Path) -> None:
    page = "OrdersAvailabilityBurnRatePage"
    run_cases(
        generated,
        "page",
        # 2 % errors for 80 minutes: burn rate 20 over 1h and 5m
        case(requests("0+98x80", "0+2x80"), fire=[fires(page, "70m")]),
        # 10 % errors for an hour, then 31 clean minutes: the 1h window still burns (about
        # 48x), the 5m and 30m ones do not: the page has stopped
        case(
            requests("0+90x60 5400+100x40", "0+10x60 600+0x40"),
            fire=[fires(page, "60m")],
            quiet=[silent(page, "91m")],
        ),
        # 0.5 % errors: burn rate 5, below 14.4 and 6: no page
        case(requests("0+995x80", "0+5x80"), quiet=[silent(page, "75m")]),
    )


def test_page_burn_over_6h_fires_at_6x(generated: Path) -> None:
    page = "OrdersAvailabilityBurnRatePage"
    run_cases(
        generated,
        "page6h",
        # 0.8 % errors for 7 hours: burn 8 (below 14.4, above 6): the 6h/30m condition
        case(requests("0+992x420", "0+8x420"), fire=[fires(page, "7h")]),
    )


def test_ticket_burn_fires_at_1x_over_3d_and_6h(generated: Path) -> None:
    ticket = "OrdersAvailabilityBurnRateTicket"
    page = "OrdersAvailabilityBurnRatePage"
    run_cases(
        generated,
        "ticket",
        # 0.3 % errors: burn rate 3: a ticket, never a page
        case(
            requests("0+1994x400", "0+6x400"),
            fire=[fires(ticket, "6h")],
            quiet=[silent(page, "6h")],
        ),
        # 0.05 % errors: burn rate 0.5: within budget, nothing
        case(requests("0+1999x400", "0+1x400"), quiet=[silent(ticket, "6h"), silent(page, "6h")]),
    )


def test_latency_slo_burns_on_slow_requests(generated: Path) -> None:
    page = "OrdersLatencyBurnRatePage"

    def hist(fast_share: int) -> dict[str, str]:  # of 100 requests a minute
        return {
            BUCKET % "0.25": f"0+{fast_share}x80",
            BUCKET % "0.5": f"0+{fast_share}x80",
            BUCKET % "1.0": "0+100x80",
            BUCKET % "+Inf": "0+100x80",
            COUNT: "0+100x80",
        }

    run_cases(
        generated,
        "latency",
        case(hist(80), fire=[fires(page, "70m")]),  # 20 % slower than 500 ms: burn 20
        case(hist(99), quiet=[silent(page, "70m")]),  # 1 % slow: exactly the budget
    )


def test_5xx_threshold_fires_after_two_minutes(generated: Path) -> None:
    alert = "OrdersHigh5xxRate"
    run_cases(
        generated,
        "5xx",
        # 2 % of requests fail from the start: above 1 % for 2 minutes by 4m
        case(
            requests("0+98x40", "0+2x40"),
            interval="15s",
            fire=[fires(alert, "4m")],
            quiet=[silent(alert, "1m")],
        ),
        # a 45-second burst of errors: not for 2 minutes
        case(
            requests("0+98x40", "0x4 0+20x3 60+0x33"), interval="15s", quiet=[silent(alert, "4m")]
        ),
        # 0.5 %: below the threshold
        case(requests("0+199x40", "0+1x40"), interval="15s", quiet=[silent(alert, "8m")]),
    )


def test_p95_threshold_fires_after_five_minutes(generated: Path) -> None:
    alert = "OrdersHighLatencyP95"

    def hist(slow: int) -> dict[str, str]:  # of 100 requests per 15 s, `slow` take 0.5-1 s
        return {
            BUCKET % "0.25": f"0+{100 - slow}x60",
            BUCKET % "0.5": f"0+{100 - slow}x60",
            BUCKET % "1.0": "0+100x60",
            BUCKET % "+Inf": "0+100x60",
            COUNT: "0+100x60",
        }

    run_cases(
        generated,
        "p95",
        case(hist(10), interval="15s", fire=[fires(alert, "8m")], quiet=[silent(alert, "3m")]),
        case(hist(2), interval="15s", quiet=[silent(alert, "10m")]),  # p95 stays under 500 ms
    )


def test_probe_failure_fires_and_a_blip_does_not(generated: Path) -> None:
    alert = "OrdersHealthProbeFailed"
    run_cases(
        generated,
        "probe",
        case({PROBE: "1x5 0x20", UP: "1x25"}, fire=[fires(alert, "10m")]),
        case({PROBE: "1x5 0 1x20", UP: "1x25"}, quiet=[silent(alert, "10m")]),
        case({PROBE: "1x25", UP: "1x5 0x20"}, fire=[fires(alert, "10m")]),  # the exporter is gone
    )


def test_backup_rpo_and_verification(generated: Path) -> None:
    rpo, verified = "OrdersBackupRpoMissed", "OrdersBackupNotVerified"
    age = 'buttress_backup_age_seconds{destination="s3"}'
    stamp = 'buttress_backup_last_verified_timestamp{destination="s3"}'
    run_cases(
        generated,
        "backup",
        # 27 h old (RPO 26 h); verified 9 days before t=0 (limit 8 days)
        case(
            {age: "97200x20", stamp: "-777600x20"}, fire=[fires(rpo, "10m"), fires(verified, "10m")]
        ),
        # 1 h old, verified at t=0
        case({age: "3600x20", stamp: "0x20"}, quiet=[silent(rpo, "10m"), silent(verified, "10m")]),
        # no backup metrics at all: the RPO alert fires too (nobody reports backups)
        case({REQ % "200": "0+1x20"}, fire=[fires(rpo, "10m")]),
    )
