"""The demo's order confirmation job (issue 14's "done means"): a real demo server, a real
Celery worker on Redis, and a confirmation sent exactly once despite a replayed POST and two
duplicate enqueues."""

from __future__ import annotations

import pytest

from buttress.demo import selfcheck

pytestmark = [pytest.mark.process, pytest.mark.redis]


def test_the_order_confirmation_job_runs_exactly_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = redis_url.rsplit("/", 1)[0] + "/13"  # a database of its own: no other queue
    import redis

    redis.Redis.from_url(broker).flushdb()
    monkeypatch.setenv("BUTTRESS_DEMO_BROKER", broker)
    monkeypatch.delenv("BUTTRESS_STORE_URL", raising=False)
    monkeypatch.setenv("BUTTRESS_DEMO_DB", "")  # set by the check itself
    feature, ok, evidence = selfcheck._job_check()
    assert ok, evidence
    assert "1 confirmation(s) after 3 enqueues" in evidence
