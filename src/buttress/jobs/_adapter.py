"""What every engine adapter of `buttress.jobs` shares: its stores, and a runner per process.

An adapter (`CeleryJobs`, `TaskiqJobs`) takes a store and a dead-letter store (objects or
URLs, from the environment by default) and must open them in the worker process that runs
the jobs, never before a fork: `ProcessRunner` resolves the settings once, at start-up,
with one line naming the missing setting, and makes this process's `JobRunner` on first use
(again after a fork).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from buttress.errors import ConfigurationError
from buttress.jobs._core import JobPolicy, JobRunner
from buttress.jobs._dlq import DeadLetterStore, open_dlq
from buttress.resilience._retry_budget import RetryBudget
from buttress.stores._base import IdempotencyStore

__all__ = ["ProcessRunner"]


class ProcessRunner:
    """An adapter's job settings, and its `JobRunner` in the current process.

    Args:
        owner: the adapter's name, for the error messages (``"CeleryJobs"``).
        store: the idempotency store: a `buttress.stores` URL or object; default
            ``$BUTTRESS_STORE_URL``.
        dlq: the dead-letter store: a URL or object; default ``$BUTTRESS_JOBS_DLQ_URL``,
            else the store URL.
        policy: the default `JobPolicy`.
        budget: ``queue -> RetryBudget`` (default: the runner's).
        namespace: prefix of the idempotency keys.
    """

    def __init__(
        self,
        owner: str,
        *,
        store: IdempotencyStore | str | None,
        dlq: DeadLetterStore | str | None,
        policy: JobPolicy | None,
        budget: Callable[[str], RetryBudget] | None,
        namespace: str,
    ) -> None:
        found = store if store is not None else os.environ.get("BUTTRESS_STORE_URL")
        if found is None:
            raise ConfigurationError(
                f"{owner}(store=...): pass a buttress store URL or object, or set "
                "BUTTRESS_STORE_URL (redis://..., postgresql://..., sqlite:///...)"
            )
        letters = dlq or os.environ.get("BUTTRESS_JOBS_DLQ_URL")
        if letters is None:
            letters = found if isinstance(found, str) else None
        if letters is None:
            raise ConfigurationError(f"{owner}(dlq=...): pass a dead-letter store URL or object")
        self.store: IdempotencyStore | str = found
        self.dlq: DeadLetterStore | str = letters
        self.policy = policy or JobPolicy()
        self.budget = budget
        self.namespace = namespace
        self._runner: JobRunner | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def get(self) -> JobRunner:
        """This process's `JobRunner` (stores opened after a fork, never shared across one)."""
        runner = self._runner
        if runner is None or self._pid != os.getpid():
            with self._lock:
                if self._runner is None or self._pid != os.getpid():
                    self._runner = self._make()
                    self._pid = os.getpid()
                runner = self._runner
        return runner

    def _make(self) -> JobRunner:
        from buttress.stores import open_store  # noqa: PLC0415 - the drivers, in the worker

        return JobRunner(
            store=open_store(self.store) if isinstance(self.store, str) else self.store,
            dlq=open_dlq(self.dlq) if isinstance(self.dlq, str) else self.dlq,
            policy=self.policy,
            budget=self.budget,
            namespace=self.namespace,
        )
