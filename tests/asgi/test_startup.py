"""A configuration error stops a starting server with one line; a missing extra is named.

Real servers on 127.0.0.1 (uvicorn with one and two workers, gunicorn with two uvicorn
workers), each bounded by a timeout and started in its own session, so that no worker
outlives its test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from buttress._startup import STARTUP_FAILURE, server_loading
from buttress.asgi import HardenSettings, harden
from buttress.errors import ConfigurationError
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
APP = """
from fastapi import FastAPI
from buttress.asgi import harden

app = harden(FastAPI())
"""
LINE = (
    "buttress: configuration error: HardenSettings(request_timeout=-3.0): seconds in "
    "(0, 3600], or None (set by BUTTRESS_REQUEST_TIMEOUT); the server stops"
)


def run_server(tmp_path: Path, argv: list[str], timeout: float = 60) -> tuple[int, str, float]:
    """Run a server on ``app:app`` with a bad setting; (exit code, stderr, seconds taken)."""
    (tmp_path / "app.py").write_text(APP)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "BUTTRESS_REQUEST_TIMEOUT": "-3",
        "BUTTRESS_REQUEST_TIMOUT": "5",  # and a typo, which gets its warning first
    }
    started = time.monotonic()
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-m", *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
        taken = time.monotonic() - started
        # no worker is left behind: the session empties (they were sent SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("a worker outlived the server")
        return proc.returncode, err.decode(errors="replace"), taken
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server still runs after {timeout} s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def assert_one_line_per_worker(err: str, workers: int) -> None:
    assert "Traceback" not in err, err
    assert err.count(LINE) == workers, err
    assert err.count("SettingsWarning: BUTTRESS_REQUEST_TIMOUT") == workers, err
    assert "did you mean BUTTRESS_REQUEST_TIMEOUT?" in err


def uvicorn(port: int, *extra: str) -> list[str]:
    return ["uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port), *extra]


@pytest.mark.process
def test_uvicorn_with_workers_stops_on_a_configuration_error(tmp_path: Path) -> None:
    code, err, taken = run_server(tmp_path, uvicorn(free_port(), "--workers", "2"))
    assert code != 0  # the supervisor too: it is stopped, then killed
    assert code == -signal.SIGKILL
    assert_one_line_per_worker(err, 2)
    assert "died" not in err  # no worker was restarted ("Child process [...] died")
    assert taken < 45


@pytest.mark.process
def test_single_process_uvicorn_exits_3_with_one_line(tmp_path: Path) -> None:
    code, err, _ = run_server(tmp_path, uvicorn(free_port()))
    assert code == STARTUP_FAILURE
    assert_one_line_per_worker(err, 1)


@pytest.mark.process
def test_gunicorn_halts_on_a_configuration_error(tmp_path: Path) -> None:
    from gunicorn.config import KNOWN_SETTINGS

    argv = ["gunicorn", "-w", "2", "-k", "uvicorn_worker.UvicornWorker"]
    argv += ["-b", f"127.0.0.1:{free_port()}"]
    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
        argv.append("--no-control-socket")  # gunicorn >= 24 opens one in ~
    code, err, _ = run_server(tmp_path, [*argv, "app:app"])
    assert code == STARTUP_FAILURE  # gunicorn's "Worker failed to boot."
    assert "Traceback" not in err, err
    assert LINE in err
    assert "Worker failed to boot" in err


def test_outside_a_server_the_error_is_an_ordinary_exception() -> None:
    assert server_loading() is None
    with pytest.raises(ConfigurationError, match="BUTTRESS_REQUEST_TIMEOUT"):
        HardenSettings.from_env({"BUTTRESS_REQUEST_TIMEOUT": "-3"})
    with pytest.raises(ConfigurationError, match=r"HardenSettings\(request_timeout=-3"):
        harden(bare_app, HardenSettings(request_timeout=-3))


async def bare_app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("never called")


BLOCKER = """
import sys

class NoStructlog:
    def find_spec(self, name, path=None, target=None):
        if name == "structlog" or name.startswith("structlog."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoStructlog())
"""


@pytest.mark.process
def test_harden_without_the_asgi_extra_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    script = textwrap.dedent(
        """
        from buttress.asgi import HardenSettings, harden
        from buttress.errors import ConfigurationError

        async def app(scope, receive, send): ...

        try:
            harden(app, HardenSettings())
        except ConfigurationError as exc:
            print(exc)
        harden(app, HardenSettings(configure_logging=False, access_log=False))
        print("without logging: fine")
        """
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "harden() needs structlog, which is not installed: pip install 'buttress[asgi]'",
        "without logging: fine",
    ]
