"""Time as a dependency: the wall clock for serving, a manual clock for tests, and a
simulated clock for the discrete-event simulator. Policies only ever call `clock.now()`.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since an arbitrary origin."""
        ...


class WallClock:
    """Monotonic wall time (`time.perf_counter`)."""

    def now(self) -> float:
        return time.perf_counter()


class ManualClock:
    """A clock that only moves when told to: for unit tests of scheduler logic."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)

    def now(self) -> float:
        return self._t

    def advance(self, dt: float) -> float:
        assert dt >= 0, "time does not go backwards"
        self._t += dt
        return self._t

    def set(self, t: float) -> None:
        assert t >= self._t, "time does not go backwards"
        self._t = float(t)


class SimClock(ManualClock):
    """The discrete-event simulator's clock: set by the event loop to each event's time."""
