"""The shutdown and dependency-fault modes: a service started, signalled, and its dependency cut.

**Shutdown** (``--start "command"``): `Service` starts the command (its own session, output
to a temporary file), waits until the liveness path answers 200, and after the checks
`shutdown` keeps a bounded load on it, sends SIGTERM and watches: requests lost (an
accepted request without an answer, or a 5xx other than a 503), the time until readiness
answered 503, the time until the process exited. A process still alive after the limit is
killed (its whole session).

**Fault** (``--fault "command"`` / ``--recover "command"``): `fault` runs the fault
command, polls readiness and liveness until readiness answers 503 (liveness must stay 200
meanwhile), runs the recover command (always, once the fault command ran) and polls until
both answer 200 again.

Commands are split like a shell line (`shlex.split`) and run without a shell: write
``sh -c '...'`` for pipes or ``&&``. Each has a time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from buttress.probe._http import Client, Exchange
from buttress.probe._load import LoadPlan, run_load
from buttress.probe._threshold import Sample
from buttress.report import CheckStatus

__all__ = ["CommandResult", "Service", "fault", "run_command", "shutdown"]

PASS, FAIL, WARN, NA = (
    CheckStatus.PASS,
    CheckStatus.FAIL,
    CheckStatus.WARN,
    CheckStatus.NOT_APPLICABLE,
)
POLL = 0.05  # seconds between readiness polls
COMMAND_TIMEOUT = 120.0
READY_503_FAST = 1.0  # seconds: readiness 503 later than this after SIGTERM warns
AT_CLOSE = 0.25  # seconds around the listener's close where a reset is the backlog's

Outcomes = dict[str, tuple[CheckStatus, str]]


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A command's exit status (None: it did not finish in time) and its output's tail."""

    argv: tuple[str, ...]
    returncode: int | None
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        """It exited 0 in time."""
        return self.returncode == 0

    def short(self) -> str:
        """``'redis-cli shutdown' exited 0 in 0.1 s`` (with the output's tail when it failed)."""
        name = shlex.join(self.argv)
        if self.returncode is None:
            return f"{name!r} did not finish within {self.seconds:.0f} s (killed)"
        tail = f": {self.output.strip()[-300:]}" if not self.ok and self.output.strip() else ""
        return f"{name!r} exited {self.returncode} in {self.seconds:.1f} s{tail}"


async def run_command(argv: tuple[str, ...], *, limit: float = COMMAND_TIMEOUT) -> CommandResult:
    """Run ``argv`` (no shell), at most ``limit`` s; its exit status and output's tail."""
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return CommandResult(argv, 127, f"cannot run: {exc}", time.monotonic() - started)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return CommandResult(argv, None, "", time.monotonic() - started)
    text = out.decode("utf-8", "replace")[-2000:]
    return CommandResult(argv, proc.returncode, text, time.monotonic() - started)


