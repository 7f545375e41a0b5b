"""`BackupError` and the helpers that keep credentials out of every message.

A connection string reaches ``pg_dump``/``pg_restore`` without its password (that goes in
``PGPASSWORD``, never on a command line ``ps`` can read), and every text that leaves this
package (an error, a manifest, a log line) goes through `redact` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from buttress.errors import ButtressError, ErrorCode

__all__ = ["BackupError", "display_dsn", "redact"]

# key=value conninfo: password=... (quoted or not), and URL userinfo user:password@
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"([a-z][a-z0-9+.\-]*://)([^/@\s]*)@", re.IGNORECASE)


class BackupError(ButtressError):
    """A backup, restore or verification step failed; ``step`` names which one.

    The message names the step and what to do, with any credentials removed (the
    standard error of ``pg_dump`` or ``pg_restore`` is redacted before it is quoted).

    Example::

        try:
            pg_restore_into(dump, dsn)
        except BackupError as exc:
            print(exc.step, exc)       # "restore", "pg_restore exited 1: ..."
    """

    default_code = ErrorCode.BACKEND_ERROR

    def __init__(self, message: str, *, step: str) -> None:
        super().__init__(message)
        self.step = step


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords, ``password=`` values and each of ``secrets`` masked.

    Example::

        >>> redact("postgresql://app:s3cret@db/app failed")
        'postgresql://app:***@db/app failed'
        >>> redact("password=s3cret host=db")
        'password=*** host=db'
    """
    for secret in secrets:
        if secret and len(secret) >= 3:  # a one-letter "secret" would mask half the text
            text = text.replace(secret, "***")
    text = _KV_PASSWORD.sub(r"\1***", text)

    def userinfo(match: re.Match[str]) -> str:
        user, sep, _ = match.group(2).partition(":")
        return f"{match.group(1)}{user}{':***' if sep else ''}@"

    return _URL_USERINFO.sub(userinfo, text)


def display_dsn(dsn: str) -> str:
    """Where ``dsn`` points, for people: host, port and database, no user, no password.

    Example::

        >>> display_dsn("postgresql://app:s3cret@127.0.0.1:5432/orders")
        'postgresql://127.0.0.1:5432/orders'
        >>> display_dsn("host=127.0.0.1 dbname=orders user=app password=x")
        'postgresql://127.0.0.1/orders'
    """
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
            host = parts.netloc.rpartition("@")[2]
            return urlunsplit((parts.scheme, host, parts.path, "", ""))
        except ValueError:
            return dsn.partition("://")[0] + "://..."
    import psycopg  # noqa: PLC0415 - the backup extra
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:  # unparsable: show nothing of it
        return "postgresql://..."
    host = str(params.get("host") or "")
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{host}{port}/{params.get('dbname') or ''}"
