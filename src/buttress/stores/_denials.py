"""`LocalDenials`: an in-process cache that answers rate-limit denials without a round trip.

When a store denies a request, its reply carries each key's TAT (GCRA's theoretical arrival
time) on the server's clock. The cache remembers those TATs, with the offset between the
server's clock and the local one measured as ``server_now - sent_at``, where ``sent_at`` is
the local time at which the request was *sent*. Later requests for cached keys run the pure
`gcra` locally, at the estimated server time ``local_now + offset``:

* if it denies, the answer is returned without asking the store (an over-limit client
  costs a dictionary lookup and a little arithmetic instead of a network call);
* if it admits, the store decides as usual.

This never refuses a request the store would admit: a TAT only grows (other processes can
only spend more), and the measured offset includes the request's latency, so the estimated
server time is never behind the real one. With a shared fake clock (tests) the offset is
exactly 0 and the local answers equal the store's, number for number.

Store-agnostic: it runs `buttress._gcra` (`decide` for one key, `gcra` for several),
knows nothing about Redis or SQL; a store only has to return the TATs it read and its own
time.

Bounded in entries and bytes with least-recently-recorded eviction, O(1) per entry (an
`OrderedDict` per shard, as in `buttress._expiry`, so no dict rebuild copies more than ~16k
entries): dropping an entry only loses a shortcut, the store still decides.

Example::

    denials = LocalDenials()
    decisions = denials.check(requests, local_now)     # None: ask the store
    if decisions is None:
        tats, server_now = ask_the_store(requests)     # the stored TATs, before this request
        decisions, new = gcra(tats, server_now, requests)
        if new is None:
            denials.record(requests, tats, server_now, local_now)
"""

from __future__ import annotations

import math
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence

from buttress._expiry import SHARD_KEYS
from buttress._gcra import RateDecision, RateRequest, decide, gcra
from buttress.errors import ConfigurationError

__all__ = ["LocalDenials"]

# Bytes one entry costs besides its key: an OrderedDict entry and its (TAT, offset) tuple
# (tracemalloc, CPython 3.11, 64-bit).
_ENTRY_BYTES = 200


def _entry_size(key: str) -> int:
    return _ENTRY_BYTES + sys.getsizeof(key)


class LocalDenials:
    """A bounded, thread-safe map of key -> (TAT, clock offset) (see the module doc).

    Args:
        max_entries: keys remembered at most (default 10,000); when full, the least
            recently recorded ones are forgotten (per shard of ~16k keys above that size).
        max_bytes: memory budget (default 8 MiB): each key counts its ``sys.getsizeof``
            plus ~200 bytes; evicts like ``max_entries``.

    Example::

        denials = LocalDenials(max_entries=1000)
        denials.record([request], [tat], server_now, sent_at)
        denials.check([request], sent_at + 0.01)    # [RateDecision(allowed=False, ...)]
    """

    __slots__ = (
        "_count",
        "_lock",
        "_mask",
        "_nbytes",
        "_shard_bytes",
        "_shard_entries",
        "_shards",
        "max_bytes",
        "max_entries",
    )

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 8 << 20) -> None:
        if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 1:
            raise ConfigurationError(
                f"LocalDenials max_entries must be an integer >= 1, got {max_entries!r}"
            )
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1024:
            raise ConfigurationError(
                f"LocalDenials max_bytes must be an integer >= 1024, got {max_bytes!r}"
            )
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        shards = 1
        while shards * SHARD_KEYS < max_entries:
            shards *= 2
        self._mask = shards - 1
        self._shards: list[OrderedDict[str, tuple[float, float]]] = [
            OrderedDict() for _ in range(shards)
        ]
        self._shard_entries = max_entries // shards
        self._shard_bytes = max_bytes // shards
        self._nbytes = [0] * shards
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    def check(self, requests: Sequence[RateRequest], now: float) -> list[RateDecision] | None:
        """The store's decisions, when the cached TATs already deny; else None (ask it).

        ``now`` is the local time (the clock whose readings were passed to `record`).
        """
        if not self._count:  # the common case: nothing is over its limit
            return None
        shards = self._shards
        mask = self._mask
        if len(requests) == 1:
            req = requests[0]
            entry = shards[hash(req.key) & mask].get(req.key)
            if entry is None:
                return None
            rate = req.rate
            interval = rate.period / rate.limit
            tau = interval * rate.burst
            decision, tat = decide(entry[0], now + entry[1], interval, tau, rate.burst, req.cost)
            return None if tat is not None else [decision]
        tats = []
        offset = -math.inf
        for req in requests:
            entry = shards[hash(req.key) & mask].get(req.key)
            if entry is None:
                return None
            tats.append(entry[0])
            offset = max(offset, entry[1])  # any measured offset is an upper bound
        decisions, new = gcra(tats, now + offset, requests)
        return decisions if new is None else None

    def record(
        self,
        requests: Sequence[RateRequest],
        tats: Sequence[float | None],
        server_now: float,
        sent_at: float,
    ) -> None:
        """Remember the keys' TATs read by a denied decision, sent at local time ``sent_at``.

        Every key is remembered (an absent key as ``server_now``: the same to `gcra`), so
        the same combination of keys can be answered locally next time.
        """
        offset = server_now - sent_at
        with self._lock:
            for req, tat in zip(requests, tats, strict=True):
                key = req.key
                i = hash(key) & self._mask
                shard = self._shards[i]
                if key in shard:
                    shard.move_to_end(key)  # the youngest now
                else:
                    self._nbytes[i] += _entry_size(key)
                    self._count += 1
                shard[key] = (server_now if tat is None else tat, offset)
                while len(shard) > self._shard_entries or self._nbytes[i] > self._shard_bytes:
                    old, _ = shard.popitem(last=False)  # the least recently recorded
                    self._nbytes[i] -= _entry_size(old)
                    self._count -= 1

    def refresh(
        self,
        requests: Sequence[RateRequest],
        tats: Sequence[float],
        server_now: float,
        sent_at: float,
    ) -> None:
        """Update the keys already remembered with the TATs an admitted decision wrote."""
        if not self._count:
            return
        offset = server_now - sent_at
        shards = self._shards
        mask = self._mask
        with self._lock:
            for req, tat in zip(requests, tats, strict=True):
                shard = shards[hash(req.key) & mask]
                if req.key in shard:
                    shard[req.key] = (tat, offset)

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            for shard in self._shards:
                shard.clear()
            self._nbytes = [0] * len(self._shards)
            self._count = 0
