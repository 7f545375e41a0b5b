"""The result cache: a second run on an unchanged tree parses nothing and reports the same;
a changed file re-runs the per-file rules on itself only (and on the files importing it)."""

from __future__ import annotations

import shutil
from pathlib import Path

from buttress.audit import audit
from buttress.audit._walk import STATS

SAMPLES = Path(__file__).parent / "samples"


def _keys(report: object) -> list[tuple[str, str, int, bool]]:
    return sorted(
        (f.rule_id, f.location.path, f.location.line, f.suppressed)
        for f in report.findings  # type: ignore[attr-defined]
    )


def test_second_run_parses_nothing_and_a_change_invalidates_one_entry(tmp_path: Path) -> None:
    tree = tmp_path / "svc"
    shutil.copytree(SAMPLES / "naive", tree)
    cache = tmp_path / "cache"
    before = STATS["parses"]
    first = audit(tree, cache_dir=cache)
    parsed_first = STATS["parses"] - before
    # twice per file: the index pass keeps a skeleton, the rules pass parses it again
    assert parsed_first == 2 * len(list(tree.rglob("*.py")))
    assert first.extra["cache"] == "miss"

    before = STATS["parses"]
    second = audit(tree, cache_dir=cache)
    assert STATS["parses"] - before == 0
    assert second.extra["cache"] == "hit"
    assert _keys(second) == _keys(first)
    assert [c.status for c in second.checks] == [c.status for c in first.checks]
    assert [f.fingerprint for f in second.findings] == [f.fingerprint for f in first.findings]

    # run.py imports nothing audited: changing it re-runs the per-file rules there only
    run = tree / "run.py"
    run.write_text(run.read_text() + "\nprint('started')\n")
    third = audit(tree, cache_dir=cache)
    assert third.extra["cache"] == "miss"
    modules = len(list(tree.rglob("*.py")))
    assert third.extra["replayed"] == str(modules - 1)
    assert _keys(third) == _keys(audit(tree))  # the same as without a cache
    assert audit(tree, cache_dir=cache).extra["cache"] == "hit"


def test_a_change_in_an_imported_module_invalidates_its_importers(tmp_path: Path) -> None:
    tree = tmp_path / "svc"
    shutil.copytree(SAMPLES / "naive", tree)
    cache = tmp_path / "cache"
    audit(tree, cache_dir=cache)
    settings = tree / "app" / "settings.py"
    settings.write_text(settings.read_text().replace('["*"]', '["https://shop.example.com"]'))
    report = audit(tree, cache_dir=cache)
    assert "BTR401" not in {f.rule_id for f in report.findings}  # main.py re-checked
    fresh = audit(tree)
    assert _keys(report) == _keys(fresh)


def test_a_corrupt_cache_is_a_miss(tmp_path: Path) -> None:
    tree = tmp_path / "svc"
    shutil.copytree(SAMPLES / "naive", tree)
    cache = tmp_path / "cache"
    first = audit(tree, cache_dir=cache)
    for file in cache.glob("*.json"):
        file.write_text("{not json")
    again = audit(tree, cache_dir=cache)
    assert again.extra["cache"] == "miss"
    assert _keys(again) == _keys(first)
