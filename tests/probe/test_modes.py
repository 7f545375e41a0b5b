"""``buttress probe`` modes: load with thresholds, emitted locust/k6 scripts, shutdown under
load (``--start``), a dependency fault (``--fault``/``--recover``), the deploy gate
(``--watch``, from the service or a Prometheus HTTP API) and parity (``--compare``).

Servers are real: the demo, uvicorn in a thread, a private redis-server on a free port,
and a small HTTP server that answers Prometheus' query API the way Prometheus does.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest

from buttress.asgi import HardenSettings
from buttress.cli import main
from buttress.errors import ConfigurationError
from buttress.probe._rules import GROUPS
from buttress.probe._threshold import Sample, Stats, Threshold, percentile
from buttress.probe._watch import judge, promql
from buttress.report import schema_path
from tests.conftest import PrivateRedis, free_port, served

from .apps import configured_app, flipping_app
from .conftest import BadServer, ServerThread

ROOT = Path(__file__).parents[2]


def _cli(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run the command line with a JSON report; (exit code, report, stderr)."""
    out = tmp_path / "probe.json"
    code = main(["probe", *argv, "--format", "json", "--output", str(out)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    data = json.loads(out.read_text())
    jsonschema.validate(data, json.loads(Path(schema_path()).read_text()))
    return code, data, captured.err


def _checks(data: Any) -> dict[str, dict[str, str]]:
    return {c["rule"]: c for c in data["checks"]}


# -- thresholds and statistics (no I/O) ------------------------------------------


@pytest.mark.parametrize(
    ("text", "metric", "op", "limit"),
    [
        ("p95<500ms", "p95", "<", 0.5),
        ("p99.9 <= 2s", "p99.9", "<=", 2.0),
        ("avg<250", "avg", "<", 0.25),  # bare latency: milliseconds, as in k6
        ("max<900us", "max", "<", 0.0009),
        ("error_rate<1%", "error_rate", "<", 0.01),
        ("error_rate<=0.05", "error_rate", "<=", 0.05),
        ("rps>=50", "rps", ">=", 50.0),
    ],
)
def test_thresholds_parse(text: str, metric: str, op: str, limit: float) -> None:
    t = Threshold.parse(text)
    assert (t.metric, t.op) == (metric, op)
    assert math.isclose(t.limit, limit)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("p95 500ms", "expected METRIC<VALUE"),
        ("p100<1s", "between p0 and p100"),
        ("error_rate<2ms", "takes 1% or 0.01"),
        ("error_rate<150%", "at most 100%"),
        ("rps>5%", "plain number"),
        ("p95<5%", "ms, s or us"),
        ("latency<1s", "expected METRIC<VALUE"),
    ],
)
def test_bad_thresholds_say_the_form(text: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Threshold.parse(text)


def test_stats_and_checks() -> None:
    samples = [Sample(float(i), (i + 1) / 1000, 200) for i in range(98)]
    samples += [Sample(98.0, 0.0, 0, "no answer"), Sample(99.0, 0.5, 503)]
    stats = Stats.of(samples, seconds=10.0)
    assert (stats.requests, stats.errors, stats.rps) == (100, 2, 10.0)
    assert stats.error_rate == 0.02
    assert stats.statuses == {0: 1, 200: 98, 503: 1}
    assert len(stats.latencies) == 99  # the unanswered one has no latency
    assert stats.value("max") == 0.5
    assert math.isclose(stats.value("p50"), percentile(stats.latencies, 50))
    assert Threshold.parse("error_rate<1%").check(stats) == (False, "error_rate = 2.00%")
    assert Threshold.parse("error_rate<5%").check(stats)[0]
    assert Threshold.parse("p50<100ms").check(stats)[0]
    assert not Threshold.parse("max<100ms").check(stats)[0]
    assert Threshold.parse("rps>=10").check(stats) == (True, "rps = 10.0/s")
    empty = Stats.of([], seconds=1.0)
    assert not Threshold.parse("p95<1s").check(empty)[0]  # no value never passes
    assert "0 requests" in empty.summary()


def test_judge_looks_only_at_the_window() -> None:
    t = (Threshold.parse("error_rate<10%"),)
    good = [Sample(float(i) / 10, 0.01, 200) for i in range(50)]  # t 0.0 .. 4.9
    bad = [Sample(5 + float(i) / 10, 0.01, 500) for i in range(10)]  # t 5.0 .. 5.9
    broken, stats = judge(good, t, now=4.9, window=1.0)
    assert broken == []
    assert stats is not None
    assert stats.requests == 10  # t 4.0 .. 4.9: only the last second
    assert judge(good[:3], t, now=0.3, window=1.0) == ([], None)  # too few to judge
    broken, stats = judge(good + bad, t, now=5.95, window=1.0)
    assert broken == ["error_rate<10% broken: error_rate = 100.00%"]
    assert stats is not None
    assert stats.requests == 10
    broken, stats = judge(good + bad, t, now=5.95, window=60.0)  # diluted by the good ones
    assert broken == ["error_rate<10% broken: error_rate = 16.67%"]


def test_promql_over_buttress_metrics() -> None:
    assert promql(Threshold.parse("p95<500ms"), 60) == (
        "histogram_quantile(0.95, sum by (le) "
        "(rate(buttress_http_request_duration_seconds_bucket[60s])))"
    )
    assert promql(Threshold.parse("error_rate<1%"), 120, 'job="api"') == (
        'sum(rate(buttress_http_requests_total{job="api", status=~"5.."}[120s])) / '
        'sum(rate(buttress_http_requests_total{job="api"}[120s]))'
    )
    assert promql(Threshold.parse("rps>1"), 0.5) == "sum(rate(buttress_http_requests_total[1s]))"
    assert "_sum" in promql(Threshold.parse("avg<1s"), 60)


# -- load ------------------------------------------------------------------------


def test_load_thresholds_pass_against_the_demo(
    demo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [demo_url, "--load", "--duration", "2s", "--rate", "60", "--concurrency", "4"]
    argv += ["--threshold", "p95<500ms", "--threshold", "error_rate<1%"]
    argv += ["--threshold", "rps>20", "--fail-on", "P0"]
    code, data, err = _cli(argv, tmp_path, capsys)
    checks = _checks(data)
    for rid in ("PRB060", "PRB061", "PRB062"):
        assert checks[rid]["status"] == "pass", checks[rid]["evidence"]
    assert "GET /orders, 4 at a time, 60/s, 2 s" in checks["PRB060"]["evidence"]
    assert "p95<500ms held: p95 = " in checks["PRB060"]["evidence"]
    assert {c["rule"] for c in data["checks"]} == set(GROUPS["checks"] + GROUPS["load"])
    assert code == 0
    assert "buttress probe: load: GET /orders" in err


@pytest.fixture(scope="module")
def flipping() -> Iterator[tuple[str, dict[str, Any]]]:
    app, state = flipping_app(delay=0.15)
    with ServerThread(app) as url:
        yield url, state


def test_a_slow_route_breaks_the_latency_threshold(
    flipping: tuple[str, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = flipping
    argv = [url, "--load-route", "/slow", "--duration", "1s", "--concurrency", "4"]
    argv += ["--threshold", "p95<100ms", "--threshold", "error_rate<1%"]
    code, data, err = _cli(argv, tmp_path, capsys)
    checks = _checks(data)
    assert checks["PRB060"]["status"] == "fail"
    assert checks["PRB060"]["evidence"].startswith("p95<100ms broken: p95 = 1")
    assert checks["PRB061"]["status"] == "pass"
    assert checks["PRB062"]["status"] == "not-applicable"  # no rps threshold
    assert code == 1  # a broken threshold is a gate of its own, without --fail-on
    assert "threshold broken: PRB060 p95<100ms broken" in err
    finding = next(f for f in data["findings"] if f["rule"] == "PRB060")
    assert finding["path"] == url + "/slow"


@pytest.mark.parametrize("mode", ["hang", "reset", "garbage"])
def test_load_against_a_misbehaving_server_is_bounded(
    mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with BadServer(mode) as url:
        started = time.monotonic()
        argv = [url, "--load", "--duration", "1s", "--rate", "20", "--timeout", "0.3"]
        code, data, _ = _cli(argv, tmp_path, capsys)
        elapsed = time.monotonic() - started
    checks = _checks(data)
    assert checks["PRB061"]["status"] == "fail"
    assert "error_rate = 100.00%" in checks["PRB061"]["evidence"]
    assert code == 1
    assert elapsed < 10, elapsed  # the checks give up after three failures; the load is 1 s


# -- emitted scripts -------------------------------------------------------------


def test_emit_writes_locust_and_k6_scripts_without_traffic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = BadServer("hang")
    with bad as url:
        locustfile, k6file = tmp_path / "locustfile.py", tmp_path / "load.js"
        common = ["--load-route", "/orders", "--rate", "2.5", "--concurrency", "3"]
        common += ["--duration", "30s", "--threshold", "p99<750ms", "--threshold", "rps>2"]
        assert main(["probe", url, *common, "--emit", "locust", str(locustfile)]) == 0
        assert main(["probe", url, *common, "--emit", "k6", str(k6file)]) == 0
    assert bad.accepted == 0  # writing a script sends nothing
    err = capsys.readouterr().err
    assert f"wrote locust script {locustfile}" in err
    tree = ast.parse(locustfile.read_text())
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == ["Probe"]
    text = locustfile.read_text()
    assert f"host = {url!r}" in text
    assert "constant_throughput(0.8333333333333334)" in text  # 2.5/s over 3 users
    assert "('p99<750ms', s.get_response_time_percentile(0.99) / 1000, '<', 0.75)" in text
    js = k6file.read_text()
    options = json.loads(js.split("export const options = ")[1].split(";\n")[0])
    assert options["thresholds"] == {
        "http_req_duration": ["p(99)<750"],
        "http_reqs": ["rate>2"],
    }
    assert options["scenarios"]["probe"] == {
        "executor": "constant-arrival-rate",
        "rate": 150,  # 2.5/s in whole starts a minute
        "timeUnit": "1m",
        "duration": "30s",
        "preAllocatedVUs": 3,
        "maxVUs": 3,
    }
    assert f'"{url}/orders"' in js
    assert "expectedStatuses({ min: 100, max: 499 })" in js


def test_emitted_locustfile_runs_and_its_thresholds_set_the_exit_code(
    demo_url: str, tmp_path: Path
) -> None:
    if importlib.util.find_spec("locust") is None:  # a test dependency (gevent): run, not import
        pytest.skip("locust is not installed (pip install locust)")
    results = {}
    for name, threshold in (("held", "p95<2s"), ("broken", "p95<0.001ms")):
        path = tmp_path / f"{name}.py"
        argv = ["probe", demo_url, "--load-route", "/orders", "--rate", "10"]
        argv += ["--concurrency", "2", "--threshold", threshold, "--emit", "locust", str(path)]
        assert main(argv) == 0
        run = subprocess.run(  # noqa: S603 - locust from this venv, on loopback
            [sys.executable, "-m", "locust", "-f", str(path), "--headless", "-u", "2", "-r", "2"]
            + ["--run-time", "2s", "--only-summary", "--loglevel", "WARNING"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            check=False,
        )
        results[name] = (run.returncode, run.stdout + run.stderr)
    assert results["held"][0] == 0, results["held"][1][-2000:]
    assert "threshold p95<2s: held" in results["held"][1]
    assert results["broken"][0] == 1, results["broken"][1][-2000:]
    assert "threshold p95<0.001ms: BROKEN" in results["broken"][1]


# -- a private Redis for the shutdown and fault modes -----------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path, db=8)
    redis.start()
    try:
        yield redis
    finally:
        redis.close()


def test_start_sigterm_under_load_loses_nothing(
    private_redis: PrivateRedis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = f"{sys.executable} -m buttress demo --port {port} --store-url {private_redis.url}"
    argv = [url, "--start", start, "--shutdown-timeout", "20s", "--burst", "10"]
    code, data, err = _cli([*argv, "--fail-on", "P1"], tmp_path, capsys)
    checks = _checks(data)
    for rid in ("PRB070", "PRB071", "PRB072"):
        assert checks[rid]["status"] == "pass", checks[rid]["evidence"]
    assert ", 0 lost," in checks["PRB070"]["evidence"]
    assert "after SIGTERM" in checks["PRB071"]["evidence"]
    assert "exited" in checks["PRB072"]["evidence"]
    assert checks["PRB001"]["status"] == "pass"  # the checks ran on the started service
    assert "shutdown: SIGTERM under load" in err
    assert code == 0
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        pytest.fail("the demo is still listening after the probe")


def test_start_of_a_command_that_exits_fails_every_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    argv = [url, "--start", f"{sys.executable} -c 'import sys; sys.exit(3)'"]
    code, data, _ = _cli([*argv, "--fail-on", "P0"], tmp_path, capsys)
    evidence = {c["evidence"] for c in data["checks"]}
    assert all(e.startswith("the service did not start:") for e in evidence)
    assert any("exited 3 before answering" in e for e in evidence)
    assert code == 1


def test_start_refuses_a_port_something_already_answers_on(
    demo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data, _ = _cli([demo_url, "--start", "sleep 30", "--fail-on", "P0"], tmp_path, capsys)
    evidence = data["checks"][0]["evidence"]
    assert evidence.startswith(
        f"the service did not start: something already answers at {demo_url}"
    )
    assert code == 1


def test_fault_readiness_503_liveness_200_then_both_recover(
    private_redis: PrivateRedis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PROBE_REDIS_URL": private_redis.url}
    app = ["-m", "uvicorn", "tests.probe.apps:redis_app", "--factory", "--port", str(port)]
    with served(
        [sys.executable, *app, "--log-level", "warning"], url + "/health/live", env=env, cwd=ROOT
    ):
        argv = [url, "--fault", " ".join(private_redis.stop_argv())]
        argv += ["--recover", " ".join(private_redis.start_argv()), "--fault-timeout", "10s"]
        argv += ["--burst", "5"]
        code, data, err = _cli(argv, tmp_path, capsys)
    checks = _checks(data)
    for rid in ("PRB080", "PRB081", "PRB082"):
        assert checks[rid]["status"] == "pass", checks[rid]["evidence"]
    assert "shutdown nosave' exited 0" in checks["PRB080"]["evidence"]
    assert "GET /health/ready -> 503 after" in checks["PRB080"]["evidence"]
    assert "GET /health/live -> 200 on all" in checks["PRB081"]["evidence"]
    assert "both 200 again" in checks["PRB082"]["evidence"]
    assert "fault: redis-cli" in err
    assert code == 0


def test_fault_against_the_demo_on_a_redis_store(
    private_redis: PrivateRedis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: the demo on a Redis store it needs; the store stopped, then started."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    demo = [sys.executable, "-m", "buttress", "demo", "--port", str(port)]
    with served([*demo, "--store-url", private_redis.url], url + "/health/ready", cwd=ROOT):
        argv = [url, "--fault", " ".join(private_redis.stop_argv())]
        argv += ["--recover", " ".join(private_redis.start_argv()), "--fault-timeout", "15s"]
        argv += ["--burst", "5"]
        code, data, _ = _cli(argv, tmp_path, capsys)
    checks = _checks(data)
    for rid in ("PRB080", "PRB081", "PRB082"):
        assert checks[rid]["status"] == "pass", checks[rid]["evidence"]
    assert code == 0


def test_a_fault_that_readiness_does_not_see_fails(
    flipping: tuple[str, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = flipping  # /health/ready does not exist: readiness never turns 503
    argv = [url, "--health", "/work", "--health", "/work", "--fault", "true", "--recover", "true"]
    code, data, _ = _cli([*argv, "--fault-timeout", "1s", "--burst", "3"], tmp_path, capsys)
    checks = _checks(data)
    assert checks["PRB080"]["status"] == "fail"
    assert "no 503 from GET /work within 1 s" in checks["PRB080"]["evidence"]
    assert checks["PRB081"]["status"] == "pass"
    assert checks["PRB082"]["status"] == "pass"
    assert code == 0  # no gate given


# -- the deploy gate -------------------------------------------------------------


def test_watch_runs_the_rollback_when_the_app_starts_failing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app, state = flipping_app()
    marker = tmp_path / "rolled-back"
    with ServerThread(app) as url:
        timer = threading.Timer(0.8, lambda: state.update(failing=True))
        timer.start()
        started = time.monotonic()
        argv = [url, "--watch", "8s", "--load-route", "/work", "--rate", "40"]
        argv += ["--window", "0.5s", "--interval", "0.2s", "--threshold", "error_rate<5%"]
        argv += ["--on-fail", f"touch {marker}"]
        code, data, err = _cli(argv, tmp_path, capsys)
        timer.cancel()
    assert time.monotonic() - started < 5  # it stopped at the breach, not after 8 s
    assert marker.exists()
    checks = _checks(data)
    assert set(checks) == {"PRB090", "PRB091"}
    assert checks["PRB090"]["status"] == "fail"
    assert "error_rate<5% broken: error_rate = " in checks["PRB090"]["evidence"]
    assert "of GET /work" in checks["PRB090"]["evidence"]
    assert checks["PRB091"]["status"] == "pass"
    assert "exited 0" in checks["PRB091"]["evidence"]
    assert code == 1
    assert "threshold broken: PRB090" in err


def test_watch_that_holds_runs_nothing(
    demo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "rolled-back"
    argv = [demo_url, "--watch", "1s", "--rate", "20", "--window", "1s", "--interval", "0.25s"]
    argv += ["--threshold", "error_rate<1%", "--threshold", "p95<1s"]
    code, data, _ = _cli([*argv, "--on-fail", f"touch {marker}"], tmp_path, capsys)
    checks = _checks(data)
    assert checks["PRB090"]["status"] == "pass", checks["PRB090"]["evidence"]
    assert "held for" in checks["PRB090"]["evidence"]
    assert "GET /health/ready" in checks["PRB090"]["evidence"]
    assert checks["PRB091"]["status"] == "not-applicable"
    assert not marker.exists()
    assert code == 0


class FakePrometheus:
    """Answers ``GET /api/v1/query`` as Prometheus does: the error ratio turns 0.4 after
    ``good`` queries; the other expressions answer an empty vector (no data)."""

    def __init__(self, good: int) -> None:
        self.queries: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                parts = urlsplit(self.path)
                expr = parse_qs(parts.query).get("query", [""])[0]
                outer.queries.append(expr)
                if parts.path != "/api/v1/query":
                    self.send_response(404)
                    self.end_headers()
                    return
                result: list[Any] = []
                if 'status=~"5.."' in expr:
                    errors = sum(1 for q in outer.queries if 'status=~"5.."' in q)
                    value = "0" if errors <= good else "0.4"
                    result = [{"metric": {}, "value": [time.time(), value]}]
                body = json.dumps(
                    {"status": "success", "data": {"resultType": "vector", "result": result}}
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakePrometheus:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_watch_from_prometheus_rolls_back_on_the_error_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "rolled-back"
    bad = BadServer("hang")
    with bad as service, FakePrometheus(good=3) as prometheus:
        argv = [service, "--watch", "10s", "--prometheus", prometheus.url]
        argv += ["--selector", 'job="orders"', "--interval", "0.1s", "--window", "2m"]
        argv += ["--threshold", "error_rate<1%", "--threshold", "p95<500ms"]
        code, data, _ = _cli([*argv, "--on-fail", f"touch {marker}"], tmp_path, capsys)
    assert bad.accepted == 0  # with --prometheus only Prometheus is asked
    assert marker.exists()
    checks = _checks(data)
    assert checks["PRB090"]["status"] == "fail"
    evidence = checks["PRB090"]["evidence"]
    assert "error_rate<1% broken: error_rate = 40.00%" in evidence
    assert f"of Prometheus {prometheus.url}" in evidence
    assert checks["PRB091"]["status"] == "pass"
    assert code == 1
    errors = [q for q in prometheus.queries if 'status=~"5.."' in q]
    assert len(errors) == 4  # three good judgements, then the breach
    assert errors[0] == (
        'sum(rate(buttress_http_requests_total{job="orders", status=~"5.."}[120s])) / '
        'sum(rate(buttress_http_requests_total{job="orders"}[120s]))'
    )
    assert any(q.startswith("histogram_quantile(0.95") for q in prometheus.queries)


def test_watch_against_a_hanging_service_is_bounded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with BadServer("hang") as url:
        started = time.monotonic()
        argv = [url, "--watch", "1.5s", "--rate", "10", "--window", "1s", "--interval", "0.25s"]
        argv += ["--timeout", "0.3", "--threshold", "error_rate<1%"]
        code, data, _ = _cli(argv, tmp_path, capsys)
        elapsed = time.monotonic() - started
    checks = _checks(data)
    assert checks["PRB090"]["status"] == "fail"
    assert "error_rate = 100.00%" in checks["PRB090"]["evidence"]
    assert checks["PRB091"]["evidence"] == "no --on-fail command given"
    assert code == 1
    assert elapsed < 5, elapsed


# -- parity ------------------------------------------------------------------------


def test_compare_reports_what_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quiet = {"configure_logging": False, "process_errors": False, "graceful_shutdown": False}
    a = configured_app(HardenSettings(**quiet))
    b = configured_app(HardenSettings(security_headers=False, **quiet))
    with ServerThread(a) as url_a, ServerThread(b) as url_b:
        code, data, _ = _cli(
            [url_a, "--compare", url_b, "--burst", "5", "--fail-on", "P0"], tmp_path, capsys
        )
        same_code, same, _ = _cli(
            [url_a, "--compare", url_a, "--burst", "5", "--fail-on", "P0"], tmp_path, capsys
        )
    assert data["target"] == f"{url_a} vs {url_b}"
    checks = _checks(data)
    assert checks["PRB095"]["status"] == "fail"
    assert "PRB020: A pass, B fail" in checks["PRB095"]["evidence"]
    assert checks["PRB020"]["status"] == "fail"  # the worse side
    assert checks["PRB020"]["evidence"].startswith("A pass: ")
    assert " | B fail: " in checks["PRB020"]["evidence"]
    assert checks["PRB097"]["status"] == "fail"
    assert "x-content-type-options only on A (nosniff)" in checks["PRB097"]["evidence"]
    assert checks["PRB096"]["status"] == "pass", checks["PRB096"]["evidence"]
    assert checks["PRB098"]["status"] == "pass", checks["PRB098"]["evidence"]
    assert checks["PRB099"]["status"] in ("pass", "warn")
    assert "median of" in checks["PRB099"]["evidence"]
    assert code == 0  # the differences are P1 and P2: no P0 gate trips
    same_checks = _checks(same)
    for rid in ("PRB095", "PRB096", "PRB097", "PRB098"):
        assert same_checks[rid]["status"] == "pass", same_checks[rid]["evidence"]
    assert same_code == 0


def test_compare_with_a_dead_environment_fails_without_traceback(
    demo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with BadServer("reset") as dead:
        code, data, _ = _cli(
            [demo_url, "--compare", dead, "--burst", "5", "--timeout", "0.5", "--fail-on", "P1"],
            tmp_path,
            capsys,
        )
    checks = _checks(data)
    assert checks["PRB001"]["status"] == "fail"
    assert checks["PRB001"]["evidence"].startswith("A pass: ")
    assert checks["PRB096"]["status"] == "fail"
    assert checks["PRB098"]["status"] == "fail"
    assert code == 1


# -- usage -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--watch", "5m"], "--watch needs at least one --threshold"),
        (["--recover", "true"], "--recover needs --fault"),
        (["--on-fail", "true"], "--on-fail needs --watch"),
        (["--prometheus", "http://127.0.0.1:9090"], "--prometheus needs --watch"),
        (["--threshold", "p95 < fast"], "expected METRIC<VALUE"),
        (["--load", "--concurrency", "0"], "concurrency 0: use 1 to 256"),
        (["--load", "--duration", "11m"], "use 0.2 to 600"),
        (["--compare", "http://example.com"], "not a loopback address: pass --allow-remote"),
        (["--watch", "1m", "--threshold", "p95<1s", "--compare", "http://127.0.0.1:1"], "alone"),
        (
            ["--watch", "1m", "--prometheus", "http://127.0.0.1:9", "--threshold", "max<1s"],
            "Prometheus histograms have no max",
        ),
        (["--load-route", "orders", "--load"], "a path starts with /"),
        (["--start", "'unclosed"], "No closing quotation"),
        (["--emit", "gatling", "x.scala"], "locust or k6"),
    ],
)
def test_mode_usage_errors_exit_2_before_any_traffic(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with BadServer("hang") as url:
        code = main(["probe", url, *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert says in err
    assert err.count("\n") == 1


def test_durations_are_parsed_with_units(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["probe", "http://127.0.0.1:1", "--watch", "soon"])
    assert "a duration like 10s, 5m, 1h or 500ms" in capsys.readouterr().err
