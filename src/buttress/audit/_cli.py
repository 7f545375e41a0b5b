"""The ``buttress audit`` command: options to config, the run, the writers and the gates.

Exit codes: 0 when every gate passes, 1 when one fails, 2 for a usage error (a path
that does not exist, an unknown rule, a bad pyproject.toml table or baseline file).
``--fix`` rewrites the mechanical fixes (`_fix`), then audits again and reports what is
left; ``--diff`` prints them as a unified diff, writes nothing, and exits 1 when there
is something to fix (0 otherwise), as ``ruff --diff`` does.

The result cache is on by default (`_cache.default_cache_dir`: ``.buttress_cache/audit``
in the audited tree, or under ``$XDG_CACHE_HOME`` when the tree is read-only).
``--cache-dir DIR`` / ``--no-cache`` choose (read with ``getattr``: the options are
declared in ``buttress.cli``), as does ``$BUTTRESS_AUDIT_CACHE`` (a directory, or ``off``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import Any

from buttress.audit._cache import default_cache_dir
from buttress.audit._config import load_config
from buttress.audit._rules import RULES
from buttress.audit._run import audit
from buttress.audit._suppress import read_baseline, write_baseline
from buttress.errors import ConfigurationError
from buttress.report import EXIT_USAGE, Report, finish

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
    cache_dir = _cache_dir(args)
    show_progress = args.format == "terminal"
    jobs = getattr(args, "jobs", None)
    if jobs is not None and jobs < 1:
        return _usage(f"--jobs {jobs}: give 1 or more processes")
    run = functools.partial(
        _run, path, config, baseline, show_progress=show_progress, cache_dir=cache_dir, jobs=jobs
    )
    report = run()
    if getattr(args, "diff", False) or getattr(args, "fix", False):
        from buttress.audit._fix import (  # noqa: PLC0415 - libcst only when fixing
            apply_fixes,
            plan_fixes,
            unified_diff,
        )

        fixes = plan_fixes(path, report.findings)
        if getattr(args, "diff", False):
            sys.stdout.write(unified_diff(fixes))
            fixed = sum(len(fix.fixed) for fix in fixes)
            note = f"buttress audit: {fixed} fixable findings in {len(fixes)} files"
            print(note, file=sys.stderr)
            return 1 if fixes else 0
        fixed = apply_fixes(path, fixes)
        print(f"buttress audit: fixed {fixed} findings in {len(fixes)} files", file=sys.stderr)
        if fixes:
            report = run()
    if args.write_baseline:
        write_baseline(Path(args.write_baseline), list(report.findings))
    return finish(report, args, tool="audit")


def _cache_dir(args: argparse.Namespace) -> Path | None:
    """Where the cache lives for this run (None: no cache)."""
    env = os.environ.get("BUTTRESS_AUDIT_CACHE", "")
    if getattr(args, "no_cache", False) or env.lower() in ("off", "0", "no", "false"):
        return None
    chosen = getattr(args, "cache_dir", None) or env
    if chosen:
        return Path(chosen)
    path = Path(args.path).resolve()
    return default_cache_dir(path if path.is_dir() else path.parent)


def _run(
    path: Path,
    config: Any,
    baseline: Any,
    *,
    show_progress: bool,
    cache_dir: Path | None,
    jobs: int | None,
) -> Report:
    if not (show_progress and sys.stderr.isatty()):
        return audit(path, config, baseline=baseline, cache_dir=cache_dir, jobs=jobs)
    try:
        from rich.progress import Progress  # noqa: PLC0415 - the audit extra
    except ImportError:
        return audit(path, config, baseline=baseline, cache_dir=cache_dir, jobs=jobs)
    with Progress(transient=True) as bar:
        task = bar.add_task("auditing", total=None)

        def progress(done: int, total: int) -> None:
            if total > 200:
                bar.update(task, completed=done, total=total)

        return audit(
            path, config, baseline=baseline, progress=progress, cache_dir=cache_dir, jobs=jobs
        )
