"""Running ``pg_dump``, ``pg_restore`` and ``psql``-free queries with credentials kept safe.

`tool_invocation` turns a DSN into a ``--dbname`` connection string without its password
plus an environment with ``PGPASSWORD`` (a command line is visible to every user of the
machine in ``ps``; the environment of a process is not). `run_tool` runs one with a time
limit and turns a failure into a `BackupError` that quotes the tool's redacted stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from buttress.backup._errors import BackupError, redact

__all__ = ["conninfo", "password_of", "run_tool", "tool_invocation", "tool_path", "with_dbname"]

_STDERR_LIMIT = 2000  # characters of a tool's stderr quoted in an error


def _params(dsn: str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415 - the backup extra

    try:
        return dict(conninfo_to_dict(dsn))
    except Exception as exc:  # psycopg.ProgrammingError: an unparsable string
        raise BackupError(
            f"not a PostgreSQL connection string: {_parse_error(str(exc), dsn)} (in a URL, "
            "percent-encode @ : / % and spaces in the password, e.g. %40 for @; in key=value "
            "form, quote it: password='...')",
            step="connect",
        ) from None


def _parse_error(message: str, dsn: str) -> str:
    """The parse error of libpq, with what it quotes of ``dsn`` masked.

    libpq quotes the piece it could not parse (``invalid percent-encoded token: "50%off"``),
    and that piece is often the password, which may hold quotes itself: everything from
    the first to the last double quote goes.
    """
    text = message.strip().splitlines()[0] if message.strip() else "unparsable"
    first, last = text.find('"'), text.rfind('"')
    if first != last:
        text = f"{text[: first + 1]}***{text[last:]}"
    return redact(text, [dsn])


def password_of(dsn: str) -> str:
    """The password in ``dsn`` (empty when none): masked in every message."""
    return str(_params(dsn).get("password") or "")


def conninfo(dsn: str, **changes: Any) -> str:
    """``dsn`` as a libpq ``key=value`` string, with ``changes`` applied (None removes)."""
    from psycopg.conninfo import make_conninfo  # noqa: PLC0415

    params = _params(dsn)
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return make_conninfo(**params)


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server and credentials as ``dsn``, database ``dbname``."""
    return conninfo(dsn, dbname=dbname)


def tool_path(name: str) -> str:
    """The absolute path of PostgreSQL client tool ``name``, or a `BackupError` saying how."""
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} was not found on PATH: install the PostgreSQL client tools "
            "(Debian/Ubuntu: apt-get install postgresql-client; the major version must be "
            "at least the server's)",
            step=name,
        )
    return found


def tool_invocation(dsn: str) -> tuple[str, dict[str, str]]:
    """``(--dbname value without the password, environment with PGPASSWORD)`` for ``dsn``."""
    password = password_of(dsn)
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = password
    return conninfo(dsn, password=None), env


def run_tool(
    args: Sequence[str],
    *,
    env: dict[str, str],
    step: str,
    secrets: Sequence[str] = (),
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``args`` (stdout and stderr captured); raise `BackupError` unless it exits 0."""
    try:
        done = subprocess.run(  # noqa: S603 - a PostgreSQL tool found by tool_path
            list(args), env=env, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise BackupError(
            f"{os.path.basename(args[0])} did not finish within {timeout:g} s", step=step
        ) from None
    except OSError as exc:
        raise BackupError(f"cannot run {args[0]}: {exc.strerror or exc}", step=step) from None
    if done.returncode != 0:
        raise BackupError(
            f"{os.path.basename(args[0])} exited {done.returncode}: "
            f"{tool_stderr(done.stderr, secrets)}",
            step=step,
        )
    return done


def tool_stderr(raw: bytes, secrets: Sequence[str] = ()) -> str:
    """The end of a tool's stderr, decoded, redacted and on one line."""
    text = raw.decode(errors="replace").strip()
    text = redact(text, secrets)
    if len(text) > _STDERR_LIMIT:
        text = "..." + text[-_STDERR_LIMIT:]
    return " | ".join(line for line in text.splitlines() if line.strip()) or "(no message)"
