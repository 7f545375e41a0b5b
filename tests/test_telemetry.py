"""Events, hooks, the logging and Prometheus hooks."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from buttress import Backoff, CircuitBreaker, Pipeline, Retry
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
