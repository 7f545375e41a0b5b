"""The ``buttress probe`` command: options, the safety refusals, the run, writers and gates.

Exit codes as for ``buttress audit``: 0 when every gate passes, 1 when one fails, 2 for a
usage error (a bad URL or option, a non-loopback target without ``--allow-remote``), said
in one line before any request is sent.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from urllib.parse import urlsplit

from buttress.probe._run import MAX_BURST, ProbeOptions, is_loopback, probe
from buttress.report import EXIT_USAGE, finish

__all__ = ["run_probe"]


def _usage(message: str) -> int:
    print(f"buttress probe: {message}", file=sys.stderr)
    return EXIT_USAGE


def _problem(args: argparse.Namespace) -> str | None:
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{args.url!r} is not an http:// or https:// URL"
    try:
        _ = parts.port
    except ValueError:
        return f"{args.url!r} has an invalid port"
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
    return None


def run_probe(args: argparse.Namespace) -> int:
    """Run ``buttress probe`` with parsed ``args``; returns the exit code."""
    problem = _problem(args)
    if problem:
        return _usage(problem)
    opts = ProbeOptions(
        url=args.url,
        timeout=args.timeout,
        health=tuple(args.health or ()),
        write_route=args.write_route,
        write_body=args.write_body,
        burst=args.burst,
        burst_route=args.burst_route,
    )
    quiet = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # one line per request sent is noise in a report (and in JSON)
        logger.setLevel(logging.WARNING)
    try:
        report = probe(opts)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    return finish(report, args, tool="probe")
