"""`MemoryStore`: every capability in this process's memory (the default for one process).

One lock guards the tables, so every operation is atomic (a stronger guarantee than a
lock per key, and cheaper at this size: an operation holds it for a microsecond).

The rate-limit TATs and the idempotency records each live in a bounded
`buttress._expiry.ExpiryTable` (``max_keys`` entries and ``max_bytes`` bytes per table):
expired entries are dropped a few at a time as new ones arrive (O(log n) each, never a
scan), an entry that still carries state is never dropped to make room, and a new key that
finds its table full of live entries is refused, never admitted by forgetting another's.
"""

from __future__ import annotations

import math
import secrets
import struct
import sys
import threading
from collections.abc import Sequence

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress._expiry import ENTRY_BYTES, MAX_KEYS, ExpiryTable
from buttress._gcra import RateDecision, RateRequest, decide, gcra
from buttress.errors import BackendError, ConfigurationError
from buttress.stores._base import Begin, BeginOutcome, BreakerReport, StoredResponse

__all__ = ["MemoryStore"]


# A record is one bytes object: (lease end or expiry, completed?, token, fingerprint length)
# packed, then the fingerprint, then, once completed, the response in its
# `StoredResponse.encode` form. Not a container, so the garbage collector never visits it
# and the tables' dicts stay untracked: a million records cost a full collection nothing
# (a dataclass holding a StoredResponse costs ~40 ms per full collection at 100k records).
_HEAD = struct.Struct(">d?16sH")  # until, completed, token, len(fingerprint)
_UNTIL = struct.Struct(">d")


def _record(until: float, done: bool, token: bytes, fingerprint: bytes, body: bytes) -> bytes:
    return _HEAD.pack(until, done, token, len(fingerprint)) + fingerprint + body


def _until(record: bytes) -> float:
    until: float = _UNTIL.unpack_from(record)[0]
    return until


def _tat_size(key: str, tat: float) -> int:
    return ENTRY_BYTES + sys.getsizeof(key)


def _record_size(key: str, record: bytes) -> int:
    return ENTRY_BYTES + sys.getsizeof(key) + sys.getsizeof(record)


def _no_room(
    requests: Sequence[RateRequest], decisions: list[RateDecision], wait: float
) -> list[RateDecision]:
    """Every limit denied and nothing counted: a new key found the table full of live keys."""
    if math.isinf(wait):  # more new keys (or bytes) than the bounds hold: say the longest period
        wait = max(r.rate.period for r in requests)
    return [
        RateDecision(
            allowed=False,
            limit=d.limit,
            remaining=0,
            retry_after=wait,
            reset_after=max(0.0, d.reset_after - r.rate.interval * r.cost),
        )
        for d, r in zip(decisions, requests, strict=True)
    ]


