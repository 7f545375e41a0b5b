"""`ChaosMiddleware`: fault injection on the inbound side, for game days against staging.

For a fraction of the requests on a route it injects one of four faults:

* ``latency``: the request waits ``ARG`` seconds before it goes on (before the handler
  and its deadline: the wait is the network's or the queue's, not the handler's);
* ``error``: the request is answered at once with problem+json status ``ARG`` (default
  503; 500-599 or 429), ``detail`` "injected fault (chaos)";
* ``drop``: the response starts (status 500, a body promised) and the connection is cut
  before the body: the client sees a peer that went away mid-response;
* ``slow_body``: the request body reaches the handler ``ARG`` seconds late per chunk (a
  slow upload; only handlers that read the body notice).

A fault is written ``"KIND FRACTION [ARG] [ROUTE]"``: ``"latency 10% 250ms /orders"``,
``"error 5% 503"``, ``"drop 1%"``, ``"slow_body 0.02 2s /uploads"``. FRACTION is a
percentage or a number in [0, 1]; ROUTE is a path prefix (default: every path). Each
fault of a matching route draws once per request from one seeded `random.Random`
(``seed``), so a test replays the same sequence; faults apply in the order given, the
first ``error`` or ``drop`` that fires answers the request.

It is never on by default, and never in production unless explicitly allowed: turning it
on when ``environment`` names production (``production``, ``prod``, ``live``) without
``allow_production=True`` raises `ConfigurationError`. It switches at run time
(`enable`, `disable`, `configure`, `apply_settings`); answers it injects carry
``buttress-chaos: <kind>`` so that nobody takes them for real failures, and ``injected``
counts them per kind.

Example::

    app = ChaosMiddleware(app, faults=["latency 20% 300ms /search", "error 5% 503"],
                          enabled=True, environment="staging", seed=7)
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from buttress._clock import SYSTEM_CLOCK, Clock
from buttress.asgi._problem import code_for_status, send_problem
from buttress.asgi._runner import Hooks, Stage
from buttress.asgi._types import ASGIApp, Message, Receive, Send
from buttress.errors import ConfigurationError

__all__ = ["PRODUCTION_NAMES", "ChaosMiddleware", "Fault", "is_production"]

FaultKind = Literal["latency", "error", "drop", "slow_body"]

PRODUCTION_NAMES: Final = frozenset({"production", "prod", "live"})
"""Environment names that mean production (compared case-insensitively)."""

_KINDS: Final = ("latency", "error", "drop", "slow_body")
_TIMED: Final = frozenset({"latency", "slow_body"})
_MAX_SECONDS: Final = 300.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s)?")
_log = logging.getLogger("buttress.asgi.chaos")


def is_production(environment: str | None) -> bool:
    """True when ``environment`` names production (or is unset: assume the worst).

    Example::

        >>> is_production("Production"), is_production("staging"), is_production(None)
        (True, False, True)
    """
    return environment is None or environment.strip().lower() in PRODUCTION_NAMES


def _fraction(text: str, spec: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ConfigurationError(
            f"chaos fault {spec!r}: the fraction {text!r} must be a percentage (10%) or a "
            "number in [0, 1]"
        )
    return value


def _seconds(text: str, spec: str) -> float:
    match = _DURATION.fullmatch(text)
    value = -1.0
    if match is not None:
        value = float(match.group(1)) / (1000.0 if match.group(2) == "ms" else 1.0)
    if not 0.0 < value <= _MAX_SECONDS:
        raise ConfigurationError(
            f"chaos fault {spec!r}: the duration {text!r} must be seconds or milliseconds "
            f"in (0, {_MAX_SECONDS:g} s] (250ms, 2s, 1.5)"
        )
    return value


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: what, for which fraction of the requests, on which path prefix.

    Example::

        >>> Fault.parse("latency 10% 250ms /orders")
        Fault(kind='latency', fraction=0.1, seconds=0.25, status=None, route='/orders')
    """

    kind: FaultKind
    fraction: float
    seconds: float | None = None
    status: int | None = None
    route: str = "/"

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """A fault from ``"KIND FRACTION [ARG] [ROUTE]"`` (see the module docstring)."""
        if not isinstance(spec, str):
            raise ConfigurationError(
                f"chaos fault {spec!r}: a string 'KIND FRACTION [ARG] [ROUTE]'"
            )
        words = spec.split()
        if len(words) < 2 or words[0] not in _KINDS:
            raise ConfigurationError(
                f"chaos fault {spec!r}: 'KIND FRACTION [ARG] [ROUTE]', KIND one of "
                + ", ".join(_KINDS)
                + " (for example 'latency 10% 250ms /orders' or 'error 5% 503')"
            )
        kind: FaultKind = words[0]  # type: ignore[assignment] # checked against _KINDS
        fraction = _fraction(words[1], spec)
        rest = words[2:]
        route = "/"
        if rest and rest[-1].startswith("/"):
            route = rest.pop()
        seconds: float | None = None
        status: int | None = None
        if kind in _TIMED:
            if len(rest) != 1:
                raise ConfigurationError(f"chaos fault {spec!r}: {kind} needs a duration (250ms)")
            seconds = _seconds(rest[0], spec)
        elif kind == "error":
            if len(rest) > 1 or (rest and not rest[0].isdigit()):
                raise ConfigurationError(f"chaos fault {spec!r}: error takes one status (503)")
            status = int(rest[0]) if rest else 503
            if not (500 <= status <= 599 or status == 429):
                raise ConfigurationError(
                    f"chaos fault {spec!r}: the status must be 500-599 or 429, not {status}"
                )
        elif rest:
            raise ConfigurationError(f"chaos fault {spec!r}: drop takes no argument")
        return cls(kind=kind, fraction=fraction, seconds=seconds, status=status, route=route)

    def matches(self, path: str) -> bool:
        """Whether ``path`` is on this fault's route (a path prefix, segment-wise)."""
        route = self.route
        return route in ("/", path) or path.startswith(route.rstrip("/") + "/")


