"""The result cache: per-file findings keyed by content hash, and the whole run's result.

One JSON file per configuration (``<cache-dir>/<key>.json``), where the key hashes the
tool's version, the cache format, the rules run and the options that change findings.
It holds:

- ``tree``: the digest of every file's path and content hash (and what discovery
  skipped) with the report that run produced. A run on an unchanged tree is answered from
  it: files are read and hashed, nothing is parsed.
- ``files``: per Python file, its content hash, the hash of the audited modules it imports
  (transitively: names are resolved through them) and its per-file findings. When the tree
  changed, every file is parsed again (the whole-program rules need every module's index)
  but the per-file rules run only on files whose entry is stale; the others replay theirs.

The cache is data (JSON, never pickle: a cache directory inside an audited repository is
untrusted input); anything unreadable or malformed is a miss. A ``.gitignore`` inside the
cache directory keeps it out of version control.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from buttress import __version__
from buttress.audit._config import AuditConfig
from buttress.audit._rules import RULES
from buttress.report import Finding, Location, Priority, Skipped

__all__ = ["FORMAT", "ResultCache", "default_cache_dir", "finding_from", "finding_to"]

FORMAT = 1


def default_cache_dir(root: Path) -> Path:
    """Where the CLI keeps the cache for ``root`` by default.

    ``.buttress_cache/audit`` in the audited tree, or under ``$XDG_CACHE_HOME`` when the
    tree is not writable.
    """
    local = root / ".buttress_cache" / "audit"
    if os.access(root, os.W_OK):
        return local
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return base / "buttress" / "audit" / digest


def config_key(config: AuditConfig) -> str:
    """What the findings depend on besides the files: version, rules, options."""
    parts = {
        "format": FORMAT,
        "version": __version__,
        "rules": sorted(r for r in RULES if config.enabled(r)),
        "severity": sorted((k, v.value) for k, v in config.severity.items()),
        "skip_tests": config.skip_tests,
        "exclude": list(config.exclude),
        "max_file_size": config.max_file_size,
        "rule_table": sorted((r.id, r.title, r.priority.value, r.fix) for r in RULES.values()),
        "code": _code_digest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@functools.cache
def _code_digest() -> str:
    """The analyzer's own source: a checkout whose rules changed must not replay old findings.

    A release changes ``__version__``; between releases (a checkout, an editable install) the
    rules' code changes with no version bump, so the key also covers the package's files.
    """
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def finding_to(f: Finding) -> dict[str, Any]:
    """A finding as JSON data."""
    loc = f.location
    return {
        "r": f.rule_id,
        "c": f.category,
        "p": f.priority.value,
        "m": f.message,
        "l": [loc.path, loc.line, loc.column, loc.end_line, loc.end_column],
        "f": f.fix,
        "d": f.docs,
        "s": f.suppressed,
        "sr": f.suppression_reason,
        "fp": f.fingerprint,
    }


def finding_from(data: dict[str, Any]) -> Finding:
    """The finding `finding_to` wrote (KeyError/ValueError/TypeError when malformed)."""
    path, line, column, end_line, end_column = data["l"]
    return Finding(
        rule_id=str(data["r"]),
        category=str(data["c"]),
        priority=Priority(data["p"]),
        message=str(data["m"]),
        location=Location(
            path=str(path),
            line=int(line),
            column=int(column),
            end_line=int(end_line),
            end_column=int(end_column),
        ),
        fix=str(data["f"]),
        docs=str(data["d"]),
        suppressed=bool(data["s"]),
        suppression_reason=str(data["sr"]),
        fingerprint=str(data["fp"]),
    )


class ResultCache:
    """The cache file of one configuration in ``directory``."""

    def __init__(self, directory: Path, config: AuditConfig) -> None:
        self.directory = directory
        self.path = directory / f"{config_key(config)}.json"
        self.files: dict[str, dict[str, Any]] = {}
        self.tree: dict[str, Any] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("format") == FORMAT:
                files, tree = data.get("files"), data.get("tree")
                self.files = files if isinstance(files, dict) else {}
                self.tree = tree if isinstance(tree, dict) else {}
        except (OSError, ValueError):
            pass

    # ------------------------------------------------------------ whole tree

    def result(self, tree_digest: str) -> dict[str, Any] | None:
        """The stored result of a run on exactly this tree, if any."""
        if self.tree.get("digest") == tree_digest and isinstance(self.tree.get("result"), dict):
            result: dict[str, Any] = self.tree["result"]
            return result
        return None

    # ------------------------------------------------------------ per file

    def findings(self, rel: str, digest: str, deps: str) -> list[Finding] | None:
        """The per-file findings of ``rel`` when its content and dependencies are unchanged."""
        entry = self.files.get(rel)
        if not isinstance(entry, dict) or entry.get("digest") != digest:
            return None
        if entry.get("deps") != deps:
            return None
        try:
            return [finding_from(f) for f in entry["findings"]]
        except (KeyError, ValueError, TypeError):
            return None

    def store(self, rel: str, digest: str, deps: str, findings: list[Finding]) -> None:
        """Remember the per-file findings of ``rel``."""
        self.files[rel] = {
            "digest": digest,
            "deps": deps,
            "findings": [finding_to(f) for f in findings],
        }

    def save(self, tree_digest: str, result: dict[str, Any], present: set[str]) -> None:
        """Write the cache (entries of files no longer in the tree are dropped)."""
        files = {rel: entry for rel, entry in self.files.items() if rel in present}
        data = {
            "format": FORMAT,
            "files": files,
            "tree": {"digest": tree_digest, "result": result},
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            ignore = self.directory.parent / ".gitignore"
            if self.directory.parent.name == ".buttress_cache" and not ignore.exists():
                ignore.write_text("# created by buttress audit\n*\n", encoding="utf-8")
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only tree: run without a cache


def skipped_to(items: list[Skipped]) -> list[list[str]]:
    """Skipped inputs as JSON data."""
    return [[s.path, s.reason] for s in items]


def skipped_from(data: list[list[str]]) -> list[Skipped]:
    """The skipped inputs `skipped_to` wrote."""
    return [Skipped(path=str(p), reason=str(r)) for p, r in data]
