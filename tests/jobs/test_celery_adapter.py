"""The Celery adapter in process: safe defaults, the meta on every message, configuration."""

from __future__ import annotations

import json
import uuid

import pytest
from celery import Celery
from tests.jobs.conftest import REDIS5

from buttress.asgi.context import bound_context
from buttress.errors import ConfigurationError
from buttress.jobs import META_HEADER
from buttress.jobs.celery import SAFE_DEFAULTS, CeleryJobs

pytestmark = [pytest.mark.redis]


def test_safe_defaults_are_applied_and_can_be_declined() -> None:
    app = Celery("t1", broker=REDIS5)
    CeleryJobs(app, store="memory://", dlq="memory://")
    for name, value in SAFE_DEFAULTS.items():
        assert app.conf[name] == value
    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1
    plain = Celery("t2", broker=REDIS5)
    CeleryJobs(plain, store="memory://", dlq="memory://", harden=False)
    assert plain.conf.task_acks_late is False
    app.close()
    plain.close()


def test_store_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUTTRESS_STORE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="BUTTRESS_STORE_URL"):
        CeleryJobs(Celery("t3"))


def test_delay_and_enqueue_carry_the_meta_and_the_request_context(flags) -> None:
    queue = f"q_{uuid.uuid4().hex[:8]}"
    app = Celery("t4", broker=REDIS5)
    jobs = CeleryJobs(app, store="memory://", dlq="memory://")

    @jobs.task(name="t.adapter")
    def adapter_job(x: int) -> int:
        return x

    carrier = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01", "x-request-id": "req-a"}
    with app.connection_for_write() as conn, bound_context(carrier):
        adapter_job.apply_async((1,), queue=queue, connection=conn)  # the signal adds it
        jobs.enqueue(adapter_job, 2, key="given-key", queue=queue, options={"connection": conn})
    messages = [json.loads(m) for m in reversed(flags.lrange(queue, 0, -1))]
    metas = [m["headers"][META_HEADER] for m in messages]
    assert [m["key"] for m in metas] == [None, "given-key"]
    for meta in metas:
        assert meta["attempt"] == 1
        assert meta["ctx"]["x-request-id"] == "req-a"
        assert meta["ctx"]["traceparent"].startswith(f"00-{'ab' * 16}-")
    assert "t.adapter" in jobs.names
    assert adapter_job.max_retries is None  # buttress counts the attempts
    app.close()
