"""Events, hooks, the logging and Prometheus hooks."""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry

from buttress import Backoff, CircuitBreaker, Pipeline, Retry
from buttress.asgi import HardenSettings, harden
from buttress.asgi._logging import format_traceback
from buttress.errors import ErrorCode
from buttress.telemetry import (
    CircuitStateChangedEvent,
    LoggingHook,
    PrometheusHook,
    RetryScheduledEvent,
    add_hook,
    clear_hooks,
    emit,
    global_hooks,
    remove_hook,
)
from buttress.testing import FakeClock
from tests.conftest import captured_logs


def test_events_are_frozen_and_serialisable() -> None:
    event = RetryScheduledEvent(
        pipeline="p",
        policy="retry",
        attempt=1,
        delay=0.5,
        error=ConnectionError("x"),
        code=ErrorCode.UPSTREAM_UNAVAILABLE,
    )
    with pytest.raises(AttributeError):
        event.attempt = 2  # type: ignore[misc]
    data = event.as_dict()
    assert data == {
        "pipeline": "p",
        "policy": "retry",
        "attempt": 1,
        "delay": 0.5,
        "error": "ConnectionError",
        "code": "upstream_unavailable",
        "event": "retry_scheduled",
    }


def test_pipeline_hooks_and_global_hooks_both_receive() -> None:
    mine: list[str] = []
    everyone: list[str] = []
    hook = lambda e: everyone.append(e.kind)  # noqa: E731
    add_hook(hook)
    add_hook(hook)  # idempotent
    assert global_hooks().count(hook) == 1
    try:
        clock = FakeClock()
        pipe = Pipeline(
            Retry(attempts=2, backoff=Backoff.constant(0.1), clock=clock),
            hooks=[lambda e: mine.append(e.kind)],
            name="hooked",
        )
        calls = 0

        def flaky() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError

        pipe.call(flaky)
    finally:
        remove_hook(hook)
    assert mine == everyone == ["retry_scheduled"]


def test_a_failing_hook_never_breaks_the_call(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("hook bug")

    with caplog.at_level(logging.ERROR, logger="buttress"):
        emit(
            CircuitStateChangedEvent(
                policy="b", from_state="closed", to_state="open", generation=1
            ),
            [broken],
        )
    assert "hook" in caplog.text


def test_logging_hook_stdlib_fallback(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_structlog(name: str, *args, **kwargs):
        if name == "structlog":
            raise ImportError
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_structlog)
    hook = LoggingHook(logger_name="buttress.test")
    with caplog.at_level(logging.INFO, logger="buttress.test"):
        hook(
            CircuitStateChangedEvent(
                policy="db", from_state="closed", to_state="open", generation=1
            )
        )
    record = caplog.records[0]
    assert record.levelno == logging.WARNING
    assert "circuit_state_changed" in record.getMessage()
    assert record.buttress["to_state"] == "open"  # type: ignore[attr-defined]


def test_logging_hook_structlog(capsys: pytest.CaptureFixture[str]) -> None:
    import structlog

    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(),
    )
    try:
        LoggingHook()(
            CircuitStateChangedEvent(
                policy="db", from_state="closed", to_state="open", generation=1
            )
        )
    finally:
        structlog.reset_defaults()
    out = capsys.readouterr().out
    assert '"event": "circuit_state_changed"' in out
    assert '"to_state": "open"' in out


