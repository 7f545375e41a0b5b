"""ExpiryTable: bounded in entries and bytes, never drops a live entry, refuses when full."""

from __future__ import annotations

import gc
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buttress._expiry import (
    BUSY_WAIT,
    EXPIRE_STEP,
    SEARCH,
    SHARD_KEYS,
    ExpiryTable,
    order,
    unorder,
)


def table(max_keys: int = 3, max_bytes: int = 1 << 20, size: Any = None) -> ExpiryTable[Any, float]:
    """A table of expiry times (the value is its own expiry), 10 bytes a key by default."""
    return ExpiryTable(max_keys, max_bytes, expiry=float, size=size or (lambda k, v: 10))


# ---------------------------------------------------------------- entries
def test_a_new_key_is_refused_while_every_slot_is_live() -> None:
    t = table()
    for key, expiry in (("a", 10.0), ("b", 20.0), ("c", 30.0)):
        assert t.put(key, expiry, 0.0) == 0.0
    assert t.put("d", 40.0, 0.0) == 10.0  # "a" frees in 10 s
    assert t.put("d", 40.0, 9.5) == 0.5
    assert (t.get("a"), t.get("d"), len(t)) == (10.0, None, 3)  # nothing was dropped
    assert t.put("d", 40.0, 10.0) == 0.0  # "a" expired: its slot went to "d"
    assert (t.get("a"), t.get("d"), len(t)) == (None, 40.0, 3)


def test_present_keys_are_always_written() -> None:
    t = table(max_keys=2)
    t.put("a", 10.0, 0.0)
    t.put("b", 20.0, 0.0)
    assert t.put("a", 15.0, 0.0) == 0.0
    t.update("b", 25.0)
    assert (t.get("a"), t.get("b"), len(t)) == (15.0, 25.0, 2)


def test_a_key_written_later_is_kept_and_the_wait_is_exact() -> None:
    t = table()
    t.put("a", 10.0, 0.0)
    t.put("b", 20.0, 0.0)
    t.put("c", 30.0, 0.0)
    t.update("a", 50.0)  # its heap entry is stale now (10): it comes back at 50
    assert t.put("d", 60.0, 10.0) == 10.0  # "b" is the earliest live key
    assert t.get("a") == 50.0
    assert t.put("d", 60.0, 20.0) == 0.0
    assert (t.get("a"), t.get("b")) == (50.0, None)


def test_expired_entries_are_dropped_a_few_per_insert() -> None:
    t = table(max_keys=1000)
    for i in range(100):
        t.put(i, 1.0, 0.0)
    for i in range(100, 110):
        assert t.put(i, 10.0, 2.0) == 0.0
    assert len(t) == 100 - 10 * EXPIRE_STEP + 10  # amortised: no sweep, no scan


def test_a_full_search_is_bounded_and_converges() -> None:
    t = table(max_keys=100)
    for i in range(100):
        t.put(i, 1.0 + i / 100, 0.0)
        t.update(i, 1000.0)  # every heap entry is stale
    waits = [t.put("new", 2000.0, 50.0) for _ in range(5)]
    # each call examines at most SEARCH entries: busy at first, then the exact wait
    assert waits[0] == BUSY_WAIT
    assert waits.count(BUSY_WAIT) <= math.ceil(100 / SEARCH)
    assert waits[-1] == 950.0
    assert all(t.get(i) == 1000.0 for i in range(100))


def test_room_for_several_keys_at_once() -> None:
    t = table(max_keys=3)
    t.put("a", 10.0, 0.0)
    t.put("b", 20.0, 0.0)
    assert t.room([("b", 30.0), ("c", 30.0)], 0.0) == 0.0  # "b" is present: one slot needed
    assert t.room([("c", 30.0), ("d", 30.0)], 0.0) == 10.0
    assert t.room([("c", 30.0), ("d", 30.0)], 10.0) == 0.0
    assert t.put("c", 30.0, 10.0) == t.put("d", 30.0, 10.0) == 0.0
    assert t.room([("w", 1.0), ("x", 1.0), ("y", 1.0), ("z", 1.0)], 10.0) == math.inf


