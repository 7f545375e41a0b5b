"""The engine-free core of `buttress.jobs`: one job's life, decided and driven.

An adapter (Celery, taskiq, ...) turns the engine's message into a `Job`, hands it with the
handler to `JobRunner.run` (sync) or `JobRunner.arun` (async), and does what the returned
`Decision` says:

* ``done``: acknowledge; ``decision.result`` is the handler's result (or the recorded one,
  ``decision.replayed``, when the key already completed);
* ``retry``: schedule the same message again after ``decision.delay`` seconds through the
  engine (Celery ``task.retry(countdown=...)``), carrying ``decision.meta`` as the new
  `META_HEADER`; then acknowledge the current one. Never sleep in the worker;
* ``dead``: the job is in the dead-letter store (``decision.record``); acknowledge (or, with
  a native dead-letter mechanism, reject without requeue: see ``JobRunner(dlq=None)``).

In between, the runner takes the job's idempotency key in a `buttress.stores`
`IdempotencyStore` (the same leases as the HTTP layer, renewed every third of the lease
while the handler runs), binds the enqueuing request's context, calls the handler,
records its result (JSON) or releases the key, and decides a failure with the error
taxonomy, the backoff, the queue's `RetryBudget` and the job's total deadline.

The decisions themselves are pure (`JobRunner.admit`, `JobRunner.after_error`); only the two
drivers do I/O, and they share everything else.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import BackendError, ButtressError, ConfigurationError, ErrorCode, classify
from buttress.jobs._dlq import DeadLetter, DeadLetterStore
from buttress.jobs._observe import JOB_METRICS, job_span
from buttress.resilience._backoff import Backoff
from buttress.resilience._retry_budget import RetryBudget
from buttress.stores._base import BeginOutcome, IdempotencyStore, StoredResponse

__all__ = [
    "META_HEADER",
    "Decision",
    "Job",
    "JobDeadLettered",
    "JobPolicy",
    "JobRunner",
    "JobStatus",
    "current_job",
    "derive_key",
    "job_status",
    "new_meta",
]

_log = logging.getLogger("buttress.jobs")

META_HEADER = "buttress"
"""The message header that carries a job's `new_meta` (key, attempt, enqueue time, context)."""

_UNSTORED = ((b"buttress-result", b"unstored"),)
_MAX_ERROR = 2000
#: the job being run: a context variable, so an asyncio task, a thread and the thread of
#: ``asyncio.to_thread`` (which copies the context) each see their own
_CURRENT: contextvars.ContextVar[Job | None] = contextvars.ContextVar(
    "buttress_current_job", default=None
)
# one encoder each, made once: ``json.dumps(...)`` builds a new one per call
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=repr).encode
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode


class JobDeadLettered(ButtressError):
    """Raised by an adapter's task whose job went to the dead-letter store (its message is acked).

    The task's state is a failure; ``record_id`` names the dead letter
    (``buttress jobs dlq show ID``).
    """

    default_code = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, record_id: str | None) -> None:
        super().__init__(message)
        self.record_id = record_id


def _check(owner: str, option: str, value: object, *, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > low:
        raise ConfigurationError(f"{owner}({option}={value!r}): must be a number > {low:g}")
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobPolicy:
    """How one kind of job is retried, bounded and kept.

    Args:
        attempts: executions of the handler at most (1 = never retried).
        backoff: delay schedule between attempts (full jitter by default).
        deadline: seconds from the first enqueue after which the job is dead-lettered
            instead of run or retried (retries that would end past it are not scheduled).
        lease: seconds an idempotency key is held by a running job without renewal; renewed
            every third of it, so a crashed worker's job runs again at most this long after.
        ttl: seconds a completed job's result is kept: duplicates inside it return it.
        retry_on: exception types retried even when the taxonomy says they are not
            retriable (a handler's own transient error).
        max_retry_after: the longest ``Retry-After`` honoured, in seconds.
        park: seconds to postpone a retry that the queue's retry budget refused (the
            handler is not called); the deadline still applies.

    Example::

        JobPolicy(attempts=5, backoff=Backoff.exponential(base=1.0, cap=60.0), deadline=3600)
    """

    attempts: int = 5
    backoff: Backoff = field(default_factory=lambda: Backoff.exponential(base=1.0, cap=300.0))
    deadline: float = 24 * 3600.0
    lease: float = 60.0
    ttl: float = 24 * 3600.0
    retry_on: tuple[type[BaseException], ...] = ()
    max_retry_after: float = 3600.0
    park: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigurationError(f"JobPolicy(attempts={self.attempts!r}): must be an int >= 1")
        if self.attempts < 1:
            raise ConfigurationError(f"JobPolicy(attempts={self.attempts!r}): must be >= 1")
        for option in ("deadline", "lease", "ttl", "max_retry_after", "park"):
            _check("JobPolicy", option, getattr(self, option))
        if self.lease < 0.3:
            raise ConfigurationError(
                f"JobPolicy(lease={self.lease!r}): must be >= 0.3 s (it is renewed every third)"
            )
        if not isinstance(self.backoff, Backoff):
            raise ConfigurationError(f"JobPolicy(backoff={self.backoff!r}): must be a Backoff")
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on):
            raise ConfigurationError("JobPolicy(retry_on=...): must be exception types")


