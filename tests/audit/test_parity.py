"""Parity with bandit and ruff's flake8-bandit rules on their own example files.

For the rules the tools share (`PEERS`), on the vendored files of ``parity/``:

- buttress flags exactly the lines labelled ``# expect:`` (so no line the peers and the
  labels call correct);
- every finding of bandit and ruff, run here on the same files, is on a line buttress
  flags with the matching rule, or on a line labelled ``# peer-only: CODE (reason)`` whose
  reason docs/audit.md explains (the peer is wrong there, or buttress knowingly differs).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from buttress.audit import AuditConfig, audit

PARITY = Path(__file__).parent / "parity"
DOCS = Path(__file__).parents[2] / "docs" / "audit.md"
BIN = Path(sys.executable).parent

#: peer code -> the buttress rules that cover it
PEERS: dict[str, frozenset[str]] = {
    **dict.fromkeys(("B104", "S104"), frozenset({"BTR408"})),
    **dict.fromkeys(("B105", "B106", "B107", "S105", "S106", "S107"), frozenset({"BTR405"})),
    # try/except/pass and /continue: a bare except is BTR301, a broad one BTR302
    **dict.fromkeys(("B110", "B112", "S110", "S112"), frozenset({"BTR301", "BTR302"})),
    **dict.fromkeys(("B113", "S113"), frozenset({"BTR001"})),
    **dict.fromkeys(("B201", "S201"), frozenset({"BTR402"})),
    **dict.fromkeys(("B501", "S501"), frozenset({"BTR403"})),
}
SHARED = frozenset().union(*PEERS.values())
REASONS = frozenset({"empty", "placeholder", "short-token", "not-a-secret-name", "control-char"})
EXPECT = re.compile(r"# expect: ([A-Z0-9,]+)")
PEER_ONLY = re.compile(r"# (?:expect: [A-Z0-9,]+; )?peer-only: ([A-Z0-9,]+) \(([a-z-]+)\)")
FILES = sorted(PARITY.glob("*.py"))


def labels(path: Path) -> tuple[dict[int, set[str]], dict[int, tuple[set[str], str]]]:
    expect: dict[int, set[str]] = {}
    peer_only: dict[int, tuple[set[str], str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if match := EXPECT.search(line):
            expect[number] = set(match.group(1).split(","))
        if match := PEER_ONLY.search(line):
            peer_only[number] = (set(match.group(1).split(",")), match.group(2))
    return expect, peer_only


@cache
def buttress_findings() -> dict[tuple[str, int], set[str]]:
    report = audit(PARITY, AuditConfig(select=SHARED))
    assert report.skipped == ()
    found: dict[tuple[str, int], set[str]] = {}
    for f in report.findings:
        found.setdefault((f.location.path, f.location.line), set()).add(f.rule_id)
    return found


@cache
def peer_findings() -> dict[tuple[str, int], set[str]]:
    found: dict[tuple[str, int], set[str]] = {}
    ruff = shutil.which("ruff", path=str(BIN)) or shutil.which("ruff")
    assert ruff, "ruff is in the test extra"
    codes = sorted(c for c in PEERS if c.startswith("S"))
    proc = subprocess.run(
        [ruff, "check", "--isolated", "--no-cache", "--ignore-noqa", "--exit-zero",
         "--select", ",".join(codes), "--output-format", "json", str(PARITY)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    for item in json.loads(proc.stdout):
        key = (Path(item["filename"]).name, item["location"]["row"])
        found.setdefault(key, set()).add(item["code"])
    codes = sorted(c for c in PEERS if c.startswith("B"))
    proc = subprocess.run(
        [sys.executable, "-m", "bandit", "-q", "-f", "json", "-t", ",".join(codes), "-r",
         str(PARITY)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    for item in json.loads(proc.stdout)["results"]:
        key = (Path(item["filename"]).name, item["line_number"])
        found.setdefault(key, set()).add(item["test_id"])
    return found


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_buttress_flags_exactly_the_expected_lines(path: Path) -> None:
    expect, _ = labels(path)
    mine = {line: rules for (name, line), rules in buttress_findings().items() if name == path.name}
    assert mine == expect


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_peer_finding_is_matched_or_explained(path: Path) -> None:
    pytest.importorskip("bandit", reason="bandit (the bench extra) runs as the peer here")
    expect, peer_only = labels(path)
    peers = {line: codes for (name, line), codes in peer_findings().items() if name == path.name}
    assert peers, "the peers flag something in every parity file"
    for line, codes in sorted(peers.items()):
        for code in sorted(codes):
            if PEERS[code] & expect.get(line, set()):
                continue
            explained, reason = peer_only.get(line, (set(), ""))
            assert code in explained, f"{path.name}:{line}: {code} neither matched nor explained"
            assert reason in REASONS
    for line, (codes, _) in peer_only.items():  # no stale label: the peer still says so
        assert codes <= peers.get(line, set()), f"{path.name}:{line}"


def test_every_reason_is_explained_in_the_docs() -> None:
    text = DOCS.read_text()
    section = text.split("## Parity with bandit and ruff", 1)[1].split("\n## ", 1)[0]
    for reason in REASONS:
        assert f"`{reason}`" in section, reason


# ------------------------------------------------------------------------------ semgrep
#
# semgrep's rules for what buttress shares, with their own test files (``parity/semgrep``).
# ``semgrep-results.json`` records what semgrep reports with all 16 rules on all 16
# files (semgrep cannot join the test extra: it pins opentelemetry 1.37 and click; run it
# from its own virtualenv or pipx: see the file's "command"). The recording is checked
# against the files' own ``# ruleid:`` / ``# ok:`` annotations (semgrep's test format,
# which ``semgrep --test`` validates), and against a fresh run when semgrep is on PATH.

SEMGREP = PARITY / "semgrep"
SEMGREP_RULES: dict[str, frozenset[str]] = {
    "use-timeout": frozenset({"BTR001"}),
    "disabled-cert-validation": frozenset({"BTR403"}),
    "debug-enabled": frozenset({"BTR402"}),
    "avoid-bind-to-all-interfaces": frozenset({"BTR408"}),
    "hardcoded-password-default-argument": frozenset({"BTR405"}),
    "md5-used-as-password": frozenset({"BTR406"}),
    **dict.fromkeys(
        ("formatted-sql-query", "sqlalchemy-execute-raw-query", "aiopg-sqli", "asyncpg-sqli",
         "pg8000-sqli", "psycopg-sqli", "sql-injection-using-extra-where",
         "sql-injection-using-rawsql", "sql-injection-using-raw",
         "sql-injection-db-cursor-execute"),
        frozenset({"BTR404"}),
    ),
}  # fmt: skip
#: Lines semgrep's two generic SQL rules flag where the driver rules' tests say ``ok``:
#: SQL from constants only (``"..." + "3"``, ``.format()``, ``% ()``, an f-string with
#: no field, psycopg's ``sql.SQL(...).format(sql.Identifier(...))``).
_CONSTANT_SQL = {
    "aiopg-sqli.py": (105, 136, 155, 164, 173, 182),
    "asyncpg-sqli.py": (89, 107, 116, 121, 126, 131),
    "pg8000-sqli.py": (73, 86, 92, 103, 108, 113, 118),
    "psycopg-sqli.py": (86, 101, 108, 121, 127, 133, 139, 149),
}
#: semgrep findings buttress does not report, with the reason (docs/audit.md explains each)
SEMGREP_ONLY = {
    ("sqlalchemy-execute-raw-query.py", 253, "sqlalchemy-execute-raw-query"): "no-sql-text",
    **{
        (name, line, rule): "constant-sql"
        for name, lines in _CONSTANT_SQL.items()
        for line in lines
        for rule in ("formatted-sql-query", "sqlalchemy-execute-raw-query")
    },
}
#: buttress findings semgrep does not report (on lines its tests call ``ok`` or say nothing of)
BUTTRESS_ONLY = {
    ("debug-enabled.py", 20, "BTR408"): "bind-in-run",
    ("debug-enabled.py", 24, "BTR408"): "bind-in-run",
    ("hardcoded-password-default-argument.py", 7, "BTR405"): "assigned-secret",
    ("md5-used-as-password.py", 32, "BTR406"): "sha256-is-fast",
    ("md5-used-as-password.py", 38, "BTR406"): "sha256-is-fast",
    ("md5-used-as-password.py", 44, "BTR406"): "sha256-is-fast",
    ("pg8000-sqli.py", 10, "BTR405"): "keyword-secret",
    ("pg8000-sqli.py", 121, "BTR405"): "keyword-secret",
}
ANNOTATION = re.compile(r"#\s*(ruleid|ok):\s*([\w-]+)")
Result = tuple[str, int, int, str]  # file, first line, last line, semgrep rule


def semgrep_recorded() -> list[Result]:
    data = json.loads((SEMGREP / "semgrep-results.json").read_text())
    return [(str(p), int(s), int(e), str(r)) for p, s, e, r in data["results"]]


@cache
def buttress_on_semgrep_files() -> dict[str, list[tuple[int, int, str]]]:
    report = audit(SEMGREP, AuditConfig(select=frozenset().union(*SEMGREP_RULES.values())))
    assert report.skipped == ()
    found: dict[str, list[tuple[int, int, str]]] = {}
    for f in report.findings:
        loc = f.location
        found.setdefault(loc.path, []).append((loc.line, max(loc.line, loc.end_line), f.rule_id))
    return found


def _flags(path: str, first: int, last: int, rules: frozenset[str]) -> bool:
    found = buttress_on_semgrep_files().get(path, [])
    return any(first <= line <= last and rule in rules for line, _, rule in found)


def test_the_recording_matches_semgreps_own_annotations() -> None:
    recorded = {(p, s, r) for p, s, _, r in semgrep_recorded()}
    for path in sorted(SEMGREP.glob("*.py")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            match = ANNOTATION.search(line)
            if match is None or line.lstrip()[:1] != "#":
                continue
            target = number + 1  # the annotated line: the next one that is not a comment
            while lines[target - 1].lstrip().startswith("#"):
                target += 1
            kind, rule = match.groups()
            assert ((path.name, target, rule) in recorded) == (kind == "ruleid"), (path, target)


def test_buttress_finds_every_semgrep_finding_or_the_docs_say_why() -> None:
    recorded = semgrep_recorded()
    for path, first, last, rule in recorded:
        if _flags(path, first, last, SEMGREP_RULES[rule]):
            assert (path, first, rule) not in SEMGREP_ONLY, "stale label"
        else:
            assert (path, first, rule) in SEMGREP_ONLY, f"{path}:{first}: {rule} missed"
    lines = {(p, s) for p, s, _, _ in recorded}
    assert all((p, s) in lines for p, s, _ in SEMGREP_ONLY), "a label on a line semgrep passes"


def test_buttress_flags_nothing_semgrep_calls_correct_unless_the_docs_say_why() -> None:
    recorded = semgrep_recorded()
    for path, found in buttress_on_semgrep_files().items():
        for line, _, rule in found:
            seen = any(
                p == path and s <= line <= e and rule in SEMGREP_RULES[r] for p, s, e, r in recorded
            )
            assert seen != ((path, line, rule) in BUTTRESS_ONLY), f"{path}:{line}: {rule}"


def test_every_semgrep_difference_is_explained_in_the_docs() -> None:
    section = DOCS.read_text().split("### Parity with semgrep", 1)[1].split("\n## ", 1)[0]
    for reason in {*SEMGREP_ONLY.values(), *BUTTRESS_ONLY.values()}:
        assert f"`{reason}`" in section, reason


def test_the_recording_is_what_semgrep_reports_today(tmp_path: Path) -> None:
    semgrep = shutil.which("semgrep")
    if semgrep is None:
        pytest.skip("semgrep is not on PATH (it cannot join the test extra: see above)")
    shutil.copytree(SEMGREP, tmp_path / "semgrep")
    proc = subprocess.run(
        [semgrep, "--metrics=off", "--disable-version-check", "--quiet", "--json",
         "--config", ".", "."],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path / "semgrep",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = {
        (Path(r["path"]).name, r["start"]["line"], r["end"]["line"], r["check_id"].split(".")[-1])
        for r in json.loads(proc.stdout)["results"]
    }
    assert fresh == set(semgrep_recorded())