# ---------------------------------------------------------------- bytes
def test_the_bytes_bound_refuses_new_keys_until_room() -> None:
    t = table(max_keys=100, max_bytes=100, size=lambda k, v: len(k))
    assert t.put("a" * 40, 10.0, 0.0) == 0.0
    assert t.put("b" * 40, 20.0, 0.0) == 0.0
    assert t.put("c" * 40, 30.0, 0.0) == 10.0
    assert t.put("c" * 20, 30.0, 0.0) == 0.0  # a smaller one fits
    assert t.nbytes == 100
    assert t.put("c" * 40, 30.0, 10.0) == 0.0
    assert t.nbytes == 100
    assert t.put("x" * 101, 30.0, 10.0) == math.inf  # never fits


def test_a_present_key_may_grow_past_the_budget() -> None:
    sizes = {"a": 50}
    t = ExpiryTable[str, float](10, 100, expiry=float, size=lambda k, v: sizes[k] + int(v))
    t.put("a", 10.0, 0.0)
    assert t.put("a", 90.0, 0.0) == 0.0  # stored: a replacement is never refused
    assert t.nbytes == 140


# ---------------------------------------------------------------- deletion
def test_a_deleted_key_keeps_its_slot_until_its_expiry() -> None:
    t = table(max_keys=2)
    t.put("a", 10.0, 0.0)
    t.put("b", 20.0, 0.0)
    t.delete("a")
    t.delete("missing")
    assert t.get("a") is None
    assert "a" not in t
    assert len(t) == 2
    assert t.put("c", 30.0, 5.0) == 5.0  # the slot of "a" comes back at 10
    assert t.put("a", 8.0, 5.0) == 0.0  # "a" itself reuses its slot
    assert t.get("a") == 8.0
    assert t.put("c", 30.0, 8.0) == 2.0  # expired at 8, but its slot was scheduled for 10
    assert t.put("c", 30.0, 10.0) == 0.0
    assert (t.get("a"), t.get("c"), len(t)) == (None, 30.0, 2)


def test_clear_iteration_and_repr() -> None:
    t = table()
    t.put("a", 10.0, 0.0)
    t.put("b", 20.0, 0.0)
    t.delete("b")
    assert list(t) == ["a"]
    assert repr(t) == "ExpiryTable(2/3 keys, 20/1048576 bytes)"
    t.clear()
    assert (len(t), t.nbytes, list(t)) == (0, 0, [])


def test_expiry_after_clear_and_after_the_top_changes() -> None:
    """The time of the heap's top is remembered per top entry: it follows every change."""
    t = table(max_keys=2)
    t.put("a", 10.0, 0.0)
    t.put("b", 20.0, 0.0)
    assert t.put("c", 30.0, 5.0) == 5.0  # the top ("a", 10) looked at: 5 s to go
    t.clear()
    t.put("x", 100.0, 50.0)
    t.put("y", 200.0, 50.0)
    assert t.put("z", 300.0, 60.0) == 40.0  # the new top ("x", 100), not the old one
    t.update("x", 150.0)  # the top goes stale: re-pushed at 150 when it comes up
    assert t.put("z", 300.0, 120.0) == 30.0
    assert t.put("z", 300.0, 150.0) == 0.0
    assert (t.get("x"), t.get("y"), t.get("z")) == (None, 200.0, 300.0)


def test_large_tables_are_sharded() -> None:
    t = table(max_keys=1_000_000)
    assert len(t.shards) * SHARD_KEYS >= 1_000_000 > len(t.shards) * SHARD_KEYS // 2
    for i in range(1000):
        t.put(f"k{i}", 5.0, 0.0)
    assert sum(map(len, t.shards)) == 1000
    assert all(t.shards[hash(f"k{i}") & t.mask][f"k{i}"] == 5.0 for i in range(1000))


def test_keys_need_not_be_comparable() -> None:
    t = table()
    assert t.put(None, 10.0, 0.0) == t.put("a", 10.0, 0.0) == t.put((1, 2), 10.0, 0.0) == 0.0
    assert t.put(3, 10.0, 10.0) == 0.0


def test_the_table_keeps_nothing_the_garbage_collector_tracks() -> None:
    """Heap entries are ints and the values here floats: no young-generation pile-up."""
    t = table(max_keys=100_000)
    for i in range(1000):
        t.put(f"k{i}", float(i), 0.0)
    for i in range(1000, 2000):
        t.put(f"k{i}", 5000.0, 1500.0)  # expires half of them as it goes
    assert not any(gc.is_tracked(entry) for entry in t._heap)
    assert not any(gc.is_tracked(shard) for shard in (*t.shards, *t._ids))


