"""`buttress audit` next to `bandit -r` on the same tree, as whole commands, in one run.

The tree defaults to the installed ``django`` package (about 900 files, 150k+ lines), copied
to a temporary directory so both tools see the same files and the cache can be written.
Three buttress runs: without a cache, first run with an empty cache (it fills it), and a
second run on the unchanged tree (answered from the cache). Each command runs
``--repeat`` times; the medians are compared. Bars (issue 12): buttress at least 2x
faster than bandit with the whole-program analysis on; the second run at most 10 % of the
first.

    .venv/bin/pip install bandit
    .venv/bin/python bench/audit.py                    # django from the venv
    .venv/bin/python bench/audit.py --tree ~/src/service --repeat 5
"""

from __future__ import annotations

import argparse
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


def _time(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, check=False)  # noqa: S603
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return elapsed


def main() -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, help="the Python tree to audit (default: django)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (median)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON to this file")
    args = parser.parse_args()
    bandit = shutil.which("bandit", path=str(BIN)) or shutil.which("bandit")
    if bandit is None:
        sys.exit("bandit is not installed: .venv/bin/pip install bandit")
    source = args.tree or _default_tree()
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
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
        runs: dict[str, list[float]] = {
            "bandit -r": [],
            "buttress audit (no cache)": [],
            "buttress audit (first run, cache)": [],
            "buttress audit (second run, cache)": [],
        }
        bandit_cmd = [bandit, "-r", str(tree), "-q", "-f", "json", "-o", os.devnull]
        for _ in range(args.repeat):
            runs["bandit -r"].append(_time(bandit_cmd, env))
            runs["buttress audit (no cache)"].append(_time(audit, env))
            shutil.rmtree(cache, ignore_errors=True)
            runs["buttress audit (first run, cache)"].append(_time(audit, cached_env))
            runs["buttress audit (second run, cache)"].append(_time(audit, cached_env))
    medians = {name: statistics.median(times) for name, times in runs.items()}
    print(f"tree: {source} ({files} files, {lines} lines), median of {args.repeat}")
    print(f"{'command':40} {'seconds':>8}")
    for name, value in medians.items():
        print(f"{name:40} {value:8.2f}")
    speedup = medians["bandit -r"] / medians["buttress audit (no cache)"]
    second = (
        medians["buttress audit (second run, cache)"] / medians["buttress audit (first run, cache)"]
    )
    print(f"bandit / buttress (no cache): {speedup:.2f}x  (bar: >= 2x)  "
          f"{'PASS' if speedup >= 2 else 'FAIL'}")  # fmt: skip
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
