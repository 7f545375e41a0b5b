"""The Celery adapter: `CeleryJobs` turns a Celery app's tasks into buttress jobs.

Thin by design: every decision is `JobRunner`'s. What this module adds:

* safe worker defaults (`harden_celery`): late acknowledgement, redelivery when a worker
  dies, prefetch of one, a bounded soft shutdown;
* the `META_HEADER` on every message of a buttress task (`before_task_publish`): key,
  attempt, first-enqueue time and the enqueuing request's `context_carrier()`;
* the task body: build the `Job`, run it, then return the result (``done``), ``retry``
  through ``Task.retry(countdown=...)`` with the next meta (never a sleep in the worker),
  or raise `JobDeadLettered` (``dead``: the record is in the DLQ, the message is acked);
* ``replay_record``: send a dead letter again by task name (``buttress jobs dlq replay``).

Example::

    from celery import Celery
    from buttress.jobs.celery import CeleryJobs

    app = Celery("shop", broker="redis://127.0.0.1:6379/5")
    jobs = CeleryJobs(app, store="redis://127.0.0.1:6379/5", dlq="redis://127.0.0.1:6379/5")

    @jobs.task(policy=JobPolicy(attempts=5, deadline=3600))
    def send_receipt(order_id: int) -> str: ...

    jobs.enqueue(send_receipt, 42, key="receipt-42")    # or send_receipt.delay(42)
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from buttress.jobs._adapter import ProcessRunner
from buttress.jobs._core import (
    META_HEADER,
    Job,
    JobDeadLettered,
    JobPolicy,
    JobRunner,
    new_meta,
)
from buttress.jobs._dlq import DeadLetter, DeadLetterStore
from buttress.jobs._health import Heartbeat
from buttress.resilience._retry_budget import RetryBudget
from buttress.stores._base import IdempotencyStore

__all__ = [
    "CeleryJobs",
    "JobDeadLettered",
    "harden_celery",
    "rabbitmq_dead_letters",
    "replay_record",
]

_log = logging.getLogger("buttress.jobs")

#: What `harden_celery` sets (see docs/jobs.md, "Graceful shutdown", for the trade-offs).
SAFE_DEFAULTS: Mapping[str, Any] = {
    "task_acks_late": True,  # ack after the handler ran: a crash mid-job redelivers it
    "task_reject_on_worker_lost": True,  # a pool child killed mid-job: requeue, not fail
    "task_acks_on_failure_or_timeout": True,  # failures are decided (retry/DLQ) by buttress
    "worker_prefetch_multiplier": 1,  # one reserved message per slot, none stuck in a dead one
    "worker_cancel_long_running_tasks_on_connection_loss": True,  # they will be redelivered
    "worker_soft_shutdown_timeout": 10.0,  # SIGTERM: in-flight jobs get 10 s, then handed back
    "broker_connection_retry_on_startup": True,
    "task_track_started": False,
}


def harden_celery(app: Any, **overrides: Any) -> None:
    """Apply `SAFE_DEFAULTS` (and ``overrides``) to a Celery app's configuration."""
    app.conf.update({**SAFE_DEFAULTS, **overrides})