def _faults(items: Iterable[Fault | str]) -> tuple[Fault, ...]:
    if isinstance(items, str | Fault):
        items = (items,)
    return tuple(item if isinstance(item, Fault) else Fault.parse(item) for item in items)


class _SlowReceive:
    """A ``receive`` that hands over each body chunk ``delay`` seconds late."""

    __slots__ = ("clock", "delay", "receive")

    def __init__(self, receive: Receive, delay: float, clock: Clock) -> None:
        self.receive = receive
        self.delay = delay
        self.clock = clock

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request" and message.get("body"):
            await self.clock.asleep(self.delay)
        return message


class ChaosMiddleware(Stage):
    """Inject faults into a fraction of the requests (see the module docstring).

    Args:
        app: the ASGI application.
        faults: `Fault` objects or their text (``"error 5% 503 /orders"``).
        enabled: inject from the start (default False).
        seed: the random generator's seed (None: unpredictable); tests pass one.
        environment: where this runs; production refuses `enable` unless allowed.
        allow_production: let it run in production anyway (you mean it).
        clock: time source of the waits.

    Example::

        chaos = ChaosMiddleware(app, faults=["drop 2%"], environment="staging")
        chaos.enable()          # game day starts
        chaos.disable()         # and ends
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        faults: Iterable[Fault | str] = (),
        enabled: bool = False,
        seed: int | None = None,
        environment: str | None = "production",
        allow_production: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.app = app
        self.clock = clock
        self.environment = environment
        self.allow_production = bool(allow_production)
        self.faults: tuple[Fault, ...] = _faults(faults)
        self._random = random.Random(seed)
        self.injected: dict[str, int] = dict.fromkeys(_KINDS, 0)
        self._on = False
        if enabled:
            self.enable()

    @property
    def enabled(self) -> bool:
        """Whether faults are being injected now."""
        return self._on

    def enable(self) -> None:
        """Start injecting; `ConfigurationError` in production unless allowed."""
        if is_production(self.environment) and not self.allow_production:
            raise ConfigurationError(
                f"ChaosMiddleware: refusing to inject faults in {self.environment or 'an unnamed'}"
                " environment; set environment='staging' (BUTTRESS_ENVIRONMENT) where it "
                "runs, or allow_production=True (BUTTRESS_CHAOS_ALLOW_PRODUCTION) if you "
                "mean production"
            )
        if not self._on:
            _log.warning("chaos: fault injection on (%d faults)", len(self.faults))
        self._on = True

    def disable(self) -> None:
        """Stop injecting (safe from a signal handler)."""
        if self._on:
            _log.warning("chaos: fault injection off")
        self._on = False

    def configure(
        self, faults: Iterable[Fault | str] | None = None, *, seed: int | None = None
    ) -> None:
        """Replace the faults (validated first: a bad one changes nothing) and/or reseed."""
        if faults is not None:
            self.faults = _faults(faults)
        if seed is not None:
            self._random = random.Random(seed)

    def apply_settings(self, settings: Any) -> None:
        """Follow a `HardenSettings` at run time: its chaos fields and its environment.

        Example::

            app.parts.chaos.apply_settings(HardenSettings.from_env())   # re-read BUTTRESS_*
        """
        faults = _faults(settings.chaos_faults)
        self.environment = settings.environment
        self.allow_production = settings.chaos_allow_production
        if settings.chaos:
            self.faults = faults
            self.configure(seed=settings.chaos_seed)
            self.enable()
        else:
            self.disable()
            self.faults = faults

    # -------------------------------------------------------------- the stage
    def stage_hooks(self) -> Hooks:
        """Arrive: maybe a fault."""
        return Hooks(arrive=self.arrive)

    def arrive(self, ex: Any) -> Awaitable[bool] | None:
        """Draw for each fault on the request's route; answer, delay or pass it on."""
        if not self._on:
            return None
        path = ex.scope["path"]
        draw = self._random.random
        delay = 0.0
        for fault in self.faults:
            if not fault.matches(path) or draw() >= fault.fraction:
                continue
            self.injected[fault.kind] += 1
            if fault.kind == "error":
                return self._error(ex.send, fault.status or 503, delay)
            if fault.kind == "drop":
                return self._drop(ex.send, delay)
            if fault.kind == "latency":
                delay += fault.seconds or 0.0
            else:
                ex.receive = _SlowReceive(ex.receive, fault.seconds or 0.0, self.clock)
        return self._wait(delay) if delay else None

    async def _wait(self, seconds: float) -> bool:
        await self.clock.asleep(seconds)
        return False

    async def _error(self, send: Send, status: int, delay: float) -> bool:
        if delay:
            await self.clock.asleep(delay)
        await send_problem(
            send,
            code_for_status(status),
            status=status,
            detail="injected fault (chaos)",
            headers=[(b"buttress-chaos", b"error")],
        )
        return True

    async def _drop(self, send: Send, delay: float) -> bool:
        if delay:
            await self.clock.asleep(delay)
        # a body is promised and never sent: the server must cut the connection
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-length", b"64"), (b"buttress-chaos", b"drop")],
            }
        )
        return True
