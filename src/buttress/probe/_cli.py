"""The ``buttress probe`` command: options, the safety refusals, the run, writers and gates.

Exit codes as for ``buttress audit``: 0 when every gate passes, 1 when one fails, 2 for a
usage error (a bad URL or option, a non-loopback target without ``--allow-remote``), said
in one line before any request is sent. A ``--threshold`` is a gate of its own, as in k6:
a broken one (PRB060-PRB062, PRB090) exits 1 whatever ``--fail-on`` says.

While a load runs, a live line on stderr (rich, when stderr is a terminal) shows the
requests, the error rate and the latency so far; each phase is named on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import shlex
import sys
from typing import Any
from urllib.parse import urlsplit

from buttress._urls import redacted as redact
from buttress.errors import ConfigurationError
from buttress.probe._load import LoadPlan, Progress
from buttress.probe._run import MAX_BURST, ProbeOptions, is_loopback, run
from buttress.probe._threshold import DEFAULT_THRESHOLDS, Threshold
from buttress.report import EXIT_GATE, EXIT_OK, EXIT_USAGE, CheckStatus, Report, finish

__all__ = ["run_probe"]


def _usage(message: str) -> int:
    print(f"buttress probe: {message}", file=sys.stderr)
    return EXIT_USAGE


def _problem(args: argparse.Namespace) -> str | None:
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{redact(args.url)!r} is not an http:// or https:// URL"
    try:
        _ = parts.port
    except ValueError:
        return f"{redact(args.url)!r} has an invalid port"
    if not is_loopback(args.url) and not args.allow_remote:
        return (
            f"{parts.hostname} is not a loopback address: pass --allow-remote to probe it "
            "(sends a burst of requests)"
        )
    if not 1 <= args.burst <= MAX_BURST:
        return f"--burst must be between 1 and {MAX_BURST}"
    if not 0.1 <= args.timeout <= 60:
        return "--timeout must be between 0.1 and 60 seconds"
    if args.write_route:
        method, _, path = args.write_route.strip().partition(" ")
        if method.upper() not in ("POST", "PUT", "PATCH") or not path.strip().startswith("/"):
            return f"--write-route {args.write_route!r}: expected 'POST /path' (or PUT, PATCH)"
    if args.write_body is not None:
        try:
            json.loads(args.write_body)
        except ValueError as exc:
            return f"--write-body is not JSON: {exc}"
    for path in [*(args.health or []), *([args.burst_route] if args.burst_route else [])]:
        if not path.startswith("/"):
            return f"{path!r}: a path starts with /"
    if args.health and len(args.health) > 2:
        return "--health at most twice (liveness, then readiness)"
    if args.load_route and not args.load_route.startswith("/"):
        return f"--load-route {args.load_route!r}: a path starts with /"
    if args.emit and args.emit[0] not in ("locust", "k6"):
        return f"--emit {args.emit[0]!r}: locust or k6"
    for name, low, high in (
        ("shutdown_timeout", 1, 600),
        ("fault_timeout", 1, 600),
        ("window", 0.1, 86400),
        ("interval", 0.1, 3600),
    ):
        if not low <= getattr(args, name) <= high:
            return f"--{name.replace('_', '-')} must be between {low:g} and {high:g} seconds"
    return None


def _command(text: str | None, option: str) -> tuple[str, ...]:
    if not text:
        return ()
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise ConfigurationError(f"{option} {text!r}: {exc}") from exc
    if not argv:
        raise ConfigurationError(f"{option}: an empty command")
    return argv


def _thresholds(args: argparse.Namespace) -> tuple[Threshold, ...]:
    texts = args.threshold or (DEFAULT_THRESHOLDS if (args.load or args.emit) else ())
    return tuple(Threshold.parse(t) for t in texts)


def _modes_problem(args: argparse.Namespace) -> str | None:
    if args.watch is not None and (args.start or args.fault or args.compare or args.load):
        return "--watch runs alone: not with --start, --fault, --compare or --load"
    if args.compare and (args.start or args.fault or args.load):
        return "--compare runs the checks on both: not with --start, --fault or --load"
    if args.recover and not args.fault:
        return "--recover needs --fault"
    if args.on_fail and args.watch is None:
        return "--on-fail needs --watch"
    if args.prometheus and args.watch is None:
        return "--prometheus needs --watch"
    if args.watch is not None and not args.threshold:
        return "--watch needs at least one --threshold (e.g. 'error_rate<1%')"
    for name in ("compare", "prometheus"):
        url = getattr(args, name)
        if url and urlsplit(url).scheme not in ("http", "https"):
            return f"--{name} {redact(url)!r} is not an http:// or https:// URL"
        if url and not is_loopback(url) and not args.allow_remote:
            return f"--{name} {redact(url)!r} is not a loopback address: pass --allow-remote"
    return None


def _options(args: argparse.Namespace) -> ProbeOptions:
    from buttress.probe._watch import WatchOptions  # noqa: PLC0415

    thresholds = _thresholds(args)
    load = None
    if args.load or args.emit or (args.threshold and args.watch is None):
        load = LoadPlan(
            path=args.load_route or "",
            concurrency=args.concurrency,
            rate=args.rate,
            duration=args.duration,
            thresholds=thresholds,
        )
    watching = None
    if args.watch is not None:
        ready = args.health[1] if args.health and len(args.health) > 1 else "/health/ready"
        watching = WatchOptions(
            url=args.url,
            duration=args.watch,
            thresholds=thresholds,
            path=args.load_route or ready,
            rate=args.rate or 5.0,
            window=args.window,
            interval=args.interval,
            on_fail=_command(args.on_fail, "--on-fail"),
            prometheus=args.prometheus,
            selector=args.selector or "",
            timeout=args.timeout,
        )
    return ProbeOptions(
        url=args.url,
        timeout=args.timeout,
        health=tuple(args.health or ()),
        write_route=args.write_route,
        write_body=args.write_body,
        burst=args.burst,
        burst_route=args.burst_route,
        load=load,
        load_route=args.load_route,
        start=_command(args.start, "--start"),
        shutdown_timeout=args.shutdown_timeout,
        fault=_command(args.fault, "--fault"),
        recover=_command(args.recover, "--recover"),
        fault_timeout=args.fault_timeout,
        compare=args.compare,
        watch=watching,
    )


class _Display:
    """The phases on stderr; while a load runs, a live line (rich, on a terminal only)."""

    def __init__(self) -> None:
        self.live: Any = None
        self.tty = sys.stderr.isatty()

    def phase(self, text: str) -> None:
        self._stop()
        print(f"buttress probe: {text}", file=sys.stderr)  # buttress: ignore[BTR501] progress

    def tick(self, text: str) -> None:
        if self.tty:  # a line a second is noise in a CI log
            self.phase(text)

    def progress(self, p: Progress) -> None:
        if not self.tty:
            return
        from rich.console import Console  # noqa: PLC0415 - a terminal only
        from rich.live import Live  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        done = min(1.0, p.elapsed / p.duration) if p.duration else 1.0
        bar = "#" * int(done * 20)
        line = Text(
            f"[{bar:<20}] {p.elapsed:5.1f}/{p.duration:g} s  in flight {p.in_flight:3d}  "
            + p.stats.summary()
        )
        if self.live is None:
            self.live = Live(line, console=Console(stderr=True), transient=True)
            self.live.start()
        else:
            self.live.update(line)

    def _stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def close(self) -> None:
        self._stop()


def _broken_thresholds(report: Report) -> list[str]:
    return [
        f"{c.rule.id} {c.evidence.split('; ')[0]}"
        for c in report.checks
        if c.rule.id in ("PRB060", "PRB061", "PRB062", "PRB090") and c.status is CheckStatus.FAIL
    ]


def run_probe(args: argparse.Namespace) -> int:
    """Run ``buttress probe`` with parsed ``args``; returns the exit code."""
    problem = _problem(args) or _modes_problem(args)
    if problem:
        return _usage(problem)
    try:
        opts = _options(args)
    except ConfigurationError as exc:
        return _usage(str(exc))
    if args.emit:
        return _emit(args, opts)
    quiet = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # one line per request sent is noise in a report (and in JSON)
        logger.setLevel(logging.WARNING)
    display = _Display()
    try:
        report = asyncio.run(
            run(
                opts,
                on_progress=display.progress,
                on_phase=display.phase,
                on_tick=display.tick,
            )
        )
    finally:
        display.close()
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    code = finish(report, args, tool="probe")
    broken = _broken_thresholds(report)
    for line in broken:
        print(  # buttress: ignore[BTR501] the command line's one-line note
            f"buttress probe: threshold broken: {line}", file=sys.stderr
        )
    return EXIT_GATE if broken else code


def _emit(args: argparse.Namespace, opts: ProbeOptions) -> int:
    from buttress.probe._emit import write_script  # noqa: PLC0415

    tool, path = args.emit
    assert opts.load is not None  # noqa: S101 - --emit implies a load
    plan = opts.load if opts.load.path else dataclasses.replace(opts.load, path="/")
    try:
        write_script(tool, plan, args.url, path)
    except OSError as exc:
        return _usage(f"--emit {tool} {path}: {exc.strerror or exc}")
    print(  # buttress: ignore[BTR501] the command line's one-line answer
        f"buttress probe: wrote {tool} script {path}: {plan.describe()}; "
        f"thresholds {', '.join(t.text for t in plan.thresholds) or '(none)'}",
        file=sys.stderr,
    )
    return EXIT_OK
