"""``buttress slo``: SLOs written as a small YAML spec, turned into what runs them in production.

From one spec (buttress's format or OpenSLO v1), `generate` writes Prometheus recording
rules and multiwindow multi-burn-rate alerts (the Google SRE Workbook's), the checklists'
threshold alerts, a Grafana dashboard, a blackbox_exporter module and scrape job for the
health endpoints, backup RPO alerts, and one Markdown runbook per alert. Everything here
is text generation: it may import `buttress.errors` and PyYAML (the ``slo`` extra), and
nothing from the other packages. The format and the burn-rate model: docs/slo.md.

Example::

    from buttress.slo import generate, load_spec

    spec = load_spec("slo.yml")           # SpecError lists every problem with its line
    for path in generate(spec, "out/"):
        print(path)
"""

from buttress.slo._model import Backups, Duration, Probes, Sli, Slo, Spec, Thresholds
from buttress.slo._render import BLACKBOX_MODULE, generate, render
from buttress.slo._rules import AlertDef, Rules, build_rules, recorded_names
from buttress.slo._spec import SpecError, load_spec, parse_spec
from buttress.slo._yaml import Problem

__all__ = [
    "BLACKBOX_MODULE",
    "AlertDef",
    "Backups",
    "Duration",
    "Probes",
    "Problem",
    "Rules",
    "Sli",
    "Slo",
    "Spec",
    "SpecError",
    "Thresholds",
    "build_rules",
    "generate",
    "load_spec",
    "parse_spec",
    "recorded_names",
    "render",
]
