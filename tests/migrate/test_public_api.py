"""``buttress.migrate`` builds on ``buttress.backup``'s public names only, and those exist."""

from __future__ import annotations

import ast
from pathlib import Path

import buttress.backup
import buttress.migrate

MIGRATE = Path(buttress.migrate.__file__).parent


def _backup_imports() -> dict[str, set[str]]:
    """``{module: names}`` imported from ``buttress.backup*`` by the migrate package."""
    found: dict[str, set[str]] = {}
    for path in sorted(MIGRATE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "buttress.backup"
            ):
                found.setdefault(node.module or "", set()).update(a.name for a in node.names)
    return found


def test_migrate_imports_only_public_backup_names() -> None:
    imports = _backup_imports()
    assert set(imports) == {"buttress.backup"}, imports  # no buttress.backup._private
    used = imports["buttress.backup"]
    assert used <= set(buttress.backup.__all__), used - set(buttress.backup.__all__)
    assert {"restore_backup", "tool_invocation", "password_of", "redact"} <= used


def test_backup_exports_resolve() -> None:
    exported = buttress.backup.__all__
    assert len(exported) == len(set(exported))
    for name in exported:
        assert getattr(buttress.backup, name) is not None, name
