"""The ``buttress`` command line.

``buttress demo`` serves the demo orders API (FastAPI, hardened by buttress) on
127.0.0.1:8000; ``buttress demo --selfcheck`` starts it, exercises every feature over HTTP
on loopback, prints what it verified and exits non-zero if anything failed.
``buttress resilience-demo`` calls a deliberately flaky local dependency naively and through
a `Pipeline`, side by side. ``python -m buttress`` is the same command line; ``--help``
describes each command, with examples.

A port already in use or a store that does not answer (``--store-url``, else
``$BUTTRESS_STORE_URL``) is found before anything starts and ends the command with one line
on stderr and exit status 2 (passwords in URLs are masked).

The demo's uvicorn options live in `demo_server_options` (the tests serve with the same):
no ``Server`` header, no access log of uvicorn's (buttress writes its own), and no proxy
headers: uvicorn's default would take the client address from ``X-Forwarded-For`` for any
request arriving through loopback, and the demo trusts no proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from buttress import __version__
from buttress._urls import masked

__all__ = ["demo_server_options", "main"]


def demo_server_options(host: str, port: int, workers: int = 1) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` or ``uvicorn.Config`` that serve the demo.

    Example::

        uvicorn.run("buttress.demo.app:create_app", factory=True,
                    **demo_server_options("127.0.0.1", 8000))
    """
    return {
        "host": host,
        "port": port,
        "workers": workers,
        "access_log": False,  # buttress writes the access log
        "server_header": False,  # added by the server after the app: only it can drop it
        # uvicorn's default (proxy_headers=True, forwarded_allow_ips 127.0.0.1 and ::1)
        # takes the client address from X-Forwarded-For for anything reaching the port
        # through loopback (ssh -L, a TCP proxy, a sidecar): one forged header, one fresh
        # rate-limit budget. The demo trusts no proxy, so no forwarding header is read.
        "proxy_headers": False,
        "forwarded_allow_ips": "",
        "log_level": "warning",
    }


def _serve_demo(args: argparse.Namespace) -> int:
    try:
        import rich  # noqa: PLC0415, F401 - the demo extra
        import uvicorn  # noqa: PLC0415
    except ImportError as exc:
        print(
            f"buttress demo needs the demo extra: pip install 'buttress[demo]' ({exc})",
            file=sys.stderr,
        )
        return 2
    console = _console(plain=args.selfcheck)
    if not 1 <= args.workers <= 16:
        return _fail(f"--workers {args.workers}: use 1 to 16")
    port_given = args.port is not None
    port = args.port if port_given else 8000
    if not 1 <= port <= 65535:
        return _fail(f"--port {port}: use 1 to 65535")
    host = "127.0.0.1" if args.selfcheck else args.host  # the self-check stays on loopback
    store_url = args.store_url or os.environ.get("BUTTRESS_STORE_URL")
    problem = _store_problem(store_url, "--store-url" if args.store_url else "BUTTRESS_STORE_URL")
    if problem is None and (port_given or not args.selfcheck):
        problem = _port_problem(host, port)
    if problem is not None:
        return _fail(problem)
    if args.selfcheck:
        from buttress.demo.selfcheck import run_selfcheck  # noqa: PLC0415

        console.print(f"[bold]buttress {__version__}[/bold] demo self-check (127.0.0.1 only)\n")
        checks = run_selfcheck(
            lambda c: console.print(
                f"  {'PASS' if c.ok else 'FAIL'}  {c.feature}: {c.evidence}", markup=False
            ),
            store_url=store_url,
            workers=max(args.workers, 2),
            port=args.port,
        )
        failed = sum(1 for c in checks if not c.ok)
        console.print(f"\nselfcheck: {len(checks) - failed} passed, {failed} failed")
        return 1 if failed else 0
    os.environ.update(_shared_state_env(args.workers, args.store_url))  # workers inherit it
    _print_banner(console, args.host, port, args.workers)
    uvicorn.run(
        "buttress.demo.app:create_app",
        factory=True,
        **demo_server_options(args.host, port, args.workers),
    )
    return 0


