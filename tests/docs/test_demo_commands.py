"""The curl commands the docs show for the demo, run against the demo itself.

The demo (``buttress demo``) is started on a free loopback port with a fresh orders
database; the commands are taken from the docs as written, with the port replaced:

- docs/shared-state.md, the ``Idempotency-Key`` transcript (``console`` block): every line
  it shows must appear in the real output, in order (request ids vary: ``...``);
- docs/asgi.md, "The demo" (``bash`` block): each curl command gets the status below.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, served

ROOT = Path(__file__).resolve().parents[2]
DEMO = "127.0.0.1:8000"

#: docs/asgi.md's demo commands, in order: the status each must get.
ASGI_DEMO_STATUSES = [
    ("GET /orders", 200),
    ("POST /orders", 201),
    ("GET /orders/1", 200),
    ("POST /orders", 422),  # the invalid order
    ("GET /price/abc", 200),
    ("GET /boom", 500),
    ("GET /slow?seconds=9", 504),  # the 5 s deadline
    ("GET /slow?seconds=2", 504),  # x-request-timeout: 0.5
    ("GET /health", 200),
    ("GET /metrics", 200),
]


def fenced_blocks(path: Path, language: str) -> Iterator[tuple[str, str]]:
    """(the heading above, the text) of each ``language`` block of ``path``."""
    heading = ""
    text = path.read_text()
    for match in re.finditer(
        r"^(#+ [^\n]*)$|^```([\w-]*)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL
    ):
        if match.group(1):
            heading = match.group(1)
        elif match.group(2) == language:
            yield heading, match.group(3)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo, served as `buttress demo` serves it, on a free port: its base address."""
    port = free_port()
    env = {**os.environ, "BUTTRESS_DEMO_DB": str(tmp_path_factory.mktemp("demo") / "o.db")}
    env.pop("BUTTRESS_STORE_URL", None)
    code = "import sys; from buttress.cli import main; sys.exit(main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, "demo", "--host", "127.0.0.1", "--port", str(port)]
    with served(args, f"http://127.0.0.1:{port}/health/live", env=env):
        yield f"127.0.0.1:{port}"


def sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - commands from the docs, against loopback
        ["/bin/sh", "-c", command], capture_output=True, text=True, timeout=30, check=False
    )


def _pattern(shown: str) -> re.Pattern[str]:
    """A shown line as a pattern: request ids vary."""
    shown = re.sub(r'"request_id":"[0-9a-f]{32}"', '"request_id":"..."', shown)
    return re.compile(".*".join(map(re.escape, shown.split("..."))))


@pytest.mark.process
def test_the_idempotency_key_transcript(demo: str) -> None:
    [(_, transcript)] = [
        block
        for block in fenced_blocks(ROOT / "docs/shared-state.md", "console")
        if "Idempotency-Key" in block[1]
    ]
    steps = re.split(r"^\$ ", transcript, flags=re.MULTILINE)[1:]
    assert len(steps) == 5
    for step in steps:
        command, _, shown = step.partition("\n")
        while command.endswith("\\"):  # continuation lines
            more, _, shown = shown.partition("\n")
            command = command[:-1] + " " + more.strip()
        assert DEMO in command
        out = sh(command.replace(DEMO, demo))
        assert out.returncode == 0, (command, out.stderr)
        got = [line.rstrip("\r") for line in out.stdout.splitlines()]
        at = 0
        for line in shown.splitlines():
            pattern = _pattern(line)
            while at < len(got) and not pattern.fullmatch(got[at]):
                at += 1
            assert at < len(got), f"{command}\nshown: {line}\ngot:\n{out.stdout}"
            at += 1


@pytest.mark.process
def test_the_demo_commands(demo: str) -> None:
    [block] = [
        text
        for heading, text in fenced_blocks(ROOT / "docs/asgi.md", "bash")
        if heading == "## The demo"
    ]
    commands = [
        re.sub(r"\s+#[^'\"]*$", "", line).replace(DEMO, demo)
        for line in block.splitlines()
        if line.startswith("curl ")
    ]
    assert len(commands) == len(ASGI_DEMO_STATUSES), "one status per command, in order"

    def status(command: str) -> str:
        if "|" in command:  # a filtered command: the filter finds something
            out = sh(command)
            return "200" if out.returncode == 0 and out.stdout.strip() else out.stdout
        return sh(f"{command} -o /dev/null -w '%{{http_code}}'").stdout[-3:]

    # in order (the POST before GET /orders/1), the slow ones meanwhile
    with concurrent.futures.ThreadPoolExecutor() as pool:
        slow = {c: pool.submit(status, c) for c in commands if "/slow" in c}
        got = [slow[c].result() if c in slow else status(c) for c in commands]
    want = [str(code) for _, code in ASGI_DEMO_STATUSES]
    assert got == want, list(zip(commands, got, want, strict=True))
