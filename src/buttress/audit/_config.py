"""The audit's configuration: defaults, ``[tool.buttress.audit]`` in pyproject.toml, the CLI.

``pyproject.toml`` is looked for in the audited directory, then its parents (the first
one found wins, as ruff does). Keys::

    [tool.buttress.audit]
    exclude = ["scripts/*", "legacy/**"]   # globs on paths relative to the audited root
    skip-tests = true                      # tests, migrations and fixtures (the default)
    disable = ["BTR502"]                   # rules not run
    severity = { BTR501 = "P2" }           # priority overrides
    max-file-size = 2_000_000              # bytes; larger files are reported and skipped

Command-line options (``--select``, ``--ignore``, ``--include-tests``) apply on top.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from buttress.audit._rules import RULES
from buttress.errors import ConfigurationError
from buttress.report import Priority

__all__ = ["DEFAULT_SKIP_DIRS", "AuditConfig", "find_pyproject", "load_config"]

#: Directories never walked into (virtual environments, VCS data, build output, caches).
DEFAULT_SKIP_DIRS = frozenset(
    {
        ".git", ".hg", ".svn", ".venv", "venv", ".env", "env", ".tox", ".nox", "node_modules",
        "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
        "site-packages", ".eggs", "htmlcov", ".idea", ".vscode", ".buttress_cache",
    }
)  # fmt: skip

#: Directories of test, migration and fixture code, skipped unless skip_tests is off.
TEST_DIRS = frozenset({"tests", "test", "testing", "migrations", "alembic", "fixtures", "conftest"})


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditConfig:
    """What to audit and how: merged from the defaults, pyproject.toml and the CLI."""

    exclude: tuple[str, ...] = ()
    skip_tests: bool = True
    disable: frozenset[str] = frozenset()
    select: frozenset[str] = frozenset()  # empty: every rule
    severity: dict[str, Priority] = field(default_factory=dict)
    max_file_size: int = 2_000_000
    source: str = ""  # the pyproject.toml read, if any

    def enabled(self, rule_id: str) -> bool:
        """True when ``rule_id`` runs (selected, or nothing selected, and not disabled)."""
        if rule_id in self.disable:
            return False
        return not self.select or rule_id in self.select


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml in ``start`` (a directory) or its parents."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _rule_ids(value: Any, key: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"[tool.buttress.audit] {key}: a list of rule ids")
    unknown = sorted(set(value) - RULES.keys())
    if unknown:
        raise ConfigurationError(f"[tool.buttress.audit] {key}: unknown rules {unknown}")
    return frozenset(value)


def load_config(root: Path, base: AuditConfig | None = None) -> AuditConfig:
    """``base`` (the defaults) updated from the ``[tool.buttress.audit]`` table found."""
    config = base or AuditConfig()
    path = find_pyproject(root if root.is_dir() else root.parent)
    if path is None:
        return config
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read it ({exc})") from exc
    table = data.get("tool", {}).get("buttress", {}).get("audit")
    if table is None:
        return config
    if not isinstance(table, dict):
        raise ConfigurationError(f"{path}: [tool.buttress.audit] must be a table")
    known = {"exclude", "skip-tests", "disable", "severity", "max-file-size"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigurationError(f"{path}: [tool.buttress.audit] unknown keys {unknown}")
    changes: dict[str, Any] = {"source": str(path)}
    if "exclude" in table:
        exclude = table["exclude"]
        if not isinstance(exclude, list) or not all(isinstance(v, str) for v in exclude):
            raise ConfigurationError(f"{path}: [tool.buttress.audit] exclude: a list of globs")
        changes["exclude"] = (*config.exclude, *exclude)
    if "skip-tests" in table:
        if not isinstance(table["skip-tests"], bool):
            raise ConfigurationError(f"{path}: [tool.buttress.audit] skip-tests: true or false")
        changes["skip_tests"] = table["skip-tests"]
    if "disable" in table:
        changes["disable"] = config.disable | _rule_ids(table["disable"], "disable")
    if "severity" in table:
        severity = table["severity"]
        if not isinstance(severity, dict):
            raise ConfigurationError(f"{path}: [tool.buttress.audit] severity: a table")
        merged = dict(config.severity)
        for rule_id, value in severity.items():
            _rule_ids([rule_id], "severity")
            try:
                merged[rule_id] = Priority(value)
            except ValueError:
                msg = f"{path}: [tool.buttress.audit] severity.{rule_id}: P0, P1 or P2"
                raise ConfigurationError(msg) from None
        changes["severity"] = merged
    if "max-file-size" in table:
        size = table["max-file-size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigurationError(f"{path}: [tool.buttress.audit] max-file-size: bytes > 0")
        changes["max_file_size"] = size
    return replace(config, **changes)
