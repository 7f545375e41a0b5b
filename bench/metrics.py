#!/usr/bin/env python3
"""Cost of recording one HTTP request in Prometheus metrics: buttress vs prometheus-client.

One request = what `MetricsMiddleware` records: in flight + 1 when it arrives; when it is
over, in flight - 1, ``http_requests_total{method,route,status}`` + 1 and
``http_request_duration_seconds{method,route}`` observed (14 buckets, the defaults).
Every row does the same work around the recording (the method label from a dict, the
route template cached per route object, the recorder looked up per (route, method,
status)), so the rows differ only in where the numbers go:

  no-op recorder [floor]         the same calls, recording nothing
  buttress HttpMetrics           ``HttpMetrics.begin()`` + ``HttpMetrics.end(scope, status,
                                 elapsed)``, as the middleware calls them
  prom-client .labels()          prometheus-client's ``Counter``/``Histogram``/``Gauge``,
                                 ``.labels(...)`` looked up on every request
  prom-client cached children    the same objects, the labelled children cached per
                                 (route, method, status): the fast way to use them
  ... exemplars                  (single process) a trace id on the count and the bucket

Traffic: 50 routes, GET 80 % / POST 20 %, status 200 90 % / 404 5 % / 500 5 %, latencies
log-uniform from 0.5 ms to 2 s (every bucket gets samples); the same sequence for every row.

Modes, each in a fresh interpreter: ``single`` (one process, the default) and ``multi``
(``PROMETHEUS_MULTIPROC_DIR`` set to a new temporary directory before prometheus-client is
imported: every value lives in prometheus-client's memory-mapped files; buttress then uses
prometheus-client's own objects too). Per-request rows of one mode are measured in one
process, in an order rotated per repetition; medians reported, and "net" = minus the
floor of the same repetition.

Scrape: one ``/metrics`` exposition (``HttpMetrics.render()`` / prometheus-client's
``generate_latest``, the Prometheus text format and OpenMetrics) with 50 routes x
{GET, POST} x {200, 404, 500} recorded (300 counter series, 100 histograms). In
multiprocess mode each variant runs in its own process and directory (the collector reads
every file there).

Meter (``metrics_detail``): `buttress.telemetry.PrometheusMeter`, which records every call
of a named pipeline (``buttress_pipeline_calls_total{pipeline,outcome}`` + 1 and
``buttress_pipeline_call_duration_seconds{pipeline}`` observed), against the same series on
prometheus-client's ``Counter``/``Histogram`` with ``.labels(...)`` per call (what
``PrometheusMeter`` did before it kept plain numbers, per-thread shards summed at scrape):

  no-op meter [floor]            ``pipeline_call`` doing nothing
  buttress PrometheusMeter       ``meter.pipeline_call(pipeline, seconds, outcome)``
  prom-client .labels() per call the former implementation
  Pipeline unmetered [floor]     ``await Pipeline(Timeout(5), Retry(attempts=3),
                                 name=...).acall(fn)``, no meter added
  Pipeline + ...                 the same pipeline built with the meter added
                                 (`buttress.telemetry.add_meter`): two clock reads and one
                                 ``pipeline_call`` more per call

Calls: 10 pipeline names, outcome ``ok`` 95 % / ``upstream_timeout`` 5 %, durations
log-uniform from 0.1 ms to 2 s; the pipeline rows call an ``async def`` returning at once.
In multiprocess mode ``PrometheusMeter`` records through prometheus-client's objects too.

Run:  .venv/bin/python bench/metrics.py [--repeat 11] [--modes single,multi]
      [--parts requests,scrape,meter] [--markdown]
      (./dev bench metrics, or ``python bench/run.py metrics``)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import _common as cm
import prometheus_client as prom
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from buttress import telemetry
from buttress.asgi._metrics import DEFAULT_BUCKETS, HttpMetrics
from buttress.resilience import Pipeline, Retry, Timeout

DISTS = ["buttress", "prometheus-client"]
ROUTES = 50
FLOOR = "no-op recorder [floor]"
BUTTRESS = "buttress HttpMetrics"
PROM_LABELS = "prom-client .labels() per request"
PROM_CACHED = "prom-client cached children"
BUTTRESS_EX = "buttress HttpMetrics, exemplars"
PROM_CACHED_EX = "prom-client cached children, exemplars"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
METHOD_LABELS = {m: m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
HELP = "bench"


# --------------------------------------------------------------------------- the recorders


class NoOp:
    """The floor: the same calls and the same label work, nothing recorded."""

    def __init__(self, ns: str, exemplars: bool = False) -> None:
        self._children: dict[tuple[int, str, int], tuple[object, object]] = {}
        self.active = 0

    def begin(self) -> None:
        self.active += 1

    def end(self, scope: dict[str, Any], status: int, elapsed: float, trace: object = None) -> None:
        self.active -= 1
        route = scope.get("route")
        method = METHOD_LABELS.get(scope["method"], "OTHER")
        entry = self._children.get((id(route), method, status))
        if entry is None or entry[0] is not route:
            entry = self._children[(id(route), method, status)] = (route, None)

    def close(self) -> None:
        pass

    def render(self, accept: str) -> bytes:
        return b""


class Buttress:
    """buttress's `HttpMetrics`, called as `MetricsMiddleware` calls it."""

    def __init__(self, ns: str, exemplars: bool = False) -> None:
        self.registry = prom.CollectorRegistry()
        self.metrics = HttpMetrics(
            registry=self.registry, namespace=ns, exemplars=exemplars, resilience=False
        )
        self.begin = self.metrics.begin
        self.end = self.metrics.end

    def close(self) -> None:
        self.metrics.close()

    def render(self, accept: str) -> bytes:
        return self.metrics.render(accept)[0]


