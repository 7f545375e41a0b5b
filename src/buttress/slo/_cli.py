"""The ``buttress slo`` command: ``validate SPEC`` and ``generate SPEC --out DIR``.

Exit codes: 0 done, 1 the spec has problems (each printed as ``file:line:column: what``,
on stderr), 2 a usage error. Imports nothing heavy: the handler loads `buttress.slo`
(and PyYAML) when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_command", "run_slo"]

_DESCRIPTION = """\
Turn a small SLO spec (YAML: the service, SLIs from buttress's metrics or any PromQL
ratio, objectives, a window; or OpenSLO v1 documents) into Prometheus recording rules
and multiwindow multi-burn-rate alerts (page: 14.4x over 1h and 5m, 6x over 6h and 30m;
ticket: 1x over 3d and 6h, for a 30d window), the checklists' threshold alerts (5xx above
1 % for 2m, p95 above 500 ms for 5m), a Grafana dashboard, a blackbox_exporter module and
scrape job for the health endpoints, backup RPO alerts, and a runbook per alert.
Format and model: docs/slo.md. Exit status: 0 done, 1 the spec has problems, 2 usage.
"""

_EPILOG = """\
examples:
  buttress slo validate slo.yml                 every problem, with its line
  buttress slo generate slo.yml --out monitoring/
  buttress slo generate slo.yml --out monitoring/ \\
      --runbook-base-url https://github.com/acme/orders/blob/main/monitoring/runbooks
  promtool check rules monitoring/rules.yml monitoring/alerts.yml
"""


def add_command(sub: Any) -> None:
    """Add ``buttress slo`` (with ``validate`` and ``generate``) to the subparsers ``sub``."""
    raw = argparse.RawDescriptionHelpFormatter
    slo = sub.add_parser(
        "slo",
        help="SLO spec -> Prometheus rules, burn-rate alerts, dashboard, probes, runbooks",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=raw,
    )
    actions = slo.add_subparsers(dest="slo_command", required=True, metavar="ACTION")
    validate = actions.add_parser(
        "validate", help="check a spec; explain each problem with its line", formatter_class=raw
    )
    validate.add_argument("spec", metavar="SPEC", help="the spec file (YAML)")
    generate = actions.add_parser(
        "generate",
        help="write rules.yml, alerts.yml, dashboard.json, blackbox.yml, scrape.yml, runbooks/",
        formatter_class=raw,
    )
    generate.add_argument("spec", metavar="SPEC", help="the spec file (YAML)")
    generate.add_argument("--out", required=True, metavar="DIR", help="the output directory")
    generate.add_argument(
        "--runbook-base-url",
        metavar="URL",
        help="where runbooks/ will be published: each alert's runbook_url is URL/NAME.md "
        "(overrides the spec's runbook_base_url)",
    )
    slo.set_defaults(handler=run_slo)


def _say(line: str, *, error: bool = False) -> None:
    print(line, file=sys.stderr if error else sys.stdout)  # buttress: ignore[BTR501] the CLI


def run_slo(args: argparse.Namespace) -> int:
    """Run ``buttress slo ACTION`` with parsed ``args``; returns the exit code."""
    try:
        import yaml  # noqa: F401, PLC0415 - the slo extra
    except ImportError:
        _say("buttress slo needs PyYAML: pip install 'buttress[slo]'", error=True)
        return 2
    import dataclasses  # noqa: PLC0415

    from buttress.slo import SpecError, build_rules, generate, load_spec  # noqa: PLC0415

    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        for problem in exc.problems:
            _say(str(problem), error=True)
        _say(f"buttress slo: {args.spec}: {len(exc.problems)} problem(s)", error=True)
        return 1
    if args.slo_command == "validate":
        rules = build_rules(spec)
        _say(
            f"{args.spec}: valid: service {spec.service}, {len(spec.slos)} SLO(s), "
            f"{len(rules.alerts)} alert(s)"
        )
        return 0
    if args.runbook_base_url:
        if not args.runbook_base_url.startswith(("http://", "https://")):
            _say("buttress slo: --runbook-base-url: an http(s):// URL", error=True)
            return 2
        spec = dataclasses.replace(spec, runbook_base_url=args.runbook_base_url.rstrip("/"))
    try:
        written = generate(spec, args.out)
    except OSError as exc:
        _say(f"buttress slo: cannot write to {args.out}: {exc}", error=True)
        return 2
    for path in written:
        _say(str(path))
    return 0
