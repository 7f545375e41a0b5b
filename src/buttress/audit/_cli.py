"""The ``buttress audit`` command: options to config, the run, the writers and the gates.

Exit codes: 0 when every gate passes, 1 when one fails, 2 for a usage error (a path
that does not exist, an unknown rule, a bad pyproject.toml table or baseline file).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, TextIO

from buttress.audit._config import load_config
from buttress.audit._rules import RULES
from buttress.audit._run import audit
from buttress.audit._suppress import read_baseline, write_baseline
from buttress.errors import ConfigurationError
from buttress.report import (
    EXIT_USAGE,
    Gates,
    Level,
    Priority,
    Report,
    evaluate,
    render,
    to_json,
    to_markdown,
    to_sarif,
)

__all__ = ["run_audit"]


def _usage(message: str) -> int:
    print(f"buttress audit: {message}", file=sys.stderr)
    return EXIT_USAGE


def _rule_list(values: list[str] | None) -> frozenset[str]:
    ids = {v.strip().upper() for value in values or () for v in value.split(",") if v.strip()}
    unknown = sorted(ids - RULES.keys())
    if unknown:
        raise ConfigurationError(f"unknown rules {unknown} (known: BTR001...; see --help)")
    return frozenset(ids)


def run_audit(args: argparse.Namespace) -> int:
    """Run ``buttress audit`` with parsed ``args``; returns the exit code."""
    path = Path(args.path)
    if not path.exists():
        return _usage(f"{args.path}: no such file or directory")
    try:
        config = load_config(path.resolve())
        select = _rule_list(args.select)
        ignore = _rule_list(args.ignore)
        config = dataclasses.replace(
            config,
            select=select or config.select,
            disable=config.disable | ignore,
            skip_tests=config.skip_tests and not args.include_tests,
        )
        baseline = read_baseline(Path(args.baseline)) if args.baseline else None
    except ConfigurationError as exc:
        return _usage(str(exc))
    report = _run(path, config, baseline, show_progress=args.format == "terminal")
    gates = Gates(
        fail_on=Priority(args.fail_on) if args.fail_on else None,
        fail_under=args.fail_under,
        fail_under_level=Level(args.fail_under_level) if args.fail_under_level else None,
    )
    gate = evaluate(report, gates)
    shown = gate if gates != Gates() else None  # no gate set: say nothing about gates
    if args.write_baseline:
        write_baseline(Path(args.write_baseline), list(report.findings))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            _write(report, shown, args.format, out, plain=True)
    else:
        _write(report, shown, args.format, sys.stdout, plain=not sys.stdout.isatty())
    if not gate.passed and (args.output or args.format != "terminal"):
        for reason in gate.reasons:
            print(f"buttress audit: gate failed: {reason}", file=sys.stderr)
    return gate.exit_code


def _run(path: Path, config: Any, baseline: Any, *, show_progress: bool) -> Report:
    if not (show_progress and sys.stderr.isatty()):
        return audit(path, config, baseline=baseline)
    try:
        from rich.progress import Progress  # noqa: PLC0415 - the audit extra
    except ImportError:
        return audit(path, config, baseline=baseline)
    with Progress(transient=True) as bar:
        task = bar.add_task("auditing", total=None)

        def progress(done: int, total: int) -> None:
            if total > 200 and done % 50 == 0:
                bar.update(task, completed=done, total=total)

        return audit(path, config, baseline=baseline, progress=progress)


def _write(report: Report, gate: Any, fmt: str, out: TextIO, *, plain: bool) -> None:
    if fmt == "json":
        out.write(to_json(report, gate))
    elif fmt == "sarif":
        out.write(to_sarif(report))
    elif fmt == "markdown":
        out.write(to_markdown(report, gate))
    else:
        try:
            from rich.console import Console  # noqa: PLC0415 - the audit extra
        except ImportError:
            print(
                "buttress audit: the terminal scorecard needs rich (pip install "
                "'buttress[audit]'); writing Markdown instead",
                file=sys.stderr,
            )
            out.write(to_markdown(report, gate))
            return
        console = Console(file=out, no_color=plain, highlight=False, soft_wrap=plain)
        render(report, console, gate)
