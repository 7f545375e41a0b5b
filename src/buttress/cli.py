"""The ``buttress`` command line.

``buttress demo`` serves the demo orders API (FastAPI, hardened by buttress) on
127.0.0.1:8000; ``buttress demo --selfcheck`` starts it, exercises every feature over HTTP
on loopback, prints what it verified and exits non-zero if anything failed.
``buttress resilience-demo`` calls a deliberately flaky local dependency naively and through
a `Pipeline`, side by side.

The demo's uvicorn options live in `demo_server_options` (the tests serve with the same):
no ``Server`` header, no access log of uvicorn's (buttress writes its own), and no proxy
headers: uvicorn's default would take the client address from ``X-Forwarded-For`` for any
request arriving through loopback, and the demo trusts no proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from buttress import __version__

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
        import uvicorn  # noqa: PLC0415 - the demo extra
        from rich.console import Console  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415
    except ImportError as exc:
        print(
            f"buttress demo needs the demo extra: pip install 'buttress[demo]' ({exc})",
            file=sys.stderr,
        )
        return 2
    console = Console(no_color=args.selfcheck, highlight=False)
    if not 1 <= args.workers <= 16:
        console.print(f"--workers {args.workers}: use 1 to 16")
        return 2
    if args.selfcheck:
        from buttress.demo.selfcheck import run_selfcheck  # noqa: PLC0415

        console.print(f"[bold]buttress {__version__}[/bold] demo self-check (127.0.0.1 only)\n")
        checks = run_selfcheck(
            lambda c: console.print(f"  {'PASS' if c.ok else 'FAIL'}  {c.feature}: {c.evidence}"),
            store_url=args.store_url or os.environ.get("BUTTRESS_STORE_URL"),
            workers=max(args.workers, 2),
        )
        table = Table(title="demo self-check")
        for column in ("feature", "result", "evidence"):
            table.add_column(column)
        for c in checks:
            table.add_row(
                c.feature, "[green]PASS[/green]" if c.ok else "[red]FAIL[/red]", c.evidence
            )
        console.print(table)
        failed = sum(1 for c in checks if not c.ok)
        console.print(f"selfcheck: {len(checks) - failed} passed, {failed} failed")
        return 1 if failed else 0
    os.environ.update(_shared_state_env(args.workers, args.store_url))  # workers inherit it
    base = f"http://{args.host}:{args.port}"
    console.print(
        f"[bold]buttress {__version__}[/bold] demo: the orders API on {base} "
        f"({args.workers} worker{'s' if args.workers > 1 else ''}, "
        f"store {os.environ.get('BUTTRESS_STORE_URL', 'memory://')})\n"
        f"  curl -i {base}/orders\n"
        f"  curl -i -X POST {base}/orders -H 'content-type: application/json' "
        "-H 'Idempotency-Key: order-1' "
        '-d \'{"sku": "abc", "quantity": 2}\'   (run it twice: one order)\n'
        f"  curl -i {base}/price/abc      (a flaky dependency behind a pipeline; "
        "25 at once then 60/minute)\n"
        f"  curl -i {base}/boom           (problem+json, no internals)\n"
        f"  curl -i '{base}/slow?seconds=9'  (the 5 s request deadline)\n"
        f"  open {base}/docs\n"
        "Ctrl-C to stop."
    )
    uvicorn.run(
        "buttress.demo.app:create_app",
        factory=True,
        **demo_server_options(args.host, args.port, args.workers),
    )
    return 0


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="buttress", description="Make a Python service production-grade."
    )
    parser.add_argument("--version", action="version", version=f"buttress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("demo", help="serve the demo orders API (hardened by buttress)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (8000)")
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
    serve.set_defaults(handler=_serve_demo, requests=200, concurrency=10)
    demo = sub.add_parser(
        "resilience-demo", help="a flaky local dependency, called naively and through a Pipeline"
    )
    demo.add_argument("--requests", type=int, default=200, help="requests per phase (10-1000)")
    demo.add_argument("--concurrency", type=int, default=10, help="requests in flight (1-50)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the flaky service")
    demo.add_argument(
        "--selfcheck", action="store_true", help="verify the outcome and exit non-zero on failure"
    )
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    if not 10 <= args.requests <= 1000:
        print("buttress: --requests must be between 10 and 1000", file=sys.stderr)
        return 2
    if not 1 <= args.concurrency <= 50:
        print("buttress: --concurrency must be between 1 and 50", file=sys.stderr)
        return 2
    code: int = args.handler(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
