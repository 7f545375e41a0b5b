"""What every store shares: the capability protocols, their value types, and the pure cores.

A store is written once. Each operation is a *command* built by pure code (a Lua script and
its arguments, an SQL statement and its parameters, or a function over an in-process
table) plus one tiny driver per flavour that sends it (``_run`` for sync, ``_arun`` for
async). No I/O code exists twice, and the decision logic of the embedded stores (memory,
SQLite) is the pure functions in this module, the same GCRA that
`buttress.resilience.RateLimiter` runs.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from buttress.errors import BackendError, ButtressError, ConfigurationError
from buttress.resilience._ratelimit import RateDecision

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

# Slack for "exactly on time" requests: float sums of intervals differ from products by ulps.
_EPSILON = 1e-6

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_RATE_RE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Rate:
    """A GCRA limit: ``limit`` requests per ``period`` seconds, bursts of up to ``burst``.

    ``burst`` defaults to ``limit`` (a fresh key may spend its whole quota at once, like a
    fixed window, but it refills smoothly instead of all at the window's end). Use
    `Rate.parse` for the string form.

    Example::

        Rate(100, 60.0)                 # 100 per minute
        Rate.parse("10/second;burst=20")
        Rate.parse("1000/day")
    """

    limit: int
    period: float
    burst: int = 0  # 0: same as limit

    def __post_init__(self) -> None:
        if not isinstance(self.limit, int) or isinstance(self.limit, bool) or self.limit < 1:
            raise ConfigurationError(f"Rate.limit must be an integer >= 1, got {self.limit!r}")
        if not isinstance(self.period, int | float) or not 0 < self.period < math.inf:
            raise ConfigurationError(
                f"Rate.period must be a finite number of seconds > 0, got {self.period!r}"
            )
        if not isinstance(self.burst, int) or isinstance(self.burst, bool) or self.burst < 0:
            raise ConfigurationError(
                f"Rate.burst must be an integer >= 1 (0: the same as limit), got {self.burst!r}"
            )
        if self.burst == 0:
            object.__setattr__(self, "burst", self.limit)
        object.__setattr__(self, "period", float(self.period))

    @property
    def interval(self) -> float:
        """Seconds between two requests at the sustained rate (GCRA's emission interval)."""
        return self.period / self.limit

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``"N/unit"``, ``"N/K unit"`` or ``"N per unit"``, with ``";burst=B"``.

        Units: s, second, m, minute, h, hour, d, day (and plurals).

        Example::

            Rate.parse("100/minute") == Rate(100, 60.0)
            Rate.parse("5/10s;burst=1") == Rate(5, 10.0, burst=1)
        """
        main, _, extra = str(text).partition(";")
        match = _RATE_RE.match(main)
        unit = _UNITS.get(match.group(3).lower()) if match else None
        if match is None or unit is None:
            raise ConfigurationError(
                f"rate {text!r}: expected 'N/unit' such as '10/second', '100/minute', "
                "'5/10s' or '1000/day', optionally followed by ';burst=B'"
            )
        burst = 0
        if extra:
            name, _, value = extra.partition("=")
            if name.strip().lower() != "burst" or not value.strip().isdigit():
                raise ConfigurationError(f"rate {text!r}: the only option is ';burst=<integer>'")
            burst = int(value)
        period = float(match.group(2) or 1) * unit
        return cls(int(match.group(1)), period, burst)

    def __str__(self) -> str:
        burst = "" if self.burst == self.limit else f";burst={self.burst}"
        return f"{self.limit}/{self.period:g}s{burst}"


@dataclass(frozen=True, slots=True)
class RateRequest:
    """One limit to check for one request: the key, its `Rate`, and the cost (default 1)."""

    key: str
    rate: Rate
    cost: int = 1


def gcra(
    tats: Sequence[float | None], now: float, requests: Sequence[RateRequest]
) -> tuple[list[RateDecision], list[float] | None]:
    """Decide several limits at once, all or nothing: the decisions and the new TATs.

    ``tats[i]`` is the stored theoretical arrival time of ``requests[i].key`` (None when
    absent). The new TATs are returned only when every limit admits the request; when any
    denies, nothing is consumed (a request refused by the daily quota does not spend the
    per-second burst). The Redis script and the PostgreSQL function are this function.
    """
    decisions: list[RateDecision] = []
    new: list[float] = []
    allowed_all = True
    for stored, req in zip(tats, requests, strict=True):
        interval = req.rate.interval
        tau = interval * req.rate.burst
        tat = now if stored is None or stored < now else stored
        new_tat = tat + interval * req.cost
        allow_at = new_tat - tau
        allowed = allow_at <= now + _EPSILON
        after = new_tat if allowed else tat
        remaining = max(0, math.floor((tau - (after - now) + _EPSILON) / interval))
        decisions.append(
            RateDecision(
                allowed=allowed,
                limit=req.rate.burst,
                remaining=remaining,
                retry_after=0.0 if allowed else allow_at - now,
                reset_after=max(after - now, 0.0),
            )
        )
        new.append(new_tat)
        allowed_all = allowed_all and allowed
    if allowed_all:
        return decisions, new
    # nothing consumed: report the allowed ones as they stand before this request
    return [
        d
        if not d.allowed
        else RateDecision(
            allowed=False,
            limit=d.limit,
            remaining=min(d.limit, d.remaining + r.cost),
            retry_after=0.0,
            reset_after=max(0.0, d.reset_after - r.rate.interval * r.cost),
        )
        for d, r in zip(decisions, requests, strict=True)
    ], None


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
