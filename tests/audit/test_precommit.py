"""The repository's ``.pre-commit-hooks.yaml``: valid for pre-commit, and its hooks run."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / ".pre-commit-hooks.yaml"
SAMPLES = Path(__file__).parent / "samples"


def hooks() -> dict[str, dict[str, object]]:
    clientlib = pytest.importorskip("pre_commit.clientlib", reason="pre-commit validates it")
    return {hook["id"]: hook for hook in clientlib.load_manifest(str(MANIFEST))}


def run_hook(hook: dict[str, object], cwd: Path) -> subprocess.CompletedProcess[str]:
    entry = shlex.split(str(hook["entry"]))
    assert entry[0] == "buttress"  # the console script the package installs
    args = [str(a) for a in hook["args"]]  # type: ignore[attr-defined]
    return subprocess.run(
        [sys.executable, "-m", "buttress", *entry[1:], *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={**os.environ, "BUTTRESS_AUDIT_CACHE": "off"},
    )


def test_the_manifest_is_valid_and_audits_a_directory() -> None:
    found = hooks()
    assert set(found) == {"buttress-audit", "buttress-audit-fix"}
    for hook in found.values():
        assert hook["language"] == "python"
        assert hook["pass_filenames"] is False  # whole-program: a directory, not staged files


def test_the_audit_hook_fails_on_p0_and_passes_a_hardened_service(tmp_path: Path) -> None:
    hook = hooks()["buttress-audit"]
    naive = run_hook(hook, SAMPLES / "naive")
    assert naive.returncode == 1, naive.stderr
    assert "gate failed" in naive.stderr
    assert run_hook(hook, SAMPLES / "hardened").returncode == 0


def test_the_fix_hook_rewrites_files(tmp_path: Path) -> None:
    shutil.copy(Path(__file__).parent / "fix" / "service.py.before", tmp_path / "service.py")
    proc = run_hook(hooks()["buttress-audit-fix"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "fixed 16 findings in 1 files" in proc.stderr
    fixed = (Path(__file__).parent / "fix" / "service.py.after").read_text()
    assert (tmp_path / "service.py").read_text() == fixed
