"""Text to `HardenSettings` values: the ``BUTTRESS_*`` syntax, and misspelled variables.

One syntax for every place a setting arrives as text (``BUTTRESS_*`` variables, the
strings of a pydantic-settings source): ``true``/``false`` (``1``/``0``, ``yes``/``no``,
``on``/``off``) for switches; ``none``, ``off`` or nothing for an optional value; lists
comma-separated (``https://a.example,https://b.example``) or a JSON array; mappings as
comma-separated ``KEY=VALUE`` items or a JSON object. `unknown_variables` finds the
``BUTTRESS_*`` names that nothing in buttress reads, with the closest real one.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from buttress.asgi._headers import SECURITY_PROFILES
from buttress.errors import ConfigurationError

__all__ = ["OTHER_VARIABLES", "parse_value", "unknown_variables"]

PREFIX: Final = "BUTTRESS_"
OTHER_VARIABLES: Final = frozenset(
    {
        "BUTTRESS_STORE_URL",  # buttress.stores.open_store (also HardenSettings.store_url)
        "BUTTRESS_STORE_NAMESPACE",  # buttress.stores.open_store
        "BUTTRESS_KEY_SECRET",  # buttress.asgi.keys / the rate-limit key hashing
        "BUTTRESS_DEMO_DB",  # buttress demo
        "BUTTRESS_DEMO_BROKER",  # buttress demo: the order confirmation job's Celery broker
        "BUTTRESS_RELEASE",  # buttress.sentry (the release, else BUTTRESS_SERVICE_VERSION)
        "BUTTRESS_OTEL",  # buttress.otel: off, on, console, otlp
        "BUTTRESS_OTEL_SAMPLE_RATIO",  # buttress.otel.configure
        "BUTTRESS_AUDIT_CACHE",  # buttress audit: the cache directory, or off
        "BUTTRESS_JOBS_DLQ_URL",  # buttress.jobs.open_dlq / buttress jobs dlq
        "BUTTRESS_JOBS_BROKER_URL",  # buttress jobs dlq replay: the engine's broker
        "BUTTRESS_JOBS_HEARTBEAT_DIR",  # buttress.jobs.Heartbeat: worker heartbeat files
        "BUTTRESS_BACKUP_SCRATCH_DSN",  # buttress backup verify: server for scratch databases
    }
)
"""``BUTTRESS_*`` variables read outside `HardenSettings` (add one here when code reads it)."""
OTHER_PREFIXES: Final = ("BUTTRESS_TEST_", "BUTTRESS_DEMO_")
"""Families of variables read by the test suite and the demo."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def unknown_variables(
    environ: Mapping[str, str], fields: Iterable[str]
) -> list[tuple[str, str | None]]:
    """``(name, closest known name or None)`` for each ``BUTTRESS_*`` variable nothing reads.

    Example::

        >>> unknown_variables({"BUTTRESS_REQUEST_TIMOUT": "5"}, ["request_timeout"])
        [('BUTTRESS_REQUEST_TIMOUT', 'BUTTRESS_REQUEST_TIMEOUT')]
    """
    known = {PREFIX + f.upper() for f in fields} | OTHER_VARIABLES
    # compared without the prefix, which every name shares
    suffixes = {name.removeprefix(PREFIX): name for name in known}
    unknown = []
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name in known or name.startswith(OTHER_PREFIXES):
            continue
        close = difflib.get_close_matches(name.removeprefix(PREFIX), suffixes, n=1, cutoff=0.6)
        unknown.append((name, suffixes[close[0]] if close else None))
    return unknown


