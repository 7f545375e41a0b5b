"""Worker health: heartbeat liveness, stuck jobs, queue depth and age, `JobQueueCheck`.

* `Heartbeat` - each worker process writes ``<dir>/<pid>.json``: the worker's main loop
  every ``interval`` (from the engine's own timer, so a stuck loop stops it), and every
  process the jobs it is running with their deadlines. `check_heartbeats` (``buttress
  jobs health --heartbeat DIR``, an exec liveness probe) fails when the main loop's beat is
  stale or a job runs past its deadline (a stuck pool).
* `QueueStats` - the depth of a queue and the age of its oldest message (Redis broker:
  ``LLEN`` and the oldest message's enqueue time; RabbitMQ: the queue's message count),
  also set as the ``buttress_job_queue_depth`` / ``buttress_job_oldest_age_seconds`` gauges.
* `JobQueueCheck` - a `buttress.asgi` health check: the broker answers (else ``fail``),
  the queue is not too deep or too old (else ``warn``), the workers' heartbeats are fresh
  (else ``fail``), so an API's readiness can depend on its workers.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from buttress.asgi._health_checks import BaseCheck, CheckResult
from buttress.errors import BackendError, ConfigurationError
from buttress.jobs._observe import JOB_METRICS
from buttress.stores._base import backend_errors

if TYPE_CHECKING:
    from buttress.jobs._core import Job

__all__ = ["Heartbeat", "JobQueueCheck", "QueueStats", "check_heartbeats"]


class Heartbeat:
    """This process's heartbeat file in ``directory`` (see the module docstring).

    Args:
        directory: where the files go (one per process; created if missing).
        interval: seconds between beats of the main loop.
        wall: wall-clock time.
    """

    def __init__(
        self, directory: str, *, interval: float = 5.0, wall: Callable[[], float] = time.time
    ) -> None:
        if not interval > 0:
            raise ConfigurationError(f"Heartbeat(interval={interval!r}): must be > 0")
        self.directory = Path(directory)
        self.interval = interval
        self.wall = wall
        self._running: dict[str, tuple[str, float, float]] = {}
        self._loop_at: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, directory: str | None) -> Heartbeat | None:
        """A heartbeat in ``directory``, else ``$BUTTRESS_JOBS_HEARTBEAT_DIR``, else None."""
        directory = directory or os.environ.get("BUTTRESS_JOBS_HEARTBEAT_DIR")
        return cls(directory) if directory else None

    def beat(self) -> None:
        """The main loop is alive (call it from the loop itself)."""
        self._loop_at = self.wall()
        self._write()

    def started(self, job: Job, deadline_at: float) -> None:
        """A job started in this process; it should end before ``deadline_at``."""
        with self._lock:
            self._running[job.id] = (job.name, self.wall(), deadline_at)
        self._write()

    def finished(self, job: Job) -> None:
        """That job ended."""
        with self._lock:
            self._running.pop(job.id, None)
        self._write()

    def _write(self) -> None:
        with self._lock:
            data = {
                "pid": os.getpid(),
                "at": self.wall(),
                "loop_at": self._loop_at,
                "interval": self.interval,
                "running": [
                    {"id": k, "name": n, "started": s, "deadline": d}
                    for k, (n, s, d) in self._running.items()
                ],
            }
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".hb")
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(tmp, self.directory / f"{os.getpid()}.json")


def check_heartbeats(
    directory: str, *, stale_after: float | None = None, now: float | None = None
) -> list[str]:
    """What is wrong with the workers beating in ``directory`` (empty: alive).

    A main loop whose last beat is older than ``stale_after`` (default: three intervals) is
    stuck; a job still running past its deadline is stuck. Files of processes that no
    longer exist are ignored (and removed).
    """
    now = time.time() if now is None else now
    problems: list[str] = []
    loops = 0
    folder = Path(directory)
    if not folder.is_dir():
        return [f"no heartbeat directory {directory}: is the worker running with it?"]
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _alive(pid):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        loop_at = data.get("loop_at")
        if isinstance(loop_at, int | float):
            loops += 1
            limit = stale_after if stale_after is not None else 3 * float(data.get("interval", 5))
            if now - loop_at > limit:
                problems.append(
                    f"worker {pid}: main loop silent for {now - loop_at:.1f} s (> {limit:g} s)"
                )
        for job in data.get("running", []):
            if now > float(job.get("deadline", now + 1)):
                problems.append(  # noqa: PERF401 - one message per stuck job, readable
                    f"process {pid}: job {job.get('name')} ({job.get('id')}) running "
                    f"{now - float(job.get('started', now)):.1f} s, past its deadline"
                )
    if loops == 0:
        problems.append(f"no live worker main loop beats in {directory}")
    return problems


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class QueueSample:
    """One measurement of a queue: messages waiting, and the oldest one's age (if known)."""

    queue: str
    depth: int
    oldest_age: float | None


