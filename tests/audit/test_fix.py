"""``buttress audit --fix`` / ``--diff``: the mechanical fixes on a fixture, idempotent.

``fix/service.py.before`` holds one case of every fix (and a suppressed finding, which
must stay); ``fix/service.py.after`` is the expected result, reviewed by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buttress.audit import audit
from buttress.audit._fix import FIXABLE, fix_source

FIXTURES = Path(__file__).parent / "fix"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buttress", "audit", *map(str, args), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "BUTTRESS_AUDIT_CACHE": "off"},
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copy(FIXTURES / "service.py.before", tmp_path / "service.py")
    return tmp_path


def test_diff_shows_and_writes_nothing(tree: Path) -> None:
    before = (tree / "service.py").read_text()
    proc = run(tree, "--diff")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("--- a/service.py\n+++ b/service.py\n")
    assert "-    r = requests.get(url)  # a comment stays" in proc.stdout
    assert "+    r = requests.get(url, timeout=10)  # a comment stays" in proc.stdout
    assert "16 fixable findings in 1 files" in proc.stderr
    assert (tree / "service.py").read_text() == before


def test_fix_matches_the_reviewed_result_and_is_idempotent(tree: Path) -> None:
    proc = run(tree, "--fix")
    assert "fixed 16 findings in 1 files" in proc.stderr, proc.stderr
    fixed = (tree / "service.py").read_text()
    assert fixed == (FIXTURES / "service.py.after").read_text()
    # what is left is what no mechanical fix covers, and the suppressed finding
    left = audit(tree)
    assert {f.rule_id for f in left.findings if not f.suppressed} & FIXABLE == set()
    assert [f.location.line for f in left.findings if f.suppressed] == [61]
    again = run(tree, "--fix")
    assert "fixed 0 findings in 0 files" in again.stderr
    assert (tree / "service.py").read_text() == fixed
    assert run(tree, "--diff").returncode == 0


def test_fix_keeps_the_file_mode(tree: Path) -> None:
    path = tree / "service.py"
    path.chmod(0o755)
    run(tree, "--fix")
    assert path.stat().st_mode & 0o777 == 0o755
    assert not list(tree.glob(".*buttress-fix"))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # a trailing comma in a call split over lines: the new argument on its own line
        (
            "import requests\nrequests.post(\n    'u',\n)\n",
            "import requests\nrequests.post(\n    'u',\n    timeout=10,\n)\n",
        ),
        # verify=False in the middle and at the end
        (
            "import requests\nrequests.get('u', verify=False, timeout=1)\n",
            "import requests\nrequests.get('u', timeout=1)\n",
        ),
        (
            "import requests\nrequests.get('u', timeout=1, verify=False)\n",
            "import requests\nrequests.get('u', timeout=1)\n",
        ),
        # non-ASCII before the call: columns are characters for libcst, bytes for ast
        (
            "import requests\nx = {'é': requests.get('u')}\n",
            "import requests\nx = {'é': requests.get('u', timeout=10)}\n",
        ),
        # the second finding on a line
        (
            "import requests\na, b = requests.get('u'), requests.get('v')\n",
            "import requests\na, b = requests.get('u', timeout=10), requests.get('v', timeout=10)\n",
        ),
        # a call already given **kwargs is never flagged, so never touched
        (
            "import requests\nrequests.get('u', **kw)\n",
            "import requests\nrequests.get('u', **kw)\n",
        ),
    ],
)
def test_fix_source_shapes(tmp_path: Path, source: str, expected: str) -> None:
    path = tmp_path / "m.py"
    path.write_text(source, encoding="utf-8")
    report = audit(path)
    after, _ = fix_source(path.read_bytes(), report.findings)
    assert after.decode() == expected
    path.write_bytes(after)
    again, fixed = fix_source(after, audit(path).findings)
    assert (again, fixed) == (after, [])


def test_a_file_edited_since_the_audit_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("import requests\nrequests.get('u')\n")
    findings = audit(path).findings
    moved = b"import requests\n\nrequests.get('u')\n"
    assert fix_source(moved, findings) == (moved, [])