def test_prometheus_hook_counts_events() -> None:
    registry = CollectorRegistry()
    hook = PrometheusHook(registry=registry)
    clock = FakeClock()
    breaker = CircuitBreaker(consecutive_failures=1, name="inventory", clock=clock, hooks=[hook])
    pipe = Pipeline(
        Retry(attempts=2, backoff=Backoff.constant(0.0), clock=clock),
        breaker,
        name="inv",
        hooks=[hook],
    )

    def down() -> None:
        raise ConnectionError

    with pytest.raises(Exception):  # noqa: B017, PT011 - ConnectionError then CircuitOpen
        pipe.call(down)
    value = registry.get_sample_value
    assert (
        value(
            "buttress_retries_total",
            {"pipeline": "inv", "policy": "retry", "code": "upstream_unavailable"},
        )
        == 1.0
    )
    assert value("buttress_circuit_state", {"breaker": "inventory"}) == 1.0
    assert (
        value(
            "buttress_rejections_total",
            {"pipeline": "inv", "policy": "inventory", "code": "circuit_open"},
        )
        == 1.0
    )
    assert (
        value("buttress_circuit_transitions_total", {"breaker": "inventory", "to_state": "open"})
        == 1.0
    )


def teardown_module() -> None:
    clear_hooks()


# ------------------------------------------------------------------ console tracebacks
SECRET = "tok-" + "S3CRET" * 3  # never written out in this file's source


class _Outer:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        authorization = f"Bearer {SECRET}"  # a local the old console renderer printed
        headers = [(b"authorization", authorization.encode())] * 20
        scope = {**scope, "seen": len(headers)}
        await self.app(scope, receive, send)


class _Inner(_Outer):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        api_key = SECRET
        scope = {**scope, "key": len(api_key)}
        await self.app(scope, receive, send)


async def _failing_app(scope: Any, receive: Any, send: Any) -> None:
    token = SECRET
    raise RuntimeError(f"the handler failed ({len(token)})")


def _deep_stack(layers: int = 60) -> Any:
    app: Any = _failing_app
    for i in range(layers):  # alternating classes: no "[Previous line repeated]" folding
        app = (_Outer if i % 2 else _Inner)(app)
    return app


@pytest.fixture
def console_stream() -> Iterator[io.StringIO]:
    with captured_logs(json=False) as stream:
        yield stream


async def test_console_traceback_has_no_locals_is_bounded_and_fast(
    console_stream: io.StringIO,
) -> None:
    try:
        await _deep_stack()({"type": "http"}, None, None)
    except RuntimeError as exc:
        error = exc
    started = time.perf_counter()
    structlog.get_logger("t").error("unhandled_exception", exc_info=error)
    elapsed = time.perf_counter() - started
    text = console_stream.getvalue()
    assert SECRET not in text  # no local variable values
    assert len(text.splitlines()) <= 125
    assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms"  # rich with locals: hundreds of ms
    assert "RuntimeError: the handler failed (22)" in text
    assert "_failing_app" in text  # the innermost frames are kept


async def test_console_traceback_of_a_request_through_harden(
    console_stream: io.StringIO,
) -> None:
    hardened = harden(_deep_stack(), HardenSettings(configure_logging=False, access_log=False))
    transport = httpx.ASGITransport(app=hardened, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        started = time.perf_counter()
        response = await client.get("/boom", headers={"authorization": f"Bearer {SECRET}"})
        elapsed = time.perf_counter() - started
    assert response.status_code == 500
    text = console_stream.getvalue()
    assert "unhandled" in text
    assert "RuntimeError" in text
    assert SECRET not in text
    assert len(text.splitlines()) <= 125
    assert elapsed < 0.25, f"{elapsed * 1000:.1f} ms"


def test_format_traceback_bounds_chains_and_long_lines() -> None:
    def chain(depth: int) -> None:
        try:
            if depth == 0:
                raise ValueError("x" * 5000)
            chain(depth - 1)
        except (ValueError, KeyError) as exc:
            raise KeyError(depth) from exc

    try:
        chain(30)
    except KeyError:
        text = format_traceback(sys.exc_info())
    lines = text.splitlines()
    assert len(lines) <= 120
    assert max(len(line) for line in lines) <= 330
    assert "lines left out" in text
    assert lines[-1].startswith("KeyError: 30")  # the outermost exception ends the text
    assert format_traceback((None, None, None)) == ""
