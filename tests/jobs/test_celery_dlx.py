"""RabbitMQ's dead-letter exchange takes what a Celery worker cannot decode or rejects."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import kombu
import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.process
def test_garbage_and_unknown_tasks_end_up_in_the_dead_letter_queue(rabbit_vhost: str) -> None:
    queue = f"dlx_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DLX_BROKER": rabbit_vhost,
        "DLX_QUEUE": queue,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1] / "src")]),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dlx_app", "worker", "-P", "solo", "-Q", queue,
         "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "warning"],
        env=env, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        with kombu.Connection(rabbit_vhost, connect_timeout=5) as conn:
            dead = kombu.Queue(f"{queue}.dead", kombu.Exchange(f"{queue}.dead", type="direct"),
                               routing_key=queue, durable=True)  # fmt: skip
            # wait for the worker to declare its queues (and its consumer to be ready)
            deadline = time.monotonic() + 60
            while True:
                try:
                    dead(conn.default_channel).queue_declare(passive=True)
                    break
                except conn.channel_errors:
                    conn.close()
                    conn.connect()
                if time.monotonic() > deadline or worker.poll() is not None:
                    pytest.fail("the worker did not declare its dead-letter queue")
                time.sleep(0.2)
            producer = conn.Producer()
            producer.publish(  # no task header, a body nobody can decode
                b"\x00\xffnot a task", exchange=queue, routing_key=queue,
                content_type="application/x-garbage", content_encoding="binary",
            )  # fmt: skip
            producer.publish(  # a task this worker does not know
                [[1], {}, {}], exchange=queue, routing_key=queue, serializer="json",
                headers={"task": "dlx.unknown", "id": uuid.uuid4().hex, "lang": "py"},
            )  # fmt: skip
            got: list[kombu.Message] = []
            deadline = time.monotonic() + 30
            while len(got) < 2 and time.monotonic() < deadline:
                message = dead(conn.default_channel).get(no_ack=True, accept=["json"])
                if message is None:
                    time.sleep(0.1)
                    continue
                got.append(message)
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert len(got) == 2, err.decode(errors="replace")[-2000:]
    bodies = {m.body if isinstance(m.body, bytes) else m.body.encode() for m in got}
    assert b"\x00\xffnot a task" in bodies
    assert any(m.headers.get("task") == "dlx.unknown" for m in got)
    reasons = {m.headers["x-death"][0]["reason"] for m in got}
    assert reasons == {"rejected"}
    assert b"could not be decoded" in err
