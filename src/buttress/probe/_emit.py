"""``--emit locust FILE`` and ``--emit k6 FILE``: the load's scenario and thresholds as a script.

For load beyond one machine, the tools built for it (locust's and k6's distributed
runners) run the same scenario: the route, the concurrency (users / VUs), the rate, the
duration and the thresholds, which set the tool's exit code as they set the probe's.
Errors mean the same in both: no answer or a 5xx (a 4xx is the service answering).

Example::

    write_script("k6", LoadPlan(path="/orders", rate=50), "http://127.0.0.1:8000", "load.js")
"""

from __future__ import annotations

import json
import math

from buttress.probe._load import LoadPlan
from buttress.probe._threshold import Threshold

__all__ = ["EMITTERS", "k6_script", "locust_script", "write_script"]


def _k6_threshold(t: Threshold) -> tuple[str, str]:
    """(metric, expression) in k6's threshold syntax."""
    if t.metric == "error_rate":
        return "http_req_failed", f"rate{t.op}{t.limit:g}"
    if t.metric == "rps":
        return "http_reqs", f"rate{t.op}{t.limit:g}"
    name = {"med": "med", "avg": "avg", "min": "min", "max": "max"}.get(t.metric)
    agg = name or f"p({t.metric[1:]})"
    return "http_req_duration", f"{agg}{t.op}{t.limit * 1000:g}"


def k6_script(plan: LoadPlan, base: str) -> str:
    """A k6 script (JavaScript) running ``plan`` against ``base`` with its thresholds."""
    thresholds: dict[str, list[str]] = {}
    for t in plan.thresholds:
        metric, expression = _k6_threshold(t)
        thresholds.setdefault(metric, []).append(expression)
    duration = f"{plan.duration:g}s"
    if plan.rate is not None:
        whole = plan.rate == int(plan.rate)  # k6 takes whole starts per time unit
        rate, unit = (plan.rate, "1s") if whole else (round(plan.rate * 60), "1m")
        scenario = {
            "executor": "constant-arrival-rate",
            "rate": math.ceil(rate),
            "timeUnit": unit,
            "duration": duration,
            "preAllocatedVUs": plan.concurrency,
            "maxVUs": plan.concurrency,
        }
    else:
        scenario = {"executor": "constant-vus", "vus": plan.concurrency, "duration": duration}
    options = {"scenarios": {"probe": scenario}, "thresholds": thresholds}
    url = base.rstrip("/") + plan.path
    return f"""\
// Written by `buttress probe --emit k6`: {plan.describe()}.
// Run: k6 run THIS_FILE (exit code 99 when a threshold breaks); k6 cloud or the
// k6-operator distribute it. Errors are as the probe counts them: no answer or a 5xx.
import http from "k6/http";

http.setResponseCallback(http.expectedStatuses({{ min: 100, max: 499 }}));

export const options = {json.dumps(options, indent=2)};

export default function () {{
  http.request({json.dumps(plan.method)}, {json.dumps(url)}, null, {{ timeout: "5s" }});
}}
"""


def _locust_check(t: Threshold) -> str:
    """A Python expression over ``s`` (locust's total stats) for one threshold."""
    if t.metric == "error_rate":
        value = "s.num_failures / max(s.num_requests, 1)"
    elif t.metric == "rps":
        value = "s.num_requests / max(s.last_request_timestamp - s.start_time, 1e-9)"
    elif t.metric == "avg":
        value = "s.avg_response_time / 1000"
    elif t.metric == "min":
        value = "s.min_response_time / 1000"
    elif t.metric == "max":
        value = "s.max_response_time / 1000"
    else:
        q = 50.0 if t.metric == "med" else float(t.metric[1:])
        value = f"s.get_response_time_percentile({q / 100:g}) / 1000"
    return f"({t.text!r}, {value}, {t.op!r}, {t.limit!r})"


def locust_script(plan: LoadPlan, base: str) -> str:
    """A locustfile running ``plan`` against ``base``; thresholds set its exit code."""
    checks = ",\n        ".join(_locust_check(t) for t in plan.thresholds)
    wait = (
        f"constant_throughput({plan.rate / plan.concurrency!r})"
        if plan.rate is not None
        else "constant(0)"
    )
    return f'''\
"""Written by `buttress probe --emit locust`: {plan.describe()}.

Run: locust -f THIS_FILE --headless --users {plan.concurrency} --spawn-rate {plan.concurrency} \\
         --run-time {math.ceil(plan.duration)}s
(locust --master / --worker distribute it). Exit code 1 when a threshold breaks. Errors
are as the probe counts them: no answer or a 5xx (a 4xx is the service answering).
"""

import operator

from locust import HttpUser, constant, constant_throughput, events, task

OPS = {{"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}}


class Probe(HttpUser):
    host = {base.rstrip("/")!r}
    wait_time = {wait}

    @task
    def probe(self) -> None:
        with self.client.request(
            {plan.method!r}, {plan.path!r}, catch_response=True, timeout=5
        ) as response:
            if response.status_code == 0 or response.status_code >= 500:
                response.failure(f"status {{response.status_code}}")
            else:
                response.success()


@events.quitting.add_listener
def thresholds(environment, **_kwargs) -> None:
    s = environment.stats.total
    checks = [
        {checks}
    ]
    for text, value, op, limit in checks:
        held = OPS[op](value, limit)
        print(f"threshold {{text}}: {{'held' if held else 'BROKEN'}} ({{value:.4g}})")
        if not held:
            environment.process_exit_code = 1
'''


EMITTERS = {"locust": locust_script, "k6": k6_script}


def write_script(tool: str, plan: LoadPlan, base: str, path: str) -> None:
    """Write ``tool``'s script (``locust`` or ``k6``) for ``plan`` to ``path``."""
    text = EMITTERS[tool](plan, base)
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)
