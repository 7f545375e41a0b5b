"""The Grafana dashboard of a `Spec`: budgets, burn rates, HTTP, resilience, probes, backups.

One JSON document (Grafana's dashboard model, schemaVersion 39) with a ``datasource``
variable, so it imports into any Grafana with a Prometheus data source: File > Import, or
provisioning. The SLO and HTTP panels read the recording rules of rules.yml (cheap to
draw over 30 days); the resilience panels read buttress's own metrics, filtered by the
spec's ``selector``.
"""

from __future__ import annotations

from typing import Any

from buttress.slo._model import Spec
from buttress.slo._rules import Rules, blackbox_job, burn_windows

__all__ = ["DATASOURCE", "dashboard"]

#: How every panel names its data source: the dashboard's ``datasource`` variable.
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
_WIDTH = 24


class _Layout:
    """Places panels left to right in rows of 24 grid units, with unique ids."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": _WIDTH, "x": 0, "y": self.y},
            }
        )
        self.y += 1

    def add(self, panel: dict[str, Any], width: int, height: int = 8) -> None:
        if self.x + width > _WIDTH:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": height, "w": width, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += width
        self.row_height = max(self.row_height, height)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = self.row_height = 0


def _targets(*queries: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
        for i, (expr, legend) in enumerate(queries)
    ]


def _panel(
    kind: str,
    title: str,
    unit: str,
    *queries: tuple[str, str],
    steps: list[dict[str, Any]] | None = None,
    description: str = "",
) -> dict[str, Any]:
    thresholds = steps or [{"color": "green", "value": None}]
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _targets(*queries),
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": thresholds}},
            "overrides": [],
        },
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
        if kind == "stat"
        else {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["max", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def _series(selector: str) -> str:
    return "{" + selector + "}"


def dashboard(spec: Spec, rules: Rules) -> dict[str, Any]:
    """The dashboard of ``spec`` (``rules`` are the rules it reads: `build_rules`)."""
    del rules  # the names are those build_rules writes; tests check they exist
    layout = _Layout()
    svc = f'service="{spec.service}"'
    for slo in spec.slos:
        sel = f'{{{svc},slo="{slo.name}"}}'
        layout.row(f"SLO {slo.name}: {slo.objective * 100:g} % over {slo.window.text}")
        layout.add(
            _panel(
                "stat",
                "Error budget left",
                "percentunit",
                (f"buttress_slo:error_budget_remaining:ratio{sel}", "budget left"),
                steps=[
                    {"color": "red", "value": None},
                    {"color": "orange", "value": 0},
                    {"color": "green", "value": 0.25},
                ],
                description="1 = untouched, 0 = spent, below 0 = objective missed",
            ),
            width=6,
        )
        layout.add(
            _panel(
                "stat",
                f"SLI over {slo.window.text}",
                "percentunit",
                (f"1 - buttress_slo:error_ratio:rate{slo.window.text}{sel}", "SLI"),
                steps=[{"color": "red", "value": None}, {"color": "green", "value": slo.objective}],
            ),
            width=6,
        )
        factors = sorted({w.factor(slo) for w in burn_windows()})
        layout.add(
            _panel(
                "timeseries",
                "Burn rate (1 = on budget)",
                "none",
                *[
                    (f"buttress_slo:burn_rate:rate{w}{sel}", w)
                    for w in ("5m", "30m", "1h", "6h", "3d")
                ],
                steps=[
                    {"color": "green", "value": None},
                    *[{"color": "red", "value": f} for f in factors],
                ],
                description="Alerts: page above "
                + ", ".join(f"{f:g}" for f in factors[1:])
                + f"; ticket above {factors[0]:g}",
            ),
            width=12,
        )
    hsel = _series(svc)
    layout.row(f"HTTP: {spec.service}")
    layout.add(
        _panel(
            "timeseries",
            "Requests per second by route",
            "reqps",
            (f"sum by (route) (buttress_slo:http_requests:rate5m{hsel})", "{{route}}"),
        ),
        width=12,
    )
    layout.add(
        _panel(
            "timeseries",
            "Latency percentiles",
            "s",
            *[
                (f"buttress_slo:http_latency_seconds:p{q}{hsel}", f"p{q}")
                for q in ("50", "95", "99")
            ],
        ),
        width=12,
    )
    layout.add(
        _panel(
            "timeseries",
            "5xx ratio",
            "percentunit",
            (f"buttress_slo:http_errors:ratio_rate5m{hsel}", "5xx"),
        ),
        width=12,
    )
    sel = _series(spec.selector)
    layout.add(
        _panel(
            "timeseries",
            "In flight, shed and rate limited",
            "short",
            (f"sum(buttress_http_requests_in_flight{sel})", "in flight"),
            (
                f"sum by (reason) (rate(buttress_http_requests_shed_total{sel}[5m]))",
                "shed {{reason}}",
            ),
            (
                f"sum by (policy) (rate(buttress_http_requests_limited_total{sel}[5m]))",
                "429 {{policy}}",
            ),
        ),
        width=12,
    )
    layout.row("Resilience (outbound calls)")
    for title, metric, by in (
        ("Retries", "buttress_retries_total", "pipeline, policy"),
        ("Timeouts", "buttress_timeouts_total", "pipeline, policy"),
        (
            "Rejections (open breaker, full bulkhead, limiter)",
            "buttress_rejections_total",
            "pipeline, policy, code",
        ),
        ("Fallbacks used", "buttress_fallbacks_total", "pipeline, policy"),
        ("Retries refused by the budget", "buttress_retry_budget_exhausted_total", "pipeline"),
    ):
        legend = " ".join("{{" + label.strip() + "}}" for label in by.split(","))
        layout.add(
            _panel(
                "timeseries", title, "ops", (f"sum by ({by}) (rate({metric}{sel}[5m]))", legend)
            ),
            width=8,
        )
    layout.add(
        _panel(
            "timeseries",
            "Circuit state (0 closed, 1 open, 2 half-open)",
            "none",
            (f"max by (breaker) (buttress_circuit_state{sel})", "{{breaker}}"),
        ),
        width=8,
    )
    if spec.probes is not None:
        job = f'{{job="{blackbox_job(spec)}"}}'
        layout.row("Synthetic checks (blackbox_exporter)")
        layout.add(
            _panel("timeseries", "Probe success", "none", (f"probe_success{job}", "{{instance}}")),
            width=12,
        )
        layout.add(
            _panel(
                "timeseries",
                "Probe duration",
                "s",
                (f"probe_duration_seconds{job}", "{{instance}}"),
            ),
            width=12,
        )
    if spec.backups is not None:
        bsel = _series(spec.backups.selector)
        layout.row("Backups")
        layout.add(
            _panel(
                "timeseries",
                f"Age of the newest backup (RPO {spec.backups.rpo.text})",
                "s",
                (f"max by (destination) (buttress_backup_age_seconds{bsel})", "{{destination}}"),
                steps=[
                    {"color": "green", "value": None},
                    {"color": "red", "value": spec.backups.rpo.seconds},
                ],
            ),
            width=12,
        )
        layout.add(
            _panel(
                "timeseries",
                "Since the last verified restore",
                "s",
                (
                    f"time() - max by (destination) "
                    f"(buttress_backup_last_verified_timestamp{bsel})",
                    "{{destination}}",
                ),
            ),
            width=12,
        )
    return {
        "uid": f"buttress-slo-{spec.service}"[:40],
        "title": f"{spec.service} SLOs",
        "description": "Generated by buttress slo generate; edit the spec, not this file.",
        "tags": ["buttress", "slo", spec.service],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "options": [],
                    "regex": "",
                }
            ]
        },
        "panels": layout.panels,
    }
