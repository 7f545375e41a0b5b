"""Clocks: how buttress reads time, sleeps and arms timers (`Clock`), and the real one.

Every time-dependent piece of buttress takes a ``clock=`` argument typed `Clock`; pass
`buttress.testing.FakeClock` in tests, or any object with the four methods of the
protocol. `SYSTEM_CLOCK` (a `SystemClock`) is the default: the process's monotonic clock,
real sleeps, and timers coalesced on a per-event-loop wheel.

Example::

    from buttress.clock import Clock, SYSTEM_CLOCK

    def fetch_with(clock: Clock = SYSTEM_CLOCK) -> None:
        started = clock.now()
        ...
"""

from buttress._clock import SYSTEM_CLOCK, Clock, SystemClock, Timer

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "Timer"]

# Documented, and shown in reprs and tracebacks, as buttress.clock.X (where users import it).
for _public in (Clock, SystemClock, Timer):
    _public.__module__ = __name__
