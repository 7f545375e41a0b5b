"""Prometheus recording rules and alerts for a `Spec`, with what each alert's runbook says.

Recording rules, per SLO (labels ``service`` and ``slo``, plus the spec's ``labels``):

- ``buttress_slo:error_ratio:rate<w>`` errors / requests over each window ``w`` the alerts
  use (5m, 30m, 1h, 6h, 3d) and over the SLO's own window (30d);
- ``buttress_slo:burn_rate:rate<w>`` that ratio over the error budget (1 = on budget);
- ``buttress_slo:objective:ratio`` and ``buttress_slo:error_budget_remaining:ratio``.

and, per service, ``buttress_slo:http_requests:rate5m`` (by route),
``buttress_slo:http_errors:ratio_rate5m`` and ``buttress_slo:http_latency_seconds:p50``,
``:p95`` and ``:p99`` (over 5m) for the dashboard.

Alerts, the Google SRE Workbook's multiwindow, multi-burn-rate scheme (chapter 5, "Alerting
on SLOs"): page when 2 % of the budget burns in an hour or 5 % in six hours (the 1h window
with a 5m confirmation, the 6h with 30m), a ticket for 10 % in three days (3d with 6h).
The factors are derived from those budget shares and the SLO window (14.4, 6 and 1 for
30 days) rather than copied, so a 28-day SLO pages at the same share of its budget. The
short window makes an alert stop soon after the burning stops. Then, when the spec asks,
the checklists' simple thresholds (5xx above 1 % for 2 m, p95 above 500 ms for 5 m),
failed synthetic health probes, and backups older than their RPO or left unverified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from buttress.slo._model import Slo, Spec

__all__ = ["AlertDef", "Rules", "build_rules", "burn_windows", "recorded_names"]

_REQUESTS = "buttress_http_requests_total"
_DURATION = "buttress_http_request_duration_seconds"
_5XX = 'status=~"5.."'
_NOT_499 = 'status!="499"'  # cancelled by the client: neither good nor bad
_DEADLINE = 'policy="request_deadline"'
_PERIOD_INTERVAL = "5m"  # the 30-day ratios move slowly and cost a range over 30 days


@dataclass(frozen=True, slots=True)
class BurnWindow:
    """One multiwindow condition: burn rate above ``factor`` over ``long`` and ``short``."""

    severity: str
    budget_share: float
    long: str
    long_seconds: float
    short: str

    def factor(self, slo: Slo) -> float:
        """The burn rate at which ``budget_share`` of ``slo``'s budget is gone in ``long``."""
        return round(self.budget_share * slo.window.seconds / self.long_seconds, 4)