def rabbitmq_dead_letters(app: Any, queues: tuple[str, ...] = ("celery",)) -> None:
    """RabbitMQ's own dead-lettering for messages a Celery worker cannot take.

    Each queue is declared with a dead-letter exchange ``<queue>.dead`` (direct, durable)
    bound to a durable queue ``<queue>.dead``, and the worker *rejects* (never requeued)
    a message it cannot decode, instead of Celery's default of acknowledging it (which
    loses it). Unknown task names and invalid messages are rejected by Celery already;
    with this they land in ``<queue>.dead`` too. Inspect it with ``rabbitmqctl
    list_queues -p VHOST name messages`` or the management UI; a message there is what
    the broker received, byte for byte. Jobs that buttress itself dead-letters (errors,
    deadlines) go to the buttress DLQ as before (``buttress jobs dlq list``).

    Call it before the worker starts, on a queue that does not exist yet or has no
    other arguments: RabbitMQ refuses to redeclare a queue with new arguments
    (``PRECONDITION_FAILED``). For an existing queue, set a policy instead (docs/jobs.md).

    Example::

        rabbitmq_dead_letters(app, ("celery", "mail"))
    """
    kombu: Any = importlib.import_module("kombu")  # Celery's own dependency
    bootsteps: Any = importlib.import_module("celery.bootsteps")
    declared = []
    dead = []
    for name in queues:
        exchange = kombu.Exchange(f"{name}.dead", type="direct", durable=True)
        dead.append(kombu.Queue(f"{name}.dead", exchange, routing_key=name, durable=True))
        declared.append(
            kombu.Queue(
                name,
                kombu.Exchange(name, type="direct", durable=True),
                routing_key=name,
                durable=True,
                queue_arguments={
                    "x-dead-letter-exchange": f"{name}.dead",
                    "x-dead-letter-routing-key": name,
                },
            )
        )
    app.conf.task_queues = declared
    app.conf.task_default_queue = queues[0]

    class DeadLetters(bootsteps.StartStopStep):  # type: ignore[misc]
        """Declares the dead-letter queues; rejects what cannot be decoded."""

        requires = ("celery.worker.consumer.connection:Connection",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            # before the Tasks step starts the consumer, which binds this callback
            parent.on_decode_error = functools.partial(_reject_undecodable, parent)

        def start(self, parent: Any) -> None:
            channel = parent.connection.default_channel
            for queue in dead:
                queue(channel).declare()

    app.steps["consumer"].add(DeadLetters)


def _reject_undecodable(consumer: Any, message: Any, exc: BaseException) -> None:
    """Celery's ``on_decode_error``, rejecting instead of acknowledging: the DLX gets it."""
    _log.critical(
        "a message on %s could not be decoded (%s: %s; content type %r): rejected to its "
        "dead-letter exchange",
        (message.delivery_info or {}).get("routing_key"), type(exc).__name__, exc,
        message.content_type,
    )  # fmt: skip
    message.reject(requeue=False)


class CeleryJobs:
    """buttress jobs on a Celery app: at most once per key, retried with judgement, dead-lettered.

    Args:
        app: the ``celery.Celery`` app.
        store: the idempotency store: a `buttress.stores` URL (opened in each worker
            process, after the fork) or a store object. Default ``$BUTTRESS_STORE_URL``.
        dlq: the dead-letter store: a URL (`open_dlq`) or a `DeadLetterStore`. Default:
            ``$BUTTRESS_JOBS_DLQ_URL``, else the store URL.
        policy: the default `JobPolicy` of the app's buttress tasks.
        budget: ``queue -> RetryBudget`` (default: 20 % of the queue's runs + 1/s).
        harden: apply `SAFE_DEFAULTS` to the app (default True).
        heartbeat: a directory for the worker's liveness heartbeat files
            (``buttress jobs health --heartbeat DIR``); default ``$BUTTRESS_JOBS_HEARTBEAT_DIR``.
        namespace: prefix of the idempotency keys.
    """

    engine = "celery"

    def __init__(
        self,
        app: Any,
        *,
        store: IdempotencyStore | str | None = None,
        dlq: DeadLetterStore | str | None = None,
        policy: JobPolicy | None = None,
        budget: Callable[[str], RetryBudget] | None = None,
        harden: bool = True,
        heartbeat: str | None = None,
        namespace: str = "job",
    ) -> None:
        self.app = app
        self._process = ProcessRunner(
            "CeleryJobs", store=store, dlq=dlq, policy=policy, budget=budget, namespace=namespace
        )
        self.policy = self._process.policy
        self.names: set[str] = set()
        self.heartbeat = Heartbeat.from_env(heartbeat)
        if harden:
            harden_celery(app)
        signals: Any = importlib.import_module("celery.signals")  # the celery extra
        signals.before_task_publish.connect(self._on_publish, weak=False)
        if self.heartbeat is not None:
            signals.worker_ready.connect(self._on_worker_ready, weak=False)

    # ------------------------------------------------------------ the runner, per process
    @property
    def runner(self) -> JobRunner:
        """This process's `JobRunner` (stores opened after a fork, never shared across one)."""
        return self._process.get()

    # ------------------------------------------------------------ tasks
    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        policy: JobPolicy | None = None,
        **options: Any,
    ) -> Any:
        """Decorate ``fn`` into a Celery task run as a buttress job.

        ``options`` go to ``app.task`` (``time_limit=``...; route with ``task_routes`` or
        ``enqueue(..., queue=...)``: Celery deprecates the task's ``queue``). Do not also use
        Celery's ``autoretry_for``: buttress decides the retries.

        Example::

            @jobs.task(policy=JobPolicy(attempts=3))
            def send_receipt(order_id: int) -> None: ...
        """

        def decorate(func: Callable[..., Any]) -> Any:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            job_policy = policy or self.policy

            @functools.wraps(func)
            def body(task: Any, *args: Any, **kwargs: Any) -> Any:
                return self._execute(task, func, job_policy, args, kwargs)

            self.names.add(task_name)
            # buttress counts attempts itself: Celery's own limit must never end a retry
            options.setdefault("max_retries", None)
            return self.app.task(bind=True, name=task_name, **options)(body)

        return decorate if fn is None else decorate(fn)

    def enqueue(
        self,
        task: Any,
        *args: Any,
        key: str | None = None,
        queue: str | None = None,
        countdown: float | None = None,
        options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Send ``task(*args, **kwargs)`` with idempotency ``key`` (default: from the args).

        The current request's id and trace go with it. ``options`` go to ``apply_async``
        (``connection=``, ``priority=``...). Returns the ``AsyncResult``.
        """
        sent: dict[str, Any] = dict(options or {})
        headers = dict(sent.pop("headers", None) or {})
        headers[META_HEADER] = new_meta(key=key)
        sent["headers"] = headers
        if queue is not None:
            sent["queue"] = queue
        if countdown is not None:
            sent["countdown"] = countdown
        return task.apply_async(args, kwargs, **sent)

    def _on_publish(self, sender: Any = None, headers: Any = None, **_: Any) -> None:
        """Give a buttress task's message its meta (a plain ``.delay()`` too)."""
        if sender in self.names and isinstance(headers, dict) and META_HEADER not in headers:
            headers[META_HEADER] = new_meta()

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        beat = self.heartbeat
        timer = getattr(sender, "timer", None)
        if beat is None or timer is None:
            return
        beat.beat()
        # on the consumer's own timer: when its event loop is stuck, the file goes stale
        timer.call_repeatedly(beat.interval, beat.beat)

    def _execute(
        self,
        task: Any,
        func: Callable[..., Any],
        policy: JobPolicy,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        request = task.request
        delivery = request.delivery_info or {}
        job = Job.from_meta(
            getattr(request, META_HEADER, None),
            id=request.id or "",
            name=task.name,
            queue=delivery.get("routing_key") or "celery",
            args=args,
            kwargs=kwargs,
            engine=self.engine,
        )
        runner = self.runner
        beat = self.heartbeat
        if beat is not None:
            beat.started(job, job.enqueued_at + policy.deadline)
        try:
            decision = runner.run(job, func, policy)
        finally:
            if beat is not None:
                beat.finished(job)
        if decision.action == "done":
            return decision.result
        if decision.action == "retry":
            raise task.retry(
                countdown=decision.delay,
                max_retries=None,
                headers={META_HEADER: dict(decision.meta)},
            )
        record = decision.record
        raise JobDeadLettered(
            f"job {job.name} dead-lettered ({decision.reason})"
            + (f" as {record.id}" if record is not None else ""),
            record_id=record.id if record is not None else None,
        )


def replay_record(record: DeadLetter, broker: str, *, app: Any = None) -> str:
    """Send a Celery dead letter again (attempt 1, a fresh deadline, its key); the new id.

    ``app``: a configured ``celery.Celery`` (serializer, routes); else a bare one on
    ``broker``, sending by task name.
    """
    import time  # noqa: PLC0415

    celery: Any = importlib.import_module("celery")  # the celery extra
    sender = app if app is not None else celery.Celery("buttress-replay", broker=broker)
    meta = new_meta(key=record.key, context=record.context, enqueued_at=time.time())
    # a connection of its own: kombu's pools are shared by every app on one URL
    with sender.connection_for_write() as conn:
        result = sender.send_task(
            record.name, args=record.args, kwargs=record.kwargs, queue=record.queue,
            headers={META_HEADER: meta}, connection=conn,
        )  # fmt: skip
    if app is None:
        sender.close()
    return str(result.id)
