"""The discrete-event loop: a heap of `(time, priority, seq, fn, arg)` tuples.

Events at the same time run by priority (lane completions, then arrivals, then timers), and
in the order they were scheduled within a priority (`seq`), so a run is a pure function of
its inputs (SimPy's `(time, priority, eid)` ordering). Before each event the loop sets the
`SimClock` to the event's time; handlers read `clock.now()` like the real engine does.

Events are bare tuples and handlers plain callables: no object is built per event beyond
the tuple, because the loop runs hundreds of thousands of events per second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from heapq import heappop, heappush
from itertools import count
from typing import Any

from recsched.clock import SimClock

COMPLETE = 0  # a lane finished a task: frees the lane before same-time arrivals look at it
ARRIVAL = 1  # a query arrives at a server (or at the load balancer)
TIMER = 2  # a scheduler wake-up (merge delay expired), after everything else at that time

Handler = Callable[[Any], None]


class EventLoop:
    """Runs handlers in (time, priority, seq) order on a shared `SimClock`."""

    def __init__(self, clock: SimClock | None = None) -> None:
        self.clock = clock if clock is not None else SimClock()
        self.heap: list[tuple[float, int, int, Handler, Any]] = []
        self._seq = count()
        self.processed = 0

    def at(self, t: float, prio: int, fn: Handler, arg: Any = None) -> None:
        """Schedule `fn(arg)` at time `t` (not in the past) with priority `prio`."""
        assert t >= self.clock._t, f"event at {t} is in the past (now {self.clock._t})"
        heappush(self.heap, (t, prio, next(self._seq), fn, arg))

    def now(self) -> float:
        return self.clock._t

    def next_time(self) -> float:
        """Time of the next event (inf when there is none)."""
        return self.heap[0][0] if self.heap else math.inf

    def run(self, until: float = math.inf) -> int:
        """Process events with time <= `until`; return how many ran."""
        heap, pop, clock = self.heap, heappop, self.clock
        n = 0
        while heap and heap[0][0] <= until:
            t, _, _, fn, arg = pop(heap)
            # SimClock.set(t) without the call: the heap already orders times
            clock._t = t
            fn(arg)
            n += 1
        self.processed += n
        return n

    def run_merged(
        self,
        chunks: Iterable[list[float]],
        on_arrival: Callable[[int], None],
        until: float = math.inf,
    ) -> int:
        """Run the heap merged with a sorted stream of arrival times, then drain the heap.

        Arrival `i` (counting across `chunks`) calls `on_arrival(i)` at its time with priority
        `ARRIVAL`, exactly as if each had been scheduled with `at(t, ARRIVAL, ...)` in order,
        but without a heap push and pop per arrival. Returns the number of events run.
        """
        heap, pop, clock = self.heap, heappop, self.clock
        i = n = 0
        for chunk in chunks:
            for ta in chunk:
                while heap:
                    top = heap[0]
                    t = top[0]
                    if t > ta or (t == ta and top[1] >= ARRIVAL):
                        break
                    if t > until:
                        self.processed += n
                        return n
                    pop(heap)
                    clock._t = t
                    top[3](top[4])
                    n += 1
                if ta > until:
                    self.processed += n
                    return n
                clock._t = ta
                on_arrival(i)
                i += 1
                n += 1
        self.processed += n
        return n + self.run(until)

    def __len__(self) -> int:
        return len(self.heap)