def burn_windows() -> tuple[BurnWindow, ...]:
    """The SRE Workbook's table: two page conditions and one ticket condition."""
    return (
        BurnWindow("page", 0.02, "1h", 3600.0, "5m"),
        BurnWindow("page", 0.05, "6h", 6 * 3600.0, "30m"),
        BurnWindow("ticket", 0.10, "3d", 3 * 86400.0, "6h"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertDef:
    """One alerting rule and the runbook written for it."""

    name: str
    expr: str
    severity: str
    summary: str
    description: str
    for_: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    meaning: str = ""
    queries: tuple[tuple[str, str], ...] = ()  # (what it shows, PromQL)
    checks: tuple[str, ...] = ()  # the first things to check, in order


@dataclass(slots=True)
class Rules:
    """What `build_rules` returns: the recording groups and the alerts."""

    recording: list[dict[str, object]] = field(default_factory=list)
    alerts: list[AlertDef] = field(default_factory=list)


def camel(*parts: str) -> str:
    """``camel("orders", "p95-latency")`` is ``OrdersP95Latency`` (alert names)."""
    words = [w for part in parts for w in re.split(r"[^A-Za-z0-9]+", part) if w]
    return "".join(w[:1].upper() + w[1:] for w in words)


def _matchers(*pairs: tuple[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in pairs)


def _series(selector: str, *extra: str) -> str:
    parts = [p for p in (selector, *extra) if p]
    return "{" + ",".join(parts) + "}"


def slo_windows(slo: Slo) -> list[str]:
    """The windows an SLO's error ratio is recorded over, shortest first (the alerts' ones)."""
    return ["5m", "30m", "1h", "6h", "3d"]


def build_rules(spec: Spec) -> Rules:
    """The recording rules and alerts of ``spec``."""
    rules = Rules()
    extra = spec.labels
    for slo in spec.slos:
        ident = (("service", spec.service), ("slo", slo.name))
        labels = dict((*ident, *extra))
        sel = "{" + _matchers(*ident) + "}"
        fast = []
        for window in slo_windows(slo):
            fast.append(
                {
                    "record": f"buttress_slo:error_ratio:rate{window}",
                    "expr": slo.sli.ratio_query(window),
                    "labels": labels,
                }
            )
            fast.append(
                {
                    "record": f"buttress_slo:burn_rate:rate{window}",
                    "expr": f"buttress_slo:error_ratio:rate{window}{sel} / {slo.budget:g}",
                    "labels": labels,
                }
            )
        fast.append(
            {
                "record": "buttress_slo:objective:ratio",
                "expr": f"vector({slo.objective:g})",
                "labels": labels,
            }
        )
        rules.recording.append({"name": f"buttress-slo-{spec.service}-{slo.name}", "rules": fast})
        period = slo.window.text
        slow: list[dict[str, object]] = []
        if period not in slo_windows(slo):
            slow.append(
                {
                    "record": f"buttress_slo:error_ratio:rate{period}",
                    "expr": slo.sli.ratio_query(period),
                    "labels": labels,
                }
            )
        slow.append(
            {
                "record": "buttress_slo:error_budget_remaining:ratio",
                "expr": f"1 - buttress_slo:error_ratio:rate{period}{sel} / {slo.budget:g}",
                "labels": labels,
            }
        )
        rules.recording.append(
            {
                "name": f"buttress-slo-{spec.service}-{slo.name}-period",
                "interval": _PERIOD_INTERVAL,
                "rules": slow,
            }
        )
        rules.alerts.extend(_burn_alerts(spec, slo, sel))
    rules.recording.append(_service_group(spec))
    rules.alerts.extend(_threshold_alerts(spec))
    rules.alerts.extend(_probe_alerts(spec))
    rules.alerts.extend(_backup_alerts(spec))
    return rules


def _service_group(spec: Spec) -> dict[str, object]:
    """The service-wide series the dashboard draws (route labels are bounded templates)."""
    sel = spec.selector
    labels = dict((("service", spec.service), *spec.labels))
    rules: list[dict[str, object]] = [
        {
            "record": "buttress_slo:http_requests:rate5m",
            "expr": f"sum by (route, method) (rate({_REQUESTS}{_series(sel)}[5m]))",
            "labels": labels,
        },
        {
            "record": "buttress_slo:http_errors:ratio_rate5m",
            "expr": f"(sum(rate({_REQUESTS}{_series(sel, _5XX)}[5m])) or vector(0))\n/\n"
            f"sum(rate({_REQUESTS}{_series(sel, _NOT_499)}[5m]))",
            "labels": labels,
        },
    ]
    rules.extend(
        {
            "record": f"buttress_slo:http_latency_seconds:p{q}",
            "expr": f"histogram_quantile(0.{q}, sum by (le) "
            f"(rate({_DURATION}_bucket{_series(sel)}[5m])))",
            "labels": labels,
        }
        for q in ("50", "95", "99")
    )
    return {"name": f"buttress-slo-{spec.service}-http", "rules": rules}


def recorded_names(rules: Rules) -> set[str]:
    """Every series name the recording rules define."""
    return {
        str(rule["record"])
        for group in rules.recording
        for rule in group["rules"]  # type: ignore[attr-defined]
    }


# --------------------------------------------------------------------------- alerts


def _burn_alerts(spec: Spec, slo: Slo, sel: str) -> list[AlertDef]:
    out = []
    for severity in ("page", "ticket"):
        conditions = [w for w in burn_windows() if w.severity == severity]
        expr = "\nor\n".join(
            f"(\n  buttress_slo:burn_rate:rate{w.long}{sel} > {w.factor(slo):g}\n"
            f"  and\n  buttress_slo:burn_rate:rate{w.short}{sel} > {w.factor(slo):g}\n)"
            for w in conditions
        )
        shares = " or ".join(
            f"{w.budget_share:.0%} of the {slo.window.text} error budget in {w.long} "
            f"(burn rate above {w.factor(slo):g} over {w.long}, confirmed over {w.short})"
            for w in conditions
        )
        what = _sli_words(slo)
        name = camel(spec.service, slo.name, "burn rate", severity)
        out.append(
            AlertDef(
                name=name,
                expr=expr,
                severity=severity,
                labels=(("slo", slo.name),),
                summary=f"{spec.service}: {slo.name} SLO error budget burning fast"
                if severity == "page"
                else f"{spec.service}: {slo.name} SLO error budget burning",
                description=(
                    f"{spec.service} is spending its {slo.name} error budget "
                    f"({slo.objective:.4g} over {slo.window.text}) at {{{{ $value | humanize }}}}"
                    f"x the sustainable rate: at this pace {shares}."
                ),
                meaning=(
                    f"The share of {what} has been high enough, for long enough, that "
                    f"{shares}. The objective is {slo.objective * 100:g} % over a rolling "
                    f"{slo.window.text}; a burn rate of 1 spends exactly the budget over the "
                    "window. The short window means the problem is still happening now."
                ),
                queries=(
                    (
                        "burn rate over each window",
                        f'{{__name__=~"buttress_slo:burn_rate:rate.+",'
                        f'service="{spec.service}",slo="{slo.name}"}}',
                    ),
                    (
                        "error budget left (1 = untouched, 0 = spent)",
                        f"buttress_slo:error_budget_remaining:ratio{sel}",
                    ),
                    ("the error ratio now", slo.sli.ratio_query("5m")),
                    *_route_queries(spec, slo),
                ),
                checks=_sli_checks(spec, slo),
            )
        )
    return out


def _sli_words(slo: Slo) -> str:
    if slo.sli.kind == "availability":
        return "requests answered with a 5xx status"
    if slo.sli.kind == "latency":
        return f"requests slower than {(slo.sli.latency_threshold or 0) * 1000:g} ms"
    return "bad events (the SLI's own query)"


def _route_queries(spec: Spec, slo: Slo) -> tuple[tuple[str, str], ...]:
    sel = spec.selector
    if slo.sli.kind == "availability":
        return (
            (
                "5xx by route and status",
                f"sum by (route, status) (rate({_REQUESTS}{_series(sel, _5XX)}[5m]))",
            ),
        )
    if slo.sli.kind == "latency":
        return (
            (
                "p95 by route",
                f"histogram_quantile(0.95, sum by (route, le) "
                f"(rate({_DURATION}_bucket{_series(sel)}[5m])))",
            ),
        )
    return ()


_RESILIENCE_QUERIES = (
    "sum by (breaker) (buttress_circuit_state{SEL}) > 0",
    "sum by (pipeline, policy, code) (rate(buttress_timeouts_total{SEL}[5m]))",
    "sum by (pipeline, policy, code) (rate(buttress_rejections_total{SEL}[5m]))",
)


def _sli_checks(spec: Spec, slo: Slo) -> tuple[str, ...]:
    sel = spec.selector
    deps = (
        "Dependencies: is a circuit breaker open, are outbound calls timing out or being "
        f"rejected? `{_RESILIENCE_QUERIES[0].replace('{SEL}', _series(sel))}`, "
        f"`{_RESILIENCE_QUERIES[1].replace('{SEL}', _series(sel))}`"
    )
    deploy = (
        "A recent deploy or configuration change: compare the start of the burn with the "
        "deploy history; roll back first, investigate after (`buttress probe --watch` "
        "automates this gate)."
    )
    if slo.sli.kind == "latency":
        return (
            "Which routes are slow (p95 by route above) and whether the load grew: "
            f"`sum(rate({_REQUESTS}{_series(sel)}[5m]))` against last week.",
            "Saturation: requests in flight and load shedding "
            f"(`buttress_http_requests_in_flight{_series(sel)}`, "
            f"`rate(buttress_http_requests_shed_total{_series(sel)}[5m])`), CPU, the "
            "database's slow queries and pool waits.",
            deps,
        )
    if slo.sli.kind == "availability":
        return (
            "Which routes and statuses fail (5xx by route above): 500 is a bug (read the "
            "error tracker and the logs by request_id), 502/503/504 a dependency, load "
            "shedding or the request deadline.",
            deploy,
            deps,
        )
    return (
        "Which part of the service the SLI's query covers, and its bad events by label.",
        deploy,
        deps,
    )


def _threshold_alerts(spec: Spec) -> list[AlertDef]:
    t, sel, out = spec.thresholds, spec.selector, []
    w = t.rate_window.text
    if t.error_ratio is not None:
        expr = (
            f"(sum(rate({_REQUESTS}{_series(sel, _5XX)}[{w}])) or vector(0))\n/\n"
            f"sum(rate({_REQUESTS}{_series(sel, _NOT_499)}[{w}]))\n> {t.error_ratio:g}"
        )
        out.append(
            AlertDef(
                name=camel(spec.service, "high 5xx rate"),
                expr=expr,
                for_=t.error_for.text,
                severity="page",
                summary=f"{spec.service}: more than {t.error_ratio:.2%} of requests fail with 5xx",
                description=f"{{{{ $value | humanizePercentage }}}} of {spec.service}'s requests "
                f"answered 5xx over {w}, for at least {t.error_for.text}.",
                meaning=f"More than {t.error_ratio:.2%} of requests have been answered with a "
                f"5xx status for {t.error_for.text} (the checklist's threshold alert; the "
                "burn-rate alerts weigh the same errors against the SLO).",
                queries=(
                    (
                        "5xx by route and status",
                        f"sum by (route, status) (rate({_REQUESTS}{_series(sel, _5XX)}[5m]))",
                    ),
                    (
                        "503s from load shedding, by reason",
                        "sum by (reason) "
                        f"(rate(buttress_http_requests_shed_total{_series(sel)}[5m]))",
                    ),
                    (
                        "504s from the request deadline",
                        f"sum(rate(buttress_timeouts_total{_series(sel, _DEADLINE)}[5m]))",
                    ),
                ),
                checks=(
                    "Which routes and statuses: 500 a bug (logs and error tracker by request_id), "
                    "503 shedding or a store down, 504 the deadline or a slow dependency.",
                    "A deploy in the last hour: roll back first.",
                    "Dependencies: open breakers and outbound timeouts "
                    f"(`buttress_circuit_state{_series(sel)} > 0`).",
                ),
            )
        )
    if t.p95_seconds is not None:
        expr = (
            f"histogram_quantile(0.95, sum by (le) (rate({_DURATION}_bucket{_series(sel)}[{w}])))"
            f"\n> {t.p95_seconds:g}"
        )
        out.append(
            AlertDef(
                name=camel(spec.service, "high latency p95"),
                expr=expr,
                for_=t.p95_for.text,
                severity="page",
                summary=f"{spec.service}: p95 latency above {t.p95_seconds * 1000:g} ms",
                description=f"{spec.service}'s p95 latency is {{{{ $value | humanizeDuration }}}} "
                f"over {w}, above {t.p95_seconds * 1000:g} ms for at least {t.p95_for.text}.",
                meaning="The slowest 5 % of requests take longer than "
                f"{t.p95_seconds * 1000:g} ms, and have for {t.p95_for.text}. The quantile is "
                "interpolated within histogram buckets, so it is only as precise as the "
                "buckets around the threshold.",
                queries=(
                    (
                        "p95 by route",
                        f"histogram_quantile(0.95, sum by (route, le) "
                        f"(rate({_DURATION}_bucket{_series(sel)}[5m])))",
                    ),
                    ("requests in flight", f"sum(buttress_http_requests_in_flight{_series(sel)})"),
                    ("request rate", f"sum(rate({_REQUESTS}{_series(sel)}[5m]))"),
                ),
                checks=(
                    "Which routes are slow, and did the traffic grow (the request rate against "
                    "last week)?",
                    "Saturation: in-flight requests, CPU, database pool waits and slow queries.",
                    "Slow dependencies: outbound timeouts and retries "
                    f"(`rate(buttress_retries_total{_series(sel)}[5m])`).",
                ),
            )
        )
    return out


def blackbox_job(spec: Spec) -> str:
    """The scrape job of the service's synthetic probes."""
    return f"buttress-blackbox-{spec.service}"


def _probe_alerts(spec: Spec) -> list[AlertDef]:
    if spec.probes is None:
        return []
    job = f'job="{blackbox_job(spec)}"'
    return [
        AlertDef(
            name=camel(spec.service, "health probe failed"),
            expr=f"probe_success{{{job}}} == 0\nor\nup{{{job}}} == 0",
            for_=spec.probes.for_.text,
            severity="page",
            summary=f"{spec.service}: health probe of {{{{ $labels.instance }}}} failing",
            description="blackbox_exporter could not get a 200 from {{ $labels.instance }} for "
            f"{spec.probes.for_.text} (or the exporter itself is not scraped).",
            meaning="A synthetic check from outside the service failed: the health endpoint did "
            "not answer 200 within the probe's timeout. Liveness failing means the process is "
            "stuck or gone; readiness failing means a critical dependency is down (the "
            "readiness body names it).",
            queries=(
                ("probe results by target", f"probe_success{{{job}}}"),
                ("probe duration by phase", f"probe_http_duration_seconds{{{job}}}"),
                ("status code seen", f"probe_http_status_code{{{job}}}"),
            ),
            checks=(
                "Read the health answer yourself: `curl -i <target>` (readiness lists each "
                "check with its status).",
                "A readiness failure: the dependency it names (database, Redis, a downstream "
                "API); liveness: the process (restarts, OOM kills, a blocked event loop).",
                "`up == 0` instead: blackbox_exporter is down or unreachable, not the service.",
            ),
        )
    ]


def _backup_alerts(spec: Spec) -> list[AlertDef]:
    b = spec.backups
    if b is None:
        return []
    age = f"buttress_backup_age_seconds{_series(b.selector)}"
    out = [
        AlertDef(
            name=camel(spec.service, "backup rpo missed"),
            expr=f"max by (destination) ({age}) > {b.rpo.seconds:g}\nor\nabsent({age})",
            for_=b.for_.text,
            severity="page",
            summary=f"{spec.service}: the last backup is older than the RPO ({b.rpo.text})",
            description="The newest backup at {{ $labels.destination }} is "
            "{{ $value | humanizeDuration }} old (RPO " + b.rpo.text + "), or no backup "
            "metrics are scraped at all.",
            meaning=f"Data written since the last good backup would be lost beyond the recovery "
            f"point objective ({b.rpo.text}). Either backups stopped running or failing, or the "
            "metrics that report them are gone (the alert also fires then).",
            queries=(
                ("age of the newest backup by destination", age),
                (
                    "last verification",
                    f"buttress_backup_last_verified_timestamp{_series(b.selector)}",
                ),
            ),
            checks=(
                "The backup job's last runs and their logs (`buttress backup run`): failing, "
                "not scheduled, or running longer than its interval?",
                "The destination: credentials, free space, network path to the bucket or host.",
                "Run a backup now and watch the age drop; then find why the schedule missed.",
            ),
        )
    ]
    if b.verify_within is not None:
        verified = f"buttress_backup_last_verified_timestamp{_series(b.selector)}"
        out.append(
            AlertDef(
                name=camel(spec.service, "backup not verified"),
                expr=f"time() - max by (destination) ({verified}) > {b.verify_within.seconds:g}",
                for_=b.for_.text,
                severity="ticket",
                summary=f"{spec.service}: no verified restore in {b.verify_within.text}",
                description="The last backup verified at {{ $labels.destination }} was "
                "{{ $value | humanizeDuration }} ago.",
                meaning="Backups are taken, but none was restored and checked recently: a "
                "backup that was never restored is a hope, not a backup.",
                queries=(
                    ("seconds since the last verification by destination", f"time() - {verified}"),
                ),
                checks=(
                    "`buttress backup verify` runs and its result: does the scratch restore work?",
                    "The verification schedule (cron, CI) and its credentials.",
                    "The restore time against the RTO while you are at it.",
                ),
            )
        )
    return out
