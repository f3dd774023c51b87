"""Tail guard: shed lower-value traffic while the most valuable class's latency nears its SLA.

Predicted admission (`admission.py`) decides from a cost model. Where the event loop, the
lanes and other processes share a few cores, the model misses what contention costs: under
overload, the top class's tail grows with the *load*, not with the work queued ahead of it.
The guard closes the loop on what the top class actually got. Each completion of the top
class uses a share of its waiting budget, `(latency - alone) / (SLA - alone)`, where `alone`
is its predicted time with the lanes to itself (0 without a cost model; a query too large
for its SLA alone says nothing about contention and is not counted). Admission also reports a
top-class request that timed out in the queue, with how long it had waited (a lower bound).
Every `period_s`:

- the worst use above `target`, and either a second completion of the period above it too
  or the worst above it in `persist` periods in a row (one slow request is not an overload;
  several in one period are): the lowest-value class whose admitted share is above `floor` keeps
  `target / worst` of it, at most `decrease` and at least `cut` (a multiplicative decrease in
  proportion to the overshoot, so a load step is met within a few periods);
- the period calm (worst use at most `calm` x `target`, or no top-class request in the
  server at all): the most valuable throttled class gets `increase` back (additive increase);
- otherwise, or with top-class requests in the server but none finished: hold (a period
  with no completion does not break a run of slow ones).

So the lowest value is shed first and recovers last, as TCP and server admission controllers
(Breakwater, SEDA) do with AIMD. `admit(name)` spends a class's share as credit, so a share
of 0.3 admits 3 offers in 10, evenly and deterministically.

Pure: time passed in, no clock, no server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

_EPS = 1e-9


@dataclass
class TailGuard:
    """AIMD on the admitted share of each class below the top (see the module docstring).

    `sla_s`: the top class's SLA. `below`: the other classes' names, most valuable first.
    """

    sla_s: float
    below: Sequence[str]
    target: float = 0.4
    calm: float = 0.7
    period_s: float = 0.1
    decrease: float = 0.7
    cut: float = 0.25
    persist: int = 2
    increase: float = 0.02
    floor: float = 0.0
    share: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        assert self.sla_s > 0 and self.period_s > 0, "an SLA and a period"
        assert 0 < self.target and 0 < self.calm <= 1, "target > 0, calm in (0, 1]"
        assert 0 < self.cut <= self.decrease < 1 and 0 < self.increase <= 1
        assert 0 <= self.floor < 1 and self.persist >= 1
        assert len(set(self.below)) == len(self.below), "class names are unique"
        self.share = dict.fromkeys(self.below, 1.0)
        self._credit = dict.fromkeys(self.below, 0.0)
        self._end: float | None = None  # the current period ends then
        self._worst = -1.0  # the worst use seen this period (-1: none)
        self._second = -1.0  # the second worst (-1: fewer than two)
        self._over = 0  # periods in a row whose worst use was over the target
        self.decreases = 0
        self.increases = 0

    # -- the API ---------------------------------------------------------------------
    def observe(self, latency_s: float, alone_s: float, now: float, busy: bool = True) -> None:
        """A top-class request finished after `latency_s`; alone it would take `alone_s`."""
        self.tick(now, busy)
        budget = self.sla_s - max(0.0, alone_s)
        if budget < 0.1 * self.sla_s:
            return  # too large for its SLA alone: not a sign of contention
        use = (latency_s - max(0.0, alone_s)) / budget
        if use > self._worst:
            self._worst, self._second = use, self._worst
        elif use > self._second:
            self._second = use

    def tick(self, now: float, busy: bool) -> None:
        """Close the periods that ended by `now`. `busy`: a top-class request is in the
        server (queued or running), so a period without completions is not calm."""
        if self._end is None:
            self._end = now + self.period_s
            return
        if now < self._end:
            return
        self._decide(busy)
        idle = int((now - self._end) // self.period_s)  # whole periods with nothing seen
        self._end += (idle + 1) * self.period_s
        if idle and not busy:  # periods with nothing at all: calm
            self._over = 0
            for _ in range(min(idle, self._steps_to_full())):
                self._raise()
        self.check_invariants()

    def admit(self, name: str) -> bool:
        """Whether an offer of class `name` (below the top) passes: spends its share."""
        credit = self._credit[name] + self.share[name]
        if credit >= 1.0 - _EPS:
            self._credit[name] = max(0.0, credit - 1.0)
            return True
        self._credit[name] = credit
        return False

    def why(self, name: str) -> str:
        return (
            f"guarding the top class's tail: admitting {self.share[name]:.0%} of class "
            f"'{name}' while the top class's latency is near its SLA"
        )

    # -- internals -------------------------------------------------------------------
    def _decide(self, busy: bool) -> None:
        worst, second = self._worst, self._second
        self._worst = self._second = -1.0
        if worst < 0:  # no top-class completion in the period
            if not busy:
                self._over = 0
                self._raise()
            return  # top-class work in the server and none finished: no news, hold
        if worst > self.target:
            self._over += 1
            if second > self.target or self._over >= self.persist:
                self._lower(min(self.decrease, max(self.cut, self.target / worst)))
            return
        self._over = 0
        if worst <= self.calm * self.target:
            self._raise()

    def _lower(self, factor: float) -> None:
        for name in reversed(self.below):  # the lowest value first
            if self.share[name] > self.floor + _EPS:
                self.share[name] = max(self.floor, self.share[name] * factor)
                self.decreases += 1
                return

    def _raise(self) -> None:
        for name in self.below:  # the most valuable throttled class first
            if self.share[name] < 1.0 - _EPS:
                up = self.share[name] + self.increase
                self.share[name] = 1.0 if up >= 1.0 - _EPS else up
                self.increases += 1
                return

    def _steps_to_full(self) -> int:
        return sum(int((1.0 - s) / self.increase) + 1 for s in self.share.values())

    def check_invariants(self) -> None:
        assert all(self.floor - _EPS <= s <= 1.0 + _EPS for s in self.share.values())
        assert all(0.0 <= c < 1.0 + _EPS for c in self._credit.values())