def parse_value(field: str, kind: str, raw: str, label: str) -> Any:
    """The value of setting ``field`` (annotation ``kind``) written as text ``raw``.

    ``label`` names where the text came from in an error (``BUTTRESS_MAX_BODY_BYTES``).
    """
    if field == "csp_routes":  # "/docs=none,/app=default-src 'self'; img-src data:"
        return _mapping(label, raw, _csp_item)
    if field == "idempotency_routes":  # "POST /orders=required,/hooks/{x}=off"
        return _mapping(label, raw, _route_item)
    if field == "retry_after":  # "overloaded=5,deadline_exceeded=2"
        return _mapping(label, raw, _seconds_item)
    if field == "body_limit_routes":  # "/uploads=52428800,/avatars=2097152"
        return _mapping(label, raw, _size_item)
    return _scalar(label, raw.strip(), kind)


def _scalar(name: str, raw: str, kind: str) -> Any:
    if "SecurityProfile" in kind:  # a profile name, or a switch
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        if raw.lower() in SECURITY_PROFILES:
            return raw.lower()
        raise ConfigurationError(f"{name}={raw!r}: must be api, full, true or false")
    if kind.startswith("tuple"):
        if raw.startswith("["):
            items = _json(name, raw, list, 'a JSON array of strings: ["a", "b"]')
            if not all(isinstance(i, str) for i in items):
                raise ConfigurationError(f'{name}={raw!r}: a JSON array of strings: ["a", "b"]')
            return tuple(items)
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if kind.startswith("bool"):
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigurationError(f"{name}={raw!r}: must be true or false")
    if raw.lower() in {"", "none", "off"} and "None" in kind:
        return None
    if kind.startswith("int"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r}: must be a whole number") from None
    if kind.startswith("float"):
        try:
            return float(raw)
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r}: must be a number of seconds") from None
    return raw


def _json(name: str, raw: str, kind: type, what: str) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r}: {what}") from None
    if not isinstance(value, kind):
        raise ConfigurationError(f"{name}={raw!r}: {what}")
    return value


def _mapping(name: str, raw: str, item: Any) -> dict[str, Any]:
    if raw.strip().startswith("{"):
        return dict(_json(name, raw, dict, 'a JSON object: {"KEY": VALUE}'))
    values = {}
    for text in filter(None, (i.strip() for i in raw.split(","))):
        key, value = item(name, raw, text)
        values[key] = value
    return values


def _size_item(name: str, raw: str, text: str) -> tuple[str, int]:
    prefix, sep, size = text.rpartition("=")
    if not sep or not size.strip().isdigit():
        raise ConfigurationError(
            f"{name}={raw!r}: comma-separated 'PREFIX=BYTES' items (for example "
            "'/uploads=52428800')"
        )
    return prefix.strip(), int(size)


def _seconds_item(name: str, raw: str, text: str) -> tuple[str, float]:
    code, sep, seconds = text.rpartition("=")
    try:
        value = float(seconds)
    except ValueError:
        value = -1.0
    if not sep or value <= 0:
        raise ConfigurationError(
            f"{name}={raw!r}: comma-separated 'CODE=SECONDS' items (for example "
            "'overloaded=5,deadline_exceeded=2')"
        )
    return code.strip(), value


def _route_item(name: str, raw: str, text: str) -> tuple[str, str]:
    route, sep, mode = text.rpartition("=")
    if not sep or mode.strip() not in ("required", "optional", "off"):
        raise ConfigurationError(
            f"{name}={raw!r}: comma-separated 'ROUTE=MODE' items, MODE one of required, "
            "optional, off (for example 'POST /orders=required')"
        )
    return route.strip(), mode.strip()


def _csp_item(name: str, raw: str, text: str) -> tuple[str, str | None]:
    # the first '=' ends the prefix: a policy may hold '=' ('sha256-...=' sources)
    prefix, sep, policy = text.partition("=")
    if not sep or not prefix.strip().startswith("/"):
        raise ConfigurationError(
            f"{name}={raw!r}: comma-separated 'PREFIX=POLICY' items, POLICY a "
            "Content-Security-Policy or none (for example \"/docs=none,/app=default-src 'self'\")"
        )
    policy = policy.strip()
    return prefix.strip(), None if policy.lower() in {"", "none", "off"} else policy
