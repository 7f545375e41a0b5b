"""A store whose every round trip is measured for the meters of `buttress.telemetry`.

`metered` wraps a Redis, PostgreSQL or SQLite store (the memory store makes no round trip
and is returned as it is): each operation reads the clock before and after and gives
``(system, operation, seconds, outcome)`` to `buttress.telemetry.record_store_call`, which
`PrometheusMeter` turns into ``buttress_store_calls_total`` and
``buttress_store_call_duration_seconds`` and ``buttress.otel.OtelMeter`` into OpenTelemetry's
``db.client.operation.duration``. The wrapped store is unchanged; the wrapper forwards
every call and adds one frame. ``harden()`` applies it when ``metrics_detail`` is on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.stores._base import (
    Begin,
    BreakerReport,
    RateDecision,
    RateRequest,
    Store,
    StoredResponse,
)
from buttress.telemetry import outcome_of, record_store_call

__all__ = ["MeteredStore", "metered"]

T = TypeVar("T")

_SYSTEMS = {
    "redis": "redis",
    "rediss": "redis",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "sqlite": "sqlite",
}


def metered(store: Store, *, clock: Clock = SYSTEM_CLOCK) -> Store:
    """``store`` with its round trips measured (a memory store, or one already metered, as is)."""
    if isinstance(store, MeteredStore):
        return store
    system = _SYSTEMS.get(urlsplit(store.url).scheme.lower())
    if system is None:
        return store
    return MeteredStore(store, system, clock=clock)


class MeteredStore:
    """A `Store` that measures every operation of the store it wraps (see `metered`)."""

    def __init__(self, store: Store, system: str, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.inner = store
        self.system = system
        self.url = store.url
        self._now = clock.now

    def __repr__(self) -> str:
        return f"metered({self.inner!r})"

    def _call(self, operation: str, fn: Callable[..., T], *args: Any) -> T:
        start = self._now()
        try:
            result = fn(*args)
        except BaseException as exc:
            record_store_call(self.system, operation, self._now() - start, outcome_of(exc))
            raise
        record_store_call(self.system, operation, self._now() - start, "ok")
        return result

    async def _acall(self, operation: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        start = self._now()
        try:
            result = await fn(*args)
        except BaseException as exc:
            record_store_call(self.system, operation, self._now() - start, outcome_of(exc))
            raise
        record_store_call(self.system, operation, self._now() - start, "ok")
        return result

    # ------------------------------------------------------------ rate limits
    def acquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """`Store.acquire`, measured."""
        return self._call("acquire", self.inner.acquire, requests)

    async def aacquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """`Store.aacquire`, measured."""
        return await self._acall("acquire", self.inner.aacquire, requests)

    # ------------------------------------------------------------ idempotency
    def begin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """`Store.begin`, measured."""
        return self._call("begin", self.inner.begin, key, fingerprint, lease)

    async def abegin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """`Store.abegin`, measured."""
        return await self._acall("begin", self.inner.abegin, key, fingerprint, lease)

    def renew(self, key: str, token: str, lease: float) -> bool:
        """`Store.renew`, measured."""
        return self._call("renew", self.inner.renew, key, token, lease)

    async def arenew(self, key: str, token: str, lease: float) -> bool:
        """`Store.arenew`, measured."""
        return await self._acall("renew", self.inner.arenew, key, token, lease)

    def complete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        """`Store.complete`, measured."""
        return self._call("complete", self.inner.complete, key, token, response, ttl)

    async def acomplete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        """`Store.acomplete`, measured."""
        return await self._acall("complete", self.inner.acomplete, key, token, response, ttl)

    def release(self, key: str, token: str) -> None:
        """`Store.release`, measured."""
        self._call("release", self.inner.release, key, token)

    async def arelease(self, key: str, token: str) -> None:
        """`Store.arelease`, measured."""
        await self._acall("release", self.inner.arelease, key, token)

    # ------------------------------------------------------------ breaker state
    def publish(self, name: str, instance: str, state: str, ttl: float) -> None:
        """`Store.publish`, measured."""
        self._call("publish", self.inner.publish, name, instance, state, ttl)

    async def apublish(self, name: str, instance: str, state: str, ttl: float) -> None:
        """`Store.apublish`, measured."""
        await self._acall("publish", self.inner.apublish, name, instance, state, ttl)

    def reports(self, name: str) -> list[BreakerReport]:
        """`Store.reports`, measured."""
        return self._call("reports", self.inner.reports, name)

    async def areports(self, name: str) -> list[BreakerReport]:
        """`Store.areports`, measured."""
        return await self._acall("reports", self.inner.areports, name)

    # ------------------------------------------------------------ lifecycle
    def ping(self) -> None:
        """`Store.ping`, measured."""
        self._call("ping", self.inner.ping)

    async def aping(self) -> None:
        """`Store.aping`, measured."""
        await self._acall("ping", self.inner.aping)

    def close(self) -> None:
        """Close the wrapped store."""
        self.inner.close()

    async def aclose(self) -> None:
        """Close the wrapped store."""
        await self.inner.aclose()
