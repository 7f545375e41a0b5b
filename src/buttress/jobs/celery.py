"""The Celery adapter of `buttress.jobs` (see `buttress.jobs._celery` and docs/jobs.md)."""

from buttress.jobs._celery import (
    SAFE_DEFAULTS,
    CeleryJobs,
    JobDeadLettered,
    harden_celery,
    rabbitmq_dead_letters,
    replay_record,
)

__all__ = [
    "SAFE_DEFAULTS",
    "CeleryJobs",
    "JobDeadLettered",
    "harden_celery",
    "rabbitmq_dead_letters",
    "replay_record",
]
