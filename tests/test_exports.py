"""The public names of DESIGN.md import from where they are promised (httpx's test_exported_members)."""

from __future__ import annotations

import inspect

import buttress
import buttress.asgi
import buttress.asgi.context
import buttress.asgi.health
import buttress.asgi.idempotency
import buttress.asgi.keys
import buttress.asgi.metrics
import buttress.asgi.middleware
import buttress.asgi.problems
import buttress.asgi.security
import buttress.asgi.shedding
import buttress.clock
import buttress.errors
import buttress.resilience
import buttress.stores
import buttress.telemetry
import buttress.testing


def test_design_contract_names_import_from_buttress() -> None:
    from buttress import (  # noqa: F401
        Backoff,
        Bulkhead,
        CircuitBreaker,
        Fallback,
        Hedge,
        Pipeline,
        RateLimiter,
        Retry,
        RetryBudget,
        Timeout,
        deadline,
    )
    from buttress.errors import (  # noqa: F401
        BackendError,
        BulkheadFull,
        ButtressError,
        CircuitOpen,
        ConfigurationError,
        DeadlineExceeded,
        ErrorCode,
        RateLimited,
        Rejected,
    )
    from buttress.testing import FakeClock  # noqa: F401


def test_clock_is_public_where_its_signatures_use_it() -> None:
    from buttress import Clock
    from buttress.clock import SYSTEM_CLOCK, SystemClock
    from buttress.testing import Clock as TestingClock
    from buttress.testing import FakeClock

    assert Clock is TestingClock is buttress.clock.Clock
    assert Clock.__module__ == "buttress.clock"
    assert isinstance(SYSTEM_CLOCK, SystemClock)
    assert isinstance(SYSTEM_CLOCK, Clock)
    assert isinstance(FakeClock(), Clock)


def test_policy_hooks_are_public() -> None:
    from buttress.resilience import AsyncLink, BuildContext, Policy, SyncLink  # noqa: F401

    assert "wrap" in vars(Policy)
    assert "awrap" in vars(Policy)


def test_all_is_exact() -> None:
    for module in (
        buttress,
        buttress.asgi,
        buttress.clock,
        buttress.errors,
        buttress.resilience,
        buttress.stores,
        buttress.telemetry,
        buttress.testing,
    ):
        names = module.__all__
        assert len(names) == len(set(names)), module.__name__  # ruff RUF022 keeps the order
        for name in names:
            assert hasattr(module, name), f"{module.__name__}.{name}"
        public = {
            n
            for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", "") == module.__name__
        }
        missing = public - set(names) - {"Any", "annotations"}
        assert not missing, f"{module.__name__} exports {missing} without listing them"


def test_every_public_name_is_documented() -> None:
    for module in (
        buttress.asgi,
        buttress.clock,
        buttress.resilience,
        buttress.errors,
        buttress.stores,
        buttress.telemetry,
        buttress.testing,
    ):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert (obj.__doc__ or "").strip(), f"{module.__name__}.{name} has no docstring"


ASGI_MODULES = (
    buttress.asgi.context,
    buttress.asgi.health,
    buttress.asgi.idempotency,
    buttress.asgi.metrics,
    buttress.asgi.middleware,
    buttress.asgi.problems,
    buttress.asgi.security,
    buttress.asgi.shedding,
)


def test_buttress_asgi_exports_what_a_service_calls_and_names_the_rest() -> None:
    top = set(buttress.asgi.__all__)
    assert {"harden", "HardenSettings", "RateLimitRule", "Limit", "current_request_id"} <= top
    classes_and_functions = {n for n in top if not inspect.ismodule(getattr(buttress.asgi, n))}
    assert len(classes_and_functions) <= 12, sorted(classes_and_functions)
    seen: dict[str, str] = {}
    for module in ASGI_MODULES:
        assert (module.__doc__ or "").strip(), module.__name__
        assert len(module.__all__) == len(set(module.__all__)), module.__name__
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert (obj.__doc__ or "").strip(), f"{module.__name__}.{name} has no docstring"
            # one public home per name (current_request_id is also at the top, on purpose)
            assert name not in seen, f"{name} in {seen.get(name)} and {module.__name__}"
            seen[name] = module.__name__
    # every middleware of the package is in buttress.asgi.middleware
    from buttress.asgi._runner import Stage

    stages = {
        obj.__name__
        for module in ASGI_MODULES
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Stage)
    }
    assert stages <= set(buttress.asgi.middleware.__all__)
