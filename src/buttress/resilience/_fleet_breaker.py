"""`SharedBreakerState`: circuit breakers that open fleet-wide when enough instances agree.

Each instance publishes every breaker's *own* judgment to a `BreakerStateStore` and reads
the other instances' reports in the background (a daemon thread or an asyncio task). The
store is never on the call path: calls only meet the local breaker, which the background
refresh forces open while a quorum of the live instances reports open, and closes again
when the fleet recovers. Reports expire, so a crashed instance stops counting; when the
store is down, each breaker simply works alone.

A breaker held open by the fleet reports the state it judged by itself (``closed``), not
``open``: otherwise the forced instances would keep the quorum alive for each other and
the fleet would stay open forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.errors import BackendError, ConfigurationError
from buttress.resilience._breaker import CLOSED, OPEN, CircuitBreaker
from buttress.resilience._policy import check_int, check_positive, check_ratio
from buttress.stores._base import BreakerReport, BreakerStateStore

__all__ = ["FleetView", "SharedBreakerState"]

_log = logging.getLogger("buttress")


@dataclass(frozen=True, slots=True)
class FleetView:
    """What the fleet said about one breaker at the last successful refresh.

    Attributes:
        live: instances with an unexpired report, this one included.
        reporting_open: how many of them report their own breaker open.
        fleet_open: whether that is enough to open the breaker fleet-wide.
        forced: whether this instance's breaker is being held open by the fleet.
    """

    live: int
    reporting_open: int
    fleet_open: bool
    forced: bool


class _Entry:
    """One shared breaker: the breaker, the generation the fleet forced, the last view."""

    __slots__ = ("breaker", "forced_gen", "view")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.forced_gen: int | None = None  # the generation our force_open created
        self.view: FleetView | None = None


def default_instance() -> str:
    """A name for this process: ``hostname-pid-random`` (random: pids repeat in containers)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class SharedBreakerState:
    """Share named circuit breakers' state across a fleet through a store.

    Args:
        store: any `BreakerStateStore` (``open_store("redis://...")``).
        breakers: named breakers to share (more with `add`).
        instance: this process's name in the reports (default ``hostname-pid-random``).
        quorum: open the breaker here when at least this share of the live instances
            reports open (default 0.5).
        min_open: ... and at least this many instances (default 2: one sick instance,
            say behind its own network partition, never opens the whole fleet).
        refresh: seconds between two refreshes of the background loop (default 1).
        ttl: seconds a report stays live (default 3 x ``refresh``; must exceed it).
        clock: time source of the async loop and of the outage log.

    Example::

        payments = CircuitBreaker(name="payments")
        shared = SharedBreakerState(open_store("redis://cache:6379/0"), [payments])
        shared.start()          # or: async with shared: ...
        ...
        shared.stop()
    """

    def __init__(
        self,
        store: BreakerStateStore,
        breakers: Iterable[CircuitBreaker] = (),
        *,
        instance: str | None = None,
        quorum: float = 0.5,
        min_open: int = 2,
        refresh: float = 1.0,
        ttl: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        owner = "SharedBreakerState"
        if not isinstance(store, BreakerStateStore):
            raise ConfigurationError(f"{owner}(store={store!r}): not a BreakerStateStore")
        if instance is not None and (not isinstance(instance, str) or not instance):
            raise ConfigurationError(f"{owner}(instance={instance!r}): must be a non-empty str")
        self.store = store
        self.instance: str = instance or default_instance()
        self.quorum = check_ratio(owner, "quorum", quorum)
        self.min_open = check_int(owner, "min_open", min_open, minimum=1)
        self.refresh = check_positive(owner, "refresh", refresh)
        self.ttl = 3 * self.refresh if ttl is None else check_positive(owner, "ttl", ttl)
        if self.ttl <= self.refresh:
            raise ConfigurationError(
                f"{owner}(ttl={ttl!r}): must exceed refresh ({refresh!r}), or every report "
                "would expire before the next one"
            )
        self.clock = clock
        self.errors = 0  #: failed refreshes (the store did not answer)
        self.refreshes = 0  #: successful refreshes
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._down_since: float | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        for breaker in breakers:
            self.add(breaker)

    def __repr__(self) -> str:
        names = ", ".join(self._entries)
        return f"SharedBreakerState(instance={self.instance!r}, breakers=[{names}])"

    # ------------------------------------------------------------ configuration
    def add(self, breaker: CircuitBreaker) -> None:
        """Share ``breaker`` too; it needs a name unique among the shared ones.

        Example::

            shared.add(CircuitBreaker(name="search"))
        """
        if not isinstance(breaker, CircuitBreaker):
            raise ConfigurationError(f"SharedBreakerState.add({breaker!r}): not a CircuitBreaker")
        if breaker.name == breaker.kind:
            raise ConfigurationError(
                "SharedBreakerState.add: the breaker needs a name, the key its state is "
                "shared under (CircuitBreaker(name='payments'))"
            )
        with self._lock:
            known = self._entries.get(breaker.name)
            if known is not None and known.breaker is not breaker:
                raise ConfigurationError(
                    f"SharedBreakerState.add: another breaker is already shared as "
                    f"{breaker.name!r}; names must be unique"
                )
            if known is None:
                self._entries[breaker.name] = _Entry(breaker)

    @property
    def breakers(self) -> list[CircuitBreaker]:
        """The shared breakers."""
        with self._lock:
            return [e.breaker for e in self._entries.values()]

    def view(self, name: str) -> FleetView | None:
        """The fleet's view of breaker ``name`` (None before a refresh or while alone)."""
        entry = self._entries.get(name)
        return None if entry is None else entry.view

    @property
    def alone(self) -> bool:
        """True while the store does not answer and every breaker works alone."""
        return self._down_since is not None

    # ------------------------------------------------------------ one refresh
    def refresh_once(self) -> None:
        """Publish every breaker's own state, read the fleet's, and act on it.

        A `BackendError` is counted and logged once per outage, never raised.
        """
        store = self.store
        try:
            for name, entry in self._snapshot():
                store.publish(name, self.instance, self._own_state(entry), self.ttl)
                self._decide(entry, store.reports(name))
        except BackendError as exc:
            self._failed(exc)
        else:
            self._succeeded()

    async def arefresh_once(self) -> None:
        """Async `refresh_once`."""
        store = self.store
        try:
            for name, entry in self._snapshot():
                await store.apublish(name, self.instance, self._own_state(entry), self.ttl)
                self._decide(entry, await store.areports(name))
        except BackendError as exc:
            self._failed(exc)
        else:
            self._succeeded()

    def _snapshot(self) -> list[tuple[str, _Entry]]:
        with self._lock:
            return list(self._entries.items())

    def _own_state(self, entry: _Entry) -> str:
        """The breaker's own judgment: a fleet-forced open reads as the state it replaced."""
        forced = entry.forced_gen
        if forced is not None:
            if entry.breaker.generation == forced:
                return CLOSED  # only a closed breaker is ever forced
            entry.forced_gen = None  # it moved on (probing, reset...): its state is its own
        return entry.breaker.state

    def _decide(self, entry: _Entry, reports: list[BreakerReport]) -> None:
        live = len(reports)
        opened = sum(1 for r in reports if r.state == OPEN)
        reached = opened >= self.min_open and opened / live >= self.quorum
        breaker = entry.breaker
        gen = breaker.generation  # read before the state: the CAS below catches any move
        forced = entry.forced_gen is not None and entry.forced_gen == gen
        summary = f"{opened} of {live} instances report open"
        if reached and not forced and breaker.state == CLOSED:
            new = breaker.force_open(reason=f"fleet: {summary}", generation=gen)
            if new is not None:
                entry.forced_gen = new
                forced = True
        elif not reached and forced:
            breaker.reset(reason=f"fleet recovered: {summary}", generation=gen)
            entry.forced_gen = None
            forced = False
        entry.view = FleetView(live=live, reporting_open=opened, fleet_open=reached, forced=forced)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        for _, entry in self._snapshot():
            entry.view = None  # no fleet view while alone
        if self._down_since is None:
            self._down_since = self.clock.now()
            _log.warning(
                "breaker state store %r failed; %d breaker(s) work alone until it answers: %s",
                self.store,
                len(self._entries),
                exc,
                exc_info=not isinstance(exc, BackendError),  # anything else is a bug
            )

    def _succeeded(self) -> None:
        self.refreshes += 1
        if self._down_since is not None:
            down = self.clock.now() - self._down_since
            self._down_since = None
            _log.info("breaker state store %r answers again after %.1f s", self.store, down)

    # ------------------------------------------------------------ background loops
    def start(self) -> None:
        """Refresh in a daemon thread every ``refresh`` seconds (first refresh at once)."""
        with self._lock:
            self._check_stopped()
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run,
                args=(self._stop,),
                name=f"buttress-shared-breakers-{self.instance}",
                daemon=True,
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait up to ``timeout`` s for a refresh in flight to end."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None:
            thread.join(timeout)

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.refresh_once()
            except Exception as exc:  # a bug must not kill the loop: log it, keep going
                self._failed(exc)
            stop.wait(self.refresh)  # real time: stop() must not wait out a fake clock

    async def astart(self) -> None:
        """Refresh in an asyncio task every ``refresh`` seconds (first refresh at once)."""
        with self._lock:
            self._check_stopped()
            self._task = asyncio.get_running_loop().create_task(
                self._arun(), name=f"buttress-shared-breakers-{self.instance}"
            )

    async def astop(self) -> None:
        """Cancel the task and wait for it to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # astop itself was cancelled

    async def _arun(self) -> None:
        while True:
            try:
                await self.arefresh_once()
            except Exception as exc:  # a bug must not kill the loop: log it, keep going
                self._failed(exc)
            await self.clock.asleep(self.refresh)

    def _check_stopped(self) -> None:
        if self._thread is not None or self._task is not None:
            raise RuntimeError("SharedBreakerState is already started; stop it first")

    def __enter__(self) -> SharedBreakerState:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SharedBreakerState:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()
