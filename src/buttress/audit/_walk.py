"""Finding and reading the files to audit, without ever importing or executing them.

`discover` walks the tree (following directory symlinks once: a directory reached twice,
a link cycle or a dangling link is reported, never looped on), skipping
`DEFAULT_SKIP_DIRS`, the configured excludes and, by default, test, migration and fixture
code. `load` reads one file: too large, not UTF-8, or not parsable by `ast` (syntax
errors, null bytes, nesting too deep for the parser) are reported as `Skipped` and the run
goes on. Each `SourceFile` carries the sha256 of its bytes: the key a per-file result
cache will use.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from buttress.audit._config import DEFAULT_SKIP_DIRS, TEST_DIRS, AuditConfig
from buttress.report import Skipped

__all__ = [
    "STATS",
    "SourceFile",
    "discover",
    "is_test_path",
    "load",
    "module_name",
    "parse",
    "read",
]

#: Timing-independent counters of the work done (``parses``: files given to ``ast.parse``).
STATS: Counter[str] = Counter()


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceFile:
    """One parsed Python file."""

    path: Path
    rel: str  # posix path relative to the audited root
    module: str  # dotted module name (src/ layouts stripped)
    text: str
    tree: ast.Module
    digest: str

    @property
    def lines(self) -> list[str]:
        """The source lines (no line ends)."""
        return self.text.splitlines()


def is_test_path(rel: str) -> bool:
    """True for test, migration and fixture code (by directory or file name)."""
    parts = rel.split("/")
    name = parts[-1]
    if any(p in TEST_DIRS for p in parts[:-1]):
        return True
    return (
        name.startswith("test_") or name.endswith("_test.py") or name in ("conftest.py", "tests.py")
    )


def module_name(rel: str) -> str:
    """The dotted module of a relative path (``src/app/main.py`` -> ``app.main``)."""
    parts = rel[:-3].split("/") if rel.endswith(".py") else rel.split("/")
    if parts and parts[0] in ("src", "lib") and len(parts) > 1:
        parts = parts[1:]
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _excluded(rel: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        pat = pattern.rstrip("/")
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel, pat + "/*"):
            return True
        # a bare directory or file name matches at any depth, as in .gitignore
        if "/" not in pat and any(fnmatch.fnmatch(part, pat) for part in rel.split("/")):
            return True
    return False


def discover(
    root: Path,
    config: AuditConfig,
    others: list[tuple[Path, str]] | None = None,
) -> tuple[list[tuple[Path, str]], list[Skipped]]:
    """The ``(path, relative path)`` of every Python file to audit, and what was skipped.

    ``others`` receives the non-Python files the audit reads as text (Dockerfiles,
    compose files, requirements, lock files, CI workflows: see `_check_files.kind_of`).
    """
    from buttress.audit._check_files import kind_of  # noqa: PLC0415 - a cycle otherwise

    skipped: list[Skipped] = []
    if root.is_file() or (root.is_symlink() and not root.is_dir()):
        return [(root, root.name)], skipped
    found: list[tuple[Path, str]] = []
    seen: set[tuple[int, int]] = set()

    def walk(folder: Path, rel: str) -> Iterator[tuple[Path, str]]:
        try:
            info = folder.stat()
        except OSError as exc:
            skipped.append(Skipped(path=rel or ".", reason=_os_reason(exc)))
            return
        key = (info.st_dev, info.st_ino)
        if key in seen:
            skipped.append(Skipped(path=rel, reason="symlink loop (directory already walked)"))
            return
        seen.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(Skipped(path=rel or ".", reason=_os_reason(exc)))
            return
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            if _excluded(child, config.exclude):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks
                is_file = entry.is_file()
            except OSError as exc:
                skipped.append(Skipped(path=child, reason=_os_reason(exc)))
                continue
            if entry.is_symlink() and not (is_dir or is_file):
                try:
                    os.stat(entry.path)
                except OSError as exc:
                    if entry.name.endswith(".py") or "." not in entry.name:
                        skipped.append(Skipped(path=child, reason=_os_reason(exc)))
                continue
            if is_dir:
                if entry.name in DEFAULT_SKIP_DIRS or entry.name.endswith(".egg-info"):
                    continue
                if config.skip_tests and entry.name in TEST_DIRS:
                    continue
                yield from walk(Path(entry.path), child)
            elif is_file and entry.name.endswith(".py"):
                if config.skip_tests and is_test_path(child):
                    continue
                yield Path(entry.path), child
            elif is_file and others is not None and kind_of(child) is not None:
                others.append((Path(entry.path), child))

    found.extend(walk(root, ""))
    return found, skipped


def _os_reason(exc: OSError) -> str:
    if exc.errno == 40:  # ELOOP
        return "symlink loop"
    if isinstance(exc, FileNotFoundError):
        return "dangling symlink"
    return f"cannot read: {exc.strerror or exc}"


def load(path: Path, rel: str, config: AuditConfig) -> SourceFile | Skipped:
    """Read and parse one file, or say why it was skipped."""
    data = read(path, rel, config)
    if isinstance(data, Skipped):
        return data
    return parse(path, rel, data)


def read(path: Path, rel: str, config: AuditConfig) -> bytes | Skipped:
    """The bytes of one file, or why it was skipped (not a file, too large, unreadable)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return Skipped(path=rel, reason="not a regular file")
        if info.st_size > config.max_file_size:
            return Skipped(
                path=rel,
                reason=f"too large ({info.st_size} bytes > max-file-size {config.max_file_size})",
            )
        return path.read_bytes()
    except OSError as exc:
        return Skipped(path=rel, reason=_os_reason(exc))


def parse(path: Path, rel: str, data: bytes) -> SourceFile | Skipped:
    """Decode and parse one file's bytes, or say why it was skipped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Skipped(path=rel, reason=f"not UTF-8 (byte {exc.start})")
    text = text.removeprefix("\ufeff")
    STATS["parses"] += 1
    try:
        tree = ast.parse(text, filename=rel)
    except SyntaxError as exc:
        if exc.lineno is None:  # null bytes, for one
            return Skipped(path=rel, reason=f"cannot parse: {exc.msg}")
        return Skipped(path=rel, reason=f"syntax error at line {exc.lineno}: {exc.msg}")
    except (ValueError, RecursionError, MemoryError) as exc:
        return Skipped(path=rel, reason=f"cannot parse: {type(exc).__name__}")
    return SourceFile(
        path=path,
        rel=rel,
        module=module_name(rel),
        text=text,
        tree=tree,
        digest=hashlib.sha256(data).hexdigest(),
    )