def fingerprint(name: str, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]) -> str:
    """A short hash of a job's name and arguments (what a reused key must match).

    Canonical JSON (sorted keys, no spaces, ``repr`` for what JSON cannot say), hashed with
    BLAKE2b-128: stable across processes and versions, since derived keys and in-flight
    records depend on it.
    """
    text = _CANONICAL([name, list(args), dict(kwargs)])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def derive_key(name: str, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]) -> str:
    """The idempotency key of a job enqueued without one: its name and arguments, hashed.

    Two enqueues of the same job with the same arguments are one job while its result is
    kept (`JobPolicy.ttl`); pass a key of your own when they mean two.

    Example::

        derive_key("send_receipt", (42,), {})   # 'send_receipt:5be0...'
    """
    return f"{name}:{fingerprint(name, args, kwargs)}"


def new_meta(
    *,
    key: str | None = None,
    context: Mapping[str, str] | None = None,
    enqueued_at: float | None = None,
) -> dict[str, Any]:
    """The `META_HEADER` value of a job being enqueued (first attempt).

    ``context`` defaults to the current request's `context_carrier()`, ``enqueued_at`` to
    now (wall clock: it is compared across machines).
    """
    if context is None:
        from buttress.asgi._carrier import context_carrier  # noqa: PLC0415 - no ASGI import cost

        context = context_carrier()
    return {
        "v": 1,
        "key": key,
        "attempt": 1,
        "enqueued_at": time.time() if enqueued_at is None else enqueued_at,
        "ctx": dict(context),
        "delay": 0.0,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One delivery of a job, as an adapter hands it to the runner.

    Attributes:
        id: the engine's message (task) id.
        name: the job's (task's) name.
        queue: the queue it came from (the retry budget is per queue).
        args, kwargs: its arguments (JSON-serialisable for the DLQ and the fingerprint).
        key: its idempotency key as given at enqueue, or None (derived from the arguments).
        attempt: which execution this is, from 1 (counted by buttress, in the meta).
        enqueued_at: wall-clock time of the first enqueue (the deadline starts there;
            default: now).
        context: the enqueuing request's carrier (``traceparent``, ``x-request-id``).
        engine: the adapter's name (``celery``, ``taskiq``), kept in DLQ records.
        delay: the last retry delay (for decorrelated backoff).
    """

    id: str
    name: str
    queue: str = "default"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    key: str | None = None
    attempt: int = 1
    enqueued_at: float = field(default_factory=time.time)
    context: Mapping[str, str] = field(default_factory=dict)
    engine: str = ""
    delay: float = 0.0

    @classmethod
    def from_meta(
        cls,
        meta: Mapping[str, Any] | None,
        *,
        id: str,
        name: str,
        queue: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: Mapping[str, Any],
        engine: str,
        now: float | None = None,
    ) -> Job:
        """The job of a message whose `META_HEADER` is ``meta`` (None: sent without buttress).

        A message without meta (sent by plain engine code) is a first attempt enqueued now.
        """
        meta = meta if isinstance(meta, Mapping) else {}
        ctx = meta.get("ctx")
        key = meta.get("key")
        attempt = meta.get("attempt")
        at = meta.get("enqueued_at")
        delay = meta.get("delay")
        return cls(
            id=id,
            name=name,
            queue=queue or "default",
            args=tuple(args),
            kwargs=dict(kwargs),
            key=key if isinstance(key, str) and key else None,
            attempt=attempt if isinstance(attempt, int) and attempt >= 1 else 1,
            enqueued_at=float(at) if isinstance(at, int | float) else (now or time.time()),
            context={str(k): str(v) for k, v in ctx.items()} if isinstance(ctx, Mapping) else {},
            engine=engine,
            delay=float(delay) if isinstance(delay, int | float) else 0.0,
        )

    @property
    def idempotency_key(self) -> str:
        """The key its side effects run under: the given one, else `derive_key`."""
        return self.key or derive_key(self.name, self.args, self.kwargs)

    def meta(self, *, attempt: int | None = None, delay: float | None = None) -> dict[str, Any]:
        """Its `META_HEADER` for the next message (a retry, or a park with the same attempt)."""
        return {
            "v": 1,
            "key": self.key,
            "attempt": self.attempt if attempt is None else attempt,
            "enqueued_at": self.enqueued_at,
            "ctx": dict(self.context),
            "delay": self.delay if delay is None else delay,
        }


Action = Literal["done", "retry", "dead"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What the adapter does with a delivery (see the module docstring).

    Attributes:
        action: ``done``, ``retry`` or ``dead``.
        result: for ``done``, the handler's result (or the recorded one).
        replayed: for ``done``, whether the result was recorded by an earlier run.
        delay: for ``retry``, seconds until the engine delivers it again.
        meta: for ``retry``, the `META_HEADER` of the new message.
        reason: why (``ran``, ``replayed``, ``error``, ``in_flight``, ``budget``,
            ``store_unavailable``; for ``dead``: ``non_retriable``, ``exhausted``,
            ``deadline``, ``key_reused``).
        record: for ``dead``, the dead letter (stored already unless the runner has no DLQ).
        error: the exception the handler raised, if any.
    """

    action: Action
    result: Any = None
    replayed: bool = False
    delay: float = 0.0
    meta: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    record: DeadLetter | None = None
    error: BaseException | None = None


