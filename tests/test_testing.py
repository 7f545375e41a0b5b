"""buttress.testing: FakeClock, instant retries, fault injection."""

from __future__ import annotations

import pytest

from buttress import ConfigurationError, Pipeline
from buttress.testing import FakeClock, FaultInjection, instant_retries, set_instant_retries


def test_fake_clock_timers_fire_in_order() -> None:
    clock = FakeClock(10.0)
    fired: list[str] = []
    clock.call_later(2.0, lambda: fired.append("b"))
    clock.call_later(1.0, lambda: fired.append("a"))
    cancelled = clock.call_later(1.5, lambda: fired.append("x"))
    cancelled.cancel()
    assert clock.pending_timers == 2
    clock.advance(1.0)
    assert fired == ["a"]
    clock.sleep(5.0)
    assert fired == ["a", "b"]
    assert clock.now() == 16.0
    assert clock.sleeps == [5.0]
    with pytest.raises(ConfigurationError):
        clock.advance(-1)


def test_instant_retries_switch_restores_the_previous_value() -> None:
    from buttress.resilience import _retry

    with instant_retries():
        assert _retry.instant_retries_enabled()
        with instant_retries():
            assert _retry.instant_retries_enabled()
        assert _retry.instant_retries_enabled()
    assert not _retry.instant_retries_enabled()
    set_instant_retries(True)
    set_instant_retries(False)
    assert not _retry.instant_retries_enabled()


def test_fault_injection_is_reproducible() -> None:
    def outcomes(seed: int) -> list[bool]:
        chaos = FaultInjection(error_rate=0.5, seed=seed)
        pipe = Pipeline(chaos)
        result = []
        for _ in range(50):
            try:
                pipe.call(lambda: None)
                result.append(True)
            except ConnectionError:
                result.append(False)
        return result

    assert outcomes(3) == outcomes(3)
    assert outcomes(3) != outcomes(4)
    assert 10 < outcomes(3).count(False) < 40


def test_fault_injection_latency_and_error_kinds() -> None:
    clock = FakeClock()
    chaos = FaultInjection(
        latency=0.3, latency_rate=1.0, error=TimeoutError("slow"), error_rate=1.0, clock=clock
    )
    with pytest.raises(TimeoutError, match="slow"):
        Pipeline(chaos).call(lambda: None)
    assert clock.sleeps == [0.3]
    chaos.enabled = False
    assert Pipeline(chaos).call(lambda: 5) == 5
    with pytest.raises(ConfigurationError, match="error"):
        FaultInjection(error=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="error_rate"):
        FaultInjection(error_rate=2)
