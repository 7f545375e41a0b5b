"""Sending jobs to the test workers by task name, as a producer process would."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery

from buttress.jobs import META_HEADER, new_meta


class Producer:
    """A bare Celery app on ``broker`` sending buttress jobs by name."""

    def __init__(self, broker: str) -> None:
        self.app = Celery("jobs_test_producer", broker=broker)
        self.app.conf.broker_connection_retry = True
        self.app.conf.broker_connection_max_retries = 100
        # a connection of its own (kombu's pools are shared by every app on one URL)
        self.conn = self.app.connection_for_write()

    def send(
        self,
        name: str,
        *args: Any,
        queue: str,
        key: str | None = None,
        context: Mapping[str, str] | None = None,
    ) -> str:
        meta = new_meta(key=key, context=context or {})
        result = self.app.send_task(
            name, args=list(args), queue=queue, headers={META_HEADER: meta}, connection=self.conn
        )
        return str(result.id)

    def close(self) -> None:
        self.conn.release()
        self.app.close()
