"""The command line: the README's main command end to end as a real process, ``python -m
buttress``, the help of every command, and one clear line (never a traceback) for a port in
use or a store that does not answer."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from buttress.cli import _console, _print_banner, main
from tests.conftest import free_port


def run_selfcheck(command: str, timeout: float, *args: str) -> str:
    """``python -m buttress COMMAND --selfcheck`` in a real process; its output, once passed."""
    proc = subprocess.run(
        [sys.executable, "-m", "buttress", command, "--selfcheck", *args],
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
    port = free_port()
    out = run_selfcheck("demo", 180, "--port", str(port))
    assert ", 0 failed" in out
    assert f"answering on http://127.0.0.1:{port}" in out  # --port is honoured
    # each result is printed once (not again in a table at the end)
    assert out.count("request id echoed") == 1
    assert len(re.findall(r"^\s+PASS\s", out, re.MULTILINE)) == int(
        re.search(r"selfcheck: (\d+) passed", out).group(1)
    )


def test_python_dash_m_buttress_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "buttress", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: buttress ")
    assert "resilience-demo" in proc.stdout
    assert "python -m buttress" in proc.stdout


@pytest.mark.parametrize("command", [[], ["demo"], ["resilience-demo"]])
def test_every_command_has_a_description_and_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*command, "--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith("usage: buttress")
    assert len(rest.split("\n\n")[0]) > 40  # a description, not just the options
    examples = text.partition("examples:\n")[2]
    assert examples.count("  buttress ") >= 2 or "python -m buttress" in examples


@pytest.mark.parametrize("selfcheck", [False, True])
def test_a_port_in_use_is_one_line_and_exit_2(
    selfcheck: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["demo", "--port", str(port), *(["--selfcheck"] if selfcheck else [])]
        assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
    assert "--port" in lines[0]
    assert "selfcheck:" not in captured.out  # refused before anything started


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("foo://x", "unknown scheme"),
        ("redis://user:s3cret@127.0.0.1:1/0", "ping failed"),  # nothing listens on port 1
        ("sqlite:////no/such/folder/buttress.db", "does not exist"),
    ],
)
def test_a_bad_store_url_is_one_line_and_exit_2(
    url: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--port", str(free_port()), "--store-url", url]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("buttress demo: --store-url ")
    assert expected in lines[0]
    assert "s3cret" not in captured.err  # a password never reaches the terminal


def test_the_banner_never_cuts_a_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUTTRESS_STORE_URL", "redis://app:s3cret@127.0.0.1:6379/0")
    # captured output is not a terminal: rich would wrap at 80 columns without soft_wrap
    _print_banner(_console(plain=True), "127.0.0.1", 18000, 4)
    out = capsys.readouterr().out
    commands = [line.strip() for line in out.splitlines() if line.strip().startswith("curl ")]
    assert len(commands) == 5
    post = next(c for c in commands if "-X POST" in c)
    assert post.endswith("""-d '{"sku": "abc", "quantity": 2}'""")
    assert max(len(c) for c in commands) > 80  # long enough that wrapping would have cut it
    for command in commands:
        assert command.count("'") % 2 == 0  # every quote closed on its own line
    assert "(4 workers, store redis://app:***@127.0.0.1:6379/0)" in out