class QueueStats:
    """Measure a queue on a Celery broker (Redis or RabbitMQ) without consuming from it.

    Example::

        QueueStats("redis://127.0.0.1:6379/5").measure("celery")   # QueueSample(...)
    """

    def __init__(
        self, broker: str, *, timeout: float = 2.0, wall: Callable[[], float] = time.time
    ) -> None:
        scheme = urlsplit(broker).scheme.lower()
        if scheme not in {"redis", "rediss", "amqp", "amqps", "pyamqp"}:
            raise ConfigurationError(
                f"QueueStats({broker!r}): a redis:// or amqp:// broker URL is needed"
            )
        self.broker = broker
        self.kind = "redis" if scheme.startswith("redis") else "amqp"
        self.timeout = timeout
        self.wall = wall

    def measure(self, queue: str) -> QueueSample:
        """Depth and oldest age of ``queue`` (`BackendError` when the broker does not answer)."""
        sample = self._redis(queue) if self.kind == "redis" else self._amqp(queue)
        JOB_METRICS.queue(queue, sample.depth, sample.oldest_age)
        return sample

    def _redis(self, queue: str) -> QueueSample:
        import redis  # noqa: PLC0415 - the redis extra

        with backend_errors("Redis broker", "measure"):
            client = redis.Redis.from_url(
                self.broker, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
            try:
                depth = int(client.llen(queue))
                oldest = client.lindex(queue, -1) if depth else None  # LPUSH'd: oldest last
            finally:
                client.close()
        age = None
        if oldest is not None:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                headers = json.loads(oldest).get("headers") or {}
                at = (headers.get("buttress") or {}).get("enqueued_at")
                if isinstance(at, int | float):
                    age = max(0.0, self.wall() - at)
        return QueueSample(queue, depth, age)

    def _amqp(self, queue: str) -> QueueSample:
        kombu: Any = importlib.import_module("kombu")  # the celery extra
        with (
            backend_errors("RabbitMQ broker", "measure"),
            kombu.Connection(self.broker, connect_timeout=self.timeout) as conn,
        ):
            channel = conn.channel()
            try:
                _, depth, _ = channel.queue_declare(queue=queue, passive=True)
            finally:
                channel.close()
        return QueueSample(queue, int(depth), None)

    def ping(self) -> None:
        """`BackendError` unless the broker answers."""
        if self.kind == "redis":
            import redis  # noqa: PLC0415

            with backend_errors("Redis broker", "ping"):
                client = redis.Redis.from_url(
                    self.broker, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
                )
                try:
                    client.ping()
                finally:
                    client.close()
            return
        kombu: Any = importlib.import_module("kombu")
        with (
            backend_errors("RabbitMQ broker", "ping"),
            kombu.Connection(self.broker, connect_timeout=self.timeout) as conn,
        ):
            conn.ensure_connection(max_retries=1, timeout=self.timeout)


class JobQueueCheck(BaseCheck):
    """Readiness of the workers behind an API: broker, queue depth and age, heartbeats.

    ``fail`` when the broker does not answer or (with ``heartbeat_dir``) the workers'
    heartbeats are stale or a job is stuck; ``warn`` when the queue is deeper than
    ``warn_depth`` or its oldest message older than ``warn_age`` seconds; observed value:
    the depth.

    Example::

        harden(app, HardenSettings(...), checks=[
            JobQueueCheck(broker="redis://127.0.0.1:6379/5", queue="celery", warn_depth=1000),
        ])
    """

    component_type = "component"
    measurement = "queueDepth"

    def __init__(
        self,
        *,
        broker: str,
        queue: str = "celery",
        name: str = "jobs",
        critical: bool = True,
        warn_depth: int | None = None,
        warn_age: float | None = None,
        heartbeat_dir: str | None = None,
        timeout: float | None = None,
        component_id: str | None = None,
    ) -> None:
        super().__init__(name=name, critical=critical, timeout=timeout, component_id=component_id)
        self.stats = QueueStats(broker, timeout=timeout or 2.0)
        self.queue = queue
        self.warn_depth = warn_depth
        self.warn_age = warn_age
        self.heartbeat_dir = heartbeat_dir

    async def run(self) -> CheckResult:
        """Measure once (in a thread of its own: the drivers block)."""
        try:
            sample = await self._in_thread(lambda: self.stats.measure(self.queue))
        except BackendError as exc:
            return CheckResult(status="fail", output=f"broker does not answer: {exc}")
        if self.heartbeat_dir is not None:
            problems = check_heartbeats(self.heartbeat_dir)
            if problems:
                return CheckResult(
                    status="fail", observed_value=sample.depth, output="; ".join(problems)[:300]
                )
        warnings = []
        if self.warn_depth is not None and sample.depth > self.warn_depth:
            warnings.append(f"{sample.depth} waiting > {self.warn_depth}")
        age = sample.oldest_age
        if self.warn_age is not None and age is not None and age > self.warn_age:
            warnings.append(f"oldest waited {age:.0f} s > {self.warn_age:g} s")
        if warnings:
            output = "; ".join(warnings)
            return CheckResult(status="warn", observed_value=sample.depth, output=output)
        return CheckResult(status="pass", observed_value=sample.depth)
