"""Helpers shared by the buttress benchmarks: stats, environment, tables, JSON, pinning.

Standard library only; no dependency on the shared peer harness at run time (the method,
repetitions with a rotated order, medians against a floor measured in the same run, CPU
pinning, follows it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

# Distributions whose versions every results file records.
CORE_DISTS = ("buttress",)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def paired_median(xs: Sequence[float], floors: Sequence[float], *, ratio: bool) -> float:
    """Median over repetitions of (x - floor) or (x / floor) within the same repetition."""
    if ratio:
        return median([x / f for x, f in zip(xs, floors, strict=True)])
    return median([x - f for x, f in zip(xs, floors, strict=True)])


def env_info() -> dict[str, Any]:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
        "git": git_info(),
    }


def git_info() -> dict[str, Any]:
    """The commit measured, and whether src/ had uncommitted changes."""
    root = BENCH_DIR.parent

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "src_dirty": bool(git("status", "--porcelain", "src")),
    }


def load_warning() -> str | None:
    """A warning when other processes keep the machine busy (1-minute load average)."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        return None
    if load1 > 0.5:
        return (
            f"warning: load average {load1:.2f} before the run: other processes are busy, "
            "expect noisy numbers (run on a quiet machine)"
        )
    return None


def versions(dists: Iterable[str]) -> dict[str, str]:
    out = {}
    for d in dists:
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            out[d] = "not installed"
    return out


def pin_self(cpu: int | None) -> list[int] | None:
    """Pin this process to one CPU (less migration noise on a 2-core box)."""
    if cpu is None or not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return None
    os.sched_setaffinity(0, {cpu})
    return sorted(os.sched_getaffinity(0))


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` (or ``<name>`` itself if it is a path)."""
    path = Path(name)
    if path.suffix != ".json":
        path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def fmt(c: Any) -> str:
    if isinstance(c, float):
        if c != c:  # NaN
            return "-"
        if abs(c) >= 1000:
            return f"{c:,.0f}"
        if abs(c) >= 100:
            return f"{c:.0f}"
        if abs(c) >= 10:
            return f"{c:.1f}"
        return f"{c:.2f}"
    if isinstance(c, int):
        return f"{c:,}"
    return str(c)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, markdown: bool) -> str:
    """A plain-text (aligned) or Markdown table; first column left-aligned, others right."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join(
        [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def parser(
    doc: str | None,
    *,
    name: str,
    number: int,
    min_number: int,
    max_seconds: float,
    warmup: int,
    unit: str,
) -> argparse.ArgumentParser:
    """The options every micro-benchmark script shares."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=11, help="repetitions, median reported (11)")
    ap.add_argument("--number", type=int, default=number, help=f"max {unit} per measurement")
    ap.add_argument(
        "--min-number", type=int, default=min_number, help=f"min {unit} per measurement"
    )
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=max_seconds,
        help=f"target time of one measurement ({max_seconds})",
    )
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--only", action="append", default=[], help="substring filter (floors kept)")
    ap.add_argument("--cpu", type=int, default=0, help="pin this process to CPU N (0)")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--out", default=name, help="bench/results/<OUT>.json, or a .json path")
    return ap


def start(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Pin the process, print the run's header and any load warning; the environment.

    ``env["pinned_cpus"]`` holds the CPUs the process was pinned to (None: not pinned).
    """
    pinned = None if args.no_pin else pin_self(args.cpu)
    env = env_info()
    print(
        f"{name}: repeat={args.repeat} number<={args.number:,} max_seconds={args.max_seconds} "
        f"python={env['python']} cpus={env['cpu_count']} pinned={pinned} "
        f"buttress@{env['git']['commit']}{' +uncommitted src' if env['git']['src_dirty'] else ''}",
        flush=True,
    )
    warn = load_warning()
    if warn:
        print(warn, flush=True)
    env["pinned_cpus"] = pinned
    return env
