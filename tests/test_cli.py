"""The README's main command, end to end, as a real process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from buttress.cli import main


def run_selfcheck(command: str, timeout: float) -> str:
    """``buttress COMMAND --selfcheck`` in a real process; its output, after checking it passed."""
    proc = subprocess.run(
        [sys.executable, "-m", "buttress.cli", command, "--selfcheck"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.process
def test_resilience_demo_selfcheck_passes_in_a_real_process() -> None:
    assert "selfcheck: 7 passed, 0 failed" in run_selfcheck("resilience-demo", 120)


@pytest.mark.parametrize(
    "argv",
    [
        ["resilience-demo", "--requests", "5"],
        ["resilience-demo", "--requests", "5000"],
        ["resilience-demo", "--concurrency", "0"],
    ],
)
def test_demo_refuses_unbounded_load(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "must be between" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith("buttress ")


@pytest.mark.process
def test_demo_service_selfcheck_passes_in_a_real_process() -> None:
    assert ", 0 failed" in run_selfcheck("demo", 180)
