"""The ``buttress jobs`` command: the dead-letter queue and worker health.

``buttress jobs dlq list | show ID | replay ID|--all | purge --older-than 7d`` reads and
acts on a dead-letter store (``--dlq URL``, else ``$BUTTRESS_JOBS_DLQ_URL``, else
``$BUTTRESS_STORE_URL``); ``buttress jobs health`` is a liveness/readiness probe for
workers (heartbeat files, the broker, queue depth). Rich tables in a terminal, JSON with
``--format json``. Exit codes: 0 done, 1 something failed (a probe, a replay), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
from typing import Any

__all__ = ["add_command"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_EPILOG = """\
examples:
  buttress jobs dlq list --dlq redis://127.0.0.1:6379/0
  buttress jobs dlq show 3f2a... --format json
  buttress jobs dlq replay 3f2a... --broker redis://127.0.0.1:6379/0
  buttress jobs dlq replay --all --queue mail --broker amqp://guest:guest@127.0.0.1//
  buttress jobs dlq purge --older-than 7d
  buttress jobs health --heartbeat /run/worker --broker redis://127.0.0.1:6379/0 --queue celery
"""


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``7d``, ``2w`` (or plain seconds) in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 7d, 12h, 30m")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def add_command(sub: Any) -> None:
    """Add ``buttress jobs`` to the command line's subparsers."""
    raw = argparse.RawDescriptionHelpFormatter
    jobs = sub.add_parser(
        "jobs",
        help="background jobs: the dead-letter queue and worker health",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=raw,
    )
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="SUBCOMMAND")
    dlq = jobs_sub.add_parser("dlq", help="list, show, replay and purge dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dlq", metavar="URL", help="the dead-letter store URL")
        parser.add_argument("--format", choices=("terminal", "json"), default="terminal")

    listing = dlq_sub.add_parser("list", help="the newest dead letters")
    common(listing)
    listing.add_argument("--queue", help="only this queue")
    listing.add_argument("--limit", type=int, default=50, help="at most N (default 50)")
    show = dlq_sub.add_parser("show", help="one dead letter in full")
    common(show)
    show.add_argument("id")
    replay = dlq_sub.add_parser("replay", help="send dead letters to their queue again")
    common(replay)
    replay.add_argument("id", nargs="?")
    replay.add_argument("--all", action="store_true", help="every dead letter (of --queue)")
    replay.add_argument("--queue", help="with --all: only this queue")
    replay.add_argument(
        "--broker", metavar="URL",
        help="the engine's broker (default $BUTTRESS_JOBS_BROKER_URL)",
    )  # fmt: skip
    replay.add_argument(
        "--app", metavar="MODULE:ATTR", help="your engine app (routes, serializer), imported"
    )
    purge = dlq_sub.add_parser("purge", help="delete dead letters older than a duration")
    common(purge)
    purge.add_argument("--older-than", type=parse_duration, required=True, metavar="DURATION")
    health = jobs_sub.add_parser("health", help="worker liveness (heartbeats) and the broker")
    health.add_argument("--heartbeat", metavar="DIR", help="the workers' heartbeat directory")
    health.add_argument("--stale-after", type=float, metavar="S", help="seconds (default 3 beats)")
    health.add_argument("--broker", metavar="URL", help="also check the broker and a queue")
    health.add_argument("--queue", default="celery")
    health.add_argument("--format", choices=("terminal", "json"), default="terminal")
    jobs.set_defaults(handler=run_jobs)


def _usage(message: str) -> int:
    print(f"buttress jobs: {message}", file=sys.stderr)  # buttress: ignore[BTR501] CLI line
    return EXIT_USAGE


def run_jobs(args: argparse.Namespace) -> int:
    """Run ``buttress jobs ...`` with parsed ``args``; the exit code."""
    from buttress.errors import BackendError, ConfigurationError  # noqa: PLC0415

    try:
        if args.jobs_command == "health":
            return _health(args)
        return _dlq(args)
    except ConfigurationError as exc:
        return _usage(str(exc))
    except BackendError as exc:
        print(f"buttress jobs: {exc}", file=sys.stderr)  # buttress: ignore[BTR501] CLI line
        return EXIT_FAILED


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + "Z" if at else "-"


def _console() -> Any:
    from rich.console import Console  # noqa: PLC0415 - the terminal output only

    plain = not sys.stdout.isatty()
    width = 140 if plain else None
    return Console(no_color=plain, highlight=False, soft_wrap=plain, width=width)


def _emit(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=repr) + "\n")


