"""Review of ``buttress slo``'s promises: every spec it accepts passes ``promtool check
rules``; a spec it cannot turn into valid rules is refused with a line naming the field.

promtool is at /usr/bin/promtool (scripts/install-tools); these tests fail without it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from buttress.slo import SpecError, generate, parse_spec

BASE = """\
service: {service}
selector: '{selector}'
window: {window}
labels: {labels}
slos:
  - name: {name}
    objective: {objective}
    sli: {{buttress: availability}}
  - name: latency
    objective: {objective}
    sli: {{buttress: latency, threshold: 500ms, routes: "{routes}"}}
  - name: payments
    objective: {objective}
    sli:
      errors: sum(rate(payments_failed_total{{job="orders"}}[{{{{window}}}}]))
      total: sum(rate(payments_total{{job="orders"}}[{{{{window}}}}]))
alerts: {{error_rate: {{above: 0.5%, for: 5m}}, latency_p95: true, rate_window: 30s}}
probes: {{targets: ["http://127.0.0.1:8000"]}}
backups: {{rpo: 26h, verify_within: 8d}}
"""
DEFAULTS = {
    "service": "orders",
    "selector": 'job="orders"',
    "window": "30d",
    "labels": "{team: shop}",
    "name": "availability",
    "objective": "99.9",
    "routes": "/orders.*",
}


def _spec(**over: str) -> str:
    return BASE.format(**{**DEFAULTS, **over})


def _promtool(spec_text: str, where: Path) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    generate(parse_spec(spec_text, "slo.yml"), where)
    return subprocess.run(
        [promtool, "check", "rules", str(where / "rules.yml"), str(where / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "over",
    [
        {"objective": "99.999"},
        {"objective": "50.1"},
        {"window": "3d"},
        {"window": "30d"},
        {"window": "365d"},
        {"labels": """{team: 'sh"op', note: "a\\nb\\\\c {{ $value }}"}"""},
        {"service": "my-orders_2", "name": "9-avail"},
        {"selector": 'job=~"ord(ers|er)", env!="dev"', "routes": "/orders/(a|b)/{id}"},
    ],
    ids=["99.999%", "50.1%", "3d", "30d", "365d", "label-values", "names", "regexes"],
)
def test_accepted_edge_cases_pass_promtool(over: dict[str, str], tmp_path: Path) -> None:
    result = _promtool(_spec(**over), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("over", "field", "words"),
    [
        ({"objective": "50"}, "slos[0].objective", "between 50 and 100"),
        ({"window": "1d"}, "slos[0]", "at least 3d"),
        ({"labels": "{te-am: shop}"}, "labels.te-am", "not a Prometheus label name"),
        ({"service": "Or.ders"}, "service", "lower-case"),
        # Accepted before, then refused by promtool ("missing closing )").
        ({"routes": "/orders/(a"}, "slos[1].sli.routes", "not a regular expression"),
        # Python's re knows lookaround, Prometheus' RE2 does not.
        ({"routes": "(?!/admin).*"}, "slos[1].sli.routes", "not RE2 syntax"),
        ({"selector": 'job=~"ord(.*"'}, "selector", "not a regular expression"),
        ({"selector": 'job=~"(?=o)ord"'}, "selector", "not RE2 syntax"),
    ],
)
def test_refused_spec_names_the_field(over: dict[str, str], field: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec(**over), "slo.yml")
    first = str(caught.value.problems[0])
    assert "\n" not in first
    assert f": {field}: " in first
    assert words in first
