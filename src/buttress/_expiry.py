"""`ExpiryTable`: the one bounded, expiring in-memory table behind every in-process store.

What lives here: a map of key -> value in which each value carries its own expiry, bounded
in entries (``max_keys``) and in bytes (``max_bytes``; the caller sizes each entry), which
never drops an entry that has not expired to make room. When a *new* key finds the table
full of live entries it is refused, with the time until room frees; keys already present can
always be written. Thread-safety is the caller's (every user holds a lock around it).

How, with the cost of each operation bounded at any size:

* Values live in ``2**k`` shard dicts of at most ~16k keys each at the bound. CPython grows
  and compacts a dict by copying it whole; a shard copies 16k entries (well under a
  millisecond), never the whole table.
* Expiry order is one `heapq` min-heap with exactly one entry per slot. Moving a key's
  expiry *later* only rewrites its value: its heap entry goes stale, and when it comes up it
  is pushed back at the key's current expiry (lazy re-insertion). So the heap never holds
  more entries than slots and never needs a compaction; a push or pop is O(log n), in C.
* Every insert handles at most 2 heap entries whose time has come (drops the expired,
  re-pushes the stale), and an insert that finds the table full examines at most 32 more.
  No operation ever scans the table.
* Nothing the table keeps is an object the garbage collector tracks: a heap entry is one
  int, ``order(expiry) << 32 | slot`` (``order`` maps a float to an int that sorts the
  same way; ``slot`` names the key in the ``ids`` dicts, and breaks ties, so keys need not
  be comparable). Per-entry tuples would be tracked when created, and in a steady churn
  (as many entries expire as arrive) CPython's youngest generation never fills up, so they
  pile up there until one collection walks all of them (54 ms at 1M keys, measured). A full
  collection, which the rest of the program triggers, still walks the heap list: ~15 ms of
  CPU per million keys (bench/README.md, "Memory bounds").

A key deleted, or whose expiry moved *earlier*, keeps its slot (and its bytes) until its heap
entry comes up, i.e. no later than the latest expiry it was given: capacity may come back
late, state is never dropped early.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Hashable, Iterable, Iterator
from heapq import heappop, heappush, heapreplace
from typing import Any, Final, Generic, TypeVar

__all__ = ["ENTRY_BYTES", "ExpiryTable"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Bytes one slot costs besides its key and value, measured on 64-bit CPython 3.11 with a
# float value (tracemalloc, 1M keys): a shard dict entry at its load factor, the heap entry
# (an int and its list cell) and the slot's ``ids`` entry. Callers add their key and value.
ENTRY_BYTES: Final = 170
# Keys per shard dict at the bound: the most a dict rebuild ever copies.
SHARD_KEYS: Final = 1 << 14
# Heap entries whose time has come handled by each insert (amortised expiry: an entry is
# pushed once per insert and at most once per update, so 2 per insert keeps up).
EXPIRE_STEP: Final = 2
# Heap entries an insert into a full table examines before it gives up for now.
SEARCH: Final = 32
# The wait reported when the search ran out before the answer was exact: room may free soon.
BUSY_WAIT: Final = 0.001
# Slots are numbered below 2**32 (the low bits of a heap entry).
MAX_KEYS: Final = (1 << 32) - 1

_SLOT: Final = (1 << 32) - 1
_ABSENT: Final = object()
_SIGN: Final = 1 << 63
_ALL: Final = (1 << 64) - 1
_pack_double = struct.Struct(">d").pack
_unpack_double = struct.Struct(">d").unpack
_pack_bits = struct.Struct(">Q").pack
_unpack_bits = struct.Struct(">Q").unpack


def order(x: float) -> int:
    """An unsigned 64-bit int that sorts like the float ``x`` (not NaN)."""
    bits: int = _unpack_bits(_pack_double(x))[0]
    return bits ^ _ALL if bits & _SIGN else bits | _SIGN


def unorder(n: int) -> float:
    """The float ``x`` of ``order(x)``."""
    x: float = _unpack_double(_pack_bits(n ^ _SIGN if n & _SIGN else n ^ _ALL))[0]
    return x


class ExpiryTable(Generic[K, V]):
    """A dict of expiring values, bounded in entries and bytes, that never drops a live one.

    Args:
        max_keys: slots at most (live keys, expired ones not yet dropped, and deleted ones
            whose slot has not come back yet); below 2**32.
        max_bytes: bytes at most, as counted by ``size``, checked when a new key is stored
            (replacing a present key never refuses: a value that grows may overshoot).
        expiry: the time at which a value expires (on the clock of the ``now`` arguments);
            past it the entry is as good as absent and may be dropped.
        size: the bytes an entry counts for; the same key and value must always give the
            same answer.

    Attributes:
        shards: the dicts holding the values; ``shards[hash(key) & mask]`` holds ``key``.
            A hot path may read one directly and assign a *present* key's value in place,
            as `update` does; keys are added and removed only through the methods.
        mask: see ``shards``.
        nbytes: the bytes counted for every slot.

    Example::

        table = ExpiryTable(2, 1 << 20, expiry=float, size=lambda key, tat: 100)
        table.put("a", 10.0, now=0.0)        # 0.0: stored
        table.put("b", 20.0, now=0.0)        # 0.0
        table.put("c", 30.0, now=0.0)        # 10.0: full of live keys, "a" frees in 10 s
        table.put("c", 30.0, now=10.0)       # 0.0: "a" expired and was dropped
        table.get("b")                       # 20.0
    """

    __slots__ = (
        "_expiry",
        "_free",
        "_heap",
        "_held",
        "_ids",
        "_size",
        "_top",
        "_top_at",
        "mask",
        "max_bytes",
        "max_keys",
        "nbytes",
        "shards",
    )

    def __init__(
        self,
        max_keys: int,
        max_bytes: int,
        *,
        expiry: Callable[[V], float],
        size: Callable[[K, V], int],
    ) -> None:
        for name, bound, top in (("max_keys", max_keys, MAX_KEYS), ("max_bytes", max_bytes, None)):
            if (
                isinstance(bound, bool)
                or not isinstance(bound, int)
                or bound < 1
                or (top is not None and bound > top)
            ):
                limit = f"in [1, {top}]" if top else ">= 1"
                raise ValueError(f"ExpiryTable({name}={bound!r}): must be an integer {limit}")
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self._expiry = expiry
        self._size = size
        shards = 1
        while shards * SHARD_KEYS < max_keys:
            shards *= 2
        self.mask = shards - 1
        self.shards: list[dict[K, V]] = [{} for _ in range(shards)]
        # deleted keys whose heap entry is still pending -> the bytes their slot holds
        self._held: list[dict[K, int]] = [{} for _ in range(shards)]
        # slot number -> its key, sharded like the values (by slot & mask)
        self._ids: list[dict[int, K]] = [{} for _ in range(shards)]
        self._heap: list[int] = []  # order(scheduled expiry) << 32 | slot
        self._free: list[int] = []  # slot numbers to reuse (below len(heap) + len(free))
        self.nbytes = 0
        # the heap's top entry when last looked at, and its time: `_expire` skips the
        # conversion while the top stays the same (the common case: nothing is due)
        self._top: int | None = None
        self._top_at = 0.0

    def __repr__(self) -> str:
        return (
            f"ExpiryTable({len(self._heap)}/{self.max_keys} keys, "
            f"{self.nbytes}/{self.max_bytes} bytes)"
        )

    def __len__(self) -> int:
        """Slots in use: the number bounded by ``max_keys``."""
        return len(self._heap)

    def __iter__(self) -> Iterator[K]:
        """The keys present, expired or not (not the deleted ones)."""
        for shard in self.shards:
            yield from shard

    def __contains__(self, key: object) -> bool:
        return key in self.shards[hash(key) & self.mask]

    # ------------------------------------------------------------ reads and writes
    def get(self, key: K) -> V | None:
        """The value stored for ``key``, expired or not (the caller judges), or None."""
        return self.shards[hash(key) & self.mask].get(key)

    def update(self, key: K, value: V) -> None:
        """Replace the value of a key that is present, with one of the same size.

        The fast path of a limiter: one dict store, never refused. Any expiry is fine (see
        the module doc for an earlier one). ``key`` must be present (`get` under the same
        lock said so): an absent key would have no slot.
        """
        self.shards[hash(key) & self.mask][key] = value

    def put(self, key: K, value: V, now: float) -> float:
        """Store ``value`` for ``key``: 0.0, or the seconds until room (nothing stored).

        A present key is always replaced (its size recounted). A new key is stored when a
        slot and its bytes are free once the expired entries are dropped; otherwise the
        answer is the time until the earliest entry's slot comes back (> 0; a lower bound
        when dropping it would not free enough bytes, and ``math.inf`` when the entry is
        larger than ``max_bytes``).
        """
        i = hash(key) & self.mask
        shard = self.shards[i]
        if key in shard:
            size = self._size
            self.nbytes += size(key, value) - size(key, shard[key])
            shard[key] = value
            return 0.0
        nbytes = self._size(key, value)
        self._expire(now)
        held = self._held[i]
        kept = held.get(key) if held else None
        if kept is not None or (
            len(self._heap) >= self.max_keys or self.nbytes + nbytes > self.max_bytes
        ):  # else there is room: `_fit` would answer 0.0 at once
            wait = self._fit(1 if kept is None else 0, nbytes - (kept or 0), now)
            if wait:
                return wait
            kept = held.pop(key, None)  # `_fit` may have freed that slot meanwhile
        shard[key] = value
        if kept is None:
            free = self._free
            slot = free.pop() if free else len(self._heap)
            self._ids[slot & self.mask][slot] = key
            heappush(self._heap, order(self._expiry(value)) << 32 | slot)
            self.nbytes += nbytes
        else:  # its slot is still scheduled: reuse it (the heap entry goes stale or late)
            self.nbytes += nbytes - kept
        return 0.0

    def room(self, items: Iterable[tuple[K, V]], now: float) -> float:
        """Make room for several entries at once: 0.0 when `put` will store every one now.

        Otherwise the seconds until room, as `put` answers. Keys already present need no
        room; with 0.0, the caller (holding its lock) may `put` them all without refusal.
        """
        slots = nbytes = 0
        for key, value in items:
            i = hash(key) & self.mask
            if key in self.shards[i]:
                continue
            kept = self._held[i].get(key)
            slots += kept is None
            nbytes += self._size(key, value) - (kept or 0)
        if not slots and nbytes <= 0:
            return 0.0
        self._expire(now)
        return self._fit(slots, nbytes, now)

    def delete(self, key: K) -> None:
        """Forget ``key`` now; its slot comes back when its heap entry comes up."""
        i = hash(key) & self.mask
        shard = self.shards[i]
        if key in shard:
            self._held[i][key] = self._size(key, shard.pop(key))

    def clear(self) -> None:
        """Forget everything, slots included."""
        for shards in (self.shards, self._held, self._ids):
            for table in shards:
                table.clear()
        self._heap.clear()
        self._free.clear()
        self.nbytes = 0
        self._top = None

    # ------------------------------------------------------------ expiry
    def _expire(self, now: float) -> None:
        heap = self._heap
        for _ in range(EXPIRE_STEP):
            if not heap:
                return
            top = heap[0]
            if top is not self._top:  # (ints are compared by identity: the top moved)
                self._top = top
                self._top_at = unorder(top >> 32)
            if self._top_at > now:
                return
            self._step(now)

    def _fit(self, slots: int, nbytes: int, now: float) -> float:
        """0.0 once ``slots`` more slots and ``nbytes`` more bytes fit; else the wait."""
        if slots > self.max_keys or nbytes > self.max_bytes:
            return math.inf  # more than the bounds themselves: never
        heap = self._heap
        for _ in range(SEARCH):
            if len(heap) + slots <= self.max_keys and self.nbytes + nbytes <= self.max_bytes:
                return 0.0
            if not heap:  # only a value that grew past max_bytes can leave no room
                return math.inf
            wait = self._step(now)
            if wait:
                return wait
        if len(heap) + slots <= self.max_keys and self.nbytes + nbytes <= self.max_bytes:
            return 0.0
        return max(unorder(heap[0] >> 32) - now, BUSY_WAIT) if heap else math.inf

    def _step(self, now: float) -> float:
        """Settle the top heap entry: 0.0 when it was dropped or re-pushed, else the wait."""
        heap = self._heap
        entry = heap[0]
        at = self._top_at if entry is self._top else unorder(entry >> 32)
        slot = entry & _SLOT
        ids = self._ids[slot & self.mask]
        key = ids[slot]
        i = hash(key) & self.mask
        shard = self.shards[i]
        value: Any = shard.get(key, _ABSENT)
        if value is _ABSENT:  # deleted: its slot comes back at its scheduled time
            if at > now:
                return at - now
            heappop(heap)
            del ids[slot]
            self._free.append(slot)
            self.nbytes -= self._held[i].pop(key)
            return 0.0
        expiry = self._expiry(value)
        if expiry <= now and at <= now:  # expired: as good as absent
            heappop(heap)
            del ids[slot]
            self._free.append(slot)
            del shard[key]
            self.nbytes -= self._size(key, value)
            return 0.0
        if expiry > at:  # stale: written since it was pushed; move it to its real time
            heapreplace(heap, order(expiry) << 32 | slot)
            return 0.0
        return at - now  # here at > now: the earliest slot comes back in this many seconds
