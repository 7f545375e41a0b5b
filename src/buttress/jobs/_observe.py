"""What a running job shows: its request context, its span, and the ``buttress_job_*`` metrics.

`job_span` binds the enqueuing request's id and trace (`buttress.asgi.context.bound_context`)
so log lines name them, and, when OpenTelemetry is on (`buttress.otel.tracer`), runs the
job in a ``CONSUMER`` span whose parent is the enqueuing request's span; the bound trace
then carries that span's id, so logs and spans agree. `JOB_METRICS` counts runs and
outcomes on prometheus-client's default registry when prometheus-client is installed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from buttress.asgi._carrier import bound_context
from buttress.asgi._context import _REQUEST_ID, _TRACE, TraceContext

if TYPE_CHECKING:
    from buttress.jobs._core import Job

__all__ = ["JOB_METRICS", "JobMetrics", "job_span"]

_UNSET: Any = object()
_tracer: Any = _UNSET
_tracer_lock = threading.Lock()


def _get_tracer() -> Any:
    """The tracer of buttress, decided once per process (None: tracing is off)."""
    global _tracer
    if _tracer is _UNSET:
        with _tracer_lock:
            if _tracer is _UNSET:
                from buttress import otel  # noqa: PLC0415 - keeps OTel off the import path

                _tracer = otel.tracer()
    return _tracer


def reset_tracing() -> None:
    """Decide again whether to trace (after a provider was set; for tests and workers)."""
    global _tracer
    _tracer = _UNSET


class job_span:  # noqa: N801 - used as a function: ``with job_span(job):``
    """Run a job's handler in its request context and, when tracing is on, its span.

    A class, not a generator: a job without a carrier and without tracing (the common
    worker) costs two context-variable sets and resets, not a generator's frame.
    """

    __slots__ = ("_id", "_inner", "_trace", "job")

    def __init__(self, job: Job) -> None:
        self.job = job
        self._inner: contextlib.AbstractContextManager[None] | None = None
        self._id: Any = None
        self._trace: Any = None

    def __enter__(self) -> None:
        job = self.job
        if not job.context and (_tracer is None or _get_tracer() is None):
            # what bound_context({}) binds: no request id, no trace (none leaks in)
            self._id = _REQUEST_ID.set(None)
            self._trace = _TRACE.set(None)
            return
        self._inner = _bound_span(job)
        self._inner.__enter__()

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool | None:
        inner = self._inner
        if inner is not None:
            return inner.__exit__(kind, value, traceback)
        _TRACE.reset(self._trace)
        _REQUEST_ID.reset(self._id)
        return None


@contextlib.contextmanager
def _bound_span(job: Job) -> Iterator[None]:
    with bound_context(job.context) as trace:
        tracer = _get_tracer()
        if tracer is None:
            yield
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: PLC0415
        from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
            TraceContextTextMapPropagator,
        )

        parent = TraceContextTextMapPropagator().extract(dict(job.context))
        attributes = {
            "messaging.system": job.engine or "unknown",
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": job.id,
            "buttress.job.name": job.name,
            "buttress.job.attempt": job.attempt,
        }
        request_id = job.context.get("x-request-id")
        if request_id:
            attributes["buttress.request_id"] = request_id
        with tracer.start_as_current_span(
            f"job {job.name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=True,
            set_status_on_exception=False,
        ) as span:
            ctx = span.get_span_context()
            token = None
            if ctx.is_valid:
                token = _TRACE.set(
                    TraceContext(
                        f"{ctx.trace_id:032x}",
                        f"{ctx.span_id:016x}",
                        trace.parent_id if trace is not None else None,
                        int(ctx.trace_flags),
                    )
                )
            try:
                yield
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                if token is not None:
                    _TRACE.reset(token)


class JobMetrics:
    """The ``buttress_job_*`` families (prometheus-client's default registry), made lazily.

    * ``buttress_job_runs_total{job,queue,outcome}``: handler runs (completed, failed);
    * ``buttress_job_duration_seconds{job,queue}``: handler run time;
    * ``buttress_job_events_total{job,queue,event}``: retried, parked, replayed,
      dead_lettered;
    * ``buttress_job_queue_depth{queue}`` and ``buttress_job_oldest_age_seconds{queue}``:
      set by `buttress.jobs.QueueStats` (see `JobQueueCheck`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made = False
        self.runs: Any = None
        self.duration: Any = None
        self.events: Any = None
        self.depth: Any = None
        self.age: Any = None
        # labelled children, by labels: ``labels()`` takes a lock and builds a tuple
        self._children: dict[tuple[str, ...], tuple[Any, Any]] = {}

    def _make(self) -> bool:
        if self._made:
            return self.runs is not None
        with self._lock:
            if not self._made:
                try:
                    import prometheus_client as prom  # noqa: PLC0415 - optional
                except ImportError:
                    self._made = True
                    return False
                self.runs = prom.Counter(
                    "buttress_job_runs", "Job handler runs by outcome",
                    ["job", "queue", "outcome"],
                )  # fmt: skip
                self.duration = prom.Histogram(
                    "buttress_job_duration_seconds", "Job handler run time", ["job", "queue"]
                )
                self.events = prom.Counter(
                    "buttress_job_events", "Job retries, parks, replays and dead letters",
                    ["job", "queue", "event"],
                )  # fmt: skip
                self.depth = prom.Gauge(
                    "buttress_job_queue_depth", "Messages waiting in a job queue", ["queue"]
                )
                self.age = prom.Gauge(
                    "buttress_job_oldest_age_seconds",
                    "Age of the oldest message waiting in a job queue",
                    ["queue"],
                )
                self._made = True
        return self.runs is not None

    def observe(self, job: Job, seconds: float, outcome: str) -> None:
        """One handler run ended."""
        if self._make():
            key = (job.name, job.queue, outcome)
            children = self._children.get(key)
            if children is None:
                children = (
                    self.runs.labels(job.name, job.queue, outcome),
                    self.duration.labels(job.name, job.queue),
                )
                if len(self._children) < 10_000:  # bounded: names and queues are few
                    self._children[key] = children
            children[0].inc()
            children[1].observe(seconds)

    def count(self, event: str, job: Job) -> None:
        """A retry, park, replay or dead letter."""
        if self._make():
            self.events.labels(job.name, job.queue, event).inc()

    def queue(self, queue: str, depth: int, oldest_age: float | None) -> None:
        """A queue's depth and the age of its oldest message, as last measured."""
        if self._make():
            self.depth.labels(queue).set(depth)
            if oldest_age is not None:
                self.age.labels(queue).set(oldest_age)


JOB_METRICS = JobMetrics()
