"""The dead-letter store on every flavour, the ``buttress jobs`` CLI, and worker health."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.jobs.conftest import REDIS5

from buttress.cli import main
from buttress.errors import ConfigurationError
from buttress.jobs import Heartbeat, Job, JobQueueCheck, QueueStats, check_heartbeats, open_dlq
from buttress.jobs._dlq import DeadLetter


def record(i: int, *, queue: str = "mail", failed_at: float = 1000.0) -> DeadLetter:
    return DeadLetter(
        id=f"r{i}", job_id=f"m{i}", name="shop.receipt", queue=queue, engine="celery",
        args=[i], kwargs={"x": "é"}, attempts=3, reason="exhausted", error_type="Unavailable",
        error="down", failed_at=failed_at + i, trace_id="a" * 32, request_id="req",
    )  # fmt: skip


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def dlq_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = request.param
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'dlq.db'}"
    if kind == "redis":
        request.getfixturevalue("flags")  # DB 5, emptied
        return REDIS5
    url: str = request.getfixturevalue("pg_db")
    return url


def test_dead_letter_store_contract(dlq_url: str) -> None:
    store = open_dlq(dlq_url, namespace=f"t{uuid.uuid4().hex[:8]}")
    assert store.count() == 0
    assert store.list() == []
    for i in range(5):
        store.put(record(i, queue="mail" if i % 2 else "billing"))
    store.put(record(4, queue="billing"))  # the same id again: replaced, not doubled
    assert store.count() == 5
    assert [r.id for r in store.list()] == ["r4", "r3", "r2", "r1", "r0"]  # newest first
    assert [r.id for r in store.list(limit=2)] == ["r4", "r3"]
    assert [r.id for r in store.list(queue="mail")] == ["r3", "r1"]
    assert store.get("r2") == record(2, queue="billing")
    assert store.get("nope") is None
    assert store.remove("r2") is True
    assert store.remove("r2") is False
    assert store.purge(before=1002.0) == 2  # r0 and r1 failed before it
    assert [r.id for r in store.list()] == ["r4", "r3"]
    asyncio.run(store.aput(record(9)))
    assert store.count() == 3
    store.close()


def test_open_dlq_errors_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUTTRESS_JOBS_DLQ_URL", raising=False)
    monkeypatch.delenv("BUTTRESS_STORE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="BUTTRESS_JOBS_DLQ_URL"):
        open_dlq()
    with pytest.raises(ConfigurationError, match="unknown scheme"):
        open_dlq("ftp://x")


def _open_sqlite_dlq(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        open_dlq(f"sqlite:///{path}").close()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which asserts
        results.put(repr(exc))


def test_sqlite_dead_letters_open_by_many_workers_at_once(tmp_path: Path) -> None:
    """Workers starting together all open a new file: switching it to WAL needs the file to
    itself and SQLite's busy handler does not wait for that (CI saw "database is locked").
    Raw ``PRAGMA journal_mode=WAL`` failed 4 times in 20 such rounds here."""
    ctx = multiprocessing.get_context("fork")
    failures: list[str] = []
    for round_ in range(8):
        path = str(tmp_path / f"dlq{round_}.db")
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [
            ctx.Process(target=_open_sqlite_dlq, args=(path, barrier, results)) for _ in range(6)
        ]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        failures += [o for o in outcomes if o != "ok"]
    assert failures == []


def test_cli_list_show_purge_terminal_and_json(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'dlq.db'}"
    store = open_dlq(url)
    now = time.time()
    store.put(record(1, failed_at=now - 10 * 86400))
    store.put(record(2, failed_at=now))
    assert main(["jobs", "dlq", "list", "--dlq", url]) == 0
    out = capsys.readouterr().out
    assert "r1" in out
    assert "exhausted" in out
    assert main(["jobs", "dlq", "show", "r2", "--dlq", url]) == 0
    assert "Unavailable" in capsys.readouterr().out
    assert main(["jobs", "dlq", "show", "missing", "--dlq", url]) == 2
    assert "no dead letter" in capsys.readouterr().err
    assert (
        main(["jobs", "dlq", "purge", "--older-than", "7d", "--dlq", url, "--format", "json"]) == 0
    )
    assert json.loads(capsys.readouterr().out) == {"purged": 1}
    assert [r.id for r in store.list()] == ["r2"]
    assert main(["jobs", "dlq", "replay", "--dlq", url]) == 2  # neither an id nor --all
    with pytest.raises(SystemExit):
        main(["jobs", "dlq", "purge", "--older-than", "soon", "--dlq", url])
    store.close()


def test_heartbeat_liveness_fails_on_a_silent_loop_or_a_stuck_job(tmp_path: Path) -> None:
    folder = tmp_path / "hb"
    assert check_heartbeats(str(folder))  # nothing beats yet
    clock = [1000.0]
    beat = Heartbeat(str(folder), interval=1.0, wall=lambda: clock[0])
    beat.beat()
    assert check_heartbeats(str(folder), now=1001.0) == []
    j = Job(id="j1", name="shop.receipt")
    beat.started(j, deadline_at=1005.0)
    assert check_heartbeats(str(folder), now=1002.0) == []
    clock[0] = 1004.0
    beat.beat()
    [problem] = check_heartbeats(str(folder), now=1006.0)
    assert "past its deadline" in problem  # the loop beats, but a job is stuck
    beat.finished(j)
    [problem] = check_heartbeats(str(folder), now=1010.0)
    assert "main loop silent" in problem  # 6 s > 3 intervals
    # files of processes that are gone are ignored and removed
    (folder / "999999.json").write_text(json.dumps({"pid": 999999, "loop_at": 0, "running": []}))
    assert check_heartbeats(str(folder), now=1004.5) == []
    assert not (folder / "999999.json").exists()
    live = tmp_path / "live"
    Heartbeat(str(live), interval=5.0).beat()  # real time: fresh
    assert main(["jobs", "health", "--heartbeat", str(live)]) == 0
    assert main(["jobs", "health", "--heartbeat", str(folder), "--format", "json"]) == 1
    assert os.getpid() > 0


@pytest.mark.redis
def test_queue_stats_and_job_queue_check_on_redis(flags) -> None:
    from tests.jobs._send import Producer

    queue = f"q_{uuid.uuid4().hex[:8]}"
    stats = QueueStats(REDIS5)
    assert stats.measure(queue).depth == 0
    producer = Producer(REDIS5)
    for i in range(3):
        producer.send("t.effect", f"s{i}", queue=queue)
    producer.close()
    sample = stats.measure(queue)
    assert sample.depth == 3
    assert sample.oldest_age is not None
    assert 0 <= sample.oldest_age < 30
    check = JobQueueCheck(broker=REDIS5, queue=queue, warn_depth=2)
    result = asyncio.run(check.run())
    assert (result.status, result.observed_value) == ("warn", 3)
    down = JobQueueCheck(broker="redis://127.0.0.1:1/0", queue=queue, timeout=0.5)
    assert asyncio.run(down.run()).status == "fail"
    flags.delete(queue)
    with pytest.raises(ConfigurationError):
        QueueStats("http://nope")


@pytest.mark.redis
def test_queue_depth_on_rabbitmq(rabbit_vhost: str) -> None:
    from tests.jobs._send import Producer

    queue = f"q_{uuid.uuid4().hex[:8]}"
    producer = Producer(rabbit_vhost)
    producer.send("t.effect", "x", queue=queue)
    producer.close()
    sample = QueueStats(rabbit_vhost).measure(queue)
    assert sample.depth == 1
    assert sample.oldest_age is None  # RabbitMQ does not tell without consuming
