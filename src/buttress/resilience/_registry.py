"""The registry of named pipelines and circuit breakers.

Health checks and metrics list what is registered here: every `Pipeline` and
`CircuitBreaker` built with a ``name``. Entries are weak: an object that is no longer
used disappears from the registry by itself.

Example::

    from buttress.resilience import registry

    for breaker in registry.breakers():
        print(breaker.name, breaker.state)
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from buttress.resilience._breaker import CircuitBreaker
    from buttress.resilience._pipeline import Pipeline

__all__ = ["Registry", "registry"]


class Registry:
    """Weak sets of the named pipelines and breakers of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
        self._pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()

    def add_breaker(self, breaker: CircuitBreaker) -> None:
        """Register a named breaker (done by `CircuitBreaker` itself)."""
        with self._lock:
            self._breakers.add(breaker)

    def add_pipeline(self, pipeline: Pipeline) -> None:
        """Register a named pipeline (done by `Pipeline` itself)."""
        with self._lock:
            self._pipelines.add(pipeline)

    def breakers(self) -> list[CircuitBreaker]:
        """The live named breakers, sorted by name."""
        with self._lock:
            found = list(self._breakers)
        return sorted(found, key=lambda b: b.name)

    def pipelines(self) -> list[Pipeline]:
        """The live named pipelines, sorted by name."""
        with self._lock:
            found = list(self._pipelines)
        return sorted(found, key=lambda p: p.name or "")

    def breaker(self, name: str) -> CircuitBreaker | None:
        """The live breaker called ``name`` (the newest if several share it)."""
        matches = [b for b in self.breakers() if b.name == name]
        return matches[-1] if matches else None

    def pipeline(self, name: str) -> Pipeline | None:
        """The live pipeline called ``name`` (the newest if several share it)."""
        matches = [p for p in self.pipelines() if p.name == name]
        return matches[-1] if matches else None

    def clear(self) -> None:
        """Forget everything (for tests)."""
        with self._lock:
            self._breakers = weakref.WeakSet()
            self._pipelines = weakref.WeakSet()


registry = Registry()