class MemoryStore:
    """All store capabilities in memory; state is lost with the process.

    Args:
        url: ``memory://`` (kept for symmetry with the other stores).
        clock: time source (default: the monotonic system clock; tests pass a FakeClock).
        max_keys: entries at most in each table, rate-limit keys and idempotency records
            (default 1,000,000). Expired entries are dropped as needed; live ones never.
            A *new* rate-limit key that finds its table full of live keys is denied, with
            ``retry_after`` the time until the earliest one expires (nothing is counted); a
            `begin` of a new idempotency key raises `BackendError` (the middleware answers
            503 with ``Retry-After``: the handler never runs unprotected).
        max_bytes: memory budget of each table (default 256 MiB), approximate: each
            entry counts the ``sys.getsizeof`` of its key and of its record (fingerprint,
            token and the stored status, headers and body, packed in one bytes object)
            plus ~170 bytes of bookkeeping. Checked like ``max_keys`` when a new key
            arrives. `complete` always stores its response, so the records may overshoot
            by at most the records in flight times the largest response.
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
        max_keys: int = 1_000_000,
        max_bytes: int = 256 << 20,
        namespace: str = "buttress",
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(
                f"MemoryStore namespace must be a non-empty string, got {namespace!r}"
            )
        if (
            isinstance(max_keys, bool)
            or not isinstance(max_keys, int)
            or not 1 <= max_keys <= MAX_KEYS
        ):
            raise ConfigurationError(
                f"MemoryStore max_keys must be an integer in [1, 2**32), got {max_keys!r}"
            )
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1 << 16:
            raise ConfigurationError(
                f"MemoryStore max_bytes must be an integer >= 65536, got {max_bytes!r}"
            )
        self.url = url
        self.clock = clock or SYSTEM_CLOCK
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._tats: ExpiryTable[str, float] = ExpiryTable(
            max_keys, max_bytes, expiry=float, size=_tat_size
        )
        # the one-key path reads and updates a key's shard dict in place (ExpiryTable.shards)
        self._shards = self._tats.shards
        self._mask = self._tats.mask
        self._put = self._tats.put
        self._records: ExpiryTable[str, bytes] = ExpiryTable(
            max_keys, max_bytes, expiry=_until, size=_record_size
        )
        # per breaker name, one report per instance: a handful, dropped when read expired
        self._breakers: dict[str, dict[str, tuple[str, float, float]]] = {}

    def __repr__(self) -> str:
        return f"MemoryStore({self.url!r})"

    # ------------------------------------------------------------ rate limits
    def acquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """Decide every limit at once (see `buttress.stores.RateLimitStore`)."""
        now = self.clock.now()
        if len(requests) != 1:
            return self._acquire_many(requests, now)
        # One key, the common case: `buttress._gcra.decide` on the key's shard, in place.
        req = requests[0]
        key = req.key
        rate = req.rate
        interval = rate.period / rate.limit
        tau = interval * rate.burst
        shard = self._shards[hash(key) & self._mask]
        # A TAT only moves forward (a key is dropped only once its TAT has passed), so a
        # denial read without the lock is as exact as one read with it: an over-limit key
        # costs no lock.
        stored = shard.get(key)
        decision, new = decide(stored, now, interval, tau, rate.burst, req.cost)
        if new is None:
            return [decision]
        lock = self._lock
        lock.acquire()
        try:
            current = shard.get(key)
            if current is not stored:  # written meanwhile: decide again on what is there
                stored = current
                decision, new = decide(stored, now, interval, tau, rate.burst, req.cost)
                if new is None:
                    return [decision]
            if stored is not None:
                shard[key] = new  # a present key, same size: the table's in-place update
                return [decision]
            wait = self._put(key, new, now)  # a new key needs room
        finally:
            lock.release()
        if wait:
            return _no_room(requests, [decision], wait)
        return [decision]

    def _acquire_many(self, requests: Sequence[RateRequest], now: float) -> list[RateDecision]:
        with self._lock:
            tats = self._tats
            stored = [tats.get(r.key) for r in requests]
            decisions, new = gcra(stored, now, requests)
            if new is None:
                return decisions
            # new keys need room, all of them or none (then nothing is counted)
            fresh = [
                (r.key, tat)
                for r, tat, old in zip(requests, new, stored, strict=True)
                if old is None
            ]
            if len(fresh) > 1:
                wait = tats.room(fresh, now)
            elif fresh:
                wait = tats.put(fresh[0][0], fresh[0][1], now)
            else:
                wait = 0.0
            if wait:
                return _no_room(requests, decisions, wait)
            for r, tat, old in zip(requests, new, stored, strict=True):
                if old is not None:
                    tats.update(r.key, tat)
                elif len(fresh) > 1:
                    tats.put(r.key, tat, now)  # room was made: never refused
        return decisions

    async def aacquire(self, requests: Sequence[RateRequest]) -> list[RateDecision]:
        """Async `acquire` (no I/O: runs inline)."""
        return self.acquire(requests)

    # ------------------------------------------------------------ idempotency
    def begin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """Take ``key`` or say why not (see `buttress.stores.IdempotencyStore`)."""
        now = self.clock.now()
        fp = fingerprint.encode()
        with self._lock:
            record = self._records.get(key)
            if record is not None:
                until, done, _, size = _HEAD.unpack_from(record)
                if until > now:  # not expired
                    start = _HEAD.size
                    if record[start : start + size] != fp:
                        return Begin(BeginOutcome.MISMATCH)
                    if done:
                        response = StoredResponse.decode(record[start + size :])
                        return Begin(BeginOutcome.REPLAY, response=response)
                    return Begin(BeginOutcome.IN_FLIGHT, retry_after=until - now)
            token = secrets.token_hex(8)
            records = self._records
            wait = records.put(key, _record(now + lease, False, token.encode(), fp, b""), now)
            if wait:  # never by dropping a live record: refused, and the caller answers 503
                bound = "max_keys" if len(records) >= records.max_keys else "max_bytes"
                raise BackendError(
                    f"MemoryStore idempotency records are full of live records ({bound}="
                    f"{getattr(records, bound):,}); room in {wait:.3g} s",
                    retry_after=wait,
                )
            return Begin(BeginOutcome.ACQUIRED, token=token)

    async def abegin(self, key: str, fingerprint: str, lease: float) -> Begin:
        """Async `begin`."""
        return self.begin(key, fingerprint, lease)

    def _held(self, key: str, token: str) -> bytes | None:
        # lock held. A lease that ran out holds nothing, taken over or not (as in Redis,
        # where the record expires with the lease).
        record = self._records.get(key)
        if record is None:
            return None
        until, done, held_by, _ = _HEAD.unpack_from(record)
        if held_by != token.encode() or done or until <= self.clock.now():
            return None  # another holder's, completed, or expired
        return record

    def renew(self, key: str, token: str, lease: float) -> bool:
        """Extend the lease of the current holder."""
        with self._lock:
            record = self._held(key, token)
            if record is None:
                return False
            renewed = _UNTIL.pack(self.clock.now() + lease) + record[_UNTIL.size :]
            self._records.update(key, renewed)  # the same size: a replacement in place
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
            now = self.clock.now()
            _, _, held_by, size = _HEAD.unpack_from(record)
            fp = record[_HEAD.size : _HEAD.size + size]
            stored = _record(now + ttl, True, held_by, fp, response.encode())
            self._records.put(key, stored, now)  # a present key: never refused
            return True

    async def acomplete(self, key: str, token: str, response: StoredResponse, ttl: float) -> bool:
        """Async `complete`."""
        return self.complete(key, token, response, ttl)

    def release(self, key: str, token: str) -> None:
        """Free the key when ``token`` still holds it."""
        with self._lock:
            if self._held(key, token) is not None:
                self._records.delete(key)

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