def _dlq(args: argparse.Namespace) -> int:
    from buttress.jobs._dlq import open_dlq  # noqa: PLC0415

    store = open_dlq(args.dlq)
    try:
        action = args.dlq_command
        if action == "list":
            return _list(store, args)
        if action == "show":
            record = store.get(args.id)
            if record is None:
                return _usage(f"no dead letter {args.id!r} in {store.url}")
            if args.format == "json":
                _emit(record.to_dict())
            else:
                _show(record)
            return EXIT_OK
        if action == "replay":
            return _replay(store, args)
        removed = store.purge(before=time.time() - args.older_than)
        if args.format == "json":
            _emit({"purged": removed})
        else:
            print(f"purged {removed} dead letter(s) older than {args.older_than:g} s")
        return EXIT_OK
    finally:
        store.close()


def _list(store: Any, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000:
        return _usage("--limit must be between 1 and 10000")
    records = store.list(limit=args.limit, queue=args.queue)
    if args.format == "json":
        _emit({"total": store.count(), "dead_letters": [r.to_dict() for r in records]})
        return EXIT_OK
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"dead letters ({len(records)} of {store.count()})", show_lines=False)
    for column in ("id", "failed (UTC)", "job", "queue", "reason", "attempts", "error"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(
            r.id, _when(r.failed_at), r.name, r.queue, r.reason, str(r.attempts),
            f"{r.error_type}: {r.error}"[:120],
        )  # fmt: skip
    _console().print(table)
    return EXIT_OK


def _show(record: Any) -> None:
    from rich.table import Table  # noqa: PLC0415

    table = Table(show_header=False, title=f"dead letter {record.id}")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    data = record.to_dict()
    for name in ("enqueued_at", "failed_at"):
        data[name] = _when(data[name])
    for name, value in data.items():
        shown = value if isinstance(value, str) else json.dumps(value, default=repr)
        table.add_row(name, shown)
    _console().print(table)


def _replay(store: Any, args: argparse.Namespace) -> int:
    from buttress.jobs import REPLAYERS  # noqa: PLC0415

    if bool(args.id) == bool(args.all):
        return _usage("replay takes one ID or --all")
    broker = args.broker or os.environ.get("BUTTRESS_JOBS_BROKER_URL")
    app = None
    if args.app:
        module, _, attr = args.app.partition(":")
        try:
            app = getattr(importlib.import_module(module), attr or "app")
        except (ImportError, AttributeError) as exc:
            return _usage(f"--app {args.app}: {exc}")
    if broker is None and app is None:
        return _usage("replay needs --broker URL, --app MODULE:ATTR or BUTTRESS_JOBS_BROKER_URL")
    if args.id:
        record = store.get(args.id)
        if record is None:
            return _usage(f"no dead letter {args.id!r} in {store.url}")
        records = [record]
    else:
        records = store.list(limit=10_000, queue=args.queue)
    sent: list[dict[str, str]] = []
    failed = 0
    for record in records:
        target = REPLAYERS.get(record.engine)
        if target is None:
            print(  # buttress: ignore[BTR501] CLI line
                f"buttress jobs: {record.id}: no replayer for engine {record.engine!r}",
                file=sys.stderr,
            )
            failed += 1
            continue
        module, _, name = target.partition(":")
        replay = getattr(importlib.import_module(module), name)
        new_id = replay(record, broker, app=app)
        store.remove(record.id)  # only once the engine took it: never lost
        sent.append({"id": record.id, "job": record.name, "message_id": new_id})
    if args.format == "json":
        _emit({"replayed": sent, "failed": failed})
    else:
        for item in sent:
            print(f"replayed {item['id']} ({item['job']}) as {item['message_id']}")
    return EXIT_FAILED if failed else EXIT_OK


def _health(args: argparse.Namespace) -> int:
    from buttress.errors import BackendError  # noqa: PLC0415
    from buttress.jobs._health import QueueStats, check_heartbeats  # noqa: PLC0415

    if not args.heartbeat and not args.broker:
        return _usage("health needs --heartbeat DIR and/or --broker URL")
    problems: list[str] = []
    report: dict[str, Any] = {}
    if args.heartbeat:
        problems += check_heartbeats(args.heartbeat, stale_after=args.stale_after)
    if args.broker:
        try:
            sample = QueueStats(args.broker).measure(args.queue)
            report["queue"] = {
                "name": sample.queue, "depth": sample.depth, "oldest_age": sample.oldest_age,
            }  # fmt: skip
        except BackendError as exc:
            problems.append(f"broker: {exc}")
    report["status"] = "fail" if problems else "pass"
    report["problems"] = problems
    if args.format == "json":
        _emit(report)
    else:
        for line in problems or ["workers alive"]:
            print(line)
        if "queue" in report:
            q = report["queue"]
            print(f"queue {q['name']}: {q['depth']} waiting, oldest {q['oldest_age']} s")
    return EXIT_FAILED if problems else EXIT_OK
