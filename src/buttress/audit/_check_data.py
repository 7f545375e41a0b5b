"""Data safety: Alembic migrations and backups (the audit rules of issue 15).

Rules BTR705 (an Alembic migration whose ``downgrade()`` is missing or does nothing; a
merge revision's empty one is fine),
BTR706 (more than one Alembic head: ``alembic upgrade head`` refuses to run), BTR707 (the
service uses a database and nothing in its deploy or CI configuration backs it up or
verifies a backup).

Alembic migrations live in a ``versions/`` directory beside an ``env.py``; the walk that
finds Python modules skips migration code by default, so `find_migrations` looks for
those directories itself (same skipped directories and excludes) and hands their files
over as text; they are parsed here with `ast`, never imported. A backup is recognised
in workflows, compose files, Dockerfiles, crontabs, Kubernetes manifests, Makefiles and
shell scripts (`kind_of` kind ``deploy``) by the tools that make or check one
(``buttress backup``, ``pg_dump``, ``pg_basebackup``, pgBackRest, Barman, WAL-G,
``mysqldump``, Velero, restic...), and in Python code by buttress's ``BackupCheck``.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Callable
from pathlib import Path

from buttress.audit._check_files import TextFile, line_finding
from buttress.audit._config import DEFAULT_SKIP_DIRS, AuditConfig
from buttress.audit._index import Program
from buttress.report import Finding

__all__ = ["check_data", "find_migrations"]

_BACKUP = re.compile(
    r"buttress backup|\bpg_dump(all)?\b|\bpg_basebackup\b|pgbackrest|\bbarman\b|\bwal-g\b|"
    r"\bwal-e\b|\bmysqldump\b|\bmariadb-dump\b|\bmariabackup\b|\bxtrabackup\b|\bmongodump\b|"
    r"\bvelero\b|\brestic\b|\bborg(backup)? create\b|\bsqlite3? .*\.backup\b|"
    r"aws rds (create-db-snapshot|start-export)|gcloud sql (backups|export)",
    re.IGNORECASE,
)
_DATABASES = (
    "psycopg", "psycopg2", "asyncpg", "sqlalchemy", "django", "alembic", "pymysql", "MySQLdb",
    "aiomysql", "sqlmodel", "tortoise", "peewee", "pymongo", "motor",
)  # fmt: skip

_Emit = Callable[[str, str, int, str], None]


def find_migrations(root: Path, config: AuditConfig) -> list[tuple[Path, str]]:
    """The ``(path, relative path)`` of every Alembic revision file under ``root``."""
    if not root.is_dir():
        return []
    found: list[tuple[Path, str]] = []
    for folder, dirs, files in os.walk(root):  # os.walk does not follow directory symlinks
        dirs[:] = sorted(
            d for d in dirs if d not in DEFAULT_SKIP_DIRS and not d.endswith(".egg-info")
        )
        here = Path(folder)
        if here.name != "versions" or not (here.parent / "env.py").is_file():
            continue
        for name in sorted(files):
            if name.endswith(".py") and name != "__init__.py":
                rel = (here / name).relative_to(root).as_posix()
                if not any(
                    Path(rel).match(pattern) or rel.startswith(pattern.rstrip("/*") + "/")
                    for pattern in config.exclude
                ):
                    found.append((here / name, rel))
        dirs[:] = []
    return found


def _strings(node: ast.expr | None) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List):
        return [
            e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
        ]
    return []


def _does_nothing(func: ast.FunctionDef) -> bool:
    """True for ``pass``, a docstring, ``...`` or ``raise NotImplementedError``."""
    for stmt in func.body:
        if isinstance(stmt, ast.Pass) or (
            isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
        ):
            continue
        if isinstance(stmt, ast.Raise) and "NotImplementedError" in ast.unparse(stmt):
            continue
        return False
    return True


def _migrations(texts: list[TextFile], emit: _Emit) -> None:
    """BTR705 per revision file, BTR706 per versions directory."""
    by_folder: dict[str, list[tuple[TextFile, str, int, list[str]]]] = {}
    for text in texts:
        try:
            tree = ast.parse(text.text, filename=text.rel)
        except (SyntaxError, ValueError, RecursionError):
            continue  # the Python walk reports files that do not parse
        revision, line, parents = "", 1, []
        downgrade: ast.FunctionDef | None = None
        for stmt in tree.body:
            target = value = None
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target, value = stmt.targets[0], stmt.value
            elif isinstance(stmt, ast.AnnAssign):
                target, value = stmt.target, stmt.value
            if isinstance(target, ast.Name) and target.id == "revision" and _strings(value):
                revision, line = _strings(value)[0], stmt.lineno
            elif isinstance(target, ast.Name) and target.id == "down_revision":
                parents = _strings(value)
            elif isinstance(stmt, ast.FunctionDef) and stmt.name == "downgrade":
                downgrade = stmt
        if not revision:
            continue
        if downgrade is None:
            emit("BTR705", text.rel, line, f"migration {revision} has no downgrade()")
        elif _does_nothing(downgrade) and len(parents) < 2:  # a merge has nothing to undo
            emit(
                "BTR705",
                text.rel,
                downgrade.lineno,
                f"migration {revision}: downgrade() does nothing, there is no way back",
            )
        folder = text.rel.rpartition("/")[0]
        by_folder.setdefault(folder, []).append((text, revision, line, parents))
    for revisions in by_folder.values():
        known = {p for _, _, _, ps in revisions for p in ps}
        heads = sorted((t.rel, line, rev) for t, rev, line, _ in revisions if rev not in known)
        if len(heads) > 1:
            rel, line, _ = heads[0]
            names = ", ".join(rev for _, _, rev in heads)
            emit(
                "BTR706",
                rel,
                line,
                f"{len(heads)} Alembic heads ({names}): `alembic upgrade head` refuses to run",
            )


def check_data(
    texts: list[TextFile], program: Program, config: AuditConfig
) -> tuple[list[Finding], set[str]]:
    """BTR705, BTR706, BTR707; and the ``file:migration`` / ``file:database`` tokens."""
    out: list[Finding] = []

    def emit(rule_id: str, rel: str, line: int, message: str) -> None:
        if config.enabled(rule_id):
            out.append(line_finding(config, rule_id, rel, line, message))

    migrations = [t for t in texts if t.kind == "migration"]
    tokens: set[str] = {"file:migration"} if migrations else set()
    _migrations(migrations, emit)
    users = sorted(
        (m for m in program.modules.values() if m.roots & set(_DATABASES)),
        key=lambda m: m.source.rel,
    )
    if not users and not migrations:
        return out, tokens
    tokens.add("file:database")
    backed_up = any(
        _BACKUP.search(t.text) for t in texts if t.kind not in ("migration", "requirements")
    ) or any(m.backup_code for m in program.modules.values())
    if not backed_up:
        where = users[0].source.rel if users else migrations[0].rel
        emit(
            "BTR707",
            where,
            1,
            "a database is used and no backup job or backup verification is configured "
            "(CI workflows, cron, Kubernetes CronJobs, compose, scripts)",
        )
    return out, tokens
