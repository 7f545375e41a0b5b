"""URLs fit to show: one place that decides what of a URL may reach a log, an error or a report.

Two forms, both standard library only (the healthcheck imports nothing else):

* `masked` - where a connection string is named (store and audit-log errors, the CLI
  banner): the user stays, the password is ``***``, a query is ``?...`` (libpq and
  redis-py take passwords there too); a libpq ``key=value`` string is not shown at all.
* `redacted` - where a target URL is reported (probe, healthcheck): no user or password,
  every query value ``***`` (the names stay: they say what was sent).

Example::

    >>> masked("redis://app:s3cret@127.0.0.1:6379/0?ssl_certfile=x")
    'redis://app:***@127.0.0.1:6379/0?...'
    >>> redacted("http://u:pw@127.0.0.1:8000/health?token=abc")
    'http://127.0.0.1:8000/health?token=***'
"""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, urlsplit

__all__ = ["masked", "redacted"]


def masked(url: str) -> str:
    """``url`` for messages: the password ``***``, the query ``?...``; not a URL: a placeholder."""
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return "<a malformed URL>"
    if not parts.scheme or "://" not in url:
        return "<not a URL>"  # a libpq "key=value" DSN, say: it may hold a password
    netloc = parts.netloc
    if has_password:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = "?..." if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def redacted(url: str) -> str:
    """``url`` for a report: no user or password, every query value ``***``, no fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(an invalid URL)"
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{port}" if port is not None else ""
    query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return SplitResult(parts.scheme, netloc, parts.path, query, "").geturl()
