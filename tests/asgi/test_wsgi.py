"""harden() around WSGI apps: a real Flask app (and a bare WSGI callable) through a2wsgi."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask, abort, make_response, request
from prometheus_client import CollectorRegistry, generate_latest

from buttress import RateLimited
from buttress.asgi import HardenSettings, Limit, RateLimitRule, current_request_id, harden
from buttress.asgi._wsgi import asgi_app, is_wsgi_app
from buttress.errors import ConfigurationError
from tests.conftest import assert_problem, free_port

SETTINGS = HardenSettings(configure_logging=False, request_timeout=0.5, max_body_bytes=1024)


def flask_app() -> Flask:
    app = Flask("orders")

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> dict[str, Any]:
        if order_id == 0:
            abort(404, description="order 0 does not exist")
        return {
            "id": order_id,
            "request_id": current_request_id(),
            "scope_request_id": request.environ["asgi.scope"]["state"]["request_id"],
        }

    @app.post("/orders")
    def create() -> tuple[dict[str, Any], int]:
        return {"created": request.get_json()}, 201

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    @app.get("/busy")
    def busy() -> None:
        raise RateLimited("the pricing quota is spent", retry_after=7.0)

    release, finished = threading.Event(), threading.Event()
    app.extensions["gates"] = (release, finished)

    @app.get("/slow")
    def slow() -> Any:
        release.wait(5.0)  # past the deadline: the thread is not cancelled, it runs on
        response = make_response("late")
        # set when a2wsgi closes the body, after its last send to the loop: a test that
        # waits for it ends with no WSGI thread still handing messages to its loop (one
        # scheduled on a loop being closed never runs, and that thread then blocks the
        # interpreter's exit, joining the executor)
        response.call_on_close(finished.set)
        return response

    @app.get("/limited")
    def limited() -> str:
        return "ok"

    return app


def client_for(app: Any, **kwargs: Any) -> httpx.AsyncClient:
    hardened = harden(app, kwargs.pop("settings", SETTINGS), **kwargs)
    transport = httpx.ASGITransport(app=hardened, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_flask_gets_ids_headers_and_its_own_errors_as_problem_json() -> None:
    registry = CollectorRegistry()
    async with client_for(flask_app(), registry=registry) as client:
        ok = await client.get("/orders/7", headers={"x-request-id": "req-flask-1"})
        missing = await client.get("/orders/0")
        no_route = await client.get("/no/such/route")
        wrong_method = await client.delete("/orders/7")
        boom = await client.get("/boom")
        busy = await client.get("/busy")
        created = await client.post("/orders", json={"sku": "abc"})
    assert ok.status_code == 200
    assert ok.headers["x-request-id"] == "req-flask-1"
    # the view sees the id: the adapter copies the context into its thread
    assert ok.json() == {"id": 7, "request_id": "req-flask-1", "scope_request_id": "req-flask-1"}
    for name in ("strict-transport-security", "x-content-type-options", "x-frame-options"):
        assert name in ok.headers
    assert "traceresponse" in ok.headers
    assert assert_problem(missing, 404, "not_found")["detail"] == "order 0 does not exist"
    assert "detail" not in assert_problem(no_route, 404, "not_found")  # no werkzeug boilerplate
    assert_problem(wrong_method, 405, "method_not_allowed")
    assert "GET" in wrong_method.headers["allow"]
    assert_problem(boom, 500, "internal_error")
    assert "secret" not in boom.text
    assert "hunter2" not in boom.text
    assert "x-frame-options" in boom.headers
    assert_problem(busy, 429, "rate_limited")
    assert busy.headers["retry-after"] == "7"
    assert created.status_code == 201
    assert created.json() == {"created": {"sku": "abc"}}
    text = generate_latest(registry).decode()
    assert 'route="/orders/{order_id}"' in text  # Flask's rule, in the ASGI spelling


# a2wsgi's worker thread, still in the handler the deadline gave up on, hands its answer
# to the loop with run_coroutine_threadsafe(queue.put(...)); when the test's loop has
# closed by then, that coroutine is never awaited (a2wsgi's race, after the test's checks)
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <coroutine object Queue.put:pytest.PytestUnraisableExceptionWarning"
)
async def test_flask_rate_limit_body_limit_and_deadline() -> None:
    rule = RateLimitRule([Limit("flask", "2/minute")], path="/limited")
    app = flask_app()
    release, finished = app.extensions["gates"]
    async with client_for(app, rate_limits=[rule]) as client:
        answers = [await client.get("/limited") for _ in range(3)]
        too_big = await client.post("/orders", content=b"x" * 4096)
        started = time.monotonic()
        late = await client.get("/slow")
        took = time.monotonic() - started
        assert not finished.is_set()
        release.set()  # let the thread end while the loop still runs
        assert await asyncio.to_thread(finished.wait, 5.0)
    assert [a.status_code for a in answers[:2]] == [200, 200]
    assert_problem(answers[2], 429, "rate_limited")
    assert answers[2].headers["retry-after"]
    assert "ratelimit-policy" in answers[2].headers
    assert_problem(too_big, 413, "payload_too_large")
    # the client gets its 504 on time; the WSGI thread runs on to its end (documented)
    assert_problem(late, 504, "deadline_exceeded")
    assert took < 1.5


async def test_the_apps_own_error_handlers_win() -> None:
    app = flask_app()

    @app.errorhandler(404)
    def not_found(exc: Exception) -> tuple[str, int]:
        return "<h1>our own 404 page</h1>", 404

    async with client_for(app) as client:
        missing = await client.get("/nowhere")
        boom = await client.get("/boom")
    assert missing.status_code == 404
    assert "our own 404 page" in missing.text
    assert_problem(boom, 500, "internal_error")


async def test_a_bare_wsgi_callable_is_served() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("secret")
        start_response("200 OK", [("content-type", "text/plain")])
        return [f"hello {current_request_id()}".encode()]

    async with client_for(app) as client:
        ok = await client.get("/", headers={"x-request-id": "req-bare"})
        boom = await client.get("/boom")
    assert (ok.status_code, ok.text) == (200, "hello req-bare")
    assert_problem(boom, 500, "internal_error")  # escaped the WSGI app: buttress answers
    assert "secret" not in boom.text


async def test_an_a2wsgi_wrapped_flask_app_keeps_its_pool_and_gets_the_handlers() -> None:
    from a2wsgi import WSGIMiddleware

    wrapped = WSGIMiddleware(flask_app(), workers=2)
    assert asgi_app(wrapped) is wrapped
    async with client_for(wrapped) as client:
        assert_problem(await client.get("/nowhere"), 404, "not_found")


def test_wsgi_detection() -> None:
    from django.core.handlers.wsgi import WSGIHandler

    def wsgi(environ: Any, start_response: Any) -> list[bytes]:
        return []

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        pass

    class AsgiClass:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            pass

    assert is_wsgi_app(flask_app())
    assert is_wsgi_app(wsgi)
    assert is_wsgi_app(object.__new__(WSGIHandler))  # Django's (its __init__ needs settings)
    assert not is_wsgi_app(asgi)
    assert not is_wsgi_app(AsgiClass())
    assert not is_wsgi_app(harden(asgi, SETTINGS))
    assert not is_wsgi_app(lambda *args: None)  # unknown: taken for ASGI, as before
    assert asgi_app(asgi) is asgi


def test_without_a2wsgi_harden_refuses_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "a2wsgi", None)  # import a2wsgi now raises ImportError
    with pytest.raises(ConfigurationError) as caught:
        harden(flask_app(), SETTINGS)
    message = str(caught.value)
    assert "\n" not in message
    assert "Flask is a WSGI app" in message
    assert "pip install 'buttress[wsgi]'" in message


APP_MODULE = """
from flask import Flask, abort
from buttress.asgi import HardenSettings, Limit, RateLimitRule, harden

