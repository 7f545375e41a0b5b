"""Celery + Redis: a poison message reaches the DLQ with its error; replay; fixed: runs once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.jobs._send import Producer
from tests.jobs.conftest import REDIS5, wait_until

from buttress.cli import main
from buttress.jobs import open_dlq

pytestmark = [pytest.mark.redis, pytest.mark.process]


def test_poison_to_dlq_then_replay_completes_once(
    flags, make_workers, queue_name, tmp_path: Path, capsys
) -> None:
    dlq_url = f"sqlite:///{tmp_path / 'dlq.db'}"
    workers = make_workers(
        JOBS_BROKER=REDIS5, JOBS_STORE=REDIS5, JOBS_DLQ=dlq_url, JOBS_ATTEMPTS="3"
    )
    workers.start(queue_name)
    producer = Producer(REDIS5)
    producer.send(
        "t.poison", "p1", queue=queue_name, key="poison-p1", context={"x-request-id": "req-poison"}
    )
    dlq = open_dlq(dlq_url)
    wait_until(lambda: dlq.count() == 1, 20, "the poison job in the DLQ")
    [record] = dlq.list()
    assert record.name == "t.poison"
    assert record.attempts == 3
    assert record.reason == "exhausted"
    assert record.error_type == "Unavailable"
    assert "cannot process" in record.error
    assert record.request_id == "req-poison"
    assert int(flags.get("calls:p1")) == 3  # exactly the configured attempts, no more

    # the CLI shows it, as JSON
    assert main(["jobs", "dlq", "list", "--dlq", dlq_url, "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in listed["dead_letters"]] == [record.id]
    assert main(["jobs", "dlq", "show", record.id, "--dlq", dlq_url, "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["error"] == record.error
    assert shown["attempts"] == 3

    # the handler is fixed; replay sends it again, and it completes once
    flags.set("fixed", 1)
    assert main(["jobs", "dlq", "replay", record.id, "--dlq", dlq_url, "--broker", REDIS5]) == 0
    wait_until(lambda: flags.get("done:p1") is not None, 20, "the replayed job to complete")
    assert dlq.count() == 0
    # a duplicate enqueue of the same key returns the recorded result; it never runs again
    producer.send("t.poison", "p1", queue=queue_name, key="poison-p1")
    producer.send("t.effect", "marker", queue=queue_name)
    wait_until(lambda: flags.hget("effects", "marker"), 20, "the marker job")
    assert int(flags.get("done:p1")) == 1
    assert int(flags.get("calls:p1")) == 4
    producer.close()
    dlq.close()
