"""Background jobs that are never lost and never run twice, on the engines teams already run.

What lives here: a small engine-free core (`JobRunner`: idempotent execution over
`buttress.stores`, retries decided by the error taxonomy with backoff, a retry budget per
queue and a total deadline, dead letters), the dead-letter store (`open_dlq`), worker
health (`Heartbeat`, `JobQueueCheck`, ``buttress_job_*`` metrics) and one thin adapter
per engine (`buttress.jobs.celery`). The core imports no engine; it may import the ground
floor, `buttress.resilience`, `buttress.stores` and the request context of `buttress.asgi`.

Example::

    from celery import Celery
    from buttress.jobs import JobPolicy
    from buttress.jobs.celery import CeleryJobs

    app = Celery("shop", broker="redis://127.0.0.1:6379/5")
    jobs = CeleryJobs(app, store="redis://127.0.0.1:6379/5")

    @jobs.task(policy=JobPolicy(attempts=5))
    def send_receipt(order_id: int) -> None: ...
"""

from __future__ import annotations

from buttress.jobs._core import (
    META_HEADER,
    Decision,
    Job,
    JobDeadLettered,
    JobPolicy,
    JobRunner,
    JobStatus,
    current_job,
    derive_key,
    job_status,
    new_meta,
)
from buttress.jobs._dlq import DeadLetter, DeadLetterStore, open_dlq
from buttress.jobs._health import Heartbeat, JobQueueCheck, QueueStats, check_heartbeats

__all__ = [
    "META_HEADER",
    "REPLAYERS",
    "DeadLetter",
    "DeadLetterStore",
    "Decision",
    "Heartbeat",
    "Job",
    "JobDeadLettered",
    "JobPolicy",
    "JobQueueCheck",
    "JobRunner",
    "JobStatus",
    "QueueStats",
    "check_heartbeats",
    "current_job",
    "derive_key",
    "job_status",
    "new_meta",
    "open_dlq",
]

#: engine name (a dead letter's ``engine``) -> "module:function" that sends it again:
#: ``function(record, broker, app=None) -> new message id``. An adapter adds its own.
REPLAYERS: dict[str, str] = {
    "celery": "buttress.jobs._celery:replay_record",
    "taskiq": "buttress.jobs._taskiq:replay_record",
}
