"""A Celery app with RabbitMQ dead-lettering (`rabbitmq_dead_letters`), for test_celery_dlx.

DLX_BROKER: the amqp:// URL of the test's vhost; DLX_QUEUE: its queue.
"""

from __future__ import annotations

import os

from celery import Celery

from buttress.jobs.celery import CeleryJobs, rabbitmq_dead_letters

app = Celery("dlx_test", broker=os.environ["DLX_BROKER"])
app.conf.update(worker_hijack_root_logger=False, task_ignore_result=True, broker_heartbeat=0)
rabbitmq_dead_letters(app, (os.environ["DLX_QUEUE"],))
jobs = CeleryJobs(app, store="memory://", dlq="memory://")


@jobs.task(name="dlx.add")
def add(a: int, b: int) -> int:
    return a + b