def _console(*, plain: bool) -> Any:
    """The demo's rich console: no wrapping ever (commands are pasted), no colours if plain."""
    from rich.console import Console  # noqa: PLC0415 - the demo extra

    return Console(no_color=plain, highlight=False, soft_wrap=True)


def _print_banner(console: Any, host: str, port: int, workers: int) -> None:
    """What the demo serves and how to try it: each command whole, on a line of its own.

    Lines are never wrapped (a curl command cut in two does not paste), whatever the width
    of the terminal, or when the output is not a terminal at all.
    """
    base = f"http://{host}:{port}"
    store = masked(os.environ.get("BUTTRESS_STORE_URL") or "memory://")
    console.print(
        f"[bold]buttress {__version__}[/bold] demo: the orders API on {base} "
        f"({workers} worker{'s' if workers > 1 else ''}, store {store})\n",
        soft_wrap=True,
    )
    lines = [
        "# the orders",
        f"curl -i {base}/orders",
        "# create one; run it twice: still one order (the Idempotency-Key)",
        f"curl -i -X POST {base}/orders -H 'content-type: application/json' "
        """-H 'Idempotency-Key: order-1' -d '{"sku": "abc", "quantity": 2}'""",
        "# a flaky dependency behind a pipeline (rate limited: 25 at once, then 60 a minute)",
        f"curl -i {base}/price/abc",
        "# an unhandled error: problem+json, no internals",
        f"curl -i {base}/boom",
        "# the 5 s request deadline",
        f"curl -i '{base}/slow?seconds=9'",
        "# the interactive API documentation, in a browser",
        f"{base}/docs",
    ]
    for line in lines:
        console.print(f"  {line}", markup=False, soft_wrap=True)
    console.print("Ctrl-C to stop.", soft_wrap=True)


def _fail(message: str) -> int:
    """One line on stderr, exit status 2 (a usage or environment problem, not a crash)."""
    print(f"buttress demo: {message}", file=sys.stderr)
    return 2


def _port_problem(host: str, port: int) -> str | None:
    """Why the demo could not listen on ``host:port``, in a sentence; None when it can."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        return f"--host {host}: not an address to listen on ({exc})"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            return f"cannot listen on {host}:{port} ({reason}); choose another with --port"
    return None


def _store_problem(url: str | None, source: str) -> str | None:
    """Why the store at ``url`` cannot serve the demo (bad URL, no answer), or None."""
    if not url:
        return None
    from buttress.errors import ButtressError  # noqa: PLC0415
    from buttress.stores import open_store  # noqa: PLC0415

    with _quiet("psycopg", "redis"):  # the drivers' own retry warnings: the reason is below
        try:
            store = open_store(url)
            try:
                store.ping()
            finally:
                store.close()
        except ButtressError as exc:
            return f"{source} {masked(url)}: {exc}".replace("\n", " ")
    return None


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    before = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, was in zip(loggers, before, strict=True):
            logger.disabled = was


def _shared_state_env(workers: int, store_url: str | None) -> dict[str, str]:
    """Environment for the demo's workers: one orders database and one store for all."""
    env: dict[str, str] = {}
    if store_url:
        env["BUTTRESS_STORE_URL"] = store_url
    if workers > 1:
        folder = tempfile.mkdtemp(prefix="buttress-demo-")
        if not os.environ.get("BUTTRESS_DEMO_DB"):
            env["BUTTRESS_DEMO_DB"] = os.path.join(folder, "orders.sqlite3")
        if not (store_url or os.environ.get("BUTTRESS_STORE_URL")):
            env["BUTTRESS_STORE_URL"] = f"sqlite:///{os.path.join(folder, 'buttress.db')}"
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # one /metrics for all workers
            metrics_dir = os.path.join(folder, "prometheus")
            os.mkdir(metrics_dir)
            env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    return env