def current_job() -> Job | None:
    """The job being run in this thread or asyncio task (or the thread it runs in), or None.

    A handler uses its key to make its own side effect idempotent too (``INSERT ... ON
    CONFLICT (job_key) DO NOTHING``), closing the one window the runner cannot: a worker
    that dies after the side effect committed and before the result was recorded.
    """
    return _CURRENT.get()


_NULL_RESULT = StoredResponse(200, (), b"null")


def encode_result(result: Any) -> StoredResponse:
    """A handler's result as the stored record (JSON; a marker when it is not JSON)."""
    if result is None:  # most jobs: no encoding, one shared record
        return _NULL_RESULT
    try:
        body = _COMPACT(result).encode()
    except (TypeError, ValueError):
        return StoredResponse(200, _UNSTORED, b"")
    return StoredResponse(200, (), body)


def decode_result(response: StoredResponse) -> Any:
    """The inverse of `encode_result` (None for a result that was not JSON)."""
    if response.headers == _UNSTORED or not response.body:
        return None
    return json.loads(response.body)


_PID = [os.getpid()]


def _reset_pid() -> None:
    _PID[0] = os.getpid()


os.register_at_fork(after_in_child=_reset_pid)


def _pid() -> int:
    """This process's id without a ``getpid()`` system call per job (kept across forks)."""
    return _PID[0]


class _Renewer:
    """One daemon thread per process renewing the leases of the jobs running in it."""

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store
        self.leases: dict[int, tuple[str, str, float, float]] = {}  # id -> key, token, lease, due
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.pid = 0
        self.ids = itertools.count(1)

    def add(self, key: str, token: str, lease: float) -> int:
        """Renew ``key`` every third of ``lease`` from now on; the id to `remove` it with.

        A dict insert under an uncontended lock (~0.5 µs): the thread is started once per
        process (again after a fork) and wakes once a second, never per job.
        """
        entry = (key, token, lease, time.monotonic() + lease / 3)
        ident = next(self.ids)
        with self.lock:
            if self.pid != _pid():  # first job in this process (after a fork too)
                self.pid = _pid()
                thread = threading.Thread(
                    target=self._loop, name="buttress-jobs-lease", daemon=True
                )
                thread.start()
            self.leases[ident] = entry
        return ident

    def remove(self, ident: int) -> None:
        with self.lock:
            self.leases.pop(ident, None)

    def _loop(self) -> None:
        while True:  # a daemon: ends with the process
            with self.lock:
                items = list(self.leases.items())
            now = time.monotonic()
            nxt = now + 1.0
            for ident, (key, token, lease, due) in items:
                if due <= now:
                    try:
                        held = self.store.renew(key, token, lease)
                    except BackendError as exc:
                        _log.warning("could not renew the lease of job key %s: %s", key, exc)
                        held = True  # try again at the next third
                    if not held:
                        _log.error("job key %s: lease lost while running (ran too long?)", key)
                    next_due = time.monotonic() + lease / 3
                    with self.lock:
                        if ident in self.leases:
                            self.leases[ident] = (key, token, lease, next_due)
                else:
                    next_due = due
                nxt = min(nxt, next_due)
            self.wake.wait(max(0.01, nxt - time.monotonic()))


