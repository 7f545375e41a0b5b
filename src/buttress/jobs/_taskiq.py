"""The taskiq adapter: `TaskiqJobs` turns a taskiq broker's tasks into buttress jobs.

Thin by design: every decision is `JobRunner.arun`'s. What this module adds:

* the `META_HEADER` as a message label (JSON text: taskiq labels are strings) on every
  message of a buttress task (`TaskiqJobs.enqueue`, or a plain ``.kiq()`` through the
  middleware's ``pre_send``): key, attempt, first-enqueue time and the enqueuing request's
  `context_carrier()`;
* the task body: build the `Job` from the message (`taskiq.Context`), run it, then return
  the result (``done``), send the same message again after ``decision.delay`` with the next
  meta (``retry``: the broker's ``delay`` label, or a taskiq schedule source; never a sleep
  in the worker), or raise `JobDeadLettered` (``dead``: the record is in the DLQ);
* acknowledgement after execution, always: each buttress task carries the label
  ``ack_type=when_saved`` (it overrides a worker started with ``--ack-type when_received``),
  and a job interrupted by shutdown (``CancelledError``) or whose retry could not be sent
  is never acknowledged: the broker delivers it again;
* the worker's heartbeat (`Heartbeat`, on the worker's own event loop) and its running jobs;
* ``replay_record``: send a dead letter again by task name (``buttress jobs dlq replay``).

At-least-once delivery needs a broker that acknowledges: RabbitMQ (``taskiq-aio-pika``,
with a ``delay_queue`` or the delayed-message-exchange plugin for the retries) or Redis
Streams (``taskiq-redis`` ``RedisStreamBroker``, with a schedule source for the retries).
See docs/jobs.md, section "taskiq".

Example::

    from taskiq_aio_pika import AioPikaBroker
    from taskiq_aio_pika.queue import Queue, QueueType
    from buttress.jobs.taskiq import TaskiqJobs

    broker = AioPikaBroker("amqp://guest:guest@127.0.0.1:5672/",
                           delay_queue=Queue(name="taskiq.delay", type=QueueType.CLASSIC))
    jobs = TaskiqJobs(broker, store="redis://127.0.0.1:6379/5")

    @jobs.task(policy=JobPolicy(attempts=5, deadline=3600))
    async def send_receipt(order_id: int) -> str: ...

    await jobs.enqueue(send_receipt, 42, key="receipt-42")    # or send_receipt.kiq(42)
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import time
from collections.abc import Callable
from typing import Any

from buttress.errors import ConfigurationError
from buttress.jobs._adapter import ProcessRunner
from buttress.jobs._core import (
    META_HEADER,
    Decision,
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

__all__ = ["HandedBack", "TaskiqJobs", "replay_record"]

_ACK_LABEL = "ack_type"
_ACK_AFTER = "when_saved"  # taskiq acks after the result is saved (after execution)
_CONTEXT_PARAM = "_buttress_context"
#: labels of a received message that must not follow it into its retry
_NOT_CARRIED = frozenset({META_HEADER, "delay", "schedule_id"})


class HandedBack(BaseException):
    """A delivery that must not be acknowledged: the broker delivers it again.

    Raised (and re-raised by the middleware past taskiq's receiver, which would otherwise
    acknowledge it) when a retry could not be sent or the job was interrupted.
    """


def _taskiq() -> Any:
    return importlib.import_module("taskiq")  # the taskiq extra


def _queue_of(broker: Any, labels: dict[str, Any]) -> str:
    """The queue a message came from: its routing label, else the broker's one queue."""
    named = labels.get("queue_name")
    if isinstance(named, str) and named:
        return named
    name = getattr(broker, "queue_name", None)
    if isinstance(name, str) and name:
        return name
    queues = getattr(broker, "_task_queues", None) or []  # taskiq-aio-pika
    if len(queues) >= 1 and isinstance(getattr(queues[0], "name", None), str):
        return str(queues[0].name)
    return "taskiq"


