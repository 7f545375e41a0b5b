"""`buttress audit` next to `bandit -r` on the same tree, as whole commands, in one run.

The tree defaults to the installed ``django`` package (about 900 files, 150k+ lines), copied
to a temporary directory so both tools see the same files and the cache can be written;
``--generate N`` audits a generated service of about N lines instead
(tests/audit/_synthetic.py). Buttress runs: without a cache (one process per CPU, then
``--jobs 1``), first run with an empty cache (it fills it), and a second run on the
unchanged tree (answered from the cache). Each command runs ``--repeat`` times; the medians
of wall time are compared, and each run's CPU time (user + sys, workers included) and
peak memory (the largest process: ``wait4``'s ``ru_maxrss``) are printed too: on a busy
machine the CPU times say more than the wall times. Bars (issue 12): buttress at least 2x
faster than bandit with the whole-program analysis on; the second run at most 10 % of the
first; memory bounded (measure on ``--generate 1000000 --no-bandit``).

    .venv/bin/pip install bandit
    .venv/bin/python bench/audit.py                    # django from the venv
    .venv/bin/python bench/audit.py --tree ~/src/service --repeat 5
    .venv/bin/python bench/audit.py --generate 1000000 --repeat 1 --no-bandit
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _default_tree() -> Path:
    import django  # noqa: PLC0415 - only to find its directory

    return Path(django.__file__).parent


def _lines(tree: Path) -> tuple[int, int]:
    files = [p for p in tree.rglob("*.py") if p.is_file()]
    return len(files), sum(p.read_bytes().count(b"\n") for p in files)


def _generate(root: Path, lines: int) -> None:
    spec = importlib.util.spec_from_file_location(
        "_synthetic", Path(__file__).parent.parent / "tests" / "audit" / "_synthetic.py"
    )
    if spec is None or spec.loader is None:
        sys.exit("tests/audit/_synthetic.py not found: run from a checkout")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(root, lines)


def _time(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one command."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errors)  # noqa: S603
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - start
        if proc.returncode not in (0, 1):
            errors.seek(0)
            sys.exit(f"{cmd[0]} failed ({proc.returncode}): {errors.read().decode()[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, help="the Python tree to audit (default: django)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (median)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON to this file")
    parser.add_argument("--generate", type=int, metavar="LINES", help="audit a generated tree")
    parser.add_argument("--no-bandit", action="store_true", help="buttress only (memory runs)")
    args = parser.parse_args()
    bandit = shutil.which("bandit", path=str(BIN)) or shutil.which("bandit")
    if bandit is None and not args.no_bandit:
        sys.exit("bandit is not installed: .venv/bin/pip install bandit")
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        if args.generate:
            source = Path(f"generated-{args.generate}-lines")
            tree = Path(tmp) / "generated"
            _generate(tree, args.generate)
        else:
            source = args.tree or _default_tree()
            tree = Path(tmp) / source.name
            shutil.copytree(source, tree, ignore=shutil.ignore_patterns("__pycache__"))
        files, lines = _lines(tree)
        cache = Path(tmp) / "cache"
        env = {**os.environ, "BUTTRESS_AUDIT_CACHE": "off"}
        cached_env = {**os.environ, "BUTTRESS_AUDIT_CACHE": str(cache)}
        audit = [
            str(BIN / "buttress"), "audit", str(tree), "--include-tests",
            "--format", "json", "--output", os.devnull,
        ]  # fmt: skip
        commands = {
            "bandit -r": ([bandit or "bandit", "-r", str(tree), "-q", "-f", "json", "-o",
                           os.devnull], env),
            "buttress audit (no cache)": (audit, env),
            "buttress audit (no cache, --jobs 1)": ([*audit, "--jobs", "1"], env),
            "buttress audit (first run, cache)": (audit, cached_env),
            "buttress audit (second run, cache)": (audit, cached_env),
        }  # fmt: skip
        if args.no_bandit:
            del commands["bandit -r"]
        runs: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        memory: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            shutil.rmtree(cache, ignore_errors=True)
            for name, (cmd, cmd_env) in commands.items():
                wall, used, peak = _time(cmd, cmd_env)
                runs[name].append(wall)
                cpu[name].append(used)
                memory[name].append(peak)
    medians = {name: statistics.median(times) for name, times in runs.items()}
    print(f"tree: {source} ({files} files, {lines} lines), median of {args.repeat}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'command':40} {'seconds':>8} {'CPU s':>8} {'peak MB':>8}")
    for name, value in medians.items():
        used = statistics.median(cpu[name])
        print(f"{name:40} {value:8.2f} {used:8.2f} {max(memory[name]):8.0f}")
    speedup = 0.0
    if "bandit -r" in medians:
        speedup = medians["bandit -r"] / medians["buttress audit (no cache)"]
        by_cpu = statistics.median(cpu["bandit -r"]) / statistics.median(
            cpu["buttress audit (no cache)"]
        )
        print(f"bandit / buttress (no cache): {speedup:.2f}x wall, {by_cpu:.2f}x CPU  "
              f"(bar: >= 2x)  {'PASS' if speedup >= 2 else 'FAIL'}")  # fmt: skip
    parallel = medians["buttress audit (no cache, --jobs 1)"] / medians["buttress audit (no cache)"]
    print(f"--jobs 1 / default jobs: {parallel:.2f}x")
    second = (
        medians["buttress audit (second run, cache)"] / medians["buttress audit (first run, cache)"]
    )
    print(f"second run / first run: {second:.1%}  (bar: <= 10 %)  "
          f"{'PASS' if second <= 0.10 else 'FAIL'}")  # fmt: skip
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "tree": str(source),
                    "files": files,
                    "lines": lines,
                    "runs": runs,
                    "cpu": cpu,
                    "peak_mb": memory,
                    "medians": medians,
                    "speedup": speedup,
                    "second_ratio": second,
                },
                indent=2,
            )  # fmt: skip
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
