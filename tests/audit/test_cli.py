"""``python -m buttress audit``: gates and exit codes, formats, options (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
NAIVE = HERE / "samples" / "naive"
HARDENED = HERE / "samples" / "hardened"


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buttress", "audit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={**os.environ, "BUTTRESS_AUDIT_CACHE": "off"},  # no cache written into the samples
    )


@pytest.mark.parametrize(
    ("path", "gates", "code"),
    [
        (NAIVE, [], 0),  # no gate set: findings alone never fail
        (NAIVE, ["--fail-on", "P0"], 1),
        (NAIVE, ["--fail-under", "7"], 1),
        (NAIVE, ["--fail-under-level", "bronze"], 1),
        (HARDENED, ["--fail-on", "P2", "--fail-under", "10", "--fail-under-level", "gold"], 0),
    ],
)
def test_gates_set_the_exit_code(path: Path, gates: list[str], code: int) -> None:
    proc = run(path, "--format", "json", *gates)
    assert proc.returncode == code, proc.stderr
    data = json.loads(proc.stdout)
    assert data.get("gate", {"passed": True})["passed"] is (code == 0)
    if code:
        assert "gate failed" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["does-not-exist"],
        [NAIVE, "--select", "BTR999"],
        [NAIVE, "--fail-on", "P5"],
        [NAIVE, "--format", "xml"],
        [NAIVE, "--baseline", HERE / "corpus" / "btr001.py"],
    ],
)
def test_usage_errors_exit_2(args: list[str | Path]) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert proc.stderr
    assert "Traceback" not in proc.stderr


def test_baseline_round_trip_fails_only_on_new_findings(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    first = run(NAIVE, "--format", "json", "--write-baseline", baseline, "--fail-on", "P0")
    assert first.returncode == 1
    again = run(
        NAIVE,
        "--format",
        "sarif",
        "--baseline",
        baseline,
        "--fail-on",
        "P0",
        "--output",
        tmp_path / "out.sarif",
    )
    assert again.returncode == 0, again.stderr
    results = json.loads((tmp_path / "out.sarif").read_text())["runs"][0]["results"]
    assert {r["baselineState"] for r in results} == {"unchanged"}


def test_select_ignore_markdown_and_terminal(tmp_path: Path) -> None:
    proc = run(NAIVE, "--format", "markdown", "--select", "BTR001,BTR601", "--ignore", "BTR601")
    assert proc.returncode == 0
    assert "BTR001" in proc.stdout
    assert "| P0 | BTR601" not in proc.stdout
    term = run(NAIVE, "--output", tmp_path / "out.txt")
    text = (tmp_path / "out.txt").read_text()
    assert term.returncode == 0
    assert "level none" in text
    assert "\x1b[" not in text


def test_help_describes_the_command_with_examples() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "buttress", "audit", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "examples:" in proc.stdout
    assert "--fail-under-level" in proc.stdout
    assert "docs/audit.md" in proc.stdout


def test_demo_does_not_import_the_audit_package() -> None:
    code = (
        "import sys, buttress.cli; buttress.cli._parser(); print('buttress.audit' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "False"


def test_the_cache_answers_a_second_run(tmp_path: Path) -> None:
    env = {**os.environ, "BUTTRESS_AUDIT_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "buttress", "audit", str(NAIVE), "--format", "json"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, env=env)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert list((tmp_path / "cache").glob("*.json"))
    assert json.loads(first.stdout)["findings"] == json.loads(second.stdout)["findings"]


def test_jobs_choose_the_processes_and_the_report_does_not_change() -> None:
    one = run(NAIVE, "--format", "json", "--jobs", "1")
    two = run(NAIVE, "--format", "json", "--jobs", "2")
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    strip = lambda out: {k: v for k, v in json.loads(out).items() if k != "summary"}  # noqa: E731
    assert strip(one.stdout) == strip(two.stdout)
    bad = run(NAIVE, "--jobs", "0")
    assert bad.returncode == 2
    assert "--jobs 0" in bad.stderr
