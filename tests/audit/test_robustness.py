"""Files that do not parse, are not UTF-8, are huge, or are symlink loops are reported and
skipped; the run goes on, and the audited code is never imported or executed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from buttress.audit import AuditConfig, audit, load_config


def make_tree(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "ok.py").write_text("import requests\nrequests.get('https://x')\n")
    (root / "pkg" / "broken.py").write_text("def f(:\n    pass\n")
    (root / "pkg" / "latin.py").write_bytes("NAME = 'caf\xe9'\n".encode("latin-1"))
    (root / "pkg" / "huge.py").write_text("X = 1\n" * (5 * 1024 * 1024 // 6 + 1))
    (root / "pkg" / "nulls.py").write_bytes(b"x = 1\x00\n")
    (root / "pkg" / "boom.py").write_text("raise SystemExit('executed!')\nopen('/tmp/x', 'w')\n")
    os.symlink(root / "pkg", root / "pkg" / "loop")  # a directory cycle
    os.symlink(root / "self.py", root / "self.py")  # a link to itself
    os.symlink(root / "missing.py", root / "dangling.py")
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "lib" / "vendored.py").write_text("except:\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text("import requests\nrequests.get('https://x')\n")
    return root


def test_bad_files_are_reported_and_skipped(tmp_path: Path) -> None:
    report = audit(make_tree(tmp_path / "tree"))
    reasons = {s.path: s.reason for s in report.skipped}
    assert reasons["pkg/broken.py"].startswith("syntax error at line 1")
    assert reasons["pkg/latin.py"].startswith("not UTF-8")
    assert reasons["pkg/huge.py"].startswith("too large")
    assert reasons["pkg/nulls.py"].startswith("cannot parse")
    assert reasons["pkg/loop"] == "symlink loop (directory already walked)"
    assert reasons["self.py"] == "symlink loop"
    assert reasons["dangling.py"] == "dangling symlink"
    assert {f.location.path for f in report.findings} == {"pkg/ok.py"}  # no .venv, no tests
    assert report.files == 2  # ok.py and boom.py (parsed, never run)


def test_cli_exits_normally_on_a_bad_tree(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    proc = subprocess.run(
        [sys.executable, "-m", "buttress", "audit", str(root), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["summary"]["skipped"] == 7
    assert not Path("/tmp/x").exists() or "executed" not in proc.stdout + proc.stderr


def test_include_tests_and_pyproject_configuration(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    (root / "pyproject.toml").write_text(
        "[tool.buttress.audit]\n"
        'exclude = ["pkg/boom.py"]\n'
        "skip-tests = false\n"
        'disable = ["BTR502"]\n'
        'severity = { BTR001 = "P2" }\n'
        "max-file-size = 1000\n"
    )
    config = load_config(root)
    assert config.max_file_size == 1000
    assert not config.skip_tests
    report = audit(root, config)
    paths = {f.location.path for f in report.findings}
    assert paths == {"pkg/ok.py", "tests/test_x.py"}
    assert {f.priority.value for f in report.findings if f.rule_id == "BTR001"} == {"P2"}
    assert "max-file-size 1000" in {s.path: s.reason for s in report.skipped}["pkg/huge.py"]
    assert "BTR502" not in {r.id for r in report.rules}


def test_bad_pyproject_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.buttress.audit]\ndisable = ["NOPE1"]\n')
    (tmp_path / "a.py").write_text("x = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "buttress", "audit", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown rules" in proc.stderr


def test_single_file_target(tmp_path: Path) -> None:
    path = tmp_path / "one.py"
    path.write_text("try:\n    pass\nexcept:\n    pass\n")
    report = audit(path, AuditConfig())
    assert [(f.rule_id, f.location.path, f.location.line) for f in report.findings] == [
        ("BTR301", "one.py", 3)
    ]
