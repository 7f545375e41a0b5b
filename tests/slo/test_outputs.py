"""The dashboard, runbooks and blackbox files: structure, and names that exist for real.

No Grafana dashboard JSON Schema is published in the package registries (npm's
@grafana/schema ships TypeScript types only), so the dashboard is checked structurally:
unique panel ids, every panel on the datasource variable, a grid that fits, every
recording-rule name it reads defined in rules.yml, and every buttress metric it reads
served by a real hardened app's /metrics.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import yaml
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from buttress.asgi import HardenSettings, harden
from buttress.slo import BLACKBOX_MODULE, build_rules, parse_spec, recorded_names, render

SPEC = """\
service: orders
runbook_base_url: https://runbooks.example.com/orders
slos:
  - {name: availability, objective: 99.9, sli: {buttress: availability}}
  - {name: latency, objective: 99, window: 28d, sli: {buttress: latency, threshold: 250ms}}
alerts: {error_rate: true, latency_p95: {above: 1s, for: 10m}}
probes: {targets: ["http://127.0.0.1:8000", "http://127.0.0.1:8001"], paths: [/health/ready]}
backups: {rpo: 26h, verify_within: 8d, selector: 'job="backup"'}
"""


def scrape_after_one_request() -> str:
    app = harden(Starlette(), HardenSettings(log_level="WARNING"), registry=CollectorRegistry())

    async def scrape() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc.test") as client:
            await client.get("/nowhere")
            return (await client.get("/metrics")).text

    return asyncio.run(scrape())


def served_metric_families() -> set[str]:
    families = set()
    for line in scrape_after_one_request().splitlines():
        if line.startswith("# TYPE"):
            name, kind = line.split()[2:4]
            families.add(name)
            if kind == "histogram":
                families |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return families


def test_dashboard_structure_and_every_series_it_reads_exists() -> None:
    spec = parse_spec(SPEC)
    rules = build_rules(spec)
    board = json.loads(render(spec, rules)["dashboard.json"])
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert (
        board["templating"]["list"][0]
        | {"name": "datasource", "type": "datasource", "query": "prometheus"}
        == board["templating"]["list"][0]
    )
    recorded = recorded_names(rules)
    served = served_metric_families()
    read = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            read |= set(
                re.findall(r"\b(buttress[a-z_]*:[a-z0-9_:]+|buttress_[a-z0-9_]+)\b", target["expr"])
            )
    assert {n for n in read if ":" in n} <= recorded
    assert {
        "buttress_slo:error_budget_remaining:ratio",
        "buttress_slo:burn_rate:rate1h",
        "buttress_slo:error_ratio:rate28d",
        "buttress_slo:http_latency_seconds:p99",
    } <= read
    backup_metrics = {"buttress_backup_age_seconds", "buttress_backup_last_verified_timestamp"}
    assert {n for n in read if ":" not in n} - backup_metrics <= served
    titles = {p["title"] for p in panels}
    assert {
        "Error budget left",
        "Burn rate (1 = on budget)",
        "Latency percentiles",
        "Requests per second by route",
        "Retries",
        "Probe success",
    } <= titles


def test_rules_read_only_metrics_buttress_serves() -> None:
    spec = parse_spec(SPEC)
    files = render(spec)
    text = files["rules.yml"] + files["alerts.yml"]
    raw = set(re.findall(r"\b(buttress_[a-z0-9_]+)\{", text))
    assert (
        raw - {"buttress_backup_age_seconds", "buttress_backup_last_verified_timestamp"}
        <= served_metric_families()
    )


def test_every_alert_links_its_runbook_with_three_checks() -> None:
    spec = parse_spec(SPEC)
    files = render(spec)
    alerts = yaml.safe_load(files["alerts.yml"])["groups"][0]["rules"]
    assert len(alerts) == 9
    for alert in alerts:
        name = alert["alert"]
        assert (
            alert["annotations"]["runbook_url"] == f"https://runbooks.example.com/orders/{name}.md"
        )
        book = files[f"runbooks/{name}.md"]
        assert book.startswith(f"# {name}\n")
        for heading in ("## What it means", "## Queries to run", "## First three things to check"):
            assert heading in book, (name, heading)
        assert re.search(r"^3\. ", book, re.MULTILINE), name
        assert "```promql" in book
        assert alert["labels"]["severity"] in ("page", "ticket")
    by_name = {a["alert"]: a for a in alerts}
    assert by_name["OrdersHighLatencyP95"]["for"] == "10m"
    assert "> 1\n" in by_name["OrdersHighLatencyP95"]["expr"] + "\n"
    latency_page = by_name["OrdersLatencyBurnRatePage"]["expr"]
    assert "> 13.44" in latency_page  # a 28-day window: 2 % of its budget in an hour
    assert 'job="backup"' in by_name["OrdersBackupRpoMissed"]["expr"]


def test_blackbox_module_and_scrape_job() -> None:
    files = render(parse_spec(SPEC))
    module = yaml.safe_load(files["blackbox.yml"])["modules"][BLACKBOX_MODULE]
    assert module["prober"] == "http"
    assert module["http"]["valid_status_codes"] == [200]
    (job,) = yaml.safe_load(files["scrape.yml"])["scrape_configs"]
    assert job["job_name"] == "buttress-blackbox-orders"
    assert job["params"] == {"module": [BLACKBOX_MODULE]}
    assert job["static_configs"][0]["targets"] == [
        "http://127.0.0.1:8000/health/ready",
        "http://127.0.0.1:8001/health/ready",
    ]
    assert {"target_label": "__address__", "replacement": "127.0.0.1:9115"} in job[
        "relabel_configs"
    ]


def test_no_probes_no_blackbox_files() -> None:
    files = render(parse_spec("service: orders\nalerts: {error_rate: true}\n"))
    assert "blackbox.yml" not in files
    assert sorted(files) == [
        "alerts.yml",
        "dashboard.json",
        "rules.yml",
        "runbooks/OrdersHigh5xxRate.md",
    ]


def test_latency_sli_bucket_label_is_written_as_prometheus_client_writes_it() -> None:
    text = scrape_after_one_request()
    spec = parse_spec(SPEC.replace("threshold: 250ms", "threshold: 1s"))
    (le,) = re.findall(r'le="([^"]+)"', spec.slos[1].sli.ratio_query("5m"))
    assert le == "1.0"
    assert (
        f'buttress_http_request_duration_seconds_bucket{{le="{le}",method="GET",route="<unmatched>"}} 1.0'
        in text
    )
