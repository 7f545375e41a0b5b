"""Reading specs: buttress's format, OpenSLO v1, and every problem explained with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

import buttress.slo
from buttress.cli import main
from buttress.slo import SpecError, build_rules, parse_spec

MINIMAL = """\
service: orders
slos:
  - name: availability
    objective: 99.9
    sli: {buttress: availability}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "slo.yml")
    return [str(p) for p in info.value.problems]


def test_exports_are_the_documented_names() -> None:
    for name in buttress.slo.__all__:
        assert hasattr(buttress.slo, name), name


def test_minimal_spec_reads_with_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.service == "orders"
    assert spec.selector == 'job="orders"'
    (slo,) = spec.slos
    assert (slo.objective, slo.budget, slo.window.text) == (0.999, 0.001, "30d")
    assert 'status=~"5.."' in slo.sli.ratio_query("5m")
    assert "[5m]" in slo.sli.ratio_query("5m")
    assert spec.probes is None
    assert spec.backups is None


def test_latency_sli_uses_the_bucket_label_prometheus_client_writes() -> None:
    spec = parse_spec(
        MINIMAL.replace("{buttress: availability}", "{buttress: latency, threshold: 1s}")
    )
    query = spec.slos[0].sli.ratio_query("1h")
    assert 'le="1.0"' in query
    assert "buttress_http_request_duration_seconds_count" in query


def test_each_problem_has_its_line_and_column() -> None:
    text = """\
service: orders
slos:
  - name: availability
    objectve: 99.9
    sli: {buttress: availability}
  - name: latency
    objective: 101
    sli: {buttress: latency, threshold: 300ms}
alerts:
  error_rate: {above: 1%, for: two minutes}
"""
    found = problems(text)
    assert "slo.yml:4:5: slos[0]: unknown key 'objectve'; did you mean 'objective'?" in found[0]
    assert "slos[0]: objective: missing" in found[1]
    assert found[1].startswith("slo.yml:3:5:")
    assert any(p.startswith("slo.yml:7:16: slos[1].objective: 101") for p in found)
    assert any(
        p.startswith("slo.yml:8:41:") and "300ms is not a bucket boundary" in p and "250ms" in p
        for p in found
    )
    assert any(p.startswith("slo.yml:10:32:") and "not a duration" in p for p in found)


def test_duplicate_keys_and_yaml_syntax_errors_are_located() -> None:
    dup = problems("service: orders\nservice: shop\nslos: []\n")
    assert dup[0].startswith("slo.yml:2:1:")
    assert "given twice (first on line 1)" in dup[0]
    syntax = problems("service: orders\nslos:\n  - name: [unclosed\n")
    assert len(syntax) == 1
    assert syntax[0].startswith("slo.yml:4:")
    assert "YAML syntax" in syntax[0]


def test_custom_ratio_sli_needs_the_window_placeholder() -> None:
    found = problems("""\
service: checkout
slos:
  - name: payments
    objective: 99.5
    sli:
      errors: sum(rate(payments_failed_total[5m]))
      total: sum(rate(payments_total[{{window}}]))
""")
    assert found == [
        "slo.yml:6:15: slos[0].sli.errors: a query needs {{window}} where the range goes: "
        "rate(x[{{window}}])"
    ]
    spec = parse_spec(
        "service: checkout\nslos:\n  - name: payments\n    objective: 99.5\n    sli:\n"
        "      good: sum(rate(ok_total[{{.window}}]))\n      total: sum(rate(all_total[{{window}}]))\n"
    )
    assert spec.slos[0].sli.ratio_query("6h") == (
        "((sum(rate(all_total[6h]))) - (sum(rate(ok_total[6h]))))\n/\n(sum(rate(all_total[6h])))"
    )


OPENSLO = """\
apiVersion: openslo/v1
kind: SLI
metadata: {name: orders-errors}
spec:
  ratioMetric:
    counter: true
    bad:
      metricSource:
        type: Prometheus
        spec: {query: 'buttress_http_requests_total{job="orders",status=~"5.."}'}
    total:
      metricSource:
        type: Prometheus
        spec: {query: 'buttress_http_requests_total{job="orders"}'}
---
apiVersion: openslo/v1
kind: SLO
metadata: {name: availability, displayName: Orders availability}
spec:
  service: orders
  indicatorRef: orders-errors
  timeWindow: [{duration: 28d, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{displayName: good, target: 0.999}]
"""


def test_openslo_v1_documents_become_the_same_rules() -> None:
    spec = parse_spec(OPENSLO)
    (slo,) = spec.slos
    assert (spec.service, slo.name, slo.objective, slo.window.text) == (
        "orders",
        "availability",
        0.999,
        "28d",
    )
    assert (
        slo.sli.errors
        == 'sum(rate(buttress_http_requests_total{job="orders",status=~"5.."}[{{window}}]))'
    )
    alerts = {a.name: a for a in build_rules(spec).alerts}
    page = alerts["OrdersAvailabilityBurnRatePage"]
    assert "> 13.44" in page.expr  # 2 % of a 28-day budget in an hour
    assert "> 5.6" in page.expr


def test_openslo_unsupported_parts_are_explained() -> None:
    found = problems(
        OPENSLO.replace("Occurrences", "Timeslices").replace("isRolling: true", "isRolling: false")
    )
    assert any("only Occurrences" in p and p.startswith("slo.yml:23:20:") for p in found)
    assert any("only rolling windows" in p for p in found)


def test_cli_validate_and_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "slo.yml"
    spec.write_text(MINIMAL + "probes: {targets: ['http://127.0.0.1:8000']}\nbackups: {rpo: 26h}\n")
    assert main(["slo", "validate", str(spec)]) == 0
    assert "valid: service orders, 1 SLO(s), 4 alert(s)" in capsys.readouterr().out
    out = tmp_path / "out"
    code = main(
        [
            "slo",
            "generate",
            str(spec),
            "--out",
            str(out),
            "--runbook-base-url",
            "https://runbooks.example.com/orders/",
        ]
    )
    assert code == 0
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == [
        "alerts.yml",
        "blackbox.yml",
        "dashboard.json",
        "rules.yml",
        "runbooks/OrdersAvailabilityBurnRatePage.md",
        "runbooks/OrdersAvailabilityBurnRateTicket.md",
        "runbooks/OrdersBackupRpoMissed.md",
        "runbooks/OrdersHealthProbeFailed.md",
        "scrape.yml",
    ]
    alerts = (out / "alerts.yml").read_text()
    assert "runbook_url: https://runbooks.example.com/orders/OrdersBackupRpoMissed.md" in alerts
    bad = tmp_path / "bad.yml"
    bad.write_text("service: Orders!\n")
    capsys.readouterr()
    assert main(["slo", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.yml:1:10: service: 'Orders!': use lower-case letters" in err
    assert "nothing to generate" in err
    assert main(["slo", "validate", str(tmp_path / "missing.yml")]) == 1
    assert "cannot read the file" in capsys.readouterr().err


def test_latency_buckets_are_the_ones_buttress_exports() -> None:
    from buttress.asgi._metrics import DEFAULT_BUCKETS
    from buttress.slo._model import HTTP_LATENCY_BUCKETS

    assert HTTP_LATENCY_BUCKETS == DEFAULT_BUCKETS