@dataclass(slots=True)
class Service:
    """A service the probe starts (``--start``) and stops; always stopped on exit."""

    argv: tuple[str, ...]
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    exited_by_itself: bool = field(default=False)

    def start(self) -> str:
        """Start the command; '' or why it could not be started."""
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - the user's own command, no shell
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return f"cannot start {shlex.join(self.argv)!r}: {exc}"
        return ""

    def output(self) -> str:
        """The tail of what the service wrote."""
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-1500:]

    async def wait_ready(self, client: Client, live: str, ready: str, limit: float) -> str:
        """Poll ``live`` until 200, then ``ready`` until it is not 503 (a start-up phase).

        '' when started, or why not: it exited, or did not get there within ``limit`` s.
        A readiness path that does not exist (404) does not hold the start up.
        """
        assert self.proc is not None  # noqa: S101 - started first
        end = time.monotonic() + limit
        last = ""
        path = live
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return (
                    f"{shlex.join(self.argv)!r} exited {self.proc.returncode} before "
                    f"answering: {self.output().strip()[-600:]}"
                )
            seen = await client.send("GET", path)
            if path == live and seen.status == 200:
                path = ready
                continue
            if path == ready and seen.ok and seen.status != 503:
                return ""
            last = seen.short()
            await asyncio.sleep(0.1)
        want = "200" if path == live else "an answer other than 503"
        return f"no {want} from GET {path} within {limit:g} s (last: {last})"

    def stop(self) -> None:
        """Kill what is left of the service (its whole session: workers, children too)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the session the probe started
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        if self.log is not None:
            self.log.close()
            self.log = None


def _lost(sample: Sample) -> bool:
    """An accepted request without an answer, or a 5xx other than a polite 503."""
    if sample.status == 0:
        return "refused" not in sample.error
    return sample.status >= 500 and sample.status != 503


async def shutdown(
    service: Service,
    client: Client,
    ready_client: Client,
    *,
    plan: LoadPlan,
    ready_path: str,
    warmup: float = 0.5,
    limit: float = 30.0,
    on_signal: Callable[[], None] | None = None,
) -> Outcomes:
    """SIGTERM under ``plan``'s load: PRB070 (lost), PRB071 (readiness), PRB072 (exit)."""
    proc = service.proc
    assert proc is not None  # noqa: S101 - started first
    stop = asyncio.Event()
    load = asyncio.ensure_future(run_load(client, plan, stop=stop))
    await asyncio.sleep(warmup)
    if proc.poll() is not None:
        stop.set()
        await load
        gone = f"the service exited ({proc.returncode}) before SIGTERM: {service.output()[-400:]}"
        return dict.fromkeys(("PRB070", "PRB071", "PRB072"), (FAIL, gone))
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    if on_signal is not None:
        on_signal()
    ready_at: float | None = None
    first_other: Exchange | None = None
    polls = 0
    exited_at: float | None = None
    end = signalled + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            exited_at = time.monotonic()
            break
        if ready_at is None and first_other is None:
            seen = await ready_client.send("GET", ready_path)
            polls += 1
            if seen.status == 503:
                ready_at = time.monotonic()
            elif seen.status != 200:
                first_other = seen
        await asyncio.sleep(POLL)
    killed = exited_at is None
    if killed:
        service.stop()
    stop.set()
    samples = await load
    return {
        "PRB070": _lost_outcome(samples, signalled),
        "PRB071": _ready_outcome(ready_at, first_other, signalled, polls, ready_path),
        "PRB072": _exit_outcome(proc.returncode, exited_at, signalled, limit, killed),
    }


def _at_close(sample: Sample, closed: float | None) -> bool:
    """A connection reset as the listener closed: it sat in the kernel's accept backlog.

    The service never saw it (a load balancer, which stops sending within the drain
    delay, would not have sent it); it is reported, not counted as lost.
    """
    if closed is None or sample.status != 0 or "reset" not in sample.error:
        return False
    return closed - AT_CLOSE <= sample.started <= closed + AT_CLOSE


def _lost_outcome(samples: list[Sample], signalled: float) -> tuple[CheckStatus, str]:
    after = [s for s in samples if s.started >= signalled]
    refusals = [s.started for s in after if s.status == 0 and "refused" in s.error]
    closed = min(refusals) if refusals else None
    backlog = [s for s in samples if _lost(s) and _at_close(s, closed)]
    lost = [s for s in samples if _lost(s) and not _at_close(s, closed)]
    polite = sum(1 for s in samples if s.status == 503)
    answered = sum(1 for s in samples if s.status and not _lost(s))
    head = (
        f"{len(samples)} requests under load ({len(after)} after SIGTERM): {answered} "
        f"answered, {len(lost)} lost, {polite} refused with 503, {len(refusals)} not "
        "accepted (the listener had closed)"
    )
    if backlog:
        head += f", {len(backlog)} reset in the accept backlog as the listener closed"
    if not samples:
        return FAIL, "no request was sent under load"
    if lost:
        worst = "; ".join(
            f"at {s.started - signalled:+.2f} s: {s.error or s.status}" for s in lost[:3]
        )
        return FAIL, f"{head}; lost: {worst}"
    return PASS, head


def _ready_outcome(
    ready_at: float | None,
    other: Exchange | None,
    signalled: float,
    polls: int,
    path: str,
) -> tuple[CheckStatus, str]:
    if ready_at is not None:
        took = ready_at - signalled
        text = f"GET {path} answered 503 {took * 1000:.0f} ms after SIGTERM ({polls} polls)"
        return (PASS if took <= READY_503_FAST else WARN), text
    if other is not None:
        return FAIL, f"GET {path} never answered 503 before: {other.short()}"
    return FAIL, f"GET {path} answered 200 until the process exited ({polls} polls)"