class _RanThenCancelled(BaseException):
    """A sync handler's thread finished with ``result`` after its task was cancelled."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result


def _is_async(handler: Callable[..., Any]) -> bool:
    """Whether calling ``handler`` returns a coroutine (an ``async def``, or one's partial)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - an object with ``async __call__``
    )


async def _in_thread(handler: Callable[..., Any], job: Job) -> Any:
    """Call ``handler(*job.args, **job.kwargs)`` in a thread, with this context.

    ``asyncio.to_thread`` copies the context: `current_job` and the request context work
    in the thread, and the loop (lease renewal, heartbeat, other jobs) goes on meanwhile.
    A thread cannot be interrupted: when the task is cancelled (a worker shutting down)
    while the handler runs, this waits for it (its lease still renewed) and raises
    `_RanThenCancelled` with its result, or the cancellation when it failed, so that a
    key is never released under a handler that is still running.
    """
    work = asyncio.ensure_future(asyncio.to_thread(handler, *job.args, **job.kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        if work.cancelled():
            raise
        cancels = 0
        while not work.done() and cancels < 1000:  # each pass waits for the thread to end
            try:
                await asyncio.wait((work,))
            except asyncio.CancelledError:
                cancels += 1  # cancelled again: keep waiting, a thread cannot be stopped
        if work.done() and not work.cancelled() and work.exception() is None:
            raise _RanThenCancelled(work.result()) from None
        raise


class JobRunner:
    """Runs jobs at most once per key, retries them with judgement, dead-letters the rest.

    One runner per worker process, shared by its jobs. Thread-safe.

    Args:
        store: the idempotency store (any `buttress.stores` store).
        dlq: where dead letters go; None when the adapter dead-letters natively (it then
            uses ``decision.record``).
        policy: the default `JobPolicy` (a job kind may pass its own to `run`).
        budget: retry budget of a queue, made per queue name (default: ratio 0.2, 1 retry
            per second floor). Per worker process: a fleet of N workers retries at most
            ``ratio`` of its own load plus N floors (no store round trip on the hot path).
        clock: monotonic time (budgets, durations).
        wall: wall-clock time (deadlines are compared across machines).
        namespace: prefix of the keys in the store.

    Example::

        runner = JobRunner(store=open_store("redis://127.0.0.1:6379/0"),
                           dlq=open_dlq("redis://127.0.0.1:6379/0"))
        decision = runner.run(job, send_receipt)
    """

    def __init__(
        self,
        *,
        store: IdempotencyStore,
        dlq: DeadLetterStore | None,
        policy: JobPolicy | None = None,
        budget: Callable[[str], RetryBudget] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        wall: Callable[[], float] = time.time,
        namespace: str = "job",
    ) -> None:
        self.store = store
        self.dlq = dlq
        self.policy = policy or JobPolicy()
        self.clock = clock
        self.wall = wall
        self.namespace = namespace
        self._make_budget = budget or (
            lambda _queue: RetryBudget(ratio=0.2, min_per_second=1.0, clock=clock)
        )
        self._budgets: dict[str, RetryBudget] = {}
        self._renewer = _Renewer(store)
        self.running: dict[str, tuple[str, float, float]] = {}  # id -> name, started, deadline

    # ------------------------------------------------------------ pure decisions
    def budget(self, queue: str) -> RetryBudget:
        """The retry budget of ``queue`` in this process."""
        found = self._budgets.get(queue)
        if found is None:
            found = self._budgets.setdefault(queue, self._make_budget(queue))
        return found

    def admit(self, job: Job, policy: JobPolicy | None = None) -> Decision | None:
        """Before the key is taken: dead-letter or park it, or None to go on.

        Past its deadline it is dead-lettered; a retry (``attempt > 1``) needs a credit of
        its queue's budget, else it is parked for ``policy.park`` seconds (not run: an
        outage cannot multiply the load); a first attempt deposits in the budget.
        """
        policy = policy or self.policy
        now = self.wall()
        ends = job.enqueued_at + policy.deadline
        if now >= ends:
            return self._dead(job, "deadline", None, f"past its deadline of {policy.deadline:g} s")
        budget = self.budget(job.queue)
        if job.attempt == 1:
            budget.deposit()
            return None
        if budget.try_withdraw():
            return None
        JOB_METRICS.count("parked", job)
        if now + policy.park >= ends:
            return self._dead(
                job, "deadline", None, "retry budget exhausted and no time left before deadline"
            )
        return Decision(action="retry", delay=policy.park, meta=job.meta(), reason="budget")

    def after_error(
        self, job: Job, error: BaseException, policy: JobPolicy | None = None
    ) -> Decision:
        """A failed attempt: retry (when, with which meta) or dead-letter (why)."""
        policy = policy or self.policy
        info = classify(error)
        retriable = (info is not None and info.retriable) or isinstance(error, policy.retry_on)
        if not retriable:
            return self._dead(job, "non_retriable", error)
        if job.attempt >= policy.attempts:
            return self._dead(job, "exhausted", error)
        delay = policy.backoff.delay(job.attempt, job.delay)
        if info is not None and info.retry_after is not None:
            delay = max(delay, min(info.retry_after, policy.max_retry_after))
        if self.wall() + delay >= job.enqueued_at + policy.deadline:
            return self._dead(job, "deadline", error)
        JOB_METRICS.count("retried", job)
        return Decision(
            action="retry",
            delay=delay,
            meta=job.meta(attempt=job.attempt + 1, delay=delay),
            reason="error",
            error=error,
        )

    def _dead(
        self, job: Job, reason: str, error: BaseException | None, detail: str = ""
    ) -> Decision:
        info = classify(error) if error is not None else None
        trace = job.context.get("traceparent", "")
        record = DeadLetter(
            id=uuid.uuid4().hex,
            job_id=job.id,
            name=job.name,
            queue=job.queue,
            engine=job.engine,
            args=list(job.args),
            kwargs=dict(job.kwargs),
            key=job.key,
            attempts=job.attempt,
            reason=reason,
            error_type=type(error).__name__ if error is not None else "",
            error=(str(error) if error is not None else detail)[:_MAX_ERROR],
            error_code=info.code.value if info is not None else "",
            trace_id=trace[3:35] if len(trace) >= 35 else None,
            request_id=job.context.get("x-request-id"),
            context=dict(job.context),
            enqueued_at=job.enqueued_at,
            failed_at=self.wall(),
        )
        return Decision(action="dead", reason=reason, record=record, error=error)

    # ------------------------------------------------------------ the sync driver
    def run(
        self, job: Job, handler: Callable[..., Any], policy: JobPolicy | None = None
    ) -> Decision:
        """Run one delivery of ``job`` with ``handler(*args, **kwargs)`` (blocking)."""
        policy = policy or self.policy
        decision = self.admit(job, policy)
        if decision is not None:
            return self._settle_dead(job, decision)
        fp = fingerprint(job.name, job.args, job.kwargs)
        key = f"{self.namespace}:{job.key or f'{job.name}:{fp}'}"
        store = self.store
        try:
            begun = store.begin(key, fp, policy.lease)
        except BackendError as exc:
            return self._store_down(job, policy, exc)
        if begun.outcome is not BeginOutcome.ACQUIRED:
            return self._settle_dead(job, self._not_acquired(job, policy, begun))
        token = begun.token
        renewer = self._renewer
        lease_id = renewer.add(key, token, policy.lease)
        running = self.running
        running[job.id] = (job.name, self.wall(), job.enqueued_at + policy.deadline)
        started = self.clock.now()
        current = _CURRENT.set(job)
        try:
            with job_span(job):
                result = handler(*job.args, **job.kwargs)
        except BaseException as exc:
            _CURRENT.reset(current)
            renewer.remove(lease_id)
            running.pop(job.id, None)
            JOB_METRICS.observe(job, self.clock.now() - started, "failed")
            try:
                store.release(key, token)
            except BackendError as release_error:
                _log.warning("job %s: could not release key %s: %s", job.name, key, release_error)
            if not isinstance(exc, Exception):
                raise  # cancellation, SystemExit: the engine hands the message back
            return self._settle_dead(job, self.after_error(job, exc, policy))
        _CURRENT.reset(current)
        renewer.remove(lease_id)
        running.pop(job.id, None)
        JOB_METRICS.observe(job, self.clock.now() - started, "completed")
        try:
            if not store.complete(key, token, encode_result(result), policy.ttl):
                _log.error("job %s key %s: lease lost before completion", job.name, key)
        except BackendError as exc:
            _log.error("job %s ran, but its result was not recorded: %s", job.name, exc)
        return Decision(action="done", result=result, reason="ran")

    def _settle_dead(self, job: Job, decision: Decision) -> Decision:
        """Store a dead letter (sync); when the DLQ fails, retry later instead: never lost."""
        if decision.action != "dead" or self.dlq is None or decision.record is None:
            return decision
        try:
            self.dlq.put(decision.record)
        except BackendError as exc:
            return self._dlq_down(job, decision, exc)
        JOB_METRICS.count("dead_lettered", job)
        _log.error(
            "job %s (%s) dead-lettered as %s: %s %s",
            job.name, job.id, decision.record.id, decision.reason, decision.record.error,
        )  # fmt: skip
        return decision

    def _dlq_down(self, job: Job, decision: Decision, exc: BackendError) -> Decision:
        _log.error("job %s: the dead-letter store failed (%s); retrying it later", job.name, exc)
        return Decision(action="retry", delay=self.policy.park, meta=job.meta(), reason="dlq_down")

    def _store_down(self, job: Job, policy: JobPolicy, exc: BackendError) -> Decision:
        """The idempotency store failed: never run unprotected; try again later."""
        _log.warning("job %s: idempotency store unavailable (%s); retrying later", job.name, exc)
        delay = policy.backoff.delay(job.attempt, job.delay) or 1.0
        return Decision(action="retry", delay=delay, meta=job.meta(), reason="store_unavailable")

    def _not_acquired(self, job: Job, policy: JobPolicy, begun: Any) -> Decision:
        if begun.outcome is BeginOutcome.REPLAY and begun.response is not None:
            JOB_METRICS.count("replayed", job)
            return Decision(
                action="done", result=decode_result(begun.response), replayed=True,
                reason="replayed",
            )  # fmt: skip
        if begun.outcome is BeginOutcome.MISMATCH:
            return self._dead(
                job, "key_reused", None,
                f"idempotency key {job.key!r} was used by this job with other arguments",
            )  # fmt: skip
        # IN_FLIGHT: another worker runs it now (a duplicate, or a crashed one's lease):
        # look again once its lease may have run out
        delay = min(max(begun.retry_after, 0.05) + 0.05, policy.lease)
        return Decision(action="retry", delay=delay, meta=job.meta(), reason="in_flight")

    # ------------------------------------------------------------ the async driver
    async def arun(
        self,
        job: Job,
        handler: Callable[..., Awaitable[Any]] | Callable[..., Any],
        policy: JobPolicy | None = None,
    ) -> Decision:
        """`run` for asyncio engines: ``handler`` may be async (awaited) or sync (called)."""
        policy = policy or self.policy
        decision = self.admit(job, policy)
        if decision is not None:
            return await self._asettle_dead(job, decision)
        fp = fingerprint(job.name, job.args, job.kwargs)
        key = f"{self.namespace}:{job.key or f'{job.name}:{fp}'}"
        store = self.store
        try:
            begun = await store.abegin(key, fp, policy.lease)
        except BackendError as exc:
            return self._store_down(job, policy, exc)
        if begun.outcome is not BeginOutcome.ACQUIRED:
            return await self._asettle_dead(job, self._not_acquired(job, policy, begun))
        token = begun.token
        renewal = asyncio.get_running_loop().create_task(self._arenew(key, token, policy.lease))
        running = self.running
        running[job.id] = (job.name, self.wall(), job.enqueued_at + policy.deadline)
        started = self.clock.now()
        current = _CURRENT.set(job)
        try:
            with job_span(job):
                if _is_async(handler):
                    result = await handler(*job.args, **job.kwargs)
                else:  # in a thread: the loop, the lease renewal and the heartbeat go on
                    result = await _in_thread(handler, job)
                    if inspect.isawaitable(result):
                        result = await result
        except _RanThenCancelled as ran:
            # the handler finished in its thread after the task was cancelled: its side
            # effects happened, so record them (a redelivery replays) and only then go
            _CURRENT.reset(current)
            renewal.cancel()
            running.pop(job.id, None)
            JOB_METRICS.observe(job, self.clock.now() - started, "completed")
            await self._acomplete(job, key, token, ran.result, policy)
            raise asyncio.CancelledError from None
        except BaseException as exc:
            _CURRENT.reset(current)
            renewal.cancel()
            running.pop(job.id, None)
            JOB_METRICS.observe(job, self.clock.now() - started, "failed")
            try:
                await store.arelease(key, token)
            except BackendError as release_error:
                _log.warning("job %s: could not release key %s: %s", job.name, key, release_error)
            if not isinstance(exc, Exception):
                raise
            return await self._asettle_dead(job, self.after_error(job, exc, policy))
        _CURRENT.reset(current)
        renewal.cancel()
        running.pop(job.id, None)
        JOB_METRICS.observe(job, self.clock.now() - started, "completed")
        await self._acomplete(job, key, token, result, policy)
        return Decision(action="done", result=result, reason="ran")

    async def _acomplete(
        self, job: Job, key: str, token: str, result: Any, policy: JobPolicy
    ) -> None:
        try:
            if not await self.store.acomplete(key, token, encode_result(result), policy.ttl):
                _log.error("job %s key %s: lease lost before completion", job.name, key)
        except BackendError as exc:
            _log.error("job %s ran, but its result was not recorded: %s", job.name, exc)

    async def _arenew(self, key: str, token: str, lease: float) -> None:
        while True:
            await self.clock.asleep(lease / 3)
            try:
                if not await self.store.arenew(key, token, lease):
                    _log.error("job key %s: lease lost while running (ran too long?)", key)
                    return
            except BackendError as exc:
                _log.warning("could not renew the lease of job key %s: %s", key, exc)

    async def _asettle_dead(self, job: Job, decision: Decision) -> Decision:
        if decision.action != "dead" or self.dlq is None or decision.record is None:
            return decision
        try:
            await self.dlq.aput(decision.record)
        except BackendError as exc:
            return self._dlq_down(job, decision, exc)
        JOB_METRICS.count("dead_lettered", job)
        _log.error(
            "job %s (%s) dead-lettered as %s: %s %s",
            job.name, job.id, decision.record.id, decision.reason, decision.record.error,
        )  # fmt: skip
        return decision

    def replay_meta(self, record: DeadLetter) -> dict[str, Any]:
        """The `META_HEADER` of a dead letter sent again: attempt 1, a new deadline, its key."""
        return new_meta(key=record.key, context=record.context, enqueued_at=self.wall())


@dataclass(frozen=True, slots=True)
class JobStatus:
    """What the idempotency store knows of a job.

    ``completed`` (with its result), ``running``, ``absent`` (never ran, released after a
    failure, or expired) or ``reused`` (its key holds a job with other arguments).
    """

    state: Literal["completed", "running", "absent", "reused"]
    result: Any = None


def job_status(
    store: IdempotencyStore,
    name: str,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    key: str | None = None,
    namespace: str = "job",
) -> JobStatus:
    """Look a job up in the idempotency store (a self-check's "did it run, once?").

    A probe: when the key is free it is taken for a moment and released at once, so a
    delivery racing with the probe is postponed (``in_flight``), never lost.

    Example::

        status = job_status(store, "shop.send_receipt", (42,))
        assert status.state == "completed"
    """
    kwargs = kwargs or {}
    job_key = key or derive_key(name, args, kwargs)
    full = f"{namespace}:{job_key}"
    begun = store.begin(full, fingerprint(name, args, kwargs), 1.0)
    if begun.outcome is BeginOutcome.ACQUIRED:
        store.release(full, begun.token)
        return JobStatus("absent")
    if begun.outcome is BeginOutcome.REPLAY and begun.response is not None:
        return JobStatus("completed", decode_result(begun.response))
    if begun.outcome is BeginOutcome.MISMATCH:
        return JobStatus("reused")
    return JobStatus("running")
