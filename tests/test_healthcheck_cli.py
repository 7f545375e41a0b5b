"""``buttress healthcheck URL`` (issue 16): exit codes against a real server on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buttress.cli import main
from tests.conftest import free_port, served

APP = """
import asyncio

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(3)
    status = {"/ok": 200, "/down": 503, "/moved": 302}.get(path, 200)
    headers = [(b"location", b"/ok")] if status == 302 else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"x"})
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> object:
    where = tmp_path_factory.mktemp("hc")
    (where / "svc.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "uvicorn", "svc:app", "--port", str(port), "--log-level", "error"]
    with served(args, f"{base}/ok", cwd=where, env=dict(os.environ)):
        yield base


def test_exit_codes(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["healthcheck", f"{server}/ok"]) == 0
    assert capsys.readouterr().err == ""  # nothing printed when healthy
    assert main(["healthcheck", f"{server}/down"]) == 1
    assert "HTTP 503" in capsys.readouterr().err
    assert main(["healthcheck", f"{server}/moved"]) == 1  # redirects are not followed
    assert "HTTP 302" in capsys.readouterr().err
    assert main(["healthcheck", "--quiet", f"{server}/down"]) == 1
    assert capsys.readouterr().err == ""
    started = time.monotonic()
    assert main(["healthcheck", "--timeout", "0.3", f"{server}/slow"]) == 1
    assert time.monotonic() - started < 2
    assert "no answer within 0.3 s" in capsys.readouterr().err


def test_refused_connection_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["healthcheck", f"http://127.0.0.1:{free_port()}/ok"]) == 1
    assert "cannot connect" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ftp://127.0.0.1/x"], "not an http"),
        (["http://10.1.2.3/health"], "not a loopback address"),
        (["--timeout", "0", "http://127.0.0.1:1/"], "--timeout"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["healthcheck", *argv]) == 2
    assert message in capsys.readouterr().err


def test_proxy_variables_are_ignored(server: str) -> None:
    """A container's HTTP_PROXY must not send the probe of localhost elsewhere."""
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    done = subprocess.run(  # noqa: S603 - this interpreter, the command under test
        [sys.executable, "-m", "buttress", "healthcheck", f"{server}/ok"],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""
    assert done.stderr == b""


def test_the_dockerfile_line_in_the_docs_is_this_command() -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "asgi.md").read_text()
    assert 'CMD ["buttress", "healthcheck", "http://127.0.0.1:8000/health/live"]' in docs
