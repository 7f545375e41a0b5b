"""Large trees: a parallel run reports exactly what a serial one does, and memory stays
bounded (syntax trees are dropped after each file; the index keeps a packed skeleton)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buttress.audit import audit
from buttress.audit._config import AuditConfig
from buttress.audit._index import ModuleIndex, Packed, Program
from buttress.audit._shard import MIN_PARALLEL_FILES
from buttress.audit._skeleton import skeleton
from buttress.audit._walk import SourceFile, parse
from buttress.report import to_dict

HERE = Path(__file__).parent
SAMPLES = HERE / "samples"
CORPUS = HERE / "corpus"


def _comparable(report: object) -> str:
    data = to_dict(report)  # type: ignore[arg-type]
    data["summary"].pop("duration_seconds")
    return json.dumps(data, sort_keys=True)


def _many_services(root: Path) -> Path:
    """The corpus and both sample services, several times over: well above the threshold."""
    for copy in range(3):
        shutil.copytree(CORPUS, root / f"corpus{copy}")
        shutil.copytree(SAMPLES / "naive", root / f"naive{copy}")
        shutil.copytree(SAMPLES / "hardened", root / f"hardened{copy}")
    assert len(list(root.rglob("*.py"))) > 2 * MIN_PARALLEL_FILES
    return root


@pytest.mark.process
def test_a_parallel_run_reports_exactly_what_a_serial_run_reports(tmp_path: Path) -> None:
    tree = _many_services(tmp_path / "tree")
    config = AuditConfig(skip_tests=False)
    serial = audit(tree, config, jobs=1)
    assert len(serial.findings) > 300
    assert len({f.rule_id for f in serial.findings}) > 25  # absence, file and per-file rules
    for jobs in (2, 3):
        assert _comparable(audit(tree, config, jobs=jobs)) == _comparable(serial)


@pytest.mark.process
def test_a_parallel_run_with_a_cache_matches_one_without(tmp_path: Path) -> None:
    tree = _many_services(tmp_path / "tree")
    cache = tmp_path / "cache"
    fresh = audit(tree, jobs=1)
    first = audit(tree, cache_dir=cache, jobs=2)
    (tree / "naive0" / "run.py").write_text("import requests\nrequests.get('https://x.example')\n")
    changed = audit(tree, cache_dir=cache, jobs=2)
    assert _comparable(first) == _comparable(fresh)
    assert int(changed.extra["replayed"]) == int(changed.extra["parsed"]) - 1
    assert _comparable(changed) == _comparable(audit(tree, jobs=1))


def _load(text: str, rel: str = "app/views.py") -> SourceFile:
    loaded = parse(Path(rel), rel, text.encode())
    assert isinstance(loaded, SourceFile)
    return loaded


def test_a_skeleton_keeps_what_other_files_resolve_and_drops_the_rest() -> None:
    source = _load(
        "from flask import Flask\n"
        "ORIGINS = ['*']\n"
        "class Settings:\n"
        "    debug: bool = True\n"
        "    def post(self):\n"
        "        return compute(1, 2, 3)\n"
        "def create_app(user=Depends(get_current_user)):\n"
        "    total = sum(range(100))\n"
        "    app = Flask(__name__)\n"
        "    if request.method == 'POST':\n"
        "        pass\n"
        "    return app\n"
    )
    full = ModuleIndex.build(source)
    kept = skeleton(full)
    assert kept.source.text == ""
    assert kept.nodes == []
    assert kept.lines == full.lines == 13
    assert isinstance(kept.assigns, Packed)
    assert "ORIGINS" in kept.assigns
    assert "missing" not in kept.assigns
    program = Program([kept])
    assert list(program.strings(kept, kept.assigns["ORIGINS"][0])) == ["*"]
    [factory] = [kept.functions["create_app"]]
    body = [type(stmt.value).__name__ for stmt in factory.body if hasattr(stmt, "value")]
    assert body == ["Call", "Constant"]  # Flask(...) and 'POST'; the sum() line is gone
    assert factory.args.defaults  # Depends(get_current_user): an authentication dependency
    settings = kept.classes["Settings"]
    assert [getattr(s, "name", None) for s in settings.body] == [None, "post"]
    call = next(s.value for s in factory.body if hasattr(s, "value"))
    original = next(n for n in full.nodes if getattr(n, "lineno", 0) == 9 and hasattr(n, "func"))
    where = (getattr(original, "lineno", None), getattr(original, "col_offset", None))
    assert (call.lineno, call.col_offset) == where


_MEASURE = """
import sys
from pathlib import Path
sys.path.insert(0, {here!r})
from _synthetic import generate
from buttress.audit import audit
lines = generate(Path(sys.argv[1]), int(sys.argv[2]))
report = audit(Path(sys.argv[1]), jobs=1)
assert report.lines >= lines, (report.lines, lines)
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child of a big pytest
# process would report the parent's size; VmHWM belongs to this process's own memory map
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(lines, int(hwm.split()[1]))
"""


def _peak(tmp: Path, lines: int) -> tuple[int, int]:
    """(lines audited, peak RSS in KiB) of an audit of a generated tree, in a subprocess."""
    proc = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", _MEASURE.format(here=str(HERE)), str(tmp), str(lines)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written, peak = proc.stdout.split()
    return int(written), int(peak)


@pytest.mark.process
def test_peak_memory_does_not_grow_with_the_tree(tmp_path: Path) -> None:
    small_lines, small = _peak(tmp_path / "small", 40_000)
    large_lines, large = _peak(tmp_path / "large", 200_000)
    assert large_lines > 4 * small_lines
    grown = (large - small) * 1024
    # Keeping every syntax tree costs about 1.3 KB per line (211 MB for django's 159k
    # lines); the packed index costs a few dozen bytes per line.
    assert grown / (large_lines - small_lines) < 100, (small, large)
    assert large < 200 * 1024, f"peak {large // 1024} MB for {large_lines} lines"
