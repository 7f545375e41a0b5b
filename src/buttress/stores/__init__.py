"""Shared state for many processes and machines: rate limits, idempotency, breaker state.

Pick a store by URL; every store offers every capability, sync and async:

* ``memory://`` - this process only (the default for one process);
* ``sqlite:///path/to/file.db`` - every process on one machine (the embedded default);
* ``redis://host:port/db`` (or ``rediss://``) - a fleet; one Lua script per decision;
* ``postgresql://user@host/db`` - a fleet; one statement per decision.

Each operation is atomic at the algorithm level, driver errors become `BackendError`, and
keys are hashed before they reach the store (no raw API key or user id is ever stored).

Example::

    from buttress.stores import Rate, RateRequest, open_store

    store = open_store("redis://127.0.0.1:6379/0")
    [decision] = store.acquire([RateRequest("user:42", Rate.parse("100/minute"))])
    if not decision.allowed:
        print("retry in", decision.retry_after)
"""

from __future__ import annotations

import importlib
import os
from typing import Any
from urllib.parse import urlsplit

from buttress.errors import ConfigurationError
from buttress.stores._base import (
    Begin,
    BeginOutcome,
    BreakerReport,
    BreakerStateStore,
    IdempotencyStore,
    Rate,
    RateDecision,
    RateLimitStore,
    RateRequest,
    Store,
    StoredResponse,
    store_key,
)
from buttress.stores._memory import MemoryStore
from buttress.stores._metered import MeteredStore, metered

__all__ = [
    "STORES",
    "Begin",
    "BeginOutcome",
    "BreakerReport",
    "BreakerStateStore",
    "IdempotencyStore",
    "MemoryStore",
    "MeteredStore",
    "Rate",
    "RateDecision",
    "RateLimitStore",
    "RateRequest",
    "Store",
    "StoredResponse",
    "metered",
    "open_store",
    "store_key",
]

#: URL scheme -> "module:Class" (imported on first use, so drivers stay optional extras).
STORES: dict[str, str] = {
    "memory": "buttress.stores._memory:MemoryStore",
    "sqlite": "buttress.stores._sqlite:SQLiteStore",
    "redis": "buttress.stores._redis:RedisStore",
    "rediss": "buttress.stores._redis:RedisStore",
    "unix": "buttress.stores._redis:RedisStore",
    "postgresql": "buttress.stores._postgres:PostgresStore",
    "postgres": "buttress.stores._postgres:PostgresStore",
}


def open_store(url: str | None = None, **options: Any) -> Store:
    """Open the store for ``url`` (default: ``$BUTTRESS_STORE_URL``, else ``memory://``).

    Keys live under the namespace ``buttress`` unless ``namespace=`` or
    ``$BUTTRESS_STORE_NAMESPACE`` says otherwise (services sharing one Redis or database
    keep apart by namespace).

    ``options`` go to the store's constructor (``clock=``, ``timeout=``, ...). An unknown
    scheme, or a driver that is not installed, raises `ConfigurationError` naming the fix.

    Example::

        store = open_store("sqlite:///var/lib/myapp/buttress.db")
    """
    if url is None:
        url = os.environ.get("BUTTRESS_STORE_URL") or "memory://"
    scheme = urlsplit(url).scheme.lower()
    target = STORES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(STORES))
        raise ConfigurationError(
            f"store URL {url!r}: unknown scheme {scheme!r}; use one of {known}"
        )
    if scheme != "memory" and os.environ.get("BUTTRESS_STORE_NAMESPACE"):
        options.setdefault("namespace", os.environ["BUTTRESS_STORE_NAMESPACE"])
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # a driver extra is missing
        extra = module_name.rsplit("_", 1)[-1]  # the module is named after its extra
        raise ConfigurationError(
            f"store URL {url!r} needs a driver that is not installed ({exc.name}); "
            f"install buttress[{extra}]"
        ) from exc
    store: Store = getattr(module, class_name)(url, **options)
    return store