def _delay_mode(broker: Any, schedule_source: Any, native_delay: bool | None) -> str:
    """How retries are delayed: the broker's ``delay`` label or a schedule source."""
    if schedule_source is not None:
        return "schedule"
    kind = type(broker)
    if native_delay is None and kind.__module__.startswith("taskiq_aio_pika"):
        native_delay = bool(
            getattr(broker, "_delay_queue", None)
            or getattr(broker, "_delayed_message_exchange_plugin", False)
        )
        if not native_delay:
            raise ConfigurationError(
                "TaskiqJobs: this AioPikaBroker cannot delay retries; give it "
                "delay_queue=Queue(name='taskiq.delay', type=QueueType.CLASSIC) or "
                "delayed_message_exchange_plugin=True"
            )
    if not native_delay:
        raise ConfigurationError(
            f"TaskiqJobs: {kind.__name__} ignores the 'delay' label, so retries would "
            "run at once; pass schedule_source=... (a taskiq ScheduleSource, with "
            "`taskiq scheduler` running) or native_delay=True if this broker honours it"
        )
    return "label"


class TaskiqJobs:
    """buttress jobs on a taskiq broker: at most once per key, retried with judgement.

    Args:
        broker: the taskiq ``AsyncBroker`` (a middleware is added to it).
        store: the idempotency store: a `buttress.stores` URL (opened in each worker
            process) or a store object. Default ``$BUTTRESS_STORE_URL``.
        dlq: the dead-letter store: a URL (`open_dlq`) or a `DeadLetterStore`. Default:
            ``$BUTTRESS_JOBS_DLQ_URL``, else the store URL.
        policy: the default `JobPolicy` of the broker's buttress tasks.
        budget: ``queue -> RetryBudget`` (default: 20 % of the queue's runs + 1/s).
        schedule_source: a taskiq ``ScheduleSource`` that delays retries (run
            ``taskiq scheduler`` beside the workers) for brokers without a ``delay`` label.
        native_delay: whether the broker honours the ``delay`` label (detected for
            taskiq-aio-pika; a `ConfigurationError` when retries could not be delayed).
        heartbeat: a directory for the worker's liveness heartbeat files
            (``buttress jobs health --heartbeat DIR``); default ``$BUTTRESS_JOBS_HEARTBEAT_DIR``.
        namespace: prefix of the idempotency keys.
    """

    engine = "taskiq"

    def __init__(
        self,
        broker: Any,
        *,
        store: IdempotencyStore | str | None = None,
        dlq: DeadLetterStore | str | None = None,
        policy: JobPolicy | None = None,
        budget: Callable[[str], RetryBudget] | None = None,
        schedule_source: Any = None,
        native_delay: bool | None = None,
        heartbeat: str | None = None,
        namespace: str = "job",
    ) -> None:
        self.broker = broker
        self._process = ProcessRunner(
            "TaskiqJobs", store=store, dlq=dlq, policy=policy, budget=budget, namespace=namespace
        )
        self.policy = self._process.policy
        self.schedule_source = schedule_source
        self.delays = _delay_mode(broker, schedule_source, native_delay)
        self.names: set[str] = set()
        self.heartbeat = Heartbeat.from_env(heartbeat)
        self._beating: asyncio.Task[None] | None = None
        broker.add_middlewares(_make_middleware(self))

    # ------------------------------------------------------------ the runner, per process
    @property
    def runner(self) -> JobRunner:
        """This process's `JobRunner` (stores opened in the worker, never across a fork)."""
        return self._process.get()

    # ------------------------------------------------------------ tasks
    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        policy: JobPolicy | None = None,
        **labels: Any,
    ) -> Any:
        """Decorate ``fn`` (async or sync) into a taskiq task run as a buttress job.

        ``labels`` go to ``broker.register_task`` (``queue_name=``, ``timeout=``...). Do
        not add taskiq's retry middlewares: buttress decides the retries.

        Example::

            @jobs.task(policy=JobPolicy(attempts=3))
            async def send_receipt(order_id: int) -> None: ...
        """
        taskiq = _taskiq()

        def decorate(func: Callable[..., Any]) -> Any:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            job_policy = policy or self.policy

            async def body(*args: Any, **kwargs: Any) -> Any:
                context = kwargs.pop(_CONTEXT_PARAM)
                return await self._execute(context, func, job_policy, args, kwargs)

            body.__name__ = getattr(func, "__name__", task_name)
            body.__qualname__ = getattr(func, "__qualname__", task_name)
            body.__module__ = func.__module__
            body.__doc__ = func.__doc__
            # taskiq resolves the message's Context into this keyword (its dependency
            # injection); the handler itself never sees it
            param = inspect.Parameter
            body.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
                [
                    param("args", param.VAR_POSITIONAL),
                    param(
                        _CONTEXT_PARAM, param.KEYWORD_ONLY,
                        default=taskiq.TaskiqDepends(), annotation=taskiq.Context,
                    ),
                    param("kwargs", param.VAR_KEYWORD),
                ]
            )  # fmt: skip
            body.__annotations__ = {_CONTEXT_PARAM: taskiq.Context}
            self.names.add(task_name)
            return self.broker.register_task(
                body, task_name=task_name, **{_ACK_LABEL: _ACK_AFTER, **labels}
            )

        return decorate if fn is None else decorate(fn)

    async def enqueue(self, task: Any, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
        """Send ``task(*args, **kwargs)`` with idempotency ``key`` (default: from the args).

        The current request's id and trace go with it. Returns taskiq's ``AsyncTaskiqTask``.
        """
        meta = json.dumps(new_meta(key=key), separators=(",", ":"))
        return await task.kicker().with_labels(**{META_HEADER: meta}).kiq(*args, **kwargs)

    async def _execute(
        self,
        context: Any,
        func: Callable[..., Any],
        policy: JobPolicy,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        message = context.message
        labels: dict[str, Any] = message.labels
        meta: Any = None
        with contextlib.suppress(TypeError, ValueError):
            meta = json.loads(labels.get(META_HEADER) or "null")
        job = Job.from_meta(
            meta,
            id=message.task_id,
            name=message.task_name,
            queue=_queue_of(self.broker, labels),
            args=args,
            kwargs=kwargs,
            engine=self.engine,
        )
        beat = self.heartbeat
        if beat is not None:
            beat.started(job, job.enqueued_at + policy.deadline)
        try:
            decision = await self.runner.arun(job, func, policy)
        except asyncio.CancelledError as exc:  # shutdown: its key is released, hand it back
            raise HandedBack(f"job {job.name} ({job.id}) interrupted; not acknowledged") from exc
        finally:
            if beat is not None:
                beat.finished(job)
        if decision.action == "done":
            return decision.result
        if decision.action == "retry":
            await self._send_again(message, decision)
            raise _taskiq().NoResultError  # the retry carries the task id and its result
        record = decision.record
        raise JobDeadLettered(
            f"job {job.name} dead-lettered ({decision.reason})"
            + (f" as {record.id}" if record is not None else ""),
            record_id=record.id if record is not None else None,
        )

    async def _send_again(self, message: Any, decision: Decision) -> None:
        """The same message (task id, labels) with the next meta, ``decision.delay`` later."""
        taskiq = _taskiq()
        labels = {k: v for k, v in message.labels.items() if k not in _NOT_CARRIED}
        labels[META_HEADER] = json.dumps(dict(decision.meta), separators=(",", ":"))
        kicker = taskiq.kicker.AsyncKicker(message.task_name, self.broker, labels)
        kicker = kicker.with_task_id(message.task_id)
        try:
            if self.delays == "schedule":
                at = time.time() + decision.delay
                await kicker.schedule_by_time(
                    self.schedule_source,
                    _utc(at),
                    *message.args,
                    **message.kwargs,
                )
            else:
                await kicker.with_labels(delay=round(decision.delay, 3)).kiq(
                    *message.args, **message.kwargs
                )
        except Exception as exc:  # the broker is down: never ack, it comes back by itself
            raise HandedBack(
                f"job {message.task_name} ({message.task_id}): its retry could not be sent "
                f"({type(exc).__name__}: {exc}); not acknowledged"
            ) from exc

    # ------------------------------------------------------------ worker side
    async def astart_worker(self) -> None:
        """In a worker process (the broker's startup): start beating, if configured."""
        beat = self.heartbeat
        if beat is None or not getattr(self.broker, "is_worker_process", False):
            return
        beat.beat()
        self._beating = asyncio.get_running_loop().create_task(self._beat(beat))

    async def _beat(self, beat: Heartbeat) -> None:
        # on the worker's own event loop: when the loop is stuck, the file goes stale
        while True:
            await asyncio.sleep(beat.interval)
            beat.beat()

    async def astop_worker(self) -> None:
        """The broker's shutdown: stop beating."""
        task, self._beating = self._beating, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _utc(at: float) -> Any:
    import datetime as dt  # noqa: PLC0415

    return dt.datetime.fromtimestamp(at, tz=dt.UTC)


def _make_middleware(jobs: TaskiqJobs) -> Any:
    """The middleware of ``jobs`` (a subclass of taskiq's, made when taskiq is imported)."""
    base: Any = _taskiq().TaskiqMiddleware

    class ButtressMiddleware(base):  # type: ignore[misc]
        """Meta on sent messages, heartbeat in workers, no ack for handed-back jobs."""

        def pre_send(self, message: Any) -> Any:
            if message.task_name in jobs.names and META_HEADER not in message.labels:
                message.labels[META_HEADER] = json.dumps(new_meta(), separators=(",", ":"))
                if message.labels_types is not None:
                    message.labels_types[META_HEADER] = 3  # taskiq LabelType.STR
            return message

        def on_error(self, message: Any, result: Any, exception: BaseException) -> None:
            if isinstance(exception, HandedBack | asyncio.CancelledError):
                # propagate past taskiq's receiver, which would acknowledge the message
                raise exception

        async def startup(self) -> None:
            await jobs.astart_worker()

        async def shutdown(self) -> None:
            await jobs.astop_worker()

    return ButtressMiddleware()


def replay_record(record: DeadLetter, broker: str | None, *, app: Any = None) -> str:
    """Send a taskiq dead letter again (attempt 1, a fresh deadline, its key); its task id.

    ``app``: a `TaskiqJobs` or a configured taskiq broker (``--app module:attr``); else a
    broker made from the URL: ``amqp://`` (taskiq-aio-pika, exchange ``taskiq``, the
    record's queue) or ``redis://`` (a ``RedisStreamBroker`` on the record's queue).
    """
    target = app.broker if isinstance(app, TaskiqJobs) else app
    if target is None:
        if not broker:
            raise ConfigurationError("replaying a taskiq job needs --broker URL or --app")
        target = _broker_from_url(broker, record.queue)
    return asyncio.run(_replay(record, target))


async def _replay(record: DeadLetter, broker: Any) -> str:
    taskiq = _taskiq()
    meta = new_meta(key=record.key, context=record.context, enqueued_at=time.time())
    labels = {META_HEADER: json.dumps(meta, separators=(",", ":")), _ACK_LABEL: _ACK_AFTER}
    started = not getattr(broker, "is_worker_process", False)
    if started:
        await broker.startup()
    try:
        sent = await taskiq.kicker.AsyncKicker(record.name, broker, labels).kiq(
            *record.args, **record.kwargs
        )
    finally:
        if started:
            await broker.shutdown()
    return str(sent.task_id)


def _broker_from_url(url: str, queue: str) -> Any:
    scheme = url.split(":", 1)[0].lower()
    if scheme in {"amqp", "amqps"}:
        pika: Any = importlib.import_module("taskiq_aio_pika")
        queues: Any = importlib.import_module("taskiq_aio_pika.queue")
        return pika.AioPikaBroker(url, task_queues=[queues.Queue(name=queue, declare=False)])
    if scheme in {"redis", "rediss"}:
        redis_broker: Any = importlib.import_module("taskiq_redis")
        return redis_broker.RedisStreamBroker(url, queue_name=queue)
    raise ConfigurationError(
        f"replay --broker {url!r}: a taskiq replay needs amqp:// or redis://, or --app"
    )