class Prom:
    """The same metrics on prometheus-client's own ``Counter``/``Histogram``/``Gauge``."""

    cached = True

    def __init__(self, ns: str, exemplars: bool = False) -> None:
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter(
            f"{ns}_http_requests", HELP, ["method", "route", "status"], registry=self.registry
        )
        self.duration = prom.Histogram(
            f"{ns}_http_request_duration_seconds",
            HELP,
            ["method", "route"],
            buckets=DEFAULT_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = prom.Gauge(
            f"{ns}_http_requests_in_flight",
            HELP,
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.exposition = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.exposition = prom.CollectorRegistry()
            MultiProcessCollector(self.exposition)  # type: ignore[no-untyped-call]
        self._choose_encoder = choose_encoder
        self._children: dict[tuple[int, str, int], tuple[object, Any, Any]] = {}
        self._templates: dict[int, tuple[object, str]] = {}
        self.begin = self.in_flight.inc
        self._dec = self.in_flight.dec
        if exemplars:
            self.end = self.end_exemplar  # type: ignore[method-assign]
        elif not self.cached:
            self.end = self.end_labels  # type: ignore[method-assign]

    def _template(self, route: object) -> str:
        cached = self._templates.get(id(route))
        if cached is None or cached[0] is not route:
            cached = self._templates[id(route)] = (route, route.path_format)  # type: ignore[attr-defined]
        return cached[1]

    def _resolve(self, route: object, method: str, status: int) -> tuple[object, Any, Any]:
        template = self._template(route)
        entry = (
            route,
            self.requests.labels(method, template, str(status)),
            self.duration.labels(method, template),
        )
        self._children[(id(route), method, status)] = entry
        return entry

    def end(self, scope: dict[str, Any], status: int, elapsed: float, trace: object = None) -> None:
        self._dec()
        route = scope.get("route")
        method = METHOD_LABELS.get(scope["method"], "OTHER")
        entry = self._children.get((id(route), method, status))
        if entry is None or entry[0] is not route:
            entry = self._resolve(route, method, status)
        entry[1].inc()
        entry[2].observe(elapsed)

    def end_labels(
        self, scope: dict[str, Any], status: int, elapsed: float, trace: object = None
    ) -> None:
        self._dec()
        route = scope.get("route")
        method = METHOD_LABELS.get(scope["method"], "OTHER")
        template = self._template(route)
        self.requests.labels(method, template, str(status)).inc()
        self.duration.labels(method, template).observe(elapsed)

    def end_exemplar(
        self, scope: dict[str, Any], status: int, elapsed: float, trace: object = None
    ) -> None:
        self._dec()
        route = scope.get("route")
        method = METHOD_LABELS.get(scope["method"], "OTHER")
        entry = self._children.get((id(route), method, status))
        if entry is None or entry[0] is not route:
            entry = self._resolve(route, method, status)
        exemplar = {"trace_id": trace}
        entry[1].inc(1, exemplar)
        entry[2].observe(elapsed, exemplar)

    def close(self) -> None:
        for collector in (self.requests, self.duration, self.in_flight):
            self.registry.unregister(collector)

    def render(self, accept: str) -> bytes:
        encoder, _ = self._choose_encoder(accept)
        return bytes(encoder(self.exposition))


class PromLabels(Prom):
    cached = False


# (name, class, exemplars, namespace: distinct per row, the multiprocess files are shared)
SINGLE = [
    (FLOOR, NoOp, False, "floor"),
    (BUTTRESS, Buttress, False, "bt"),
    (PROM_LABELS, PromLabels, False, "pl"),
    (PROM_CACHED, Prom, False, "pc"),
    (BUTTRESS_EX, Buttress, True, "btx"),
    (PROM_CACHED_EX, Prom, True, "pcx"),
]
MULTI = [row for row in SINGLE if not row[2]]
SCRAPE = [(BUTTRESS, Buttress, "bt"), (PROM_CACHED, Prom, "pc")]
FORMATS = {"text": "", "openmetrics": "application/openmetrics-text"}


# --------------------------------------------------------------------------- the traffic


def traffic(n: int, seed: int = 9) -> list[tuple[dict[str, Any], int, float]]:
    """n requests: (scope, status, elapsed), the same sequence for every row."""
    rnd = random.Random(seed)
    routes = [SimpleNamespace(path_format=f"/api/r{i}/{{id}}") for i in range(ROUTES)]
    scopes = {
        (route_id, method): {"type": "http", "method": method, "route": routes[route_id]}
        for route_id in range(ROUTES)
        for method in ("GET", "POST")
    }
    out = []
    for _ in range(n):
        method = "GET" if rnd.random() < 0.8 else "POST"
        roll = rnd.random()
        status = 200 if roll < 0.9 else 404 if roll < 0.95 else 500
        elapsed = 0.0005 * (4000.0 ** rnd.random())  # log-uniform, 0.5 ms .. 2 s
        out.append((scopes[rnd.randrange(ROUTES), method], status, elapsed))
    return out


def every_label_set() -> list[tuple[dict[str, Any], int, float]]:
    """One request per (route, method, status): 300 series for the scrape."""
    routes = [SimpleNamespace(path_format=f"/api/r{i}/{{id}}") for i in range(ROUTES)]
    return [
        ({"type": "http", "method": method, "route": route}, status, 0.001 * (1 + i % 500))
        for i, (route, method, status) in enumerate(
            (r, m, s) for r in routes for m in ("GET", "POST") for s in (200, 404, 500)
        )
    ]


def drive(recorder: Any, work: Iterable[tuple[dict[str, Any], int, float]], trace: object) -> int:
    begin = recorder.begin
    end = recorder.end
    t0 = time.perf_counter_ns()
    for scope, status, elapsed in work:
        begin()
        end(scope, status, elapsed, trace)
    return time.perf_counter_ns() - t0


def total_requests(recorder: Any) -> float:
    """Sum of the request counter in the registry (single process only)."""
    registry = recorder.registry
    return float(
        sum(
            s.value
            for m in registry.collect()
            if m.name.endswith("_http_requests")
            for s in m.samples
            if s.name.endswith("_total")
        )
    )


# --------------------------------------------------------------------------- the meters

METER_FLOOR = "no-op meter [floor]"
METER_BUTTRESS = "buttress PrometheusMeter"
METER_PROM = "prom-client .labels() per call"
PIPE_FLOOR = "Pipeline unmetered [floor]"
PIPE_BUTTRESS = "Pipeline + buttress PrometheusMeter"
PIPE_PROM = "Pipeline + prom-client .labels() per call"
PIPELINES = [f"dep{i}" for i in range(10)]


class NoOpMeter:
    def __init__(self, prefix: str) -> None:
        pass

    def pipeline_call(self, pipeline: str, seconds: float, outcome: str) -> None:
        pass

    def store_call(self, system: str, operation: str, seconds: float, outcome: str) -> None:
        pass

    def idempotency(self, outcome: str) -> None:
        pass

    def total(self) -> float:
        return float("nan")

    def unregister(self) -> None:
        pass


class ButtressMeter:
    """`buttress.telemetry.PrometheusMeter` on its own registry."""

    def __init__(self, prefix: str) -> None:
        self.registry = prom.CollectorRegistry()
        self.meter = telemetry.PrometheusMeter(registry=self.registry, prefix=prefix)
        self.prefix = prefix
        self.pipeline_call = self.meter.pipeline_call
        self.store_call = self.meter.store_call
        self.idempotency = self.meter.idempotency

    def total(self) -> float:
        return sum(
            s.value
            for m in self.registry.collect()
            if m.name == f"{self.prefix}_pipeline_calls"
            for s in m.samples
            if s.name.endswith("_total")
        )

    def unregister(self) -> None:
        self.meter.unregister()


class PromClientMeter(ButtressMeter):
    """The former `PrometheusMeter`: prometheus-client's objects, ``.labels()`` per call."""

    def __init__(self, prefix: str) -> None:
        self.registry = r = prom.CollectorRegistry()
        self.prefix = p = prefix
        self.calls = prom.Counter(f"{p}_pipeline_calls", HELP, ["pipeline", "outcome"], registry=r)
        self.duration = prom.Histogram(
            f"{p}_pipeline_call_duration_seconds", HELP, ["pipeline"], registry=r
        )
        self.store_calls = prom.Counter(
            f"{p}_store_calls", HELP, ["system", "operation", "outcome"], registry=r
        )
        self.store_duration = prom.Histogram(
            f"{p}_store_call_duration_seconds", HELP, ["system", "operation"], registry=r
        )
        self.idempotent = prom.Counter(f"{p}_idempotency_requests", HELP, ["outcome"], registry=r)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.registry = prom.CollectorRegistry()
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]

    def pipeline_call(self, pipeline: str, seconds: float, outcome: str) -> None:
        self.calls.labels(pipeline, outcome).inc()
        self.duration.labels(pipeline).observe(seconds)

    def store_call(self, system: str, operation: str, seconds: float, outcome: str) -> None:
        self.store_calls.labels(system, operation, outcome).inc()
        self.store_duration.labels(system, operation).observe(seconds)

    def idempotency(self, outcome: str) -> None:
        self.idempotent.labels(outcome).inc()

    def unregister(self) -> None:
        pass  # a registry of its own, dropped


def meter_calls(n: int, seed: int = 11) -> list[tuple[str, float, str]]:
    """n meter calls: (pipeline, seconds, outcome), the same sequence for every row."""
    rnd = random.Random(seed)
    return [
        (
            rnd.choice(PIPELINES),
            0.0001 * (20000.0 ** rnd.random()),  # log-uniform, 0.1 ms .. 2 s
            "ok" if rnd.random() < 0.95 else "upstream_timeout",
        )
        for _ in range(n)
    ]


# (name, meter class or None, through a pipeline, prefix: distinct per row, see SINGLE)
METER_ROWS = [
    (METER_FLOOR, NoOpMeter, False, "mfloor"),
    (METER_BUTTRESS, ButtressMeter, False, "mbt"),
    (METER_PROM, PromClientMeter, False, "mpc"),
    (PIPE_FLOOR, None, True, "pfloor"),
    (PIPE_BUTTRESS, ButtressMeter, True, "pbt"),
    (PIPE_PROM, PromClientMeter, True, "ppc"),
]


def measure_meter(args: argparse.Namespace, check: bool) -> dict[str, Any]:
    calls = meter_calls(args.number)
    warm = meter_calls(args.warmup, seed=2)

    async def answer() -> int:
        return 1

    async def through(pipe: Pipeline, n: int) -> int:
        acall = pipe.acall
        t0 = time.perf_counter_ns()
        for _ in range(n):
            await acall(answer)
        return time.perf_counter_ns() - t0

    def once(row: tuple[str, Any, bool, str], n: int) -> float:
        name, cls, piped, prefix = row
        meter = cls(prefix) if cls is not None else None
        try:
            if piped:
                if meter is not None:
                    telemetry.add_meter(meter)
                # built (on its first call) with the meter added: measured; without: not
                pipe = Pipeline(Timeout(5), Retry(attempts=3), name="bench-dep")
                asyncio.run(through(pipe, len(warm)))
                ns_total = asyncio.run(through(pipe, n))
                expected = n + len(warm)
            else:
                assert meter is not None
                record = meter.pipeline_call
                for pipeline, seconds, outcome in warm:
                    record(pipeline, seconds, outcome)
                t0 = time.perf_counter_ns()
                for pipeline, seconds, outcome in islice(calls, n):
                    record(pipeline, seconds, outcome)
                ns_total = time.perf_counter_ns() - t0
                expected = n + len(warm)
            if check and meter is not None and not isinstance(meter, NoOpMeter):
                got = meter.total()
                if got != expected:
                    raise AssertionError(f"{name}: counted {got}, expected {expected}")
        finally:
            if meter is not None:
                telemetry.remove_meter(meter)
                meter.unregister()
        return ns_total / n

    rows = METER_ROWS
    numbers = {}
    for row in rows:
        est = once(row, args.min_number)
        fit = int(args.max_seconds * 1e9 / max(est, 1.0))
        numbers[row[0]] = max(args.min_number, min(args.number, fit // 1000 * 1000))
    samples: dict[str, list[float]] = {row[0]: [] for row in rows}
    for rep in range(args.repeat):
        k = rep % len(rows)
        for row in rows[k:] + rows[:k]:
            samples[row[0]].append(once(row, numbers[row[0]]))
        print(f"  rep {rep + 1}/{args.repeat} done", file=sys.stderr, flush=True)
    return {"numbers": numbers, "samples": samples}


def meter_rows(mode: str, res: dict[str, Any]) -> tuple[list[list[Any]], dict[str, Any]]:
    samples = res["samples"]
    rows, out = [], {}
    for name, xs in samples.items():
        floor = samples[PIPE_FLOOR if name.startswith("Pipeline") else METER_FLOOR]
        med = cm.median(xs) / 1000
        net = cm.paired_median(xs, floor, ratio=False) / 1000
        rows.append([mode, name, res["numbers"][name], med, net])
        out[name] = {
            "number": res["numbers"][name],
            "us_per_call_median": med,
            "net_us": net,
            "samples_ns": [round(x, 1) for x in xs],
        }
    return rows, out


# --------------------------------------------------------------------------- a child: one mode


def measure_requests(
    rows: list[tuple[str, Any, bool, str]], args: argparse.Namespace, check: bool
) -> dict[str, Any]:
    work = traffic(args.number)
    warm = traffic(args.warmup, seed=1)

    def once(row: tuple[str, Any, bool, str], n: int) -> float:
        name, cls, exemplars, ns = row
        recorder = cls(ns, exemplars)
        try:
            trace = TRACE if exemplars else None
            drive(recorder, warm, trace)  # first sight of every label set: the slow paths
            ns_total = drive(recorder, islice(work, n), trace)
            if check and cls is not NoOp:
                got = total_requests(recorder)
                if got != n + len(warm):
                    raise AssertionError(f"{name}: counted {got}, expected {n + len(warm)}")
        finally:
            recorder.close()
        return ns_total / n

    numbers = {}
    for row in rows:  # size each measurement from one short trial (also a warm-up)
        est = once(row, args.min_number)
        fit = int(args.max_seconds * 1e9 / max(est, 1.0))
        numbers[row[0]] = max(args.min_number, min(args.number, fit // 1000 * 1000))
    samples: dict[str, list[float]] = {row[0]: [] for row in rows}
    for rep in range(args.repeat):
        k = rep % len(rows)
        for row in rows[k:] + rows[:k]:
            samples[row[0]].append(once(row, numbers[row[0]]))
        print(f"  rep {rep + 1}/{args.repeat} done", file=sys.stderr, flush=True)
    return {"numbers": numbers, "samples": samples}


def measure_scrapes(rows: list[tuple[str, Any, str]], args: argparse.Namespace) -> dict[str, Any]:
    recorders = {}
    for name, cls, ns in rows:
        recorder = cls(ns)
        drive(recorder, every_label_set(), None)
        for _ in range(3):
            drive(recorder, traffic(2000), None)
        recorders[name] = recorder
    units = [(name, fmt) for name, _, _ in rows for fmt in FORMATS]
    sizes = {f"{name} | {fmt}": len(recorders[name].render(FORMATS[fmt])) for name, fmt in units}
    samples: dict[str, list[float]] = {f"{name} | {fmt}": [] for name, fmt in units}
    for rep in range(args.repeat):
        k = rep % len(units)
        for name, fmt in units[k:] + units[:k]:
            render = recorders[name].render
            accept = FORMATS[fmt]
            t0 = time.perf_counter_ns()
            for _ in range(args.scrapes):
                render(accept)
            samples[f"{name} | {fmt}"].append((time.perf_counter_ns() - t0) / args.scrapes)
    for recorder in recorders.values():
        recorder.close()
    return {"samples": samples, "bytes": sizes}


def child(args: argparse.Namespace) -> None:
    gc.enable()
    multi = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    out: dict[str, Any] = {}
    if args.child == "meter":
        out["meter"] = measure_meter(args, check=not multi)
    elif args.child == "requests":
        rows = MULTI if multi else SINGLE
        if args.only:
            keep = [s.lower() for s in args.only]
            rows = [r for r in rows if r[0] == FLOOR or any(s in r[0].lower() for s in keep)]
        out["requests"] = measure_requests(rows, args, check=not multi)
    else:
        scrape = [r for r in SCRAPE if r[0] == args.child.removeprefix("scrape:")] or SCRAPE
        out["scrapes"] = measure_scrapes(scrape, args)
    Path(args.child_out).write_text(json.dumps(out))


# --------------------------------------------------------------------------- the parent


def run_child(kind: str, mode: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        if mode == "multi":
            mp_dir = Path(tmp) / "prom"
            mp_dir.mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(mp_dir)
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, __file__, "--child", kind, "--child-out", str(out), *extra]
        print(f"  {mode}: {kind}", flush=True)
        subprocess.run(cmd, env=env, check=True)
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def child_args(args: argparse.Namespace) -> list[str]:
    extra = [
        "--repeat", str(args.repeat), "--number", str(args.number),
        "--min-number", str(args.min_number), "--max-seconds", str(args.max_seconds),
        "--warmup", str(args.warmup), "--scrapes", str(args.scrapes), "--no-pin",
    ]  # fmt: skip
    for only in args.only:
        extra += ["--only", only]
    return extra


def request_rows(mode: str, res: dict[str, Any]) -> tuple[list[list[Any]], dict[str, Any]]:
    samples = res["samples"]
    floor = samples[FLOOR]
    med = {name: cm.median(xs) / 1000 for name, xs in samples.items()}
    net = {name: cm.paired_median(xs, floor, ratio=False) / 1000 for name, xs in samples.items()}
    rows, out = [], {}
    for name, xs in samples.items():
        ref = BUTTRESS_EX if "exemplars" in name else BUTTRESS
        ratio = (
            cm.paired_median(
                [x - f for x, f in zip(xs, floor, strict=True)],
                [x - f for x, f in zip(samples[ref], floor, strict=True)],
                ratio=True,
            )
            if ref in samples and name != FLOOR
            else float("nan")
        )
        diff = net[name] - net[ref] if ref in net and name != FLOOR else float("nan")
        rows.append([mode, name, res["numbers"][name], med[name], net[name], diff, ratio])
        out[name] = {
            "number": res["numbers"][name],
            "us_per_request_median": med[name],
            "net_us": net[name],
            "net_us_minus_buttress": diff,
            "net_x_buttress": ratio,
            "samples_ns": [round(x, 1) for x in xs],
        }
    return rows, out


def scrape_rows(mode: str, res: dict[str, Any]) -> tuple[list[list[Any]], dict[str, Any]]:
    rows, out = [], {}
    samples = res["samples"]
    for key, xs in samples.items():
        name, fmt = key.split(" | ")
        ref = samples.get(f"{BUTTRESS} | {fmt}")
        ratio = cm.median(xs) / cm.median(ref) if ref else float("nan")
        ms = cm.median(xs) / 1e6
        rows.append([mode, name, fmt, ms * 1000, res["bytes"][key], ratio])
        out[key] = {"us_median": ms * 1000, "bytes": res["bytes"][key], "x_buttress": ratio}
    return rows, out


def main() -> None:
    ap = cm.parser(
        __doc__,
        name="metrics",
        number=200_000,
        min_number=20_000,
        max_seconds=0.2,
        warmup=2_000,
        unit="requests",
    )
    ap.add_argument("--modes", default="single,multi", help="single,multi (both)")
    ap.add_argument(
        "--parts", default="requests,scrape,meter", help="requests,scrape,meter (all three)"
    )
    ap.add_argument("--scrapes", type=int, default=20, help="scrapes per measurement (20)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in ("single", "multi") for m in modes):
        ap.error("--modes takes single and/or multi")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"requests", "scrape", "meter"}:
        ap.error("--parts takes requests, scrape and/or meter")
    env = cm.start("metrics", args)
    t0 = time.time()
    extra = child_args(args)
    req_rows, scr_rows, met_rows, results = [], [], [], {}
    for mode in modes:
        if "requests" in parts:
            res = run_child("requests", mode, args, extra)
            rows, out = request_rows(mode, res["requests"])
            req_rows += rows
            results[f"{mode} requests"] = out
        if "scrape" in parts:
            scrapes: dict[str, Any] = {"samples": {}, "bytes": {}}
            kinds = (
                ["scrape:all"] if mode == "single" else [f"scrape:{name}" for name, *_ in SCRAPE]
            )
            for kind in kinds:  # multiprocess: one directory per variant
                part = run_child(kind, mode, args, extra)["scrapes"]
                scrapes["samples"].update(part["samples"])
                scrapes["bytes"].update(part["bytes"])
            rows, out = scrape_rows(mode, scrapes)
            scr_rows += rows
            results[f"{mode} scrape"] = out
        if "meter" in parts:
            rows, out = meter_rows(mode, run_child("meter", mode, args, extra)["meter"])
            met_rows += rows
            results[f"{mode} meter"] = out
    wall = time.time() - t0
    env["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    vers = cm.versions(DISTS)

    h1 = ["mode", "case", "requests", "µs/req", "net µs", "net - buttress", "net x buttress"]
    h2 = ["mode", "case", "format", f"µs/scrape ({ROUTES} routes)", "bytes", "x buttress"]
    h3 = ["mode", "case", "calls", "µs/call", "net µs"]
    if req_rows:
        print(
            f"\nRecording one request (count + histogram + in flight), median of {args.repeat} "
            "(net = minus the no-op floor of the same repetition)"
        )
        print(cm.table(h1, req_rows, markdown=args.markdown))
    if scr_rows:
        print(f"\nOne /metrics scrape, {ROUTES} routes x 2 methods x 3 statuses")
        print(cm.table(h2, scr_rows, markdown=args.markdown))
    if met_rows:
        print(
            f"\nMetering one pipeline call (count + histogram), median of {args.repeat} "
            "(net = minus the floor of its group in the same repetition: the no-op meter, "
            "or the unmetered pipeline)"
        )
        print(cm.table(h3, met_rows, markdown=args.markdown))
    print("\nversions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    payload = {
        "benchmark": "metrics",
        "env": env,
        "params": {
            "repeat": args.repeat,
            "number_max": args.number,
            "number_min": args.min_number,
            "max_seconds": args.max_seconds,
            "warmup": args.warmup,
            "scrapes": args.scrapes,
            "routes": ROUTES,
            "modes": modes,
            "parts": sorted(parts),
            "gc": "enabled",
            "pinned_cpus": env["pinned_cpus"],
        },
        "wall_s": round(wall, 1),
        "versions": vers,
        "results": results,
        "tables": {
            "requests": cm.table(h1, req_rows, markdown=True),
            "scrape": cm.table(h2, scr_rows, markdown=True),
            "meter": cm.table(h3, met_rows, markdown=True),
        },
    }
    path = cm.write_json(args.out, payload)
    print(f"\nwrote {path} (wall {wall:.0f} s)")


if __name__ == "__main__":
    main()
