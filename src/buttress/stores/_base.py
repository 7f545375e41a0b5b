"""What every store shares: the capability protocols, their value types, and the pure cores.

A store is written once. Each operation is a *command* built by pure code (a Lua script and
its arguments, an SQL statement and its parameters, or a function over an in-process
table) plus one tiny driver per flavour that sends it (``_run`` for sync, ``_arun`` for
async). No I/O code exists twice. Rate limits are GCRA, from `buttress._gcra` (the same
arithmetic `buttress.resilience.RateLimiter` runs): `Rate`, `RateRequest`, `RateDecision`
and `gcra` are re-exported here.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from buttress._gcra import Rate, RateDecision, RateRequest, gcra
from buttress.errors import BackendError, ButtressError

if TYPE_CHECKING:
    from buttress._clock import Clock

__all__ = [
    "Begin",
    "BeginOutcome",
    "BreakerReport",
    "BreakerStateStore",
    "IdempotencyStore",
    "Rate",
    "RateDecision",
    "RateLimitStore",
    "RateRequest",
    "Store",
    "StoredResponse",
    "backend_errors",
    "gcra",
    "store_key",
]


# ---------------------------------------------------------------- idempotency
class BeginOutcome(enum.Enum):
    """What `IdempotencyStore.begin` found for a key."""

    ACQUIRED = "acquired"  # the caller owns the key now and must complete or release it
    IN_FLIGHT = "in_flight"  # another request holds a live lease on it (409)
    MISMATCH = "mismatch"  # the key was used with another payload (422)
    REPLAY = "replay"  # a response is stored: replay it


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response kept for replay: status, headers (raw ASGI pairs) and body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def encode(self) -> bytes:
        """A compact binary form (length-prefixed; no JSON escaping of bodies)."""
        parts = [struct.pack(">HI", self.status, len(self.headers))]
        for name, value in self.headers:
            parts.append(struct.pack(">HI", len(name), len(value)))
            parts.append(name)
            parts.append(value)
        parts.append(self.body)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> StoredResponse:
        """The inverse of `encode`; raises `BackendError` on a damaged record."""
        try:
            view = memoryview(data)
            status, count = struct.unpack_from(">HI", view, 0)
            at = 6
            headers = []
            for _ in range(count):
                name_len, value_len = struct.unpack_from(">HI", view, at)
                at += 6
                name = bytes(view[at : at + name_len])
                at += name_len
                value = bytes(view[at : at + value_len])
                at += value_len
                if len(value) != value_len:
                    raise ValueError("truncated header")
                headers.append((name, value))
            return cls(status, tuple(headers), bytes(view[at:]))
        except (struct.error, ValueError) as exc:
            raise BackendError(f"stored idempotent response is damaged: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Begin:
    """The answer of `IdempotencyStore.begin`.

    Attributes:
        outcome: see `BeginOutcome`.
        token: for ACQUIRED, the lease token to pass to renew/complete/release.
        response: for REPLAY, the stored response.
        retry_after: for IN_FLIGHT, seconds until the holder's lease runs out.
    """

    outcome: BeginOutcome
    token: str = ""
    response: StoredResponse | None = None
    retry_after: float = 0.0


# ---------------------------------------------------------------- breaker state
@dataclass(frozen=True, slots=True)
class BreakerReport:
    """One instance's last published state of one breaker (``closed``/``open``/``half_open``)."""

    instance: str
    state: str
    age: float  # seconds since it was published


# ---------------------------------------------------------------- protocols
@runtime_checkable
class RateLimitStore(Protocol):
    """Atomic GCRA decisions over keys shared by every process using the store."""

    def acquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """Decide every limit at once, consuming from all of them only if all admit."""
        ...

    async def aacquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """Async `acquire`."""
        ...


@runtime_checkable
class IdempotencyStore(Protocol):
    """Leased, fingerprinted idempotency records (the Idempotency-Key protocol's state).

    ``begin`` takes the key when it is free, or when its holder's lease has expired (a
    crashed worker cannot wedge a key); ``complete`` stores the response for ``ttl``
    seconds; ``release`` frees the key (the next duplicate runs again). Only the holder of
    the current ``token`` can renew, complete or release.
    """

    def begin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """Take ``key`` for ``lease`` seconds, or say why not."""
        ...

    async def abegin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """Async `begin`."""
        ...

    def renew(self, key: str, token: str, lease: float) -> bool:
        """Extend the lease; False when the token no longer holds the key."""
        ...

    async def arenew(self, key: str, token: str, lease: float) -> bool:
        """Async `renew`."""
        ...

    def complete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        """Store the response for replay; False when the token no longer holds the key."""
        ...

    async def acomplete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        """Async `complete`."""
        ...

    def release(self, key: str, token: str) -> None:
        """Free the key (when the token still holds it) so a retry runs again."""
        ...

    async def arelease(self, key: str, token: str) -> None:
        """Async `release`."""
        ...


@runtime_checkable
class BreakerStateStore(Protocol):
    """Where breakers publish their state and read the fleet's."""

    def publish(self, name: str, instance: str, state: str, ttl: float) -> None:
        """Record this instance's state of breaker ``name``; it expires after ``ttl`` s."""
        ...

    async def apublish(self, name: str, instance: str, state: str, ttl: float) -> None:
        """Async `publish`."""
        ...

    def reports(self, name: str) -> list[BreakerReport]:
        """The unexpired reports of every instance for breaker ``name``."""
        ...

    async def areports(self, name: str) -> list[BreakerReport]:
        """Async `reports`."""
        ...


@runtime_checkable
class Store(RateLimitStore, IdempotencyStore, BreakerStateStore, Protocol):
    """Every capability, plus a health check and closing (what `open_store` returns)."""

    url: str

    def ping(self) -> None:
        """Raise `BackendError` when the store does not answer."""
        ...

    async def aping(self) -> None:
        """Async `ping`."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...

    async def aclose(self) -> None:
        """Async `close`."""
        ...


# ---------------------------------------------------------------- helpers
def store_key(namespace: str, kind: str, key: str) -> str:
    """The stored name of a caller's key: hashed, bounded, and Redis Cluster safe.

    The caller's key (an API key, a user id, an Idempotency-Key) never reaches the store
    in clear: it is hashed (BLAKE2b, 128 bits), so store dumps leak nothing and any
    unicode or oversized key maps to a short ASCII name. The hash is the hash tag, so one
    key's records live in one cluster slot.

    Example::

        store_key("buttress", "rl", "user:42")   # 'buttress:rl:{3f0c...}'
    """
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"{namespace}:{kind}:{{{digest}}}"


@contextmanager
def backend_errors(store: str, operation: str) -> Iterator[None]:
    """Turn any driver error inside the block into `BackendError` (``__cause__`` kept).

    Our own errors and cancellation pass through unchanged.
    """
    try:
        yield
    except ButtressError:
        raise
    except Exception as exc:  # the one place driver errors are mapped
        raise BackendError(
            f"{store} {operation} failed: {type(exc).__name__}: {exc}".rstrip(": ")
        ) from exc


def clock_now(clock: Clock | None) -> float | None:
    """``clock.now()``, or None to let the server's own clock decide."""
    return None if clock is None else clock.now()