@given(st.floats(allow_nan=False), st.floats(allow_nan=False))
def test_order_sorts_like_the_floats(a: float, b: float) -> None:
    assert struct.pack(">d", unorder(order(a))) == struct.pack(">d", a)
    if a < b:
        assert order(a) < order(b)
    assert 0 <= order(a) < 1 << 64


@pytest.mark.parametrize("bounds", [(0, 1), (1, 0), (True, 1), (1.5, 1), (1 << 32, 1)])
def test_invalid_bounds(bounds: tuple[Any, Any]) -> None:
    with pytest.raises(ValueError, match="max_"):
        ExpiryTable(*bounds, expiry=float, size=lambda k, v: 1)


# ---------------------------------------------------------------- properties
KEYS = st.integers(0, 7)
MONOTONE_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEYS, st.floats(0.0, 10.0)),
        st.tuples(st.just("advance"), st.just(0), st.floats(0.0, 5.0)),
    ),
    max_size=60,
)


def _size(key: int, value: float) -> int:
    return 10 + key


@settings(max_examples=300, deadline=None)
@given(ops=MONOTONE_OPS, max_keys=st.integers(1, 6), max_bytes=st.integers(10, 80))
def test_behaves_like_an_unbounded_dict_with_expiry(
    ops: list[tuple[str, int, float]], max_keys: int, max_bytes: int
) -> None:
    """Expiries that only move later (a rate limiter's TATs): the model, to the number.

    It refuses a new key exactly when the live keys fill ``max_keys`` (or their bytes
    ``max_bytes``), with the wait until the earliest live key expires, and never loses one.
    """
    t = ExpiryTable[int, float](max_keys, max_bytes, expiry=float, size=_size)
    model: dict[int, float] = {}  # an unbounded dict with expiry
    now = 0.0
    for op, key, x in ops:
        if op == "advance":
            now += x
            continue
        live = {k: e for k, e in model.items() if e > now}
        new = live[key] + x if key in live else now + x  # a TAT only moves later
        present = key in t
        wait = t.put(key, new, now)
        if present:  # expired or not, a present key is always written
            assert wait == 0.0
        else:
            assert key not in live  # a live key is never dropped
            need = sum(_size(k, 0.0) for k in live) + _size(key, 0.0)
            if _size(key, 0.0) > max_bytes:
                assert wait == math.inf
            elif len(live) >= max_keys or need > max_bytes:
                assert wait == min(live.values()) - now  # until the earliest live key expires
            else:
                assert wait == 0.0
        if wait == 0.0:
            model[key] = new
        assert len(t) <= max_keys
        assert all(t.get(k) == e for k, e in model.items() if e > now)  # none lost
        assert set(t) <= set(model)


ANY_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEYS, st.floats(-5.0, 10.0)),
        st.tuples(st.just("delete"), KEYS, st.just(0.0)),
        st.tuples(st.just("advance"), st.just(0), st.floats(0.0, 5.0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=ANY_OPS, max_keys=st.integers(1, 6))
def test_never_drops_live_state_whatever_the_writes(
    ops: list[tuple[str, int, float]], max_keys: int
) -> None:
    """Any interleaving of inserts, earlier and later expiries, deletes and time.

    A key deleted or moved earlier may keep its slot until the latest expiry it had, so
    capacity comes back between two bounds: a new key is refused whenever ``max_keys``
    keys are live, accepted whenever fewer than ``max_keys`` keys are live or still within
    their latest expiry, and no live key is ever lost.
    """
    t = ExpiryTable[int, float](max_keys, 1 << 20, expiry=float, size=_size)
    model: dict[int, float] = {}  # key -> current expiry (deleted keys absent)
    hold: dict[int, float] = {}  # key -> latest expiry since its slot was taken
    now = 0.0
    for op, key, x in ops:
        if op == "advance":
            now += x
        elif op == "delete":
            t.delete(key)
            model.pop(key, None)
        else:
            new = now + x
            present = key in t
            live = sum(1 for k, e in model.items() if e > now and k != key)
            held = sum(1 for k, h in hold.items() if h > now and k != key)
            wait = t.put(key, new, now)
            if present:
                assert wait == 0.0
            elif live >= max_keys:
                assert wait > 0
            elif held < max_keys:
                assert wait == 0.0
            if wait == 0.0:
                model[key] = new
                hold[key] = max(hold.get(key, new), new)
        hold = {k: h for k, h in hold.items() if h > now or k in model}
        assert len(t) <= max_keys
        assert all(t.get(k) == e for k, e in model.items() if e > now)