def _exit_outcome(
    code: int | None, exited_at: float | None, signalled: float, limit: float, killed: bool
) -> tuple[CheckStatus, str]:
    if killed or exited_at is None:
        return FAIL, f"still running {limit:g} s after SIGTERM: killed"
    took = exited_at - signalled
    status = "by SIGTERM" if code == -signal.SIGTERM else f"with status {code}"
    verdict = PASS if code in (0, -signal.SIGTERM, 128 + signal.SIGTERM) else WARN
    return verdict, f"exited {status} {took:.2f} s after SIGTERM"


async def _poll_both(client: Client, live: str, ready: str) -> tuple[Exchange, Exchange]:
    ready_seen = await client.send("GET", ready)
    live_seen = await client.send("GET", live)
    return live_seen, ready_seen


async def fault(
    client: Client,
    *,
    fault_cmd: tuple[str, ...],
    recover_cmd: tuple[str, ...] | None,
    live: str,
    ready: str,
    limit: float = 30.0,
) -> Outcomes:
    """Cut a dependency: PRB080 (readiness 503), PRB081 (liveness 200), PRB082 (recovery)."""
    before_live, before_ready = await _poll_both(client, live, ready)
    if before_live.status != 200 or before_ready.status != 200:
        text = f"not healthy before the fault: {before_live.short()}; {before_ready.short()}"
        return dict.fromkeys(("PRB080", "PRB081", "PRB082"), (FAIL, text))
    cut = await run_command(fault_cmd)
    try:
        if not cut.ok:
            text = f"the fault command failed: {cut.short()}"
            return dict.fromkeys(("PRB080", "PRB081", "PRB082"), (FAIL, text))
        outcomes = await _during(client, live, ready, limit, cut)
    finally:
        fixed = await run_command(recover_cmd) if recover_cmd else None
    outcomes["PRB082"] = await _recovery(client, live, ready, limit, fixed)
    return outcomes


async def _during(
    client: Client, live: str, ready: str, limit: float, cut: CommandResult
) -> Outcomes:
    started = time.monotonic()
    end = started + limit
    ready_at: float | None = None
    live_bad: list[str] = []
    live_count = 0
    after_503 = 0
    last_ready = ""
    while time.monotonic() < end and after_503 < 3:
        live_seen, ready_seen = await _poll_both(client, live, ready)
        live_count += 1
        if live_seen.status != 200:
            live_bad.append(f"at {time.monotonic() - started:.1f} s: {live_seen.short()}")
        last_ready = ready_seen.short()
        if ready_seen.status == 503 and ready_at is None:
            ready_at = time.monotonic()
        if ready_at is not None:
            after_503 += 1  # a few more liveness polls once the fault is seen
        await asyncio.sleep(0.2)
    did = f"{cut.short()}; "
    if ready_at is not None:
        prb080 = (PASS, f"{did}GET {ready} -> 503 after {ready_at - started:.1f} s")
    else:
        prb080 = (FAIL, f"{did}no 503 from GET {ready} within {limit:g} s (last: {last_ready})")
    if live_bad:
        prb081 = (FAIL, f"GET {live} during the fault: " + "; ".join(live_bad[:3]))
    else:
        prb081 = (PASS, f"GET {live} -> 200 on all {live_count} polls during the fault")
    return {"PRB080": prb080, "PRB081": prb081}


async def _recovery(
    client: Client, live: str, ready: str, limit: float, fixed: CommandResult | None
) -> tuple[CheckStatus, str]:
    if fixed is None:
        return NA, "no --recover command: recovery not checked"
    if not fixed.ok:
        return FAIL, f"the recover command failed: {fixed.short()}"
    started = time.monotonic()
    end = started + limit
    last = ""
    while time.monotonic() < end:
        live_seen, ready_seen = await _poll_both(client, live, ready)
        if live_seen.status == 200 and ready_seen.status == 200:
            took = time.monotonic() - started
            return PASS, f"{fixed.short()}; both 200 again {took:.1f} s after it"
        last = f"{live_seen.short()}; {ready_seen.short()}"
        await asyncio.sleep(0.2)
    return FAIL, f"{fixed.short()}; not both 200 within {limit:g} s (last: {last})"
