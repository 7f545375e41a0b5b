"""The command-line end of a report: output options, gates, writing, the exit code.

Every command that fills a `Report` (``buttress audit``, ``buttress probe``) takes the same
options (`add_report_arguments`) and ends the same way (`finish`): the gates evaluated,
the report written in the format asked for, a failed gate said on stderr when the report
went elsewhere, and the exit code (`EXIT_OK`, `EXIT_GATE`).
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from buttress.report._gate import GateResult, Gates, evaluate
from buttress.report._json import to_json
from buttress.report._markdown import to_markdown
from buttress.report._model import Level, Priority, Report
from buttress.report._sarif import to_sarif
from buttress.report._terminal import render

__all__ = ["add_report_arguments", "finish", "gates_from", "write_report"]

FORMATS = ("terminal", "json", "markdown", "sarif")


def add_report_arguments(
    parser: argparse.ArgumentParser, *, fail_on_help: str, levels: bool = True
) -> None:
    """``--format``, ``--output``, ``--fail-on``, ``--fail-under`` (and ``--fail-under-level``)."""
    parser.add_argument("--format", choices=FORMATS, default="terminal", help="output format")
    parser.add_argument("--output", metavar="FILE", help="write the report to FILE")
    parser.add_argument("--fail-on", choices=("P0", "P1", "P2"), help=fail_on_help)
    parser.add_argument(
        "--fail-under", type=float, metavar="N", help="exit 1 when the score is below N (0-10)"
    )
    if levels:
        parser.add_argument(
            "--fail-under-level",
            choices=("bronze", "silver", "gold"),
            help="exit 1 below this level",
        )


def gates_from(args: argparse.Namespace) -> Gates:
    """The `Gates` the parsed options ask for."""
    level = getattr(args, "fail_under_level", None)
    return Gates(
        fail_on=Priority(args.fail_on) if args.fail_on else None,
        fail_under=args.fail_under,
        fail_under_level=Level(level) if level else None,
    )


def write_report(
    report: Report, gate: GateResult | None, fmt: str, out: TextIO, *, plain: bool, tool: str
) -> None:
    """Write ``report`` in format ``fmt`` on ``out``.

    Without rich, the terminal format falls back to Markdown and says so on stderr.
    """
    if fmt == "json":
        out.write(to_json(report, gate))
    elif fmt == "sarif":
        out.write(to_sarif(report))
    elif fmt == "markdown":
        out.write(to_markdown(report, gate))
    else:
        try:
            from rich.console import Console  # noqa: PLC0415 - only the terminal format
        except ImportError:
            print(  # buttress: ignore[BTR501] the command line's one-line note
                f"buttress {tool}: the terminal scorecard needs rich (pip install "
                f"'buttress[{tool}]'); writing Markdown instead",
                file=sys.stderr,
            )
            out.write(to_markdown(report, gate))
            return
        console = Console(file=out, no_color=plain, highlight=False, soft_wrap=plain, width=120)
        render(report, console, gate)


def finish(report: Report, args: argparse.Namespace, *, tool: str) -> int:
    """Evaluate the gates, write the report where ``args`` say, return the exit code."""
    gates = gates_from(args)
    gate = evaluate(report, gates)
    shown = gate if gates != Gates() else None  # no gate set: say nothing about gates
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            write_report(report, shown, args.format, out, plain=True, tool=tool)
    else:
        plain = not sys.stdout.isatty()
        write_report(report, shown, args.format, sys.stdout, plain=plain, tool=tool)
    if not gate.passed and (args.output or args.format != "terminal"):
        for reason in gate.reasons:
            print(  # buttress: ignore[BTR501] the command line's one-line note
                f"buttress {tool}: gate failed: {reason}", file=sys.stderr
            )
    return gate.exit_code
