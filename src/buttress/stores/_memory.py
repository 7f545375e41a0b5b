"""`MemoryStore`: every capability in this process's memory (the default for one process).

One lock guards the tables, so every operation is atomic (a stronger guarantee than a
lock per key, and cheaper at this size: an operation holds it for a microsecond). Expired
entries are swept when a table grows past ``max_keys``, amortised O(1) per operation.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import ConfigurationError
from buttress.stores._base import (
    Begin,
    BeginOutcome,
    BreakerReport,
    RateDecision,
    RateRequest,
    StoredResponse,
    gcra,
)

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Record:
    fingerprint: str
    token: str
    until: float  # lease end while in flight, expiry once completed
    response: StoredResponse | None = None


class MemoryStore:
    """All store capabilities in memory; state is lost with the process.

    Args:
        url: ``memory://`` (kept for symmetry with the other stores).
        clock: time source (default: the monotonic system clock; tests pass a FakeClock).
        max_keys: entries per table before expired ones are swept.
        namespace: accepted for symmetry with the shared stores (one process's memory
            needs no namespace).

    Example::

        store = MemoryStore()
        [d] = store.acquire([RateRequest("user:1", Rate.parse("5/second"))])
        d.allowed, d.remaining      # (True, 4)
    """

    def __init__(
        self,
        url: str = "memory://",
        *,
        clock: Clock | None = None,
        max_keys: int = 100_000,
        namespace: str = "buttress",
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(
                f"MemoryStore namespace must be a non-empty string, got {namespace!r}"
            )
        if not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigurationError(f"MemoryStore max_keys must be >= 1, got {max_keys!r}")
        self.url = url
        self.clock = clock or SYSTEM_CLOCK
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._tats: dict[str, float] = {}
        self._records: dict[str, _Record] = {}
        self._breakers: dict[str, dict[str, tuple[str, float, float]]] = {}
        self._sweep_at = max_keys

    def __repr__(self) -> str:
        return f"MemoryStore({self.url!r})"

    # ------------------------------------------------------------ rate limits
    def acquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """Decide every limit at once (see `buttress.stores.RateLimitStore`)."""
        now = self.clock.now()
        with self._lock:
            tats = self._tats
            decisions, new = gcra([tats.get(r.key) for r in requests], now, requests)
            if new is not None:
                for req, tat in zip(requests, new, strict=True):
                    tats[req.key] = tat
                if len(tats) > self._sweep_at:
                    self._sweep(now)
        return decisions

    async def aacquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """Async `acquire` (no I/O: runs inline)."""
        return self.acquire(requests)

    def _sweep(self, now: float) -> None:
        # lock held
        for table in (self._tats,):
            for k in [k for k, tat in table.items() if tat <= now]:
                del table[k]
        records = self._records
        for k in [k for k, r in records.items() if r.until <= now]:
            del records[k]
        size = max(len(self._tats), len(self._records))
        self._sweep_at = max(self.max_keys, size + self.max_keys // 2)

    # ------------------------------------------------------------ idempotency
    def begin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """Take ``key`` or say why not (see `buttress.stores.IdempotencyStore`)."""
        now = self.clock.now()
        with self._lock:
            record = self._records.get(key)
            if record is not None and record.until > now:
                if record.fingerprint != fingerprint:
                    return Begin(BeginOutcome.MISMATCH)
                if record.response is not None:
                    return Begin(BeginOutcome.REPLAY, response=record.response)
                return Begin(BeginOutcome.IN_FLIGHT, retry_after=record.until - now)
            token = secrets.token_hex(8)
            self._records[key] = _Record(fingerprint, token, now + lease)
            if len(self._records) > self._sweep_at:
                self._sweep(now)
            return Begin(BeginOutcome.ACQUIRED, token=token)

    async def abegin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """Async `begin`."""
        return self.begin(key, fingerprint, lease)

    def _held(self, key: str, token: str) -> _Record | None:
        # lock held. A lease that ran out holds nothing, taken over or not (as in Redis,
        # where the record expires with the lease).
        record = self._records.get(key)
        if (
            record is None
            or record.token != token
            or record.response is not None
            or record.until <= self.clock.now()
        ):
            return None
        return record

    def renew(self, key: str, token: str, lease: float) -> bool:
        """Extend the lease of the current holder."""
        with self._lock:
            record = self._held(key, token)
            if record is None:
                return False
            record.until = self.clock.now() + lease
            return True

    async def arenew(self, key: str, token: str, lease: float) -> bool:
        """Async `renew`."""
        return self.renew(key, token, lease)

    def complete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        """Store the response for ``ttl`` seconds."""
        with self._lock:
            record = self._held(key, token)
            if record is None:
                return False
            record.response = response
            record.until = self.clock.now() + ttl
            return True

    async def acomplete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        """Async `complete`."""
        return self.complete(key, token, response, ttl)

    def release(self, key: str, token: str) -> None:
        """Free the key when ``token`` still holds it."""
        with self._lock:
            if self._held(key, token) is not None:
                del self._records[key]

    async def arelease(self, key: str, token: str) -> None:
        """Async `release`."""
        self.release(key, token)

    # ------------------------------------------------------------ breaker state
    def publish(self, name: str, instance: str, state: str, ttl: float) -> None:
        """Record ``instance``'s state of breaker ``name`` for ``ttl`` seconds."""
        now = self.clock.now()
        with self._lock:
            self._breakers.setdefault(name, {})[instance] = (state, now, now + ttl)

    async def apublish(self, name: str, instance: str, state: str, ttl: float) -> None:
        """Async `publish`."""
        self.publish(name, instance, state, ttl)

    def reports(self, name: str) -> list[BreakerReport]:
        """Unexpired reports for breaker ``name`` (expired ones are dropped)."""
        now = self.clock.now()
        with self._lock:
            table = self._breakers.get(name, {})
            for instance in [i for i, (_, _, until) in table.items() if until <= now]:
                del table[instance]
            return [
                BreakerReport(instance, state, now - at)
                for instance, (state, at, _) in sorted(table.items())
            ]

    async def areports(self, name: str) -> list[BreakerReport]:
        """Async `reports`."""
        return self.reports(name)

    # ------------------------------------------------------------ lifecycle
    def ping(self) -> None:
        """Always answers."""

    async def aping(self) -> None:
        """Always answers."""

    def close(self) -> None:
        """Forget everything."""
        with self._lock:
            self._tats.clear()
            self._records.clear()
            self._breakers.clear()

    async def aclose(self) -> None:
        """Async `close`."""
        self.close()