flask_app = Flask("served")

@flask_app.get("/hello")
def hello():
    return {"hello": "world"}

@flask_app.get("/missing")
def missing():
    abort(404)

@flask_app.get("/boom")
def boom():
    raise RuntimeError("secret internals")

app = harden(
    flask_app,
    HardenSettings(log_json=True, drain_delay=0.1),
    rate_limits=[RateLimitRule([Limit("hello", "3/minute")], path="/hello")],
)
"""


@pytest.mark.process
def test_flask_under_a_real_uvicorn(tmp_path: Path) -> None:
    (tmp_path / "flask_main.py").write_text(textwrap.dedent(APP_MODULE))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(  # noqa: S603
            [
                sys.executable,
                "-m",
                "uvicorn",
                "flask_main:app",
                "--app-dir",
                str(tmp_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-proxy-headers",
                "--no-access-log",
                "--log-level",
                "warning",
            ],  # fmt: skip
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, err_path.read_text()
            try:
                httpx.get(f"{base}/health/live", timeout=1.0).raise_for_status()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.1)
        with httpx.Client(base_url=base, timeout=5.0) as client:
            hello = [client.get("/hello", headers={"x-request-id": f"h{i}"}) for i in range(4)]
            missing = client.get("/missing")
            boom = client.get("/boom")
        assert [r.status_code for r in hello] == [200, 200, 200, 429]
        assert hello[0].json() == {"hello": "world"}
        assert hello[0].headers["x-request-id"] == "h0"
        assert "strict-transport-security" in hello[0].headers
        assert_problem(hello[3], 429, "rate_limited")
        assert_problem(missing, 404, "not_found")
        assert_problem(boom, 500, "internal_error")
        assert "secret" not in boom.text
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert code in (0, -signal.SIGTERM)
    out = out_path.read_text()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("path") == "/boom" and "status" in line]
    assert access
    assert access[0]["status"] == 500
    assert access[0]["route"] == "/boom"
    # Flask logged the exception (through buttress's JSON logging) with the request id
    errors = [line for line in lines if "Exception on /boom" in str(line.get("event"))]
    assert errors
    assert errors[0]["request_id"] == boom.headers["x-request-id"]
