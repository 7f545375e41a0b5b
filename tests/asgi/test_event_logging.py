"""Resilience events logged by default under harden(): levels, rate limiting, installed once."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette

from buttress import CircuitBreaker, Pipeline, telemetry
from buttress.asgi import HardenSettings, harden
from buttress.errors import ErrorCode
from buttress.telemetry import (
    HARDEN_LOGGED_EVENTS,
    CallRejectedEvent,
    CircuitStateChangedEvent,
    FallbackUsedEvent,
    LoggingHook,
    RateLimitedEvent,
    RateLimitFallbackEvent,
    RetryGaveUpEvent,
    RetryScheduledEvent,
    install_event_logging,
)
from buttress.testing import FakeClock
from tests.conftest import captured_logs


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    with captured_logs(json=True) as stream:
        yield stream


@pytest.fixture
def no_default_hook() -> Iterator[None]:
    """The default event-logging hook removed before and after the test."""

    def remove() -> None:
        for hook in telemetry.global_hooks():
            if isinstance(hook, LoggingHook) and hook.logger_name == "buttress.resilience":
                telemetry.remove_hook(hook)

    remove()
    yield
    remove()


def logged(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def opened(policy: str = "db", to_state: str = "open") -> CircuitStateChangedEvent:
    return CircuitStateChangedEvent(
        policy=policy, from_state="closed", to_state=to_state, generation=1
    )


def test_levels_say_what_needs_attention(out: io.StringIO) -> None:
    hook = LoggingHook(logger_name="t")
    hook(RetryScheduledEvent(policy="retry", attempt=1, delay=0.1))
    hook(RetryGaveUpEvent(policy="retry", attempts=3, elapsed=1.0, reason="attempts"))
    hook(opened(to_state="open"))
    hook(opened(to_state="half_open"))
    hook(opened(to_state="closed"))
    hook(FallbackUsedEvent(policy="fallback"))
    hook(RateLimitFallbackEvent(policy="rl", engaged=True, mode="open"))
    hook(RateLimitFallbackEvent(policy="rl", engaged=False, mode="open"))
    levels = [(r["event"], r.get("to_state", r.get("engaged")), r["level"]) for r in logged(out)]
    assert levels == [
        ("retry_scheduled", None, "info"),
        ("retry_gave_up", None, "warning"),
        ("circuit_state_changed", "open", "warning"),
        ("circuit_state_changed", "half_open", "info"),
        ("circuit_state_changed", "closed", "info"),
        ("fallback_used", None, "info"),
        ("rate_limit_fallback", True, "warning"),
        ("rate_limit_fallback", False, "info"),
    ]


def test_a_storm_is_one_line_per_key_and_interval_then_a_count(out: io.StringIO) -> None:
    clock = FakeClock(100.0)
    hook = LoggingHook(logger_name="t", interval=10.0, clock=clock)
    for _ in range(50):
        hook(RetryScheduledEvent(pipeline="p", policy="retry", attempt=1, delay=0.1))
        clock.advance(0.1)  # 5 s in all: within one interval
    hook(RetryScheduledEvent(pipeline="q", policy="retry", attempt=1, delay=0.1))  # other key
    assert [(r["pipeline"], r.get("suppressed")) for r in logged(out)] == [
        ("p", None),
        ("q", None),
    ]
    clock.advance(5.5)  # over 10 s after the first line
    hook(RetryScheduledEvent(pipeline="p", policy="retry", attempt=2, delay=0.1))
    hook(RetryScheduledEvent(pipeline="p", policy="retry", attempt=2, delay=0.1))
    last = logged(out)[2:]
    assert [(r["pipeline"], r["suppressed"]) for r in last] == [("p", 49)]


def test_breaker_states_are_separate_keys(out: io.StringIO) -> None:
    clock = FakeClock()
    hook = LoggingHook(logger_name="t", interval=10.0, clock=clock)
    for state in ("open", "half_open", "closed", "open", "half_open", "closed"):
        hook(opened(to_state=state))
        clock.advance(1.0)
    # each state once within the interval: the breaker's last word (closed) is seen
    assert [r["to_state"] for r in logged(out)] == ["open", "half_open", "closed"]
    clock.advance(10.0)
    hook(opened(to_state="open"))
    assert logged(out)[-1]["suppressed"] == 1


def test_only_the_chosen_events_are_logged(out: io.StringIO) -> None:
    hook = LoggingHook(logger_name="t", events=HARDEN_LOGGED_EVENTS)
    hook(CallRejectedEvent(policy="db", code=ErrorCode.CIRCUIT_OPEN))
    hook(RateLimitedEvent(policy="b", route="/x", key_hash="k", retry_after=1))
    hook(opened())
    assert [r["event"] for r in logged(out)] == ["circuit_state_changed"]


@pytest.mark.parametrize("interval", [-1, float("nan"), True, "10"])
def test_interval_is_validated(interval: Any) -> None:
    from buttress.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="interval"):
        LoggingHook(interval=interval)


def test_the_throttle_forgets_quiet_keys_when_full(out: io.StringIO) -> None:
    clock = FakeClock()
    hook = LoggingHook(logger_name="t", interval=1.0, clock=clock)
    for i in range(1100):
        hook(opened(policy=f"b{i}"))
    assert len(hook._last) <= 1024
    assert len(logged(out)) == 1100  # distinct keys are never suppressed


def test_harden_logs_events_once_however_often_it_is_called(
    out: io.StringIO, no_default_hook: None
) -> None:
    settings = HardenSettings(metrics=False, log_json=True)
    harden(Starlette(), settings)
    harden(Starlette(), settings)
    installed = [
        h
        for h in telemetry.global_hooks()
        if isinstance(h, LoggingHook) and h.logger_name == "buttress.resilience"
    ]
    assert len(installed) == 1
    assert installed[0] is install_event_logging()  # the same hook, still one
    with captured_logs(json=True) as stream:  # harden configured logging: capture again
        telemetry.emit(opened(policy="payments"))
    [line] = logged(stream)
    assert (line["event"], line["policy"], line["level"]) == (
        "circuit_state_changed",
        "payments",
        "warning",
    )
    assert line["logger"] == "buttress.resilience"


def test_log_events_off_installs_nothing(no_default_hook: None) -> None:
    with captured_logs(json=True):
        harden(Starlette(), HardenSettings(metrics=False, log_json=True, log_events=False))
        harden(Starlette(), HardenSettings(metrics=False, configure_logging=False))
    assert not [
        h
        for h in telemetry.global_hooks()
        if isinstance(h, LoggingHook) and h.logger_name == "buttress.resilience"
    ]


async def test_a_breaker_opening_five_times_is_logged(no_default_hook: None) -> None:
    clock = FakeClock()
    hook = install_event_logging(interval=10.0, clock=clock)
    breaker = CircuitBreaker(consecutive_failures=1, break_duration=1.0, name="db", clock=clock)
    pipe = Pipeline(breaker, name="orders-db")

    async def fail() -> None:
        raise ConnectionError("down")

    with captured_logs(json=True) as stream:
        for _ in range(5):
            with pytest.raises(ConnectionError):
                await pipe.acall(fail)
            clock.advance(11.0)  # past the break and the log interval
    telemetry.remove_hook(hook)
    opens = [r for r in logged(stream) if r.get("to_state") == "open"]
    assert len(opens) == 5
    assert {r["level"] for r in opens} == {"warning"}
    assert {r["policy"] for r in opens} == {"db"}


def test_stdlib_logging_without_structlog_still_throttles(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_structlog(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "structlog":
            raise ImportError
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_structlog)
    clock = FakeClock()
    hook = LoggingHook(logger_name="buttress.test", interval=5.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="buttress.test"):
        hook(opened())
        hook(opened())
        clock.advance(5.0)
        hook(opened())
    assert [r.buttress.get("suppressed") for r in caplog.records] == [None, 1]  # type: ignore[attr-defined]
