"""The thread drivers are generated from the asyncio ones, and the generated file is current."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "unasync.py"


def _unasync() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_sync_drivers_are_current() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_check_mode_reports_a_stale_file_and_writing_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unasync = _unasync()
    source = tmp_path / "_x_async.py"
    source.write_text('"""Doc."""\n\nasync def f(clock):\n    await clock.asleep(1)\n')
    target = tmp_path / "_x_sync.py"
    monkeypatch.setattr(unasync, "ROOT", tmp_path)
    monkeypatch.setattr(unasync, "FILES", [(source.name, target.name)])
    assert unasync.main(["--check"]) == 1  # missing counts as stale
    assert unasync.main([]) == 0
    assert unasync.main(["--check"]) == 0
    assert "def f(clock):\n    clock.sleep(1)\n" in target.read_text()
    target.write_text(target.read_text() + "# edited by hand\n")
    assert unasync.main(["--check"]) == 1


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("async def link(fn):", "def link(fn):"),
        ("    return await inner(fn, args, kwargs)", "    return inner(fn, args, kwargs)"),
        ("    x = await (f() if direct else g())", "    x = f() if direct else g()"),
        ("    x = await (f()) + 1", "    x = (f()) + 1"),  # the group does not end the line
        ("    await clock.asleep(delay)", "    clock.sleep(delay)"),
        ("    asleeping = 1", "    asleeping = 1"),  # whole words only
        ("inner: AsyncLink", "inner: SyncLink"),
        ("    waiter = bulkhead.task_waiter()", "    waiter = bulkhead.thread_waiter()"),
        ("    async with lock:", "    with lock:"),
        ("    async for item in items:", "    for item in items:"),
    ],
)
def test_rewrite_rules(line: str, expected: str) -> None:
    assert _unasync().unasync_line(line) == expected


def _functions(path: Path) -> dict[str, ast.AST]:
    tree = ast.parse(path.read_text())
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_both_driver_modules_define_the_same_drivers() -> None:
    base = ROOT / "src" / "buttress" / "resilience"
    sync = _functions(base / "_drivers_sync.py")
    asynchronous = _functions(base / "_drivers_async.py")
    assert (
        sync.keys()
        == asynchronous.keys()
        == {
            "retry_link",
            "breaker_link",
            "bulkhead_acquire",
            "bulkhead_link",
            "fallback_link",
        }
    )
    for name, node in sync.items():
        assert not isinstance(node, ast.AsyncFunctionDef), name
        assert not any(isinstance(n, ast.Await) for n in ast.walk(node)), name
