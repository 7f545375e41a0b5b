"""The labelled corpus: every rule flags every ``# expect: BTR...`` line and nothing else.

Per-file rules run on the whole corpus directory at once (so values followed across
modules, like ``cors_settings/config.py``, are seen); absence rules, which judge a whole
program, run on their file alone (and ``btrNNN_ok.py``, when there is one, must pass).
Rules on non-Python files (Dockerfiles, compose, requirements, workflows) have a project
directory each, ``btrNNN/`` (markers in the files' ``#`` comments), and ``btrNNN_ok/``, a
tree that must pass.
"""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from pathlib import Path

import pytest

from buttress.audit import RULES, AuditConfig, audit
from buttress.report import Report

CORPUS = Path(__file__).parent / "corpus"
ABSENCE = frozenset(
    {"BTR007", "BTR101", "BTR102", "BTR407", "BTR503", "BTR601", "BTR602", "BTR604", "BTR707"}
)
FILE_RULES = frozenset({"BTR603", "BTR701", "BTR702", "BTR703", "BTR704"})
MIGRATION_RULES = frozenset({"BTR705", "BTR706"})  # btrNNN/alembic/versions/*.py
EXPECT = re.compile(r"#\s*expect:\s*([A-Z0-9, ]+)")


def expected(path: Path) -> set[tuple[int, str]]:
    out = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = EXPECT.search(line)
        if match:
            out |= {(number, rule.strip()) for rule in match.group(1).split(",") if rule.strip()}
    return out


def flagged(report: Report, rel: str, *, absence: bool) -> set[tuple[int, str]]:
    return {
        (f.location.line, f.rule_id)
        for f in report.findings
        if f.location.path == rel and not f.suppressed and ((f.rule_id in ABSENCE) == absence)
    }


@cache
def whole_corpus() -> Report:
    return audit(CORPUS, AuditConfig())


FILES = sorted(p for p in CORPUS.rglob("*.py") if "__pycache__" not in p.parts)
OTHER = sorted(
    p
    for p in CORPUS.rglob("*")
    if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts
)


def test_every_rule_has_a_corpus_file_with_positives() -> None:
    covered = {rule for path in [*FILES, *OTHER] for _, rule in expected(path)}
    assert set(RULES) <= covered, sorted(set(RULES) - covered)
    for rule_id in RULES:
        if rule_id in FILE_RULES | MIGRATION_RULES:
            assert (CORPUS / rule_id.lower()).is_dir(), rule_id
            assert (CORPUS / f"{rule_id.lower()}_ok").is_dir(), rule_id
        else:
            assert (CORPUS / f"{rule_id.lower()}.py").is_file(), rule_id


@pytest.mark.parametrize("rule_id", sorted(FILE_RULES))
def test_rules_on_non_python_files(rule_id: str) -> None:
    root = CORPUS / rule_id.lower()
    config = AuditConfig(select=frozenset({rule_id}))
    report = audit(root, config)
    want = {
        (p.relative_to(root).as_posix(), line, rule)
        for p in OTHER
        if root in p.parents
        for line, rule in expected(p)
        if rule == rule_id
    }
    got = {(f.location.path, f.location.line, f.rule_id) for f in report.findings}
    assert got == want
    assert want
    clean = audit(CORPUS / f"{rule_id.lower()}_ok", config)
    assert [f for f in clean.findings if f.rule_id == rule_id] == []


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPUS)) for p in FILES])
def test_per_file_rules(path: Path) -> None:
    rel = path.relative_to(CORPUS).as_posix()
    report = whole_corpus()
    if rel.startswith("btr402_project/mysite/settings/test_"):
        assert any(s.path == rel for s in report.skipped) or rel not in {
            f.location.path for f in report.findings
        }
        return
    want = {(line, rule) for line, rule in expected(path) if rule not in ABSENCE}
    assert flagged(report, rel, absence=False) == want


@pytest.mark.parametrize("rule_id", sorted(ABSENCE))
def test_absence_rules_on_their_own_program(rule_id: str) -> None:
    path = CORPUS / f"{rule_id.lower()}.py"
    report = audit(path, AuditConfig())
    mine = {
        (line, rule) for line, rule in flagged(report, path.name, absence=True) if rule == rule_id
    }
    assert mine == {(line, rule) for line, rule in expected(path) if rule == rule_id}
    assert mine
    ok = CORPUS / f"{rule_id.lower()}_ok.py"
    if ok.is_file():
        clean = audit(ok, AuditConfig())
        assert [f for f in clean.findings if f.rule_id == rule_id] == []


@pytest.mark.parametrize("rule_id", sorted(MIGRATION_RULES))
def test_migration_rules_on_their_own_tree(rule_id: str) -> None:
    # migration code is skipped as Python by default: the rules read it anyway
    config = AuditConfig(select=frozenset({rule_id}))
    root = CORPUS / rule_id.lower()
    want = {
        (p.relative_to(root).as_posix(), line, rule)
        for p in root.rglob("*.py")
        for line, rule in expected(p)
        if rule == rule_id
    }
    got = {(f.location.path, f.location.line, f.rule_id) for f in audit(root, config).findings}
    assert got == want
    assert want
    assert audit(CORPUS / f"{rule_id.lower()}_ok", config).findings == ()
    included = audit(root, dataclasses.replace(config, skip_tests=False))
    assert {(f.location.path, f.location.line, f.rule_id) for f in included.findings} == want


def test_suppressed_findings_are_kept_with_their_reason() -> None:
    report = whole_corpus()
    suppressed = [f for f in report.findings if f.location.path == "btr900.py" and f.suppressed]
    # line 7: a call over three lines, the comment on its last line (ruff format put it there)
    # line 15: the comment alone on the line above
    assert sorted(f.location.line for f in suppressed) == [6, 7, 11, 15]
    reasons = {f.location.line: f.suppression_reason for f in suppressed}
    assert reasons[6] == ""
    assert reasons[7] == "streaming health probe, bounded by the caller"


def test_secret_heuristic_examples() -> None:
    from buttress.audit._check_security import secret_reason

    assert secret_reason("token_type", "bearer") is None
    assert secret_reason("api_key", "changeme") is None
    assert secret_reason("api_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc")
    assert secret_reason("greeting", "ghp_16C7e42F292c6912E7710c838347Ae178B4a")
