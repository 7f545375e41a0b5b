"""One GCRA: the value types of `buttress._gcra`, and its constants in the Lua and SQL files.

The behaviour (every implementation agrees with `gcra`, number for number) is the
contract's property test, ``test_matches_the_pure_gcra_model``.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
from importlib.resources import files

import pytest

import buttress.resilience
import buttress.stores
from buttress._gcra import EPSILON, SCALE, Rate, RateDecision, RateRequest, decide, gcra

DECISION = RateDecision(allowed=True, limit=5, remaining=4, retry_after=0.0, reset_after=0.2)


def test_the_public_names_are_the_same_objects() -> None:
    assert buttress.stores.RateDecision is buttress.resilience.RateDecision is RateDecision
    assert buttress.stores.Rate is Rate
    assert buttress.stores.RateRequest is RateRequest


def test_a_decision_is_a_frozen_dataclass() -> None:
    decision = RateDecision(True, 5, 4, 0.0, 0.2)
    assert decision == DECISION
    assert hash(DECISION) == hash(RateDecision(True, 5, 4, 0.0, 0.2))
    assert repr(DECISION) == (
        "RateDecision(allowed=True, limit=5, remaining=4, retry_after=0.0, reset_after=0.2)"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        DECISION.allowed = False  # type: ignore[misc]
    assert dataclasses.replace(DECISION, allowed=False).allowed is False
    assert dataclasses.astuple(DECISION) == (True, 5, 4, 0.0, 0.2)
    assert pickle.loads(pickle.dumps(DECISION)) == DECISION
    assert copy.deepcopy(DECISION) == DECISION
    match DECISION:
        case RateDecision(True, limit, remaining, _, _):
            assert (limit, remaining) == (5, 4)
        case _:  # pragma: no cover
            pytest.fail("no match")


def test_decide_is_one_step_of_gcra() -> None:
    rate = Rate(5, 1.0)
    interval = rate.interval
    decision, tat = decide(None, 1000.0, interval, interval * 5, 5, 1)
    decisions, tats = gcra([None], 1000.0, [RateRequest("k", rate)])
    assert (decisions, tats) == ([decision], [tat])
    assert decision == RateDecision(True, 5, 4, 0.0, pytest.approx(0.2))
    denied, none = decide(1001.0, 1000.0, interval, interval * 5, 5, 1)
    assert none is None
    assert denied == RateDecision(False, 5, 0, pytest.approx(0.2), pytest.approx(1.0))


def test_exactly_on_time_is_admitted_on_any_clock() -> None:
    """The tolerance: a request at exactly retry_after is admitted, at Unix-time scale too."""
    for start in (0.0, 1000.0, 86400.7 * 48, 1.7e9):
        rate = Rate(3, 7.0, burst=2)
        interval = rate.interval
        tat = start + 2 * interval
        denied, _ = decide(tat, start, interval, interval * 2, 2, 1)
        assert not denied.allowed
        admitted, _ = decide(tat, start + denied.retry_after, interval, interval * 2, 2, 1)
        assert admitted.allowed


@pytest.mark.parametrize("name", ["lua/gcra_one.lua", "lua/gcra.lua", "sql/postgres.sql"])
def test_the_server_side_admission_test_uses_the_same_constants(name: str) -> None:
    """Package data, loaded with importlib.resources; SCALE and EPSILON as Python's reprs."""
    text = (files("buttress.stores") / name).read_text(encoding="utf-8")
    code = "\n".join(line.partition("--")[0] for line in text.splitlines())  # no comments
    assert repr(SCALE) == "1.0000000000000018"
    assert repr(SCALE) in code
    scales = set(re.findall(r"1\.0000000000000\d+", code))
    assert scales == {repr(SCALE)}
    if name != "lua/gcra_one.lua":  # there Python sends tau + EPSILON as one argument
        assert repr(EPSILON) in code  # 1e-09
    assert "1e-6" not in code
    assert "1e-06" not in code


def test_every_script_and_statement_is_package_data() -> None:
    lua = {p.name for p in (files("buttress.stores") / "lua").iterdir()}
    assert {"gcra.lua", "gcra_one.lua", "now.lua", "begin.lua"} <= lua
    assert (files("buttress.stores") / "sql" / "postgres.sql").is_file()