def _demo(args: argparse.Namespace) -> int:
    try:
        from rich.console import Console  # noqa: PLC0415 - the demo extra
        from rich.table import Table  # noqa: PLC0415

        from buttress.demo.flaky import run_demo  # noqa: PLC0415 - needs httpx
    except ImportError as exc:
        print(
            f"buttress demo needs the demo extra: pip install 'buttress[demo]' ({exc})",
            file=sys.stderr,
        )
        return 2
    console = Console(no_color=args.selfcheck, highlight=False)
    console.print(
        f"[bold]buttress {__version__}[/bold]: a local price service fails 30 % of requests "
        "with 503, answers 5 % after 0.6 s, then goes down and comes back.\n"
        f"Sending {args.requests} requests per phase ({args.concurrency} at a time), "
        "to 127.0.0.1 only...\n"
    )
    result = asyncio.run(
        run_demo(requests=args.requests, seed=args.seed, concurrency=args.concurrency)
    )
    table = Table(title="What the caller saw")
    for column in ("phase", "requests", "ok", "fallback", "errors", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase in result.phases:
        table.add_row(
            phase.name,
            str(phase.total),
            str(phase.ok),
            str(phase.fallback),
            f"[red]{phase.errors}[/red]" if phase.errors else "0",
            f"{phase.percentile(0.5):.1f}",
            f"{phase.percentile(0.99):.1f}",
        )
    console.print(table)
    events = ", ".join(f"{k}={v}" for k, v in sorted(result.events.items())) or "none"
    console.print(f"pipeline events: {events}")
    console.print(f"breaker transitions: {' | '.join(result.transitions) or 'none'}")
    console.print(f"requests that reached the dependency: {result.dependency_requests}")
    naive, resilient, down, back = result.phases
    checks = [
        ("the pipeline hides most failures", resilient.errors <= max(1, resilient.total // 50)),
        ("the pipeline beats the naive client", resilient.errors < naive.errors),
        (
            "every call bounded by the 2 s total timeout",
            max(resilient.latencies, default=0.0) < 2.5,
        ),
        ("the breaker opens when the dependency is down", "open" in " ".join(result.transitions)),
        ("callers get the fallback while it is down", down.fallback > 0),
        (
            "the breaker closes when it comes back",
            result.transitions[-1:] == ["half_open -> closed"],
        ),
        ("after recovery calls succeed again", back.ok >= back.total * 0.3),
    ]
    console.print()
    failed = 0
    for label, ok in checks:
        failed += not ok
        console.print(f"  {'[green]PASS[/green]' if ok else '[red]FAIL[/red]'}  {label}")
    if args.selfcheck:
        console.print(f"\nselfcheck: {len(checks) - failed} passed, {failed} failed")
        return 1 if failed else 0
    return 0


_MAIN_EPILOG = """\
examples:
  buttress demo                          serve the demo on http://127.0.0.1:8000
  buttress demo --selfcheck              verify every feature over HTTP, exit 1 on failure
  buttress resilience-demo               the same flaky calls with and without a Pipeline
  buttress audit .                       audit a service's source: scorecard and fixes
  buttress demo --help                   the options of one command
  python -m buttress ...                 the same, without the console script

The demo needs the demo extra: pip install 'buttress[demo]' (from a checkout:
pip install -e '.[demo]').
"""

_DEMO_DESCRIPTION = """\
Serve the demo orders API, a FastAPI app hardened by buttress: request ids, security
headers, problem+json errors, health checks, Prometheus metrics, rate limits, an
Idempotency-Key on POST /orders, load shedding, a request deadline and graceful
shutdown. A banner lists curl commands to try. Loopback only unless --host says otherwise.

With --selfcheck it starts the service in its own process on loopback, checks every
feature over real HTTP (bounded: a few hundred requests, about a minute), then runs it
again with several workers sharing one store, and exits 1 if anything failed.
"""

_DEMO_EPILOG = """\
examples:
  buttress demo
  buttress demo --port 8080
  buttress demo --workers 4                       (the workers share a SQLite file)
  buttress demo --workers 4 --store-url redis://127.0.0.1:6379/0
  buttress demo --selfcheck
  buttress demo --selfcheck --port 8099 --store-url postgresql://user@127.0.0.1/app

A port already in use, or a store that does not answer, ends with one line and exit
status 2 before anything starts.
"""

_RESILIENCE_DESCRIPTION = """\
Start a deliberately flaky price service on loopback (30 % of requests fail with 503, 5 %
answer after 0.6 s, then it goes down and comes back) and call it in four phases: naively,
through a buttress Pipeline (retries, timeout, circuit breaker, fallback), while it is
down, and after it recovers. Prints what the caller saw in each phase, the pipeline's
events and the breaker's transitions.
"""

_RESILIENCE_EPILOG = """\
examples:
  buttress resilience-demo
  buttress resilience-demo --requests 500 --concurrency 20
  buttress resilience-demo --selfcheck            (exit 1 unless the pipeline did its job)
"""


_AUDIT_DESCRIPTION = """\
Audit a Python service's source for the production-readiness checklist: missing
timeouts and backoff, swallowed exceptions, CORS wildcards, debug flags, hardcoded
secrets, SQL built from strings, print and f-string logging, unbounded caches and
queues, and what is absent from the whole program (health endpoint, body size limit,
/metrics, idempotency on writes, graceful shutdown; harden(app) provides them all).
Parses with ast, never imports or runs the code. Prints a scorecard (per category
0-10, a risk-weighted score, a level: bronze, silver, gold) and the findings with fixes.

Skips .venv, .git, build output, and test, migration and fixture code (--include-tests
audits them). Configure in pyproject.toml under [tool.buttress.audit] (exclude,
skip-tests, disable, severity, max-file-size); silence one line with
# buttress: ignore[BTR001] reason. Rules and examples: docs/audit.md.
Exit status: 0 gates passed, 1 a gate failed, 2 usage error.
"""

_AUDIT_EPILOG = """\
examples:
  buttress audit .                                  the scorecard in the terminal
  buttress audit src --fail-on P0                   CI: fail on any P0 finding
  buttress audit . --fail-under 7 --fail-under-level silver
  buttress audit . --format sarif --output buttress.sarif     for GitHub code scanning
  buttress audit . --format markdown > audit.md     a table to paste in a pull request
  buttress audit . --write-baseline .buttress-baseline.json   adopt on an old codebase...
  buttress audit . --baseline .buttress-baseline.json --fail-on P1   ...fail on new ones
  buttress audit . --select BTR001,BTR002 --format json
  buttress audit . --diff                           what --fix would change
  buttress audit . --fix                            apply the mechanical fixes
"""


def _audit(args: argparse.Namespace) -> int:
    from buttress.audit._cli import run_audit  # noqa: PLC0415 - only audit pays for it

    return run_audit(args)


def _add_audit(sub: Any) -> None:
    from buttress.report._command import add_report_arguments  # noqa: PLC0415 - light

    raw = argparse.RawDescriptionHelpFormatter
    audit = sub.add_parser(
        "audit",
        help="audit a service's source: scorecard, findings with fixes, CI gates",
        description=_AUDIT_DESCRIPTION,
        epilog=_AUDIT_EPILOG,
        formatter_class=raw,
    )
    audit.add_argument("path", metavar="PATH", help="a directory or a Python file")
    add_report_arguments(audit, fail_on_help="exit 1 on a new finding this severe")
    audit.add_argument("--baseline", metavar="FILE", help="forgive the findings listed in FILE")
    audit.add_argument(
        "--write-baseline", metavar="FILE", help="write the current findings to FILE"
    )
    audit.add_argument(
        "--select", action="append", metavar="BTR...", help="only these rules (comma-separated)"
    )
    audit.add_argument(
        "--ignore", action="append", metavar="BTR...", help="not these rules (comma-separated)"
    )
    audit.add_argument(
        "--include-tests", action="store_true", help="audit test, migration and fixture code too"
    )
    audit.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where results are cached by file content (default: .buttress_cache/audit in "
        "the tree; $BUTTRESS_AUDIT_CACHE)",
    )
    audit.add_argument(
        "--no-cache", action="store_true", help="read and write no cache (a clean run)"
    )
    audit.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="processes for parsing and the per-file rules (default: one per CPU; 1: none "
        "forked); the report is the same for any N",
    )
    audit.add_argument(
        "--fix",
        action="store_true",
        help="rewrite the mechanical fixes in place (timeouts, bare except, cache bounds, "
        "debug flags, verify=False), then report what is left",
    )
    audit.add_argument(
        "--diff",
        action="store_true",
        help="print the --fix changes as a unified diff and write nothing (exit 1 if any)",
    )
    audit.set_defaults(handler=_audit)


_PROBE_DESCRIPTION = """\
Probe a running HTTP service (any language) from the outside: health endpoints (found,
application/health+json, latency), error answers (unknown path, wrong method, malformed
JSON, oversized body: 4xx problem+json with a request id, never a 5xx or a stack trace),
security headers (nosniff, framing, HSTS, Cache-Control, no fingerprinting), CORS
reflection, X-Forwarded-For spoofing of the rate-limit key, a bounded burst that must get
429 with Retry-After before any 5xx, /metrics (counts, duration histograms, not open) and
Idempotency-Key replays. Each check passes, warns or fails with the request sent and what
was seen; the scorecard, formats and gates are buttress audit's.

Modes, after the checks: --load (a bounded load with k6-style --threshold gates and a live
display; --emit locust|k6 FILE writes the same scenario for a distributed runner);
--start CMD (start the service, SIGTERM it under load: requests lost, readiness 503, exit);
--fault CMD --recover CMD (readiness 503 and liveness 200 while a dependency is down, then
both recover); --compare URL (parity of two environments). --watch DURATION is the deploy
gate: it polls the service (or --prometheus URL) and runs --on-fail CMD when a threshold
breaks. Every request has a timeout and every loop a bound; traffic goes only to the URLs
given, and one that is not loopback needs --allow-remote. Commands are split like a shell
line and run without a shell. Checks and evidence: docs/probe.md.
Exit status: 0 gates passed, 1 a gate or a threshold failed, 2 usage.
"""

_PROBE_EPILOG = """\
examples:
  buttress probe http://127.0.0.1:8000               the scorecard in the terminal
  buttress probe http://127.0.0.1:8000 --fail-on P0  CI: fail on any P0 check failing
  buttress probe http://127.0.0.1:8000 --write-route 'POST /orders' --burst 100
  buttress probe http://127.0.0.1:8000 --health /live --health /ready --timeout 2
  buttress probe http://127.0.0.1:8000 --format json --output probe.json
  buttress probe https://staging.example.com --allow-remote --format markdown
  buttress probe http://127.0.0.1:8000 --load --rate 50 --threshold 'p95<200ms'
  buttress probe http://127.0.0.1:8000 --load-route /orders --emit locust locustfile.py
  buttress probe http://127.0.0.1:8000 --start 'buttress demo --port 8000'
  buttress probe http://127.0.0.1:8000 --fault 'docker stop redis' --recover 'docker start redis'
  buttress probe http://127.0.0.1:8000 --watch 5m --threshold 'error_rate<1%' \
      --on-fail './rollback.sh'
  buttress probe http://127.0.0.1:8000 --watch 5m --prometheus http://127.0.0.1:9090 \
      --threshold 'p95<500ms' --on-fail './rollback.sh'
  buttress probe http://127.0.0.1:8000 --compare http://127.0.0.1:8001
"""


def _probe(args: argparse.Namespace) -> int:
    try:
        from buttress.probe._cli import run_probe  # noqa: PLC0415 - only probe pays for it
    except ModuleNotFoundError as exc:  # httpx: the probe extra
        print(  # buttress: ignore[BTR501] the command line's one-line answer
            f"buttress probe needs {exc.name}, which is not installed: "
            "pip install 'buttress[probe]'",
            file=sys.stderr,
        )
        return 2

    return run_probe(args)


def _add_probe(sub: Any) -> None:
    from buttress.report._command import add_report_arguments  # noqa: PLC0415 - light

    probe = sub.add_parser(
        "probe",
        help="probe a running service: health, errors, headers, rate limits, metrics",
        description=_PROBE_DESCRIPTION,
        epilog=_PROBE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    probe.add_argument("url", metavar="URL", help="the service's base URL (http:// or https://)")
    add_report_arguments(probe, fail_on_help="exit 1 when a check this severe fails", levels=False)
    probe.add_argument(
        "--health",
        action="append",
        metavar="PATH",
        help="the liveness path (given twice: liveness, then readiness); else common paths",
    )
    probe.add_argument(
        "--write-route",
        metavar="'POST /path'",
        help="a write route for the malformed and oversized bodies (else a POST in /openapi.json)",
    )
    probe.add_argument(
        "--write-body",
        metavar="JSON",
        help="the JSON body of the idempotency checks (else one built from the route's "
        "schema in /openapi.json, else {})",
    )
    probe.add_argument(
        "--burst-route",
        metavar="PATH",
        help="the GET path the burst and X-Forwarded-For checks use (else one that "
        "reports RateLimit fields)",
    )
    probe.add_argument(
        "--burst", type=int, default=50, metavar="N", help="requests in the burst (50, at most 500)"
    )
    probe.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="seconds per request (5)"
    )
    probe.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a target that is not loopback (you must own it)",
    )

    def seconds(text: str) -> float:
        """``5m`` -> 300.0 (``ms``, ``s``, ``m``, ``h``; a bare number is seconds)."""
        import re  # noqa: PLC0415

        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|)\s*", text)
        if m is None:
            raise argparse.ArgumentTypeError(f"{text!r}: a duration like 10s, 5m, 1h or 500ms")
        return float(m[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}[m[2]]

    load = probe.add_argument_group("load (PRB060-PRB062)")
    load.add_argument(
        "--load", action="store_true", help="run a bounded load after the checks (see --duration)"
    )
    load.add_argument(
        "--threshold",
        action="append",
        metavar="EXPR",
        help="a k6-style gate, repeatable: p50..p99.9, med, avg, min, max (ms, s), error_rate "
        "(%%), rps; e.g. 'p95<500ms', 'error_rate<1%%' (default with --load: those two)",
    )
    load.add_argument(
        "--concurrency",
        type=int,
        default=8,
        metavar="N",
        help="requests in flight (8, at most 256)",
    )
    load.add_argument(
        "--rate", type=float, metavar="R", help="requests started a second (default: no pacing)"
    )
    load.add_argument(
        "--duration", type=seconds, default=10.0, metavar="D", help="of the load (10s, at most 10m)"
    )
    load.add_argument(
        "--load-route",
        metavar="PATH",
        help="the GET path loaded or watched (else the first plain GET route of /openapi.json)",
    )
    load.add_argument(
        "--emit",
        nargs=2,
        metavar=("TOOL", "FILE"),
        help="write the load as a locust or k6 script to FILE and exit (no traffic)",
    )
    life = probe.add_argument_group("shutdown and faults (PRB070-PRB082)")
    life.add_argument(
        "--start",
        metavar="CMD",
        help="start the service with CMD; SIGTERM it under load at the end",
    )
    life.add_argument(
        "--shutdown-timeout",
        type=seconds,
        default=30.0,
        metavar="D",
        help="from SIGTERM to exit before it is killed (30s)",
    )
    life.add_argument("--fault", metavar="CMD", help="a command that cuts a dependency")
    life.add_argument("--recover", metavar="CMD", help="a command that restores it")
    life.add_argument(
        "--fault-timeout",
        type=seconds,
        default=30.0,
        metavar="D",
        help="to wait for readiness 503, and for recovery (30s)",
    )
    gate = probe.add_argument_group("deploy gate and parity (PRB090-PRB099)")
    gate.add_argument(
        "--watch", type=seconds, metavar="D", help="watch the thresholds for D (e.g. 5m) instead"
    )
    gate.add_argument("--on-fail", metavar="CMD", help="run CMD when a threshold breaks (rollback)")
    gate.add_argument(
        "--prometheus", metavar="URL", help="judge the thresholds from Prometheus' HTTP API"
    )
    gate.add_argument(
        "--selector", metavar="MATCHERS", help="""label matchers for the queries: 'job="orders"'"""
    )
    gate.add_argument(
        "--window", type=seconds, default=60.0, metavar="D", help="thresholds look back D (60s)"
    )
    gate.add_argument(
        "--interval", type=seconds, default=1.0, metavar="D", help="between judgements (1s)"
    )
    gate.add_argument(
        "--compare", metavar="URL", help="run the checks on URL too and report what differs"
    )
    probe.set_defaults(handler=_probe)


# Commands that live in their own package, by name: each module has ``add_command(sub)``,
# which adds its parser with ``set_defaults(handler=...)``. Only the package of the command
# being run is imported (`_parser` looks at the command line first), so ``buttress
# healthcheck`` in a container's HEALTHCHECK does not pay for the jobs or the backup code;
# ``buttress --help`` imports them all to list them.
_COMMANDS: dict[str, str] = {
    "slo": "buttress.slo._cli",
    "migrate": "buttress.migrate._cli",
    "backup": "buttress.backup._cli",
    "jobs": "buttress.jobs._cli",
    "healthcheck": "buttress.healthcheck._cli",
}


_COMMAND_HELP: dict[str, str] = {
    "slo": "SLO specs to Prometheus rules, burn-rate alerts, dashboards and runbooks",
    "migrate": "rehearse a migration on a restored copy before it touches production",
    "backup": "back up PostgreSQL or SQLite, verify a backup restores, retention",
    "jobs": "background jobs: the dead-letter queue (list, show, replay, purge)",
    "healthcheck": "exit 0 when a health URL answers 2xx (for container HEALTHCHECK lines)",
}


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="buttress",
        description="Make a Python service production-grade: the buttress command line.",
        epilog=_MAIN_EPILOG,
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"buttress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "demo",
        help="serve the demo orders API (hardened by buttress), or --selfcheck it",
        description=_DEMO_DESCRIPTION,
        epilog=_DEMO_EPILOG,
        formatter_class=raw,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument(
        "--port",
        type=int,
        default=None,
        help="port (8000; with --selfcheck, a free port unless given)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (1-16; more than one share a store: BUTTRESS_STORE_URL, "
        "else a SQLite file)",
    )
    serve.add_argument(
        "--store-url",
        default=None,
        help="where rate limits and idempotency records live (memory://, sqlite:///path, "
        "redis://..., postgresql://...; default $BUTTRESS_STORE_URL)",
    )
    serve.add_argument(
        "--selfcheck",
        action="store_true",
        help="start the service, verify every feature over HTTP, exit non-zero on failure",
    )
    serve.set_defaults(handler=_serve_demo)
    demo = sub.add_parser(
        "resilience-demo",
        help="a flaky local dependency, called naively and through a Pipeline",
        description=_RESILIENCE_DESCRIPTION,
        epilog=_RESILIENCE_EPILOG,
        formatter_class=raw,
    )
    demo.add_argument("--requests", type=int, default=200, help="requests per phase (10-1000)")
    demo.add_argument("--concurrency", type=int, default=10, help="requests in flight (1-50)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the flaky service")
    demo.add_argument(
        "--selfcheck", action="store_true", help="verify the outcome and exit non-zero on failure"
    )
    demo.set_defaults(handler=_demo)
    _add_audit(sub)
    _add_probe(sub)
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    chosen = words[0] if words and words[0] in _COMMANDS else None
    for name, module in _COMMANDS.items():
        if chosen is None or name == chosen:
            importlib.import_module(module).add_command(sub)
        else:  # listed in --help; parsed only when chosen (then its module adds the real one)
            sub.add_parser(name, help=_COMMAND_HELP[name])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser(argv).parse_args(argv)
    if args.command == "resilience-demo" and not 10 <= args.requests <= 1000:
        print("buttress: --requests must be between 10 and 1000", file=sys.stderr)
        return 2
    if args.command == "resilience-demo" and not 1 <= args.concurrency <= 50:
        print("buttress: --concurrency must be between 1 and 50", file=sys.stderr)
        return 2
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("buttress: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
