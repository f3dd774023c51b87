"""Admission control: per-class queues in front of the engine, by value and predicted wait.

A pure state machine with time passed in (no asyncio, no engine): the server `offer`s each
accepted request as a `Ticket`, `pop_ready` hands out the tickets that may enter the engine
now (the most valuable class first, FIFO within a class) and `finish` frees their place.
Holding the backlog here rather than in the engine is what lets the server serve high-value
traffic first, drop work that timed out before it started, and shed the lowest value first
when it overloads:

- a class whose own queue is full refuses the newcomer (it is told at once, with a 503);
- when all queues together hold `capacity` tickets, a newcomer evicts the newest ticket of
  the lowest-value class below its own value; with nothing cheaper to evict, it is refused;
- at most `window` tickets are inside the engine at once.

Two ways to keep engine room for valuable work (with several classes):

- *count* (no `cost_s`): the lowest-value class may hold only `window - window // 2` of the
  engine's places; the rest stay free for more valuable work.
- *predicted* (`cost_s(n_items)` gives a query's predicted lane-seconds, e.g. from the cost
  model; every class has an SLA): the server tracks the engine's outstanding predicted work,
  `backlog_s` (lane-seconds inside the engine / lanes). Below the most valuable class, a
  ticket enters the engine only while the backlog stays under `reserve` x the most valuable
  class's SLA (or when the engine is empty), and the lowest class still holds at most
  `window - window // 2` places: a high-value request then finds a place and waits behind
  at most that much work, and everything cheaper waits here, where it is jumped. A ticket of a
  class below the top is shed at once when its predicted wait (the work ahead of it, in
  the engine and queued at its value or above, divided by the lanes) exceeds `wait_share`
  of its class's SLA *and* that wait plus its own cost exceeds the SLA; and shed from the
  queue when the time it has waited does the same: it would miss its SLA anyway, and
  running it would delay others. (A query too large for its SLA even alone is still
  served when it need not wait.) The most valuable class is never shed by prediction, only
  by its queue bounds and timeouts.

With a `guard` (`recsched.server.guard.TailGuard`), classes below the top are also admitted
only at the share the guard allows, which it steers by the top class's measured latency
(`served`): shed at the offer or, better, on the JSON header (`refuse_early`).

Priority levels follow Triton's schedule-policy extension: 1 is the highest; level k is
the k-th most valuable class; 0 (unset) is the default level, the lowest-value class.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from recsched.server.guard import TailGuard
from recsched.types import PriorityClass

_EPS = 1e-12


class Shed(Exception):
    """A ticket refused or evicted by admission control (served as a 503)."""


class Expired(Exception):
    """A ticket whose timeout passed before it entered the engine (its work never started)."""


def priority_order(classes: Sequence[PriorityClass]) -> tuple[PriorityClass, ...]:
    """Classes by value, most valuable first (stable): index k-1 is priority level k."""
    assert classes, "at least one class"
    return tuple(sorted(classes, key=lambda c: -c.value))


def class_for_priority(ordered: Sequence[PriorityClass], priority: int) -> PriorityClass:
    """The class of a Triton priority level (0 = default = the lowest-value class)."""
    assert 0 <= priority <= len(ordered), "priority checked by the codec"
    return ordered[-1] if priority == 0 else ordered[priority - 1]


@dataclass(eq=False)
class Ticket:
    """One accepted request waiting for, or holding, a place in the engine.

    `arrival_s` / `deadline_s` are on the server's clock (deadline inf: no timeout).
    `cost_s` is its predicted lane-seconds (0 without a cost model), set by `offer`.
    `why` says why it was shed. `screened`: `refuse_early` already let it pass (the guard
    does not charge it twice). `payload` and `waiter` belong to the caller.
    """

    seq: int
    cls: PriorityClass
    n_items: int
    arrival_s: float
    deadline_s: float = float("inf")
    state: str = "new"  # new -> queued -> running -> done | shed | expired | cancelled
    entered_s: float = 0.0  # when it entered the engine
    cost_s: float = 0.0
    why: str = ""
    screened: bool = False
    payload: Any = None
    waiter: Any = None


@dataclass
class AdmissionQueue:
    """Per-class FIFO queues with a total `capacity`, a `window` of engine places and,
    with `cost_s`, admission by predicted work (see the module docstring).

    `lanes`: lanes of the engine (the backlog drains `lanes` lane-seconds per second).
    `reserve`: below the top class, the engine backlog may reach this share of the top
    class's SLA. `wait_share`: the share of its SLA a ticket below the top class may wait
    before it is shed (when it would miss its SLA). Classes need `sla_ms` for the predicted
    mode; without them (or without `cost_s`) the count mode applies. `guard`: a `TailGuard`
    over the classes below the top (either mode).
    """

    classes: Sequence[PriorityClass]
    capacity: int = 256
    window: int = 8
    per_class: dict[str, int] = field(default_factory=dict)
    cost_s: Callable[[int], float] | None = None
    lanes: int = 1
    reserve: float = 0.25
    wait_share: float = 0.5
    guard: TailGuard | None = None

    def __post_init__(self) -> None:
        assert self.capacity >= 1 and self.window >= 1 and self.lanes >= 1
        assert 0.0 < self.reserve <= 1.0, "the reserve is a share of the top class's SLA"
        assert 0.0 <= self.wait_share <= 1.0, "a share of the class's SLA"
        self.order = priority_order(self.classes)
        names = [c.name for c in self.order]
        assert len(set(names)) == len(names), "class names are unique"
        self._q: dict[str, deque[Ticket]] = {n: deque() for n in names}
        self._queued_work: dict[str, float] = dict.fromkeys(names, 0.0)
        self.running = 0
        self.work_running = 0.0  # predicted lane-seconds of the tickets in the engine
        self._running_low = 0  # places held by the lowest-value class (count mode)
        self._running_top = 0  # places held by the most valuable class
        self.shed_count: dict[str, int] = dict.fromkeys(names, 0)
        self.predicted = self.cost_s is not None and all(c.sla_ms for c in self.order)
        top = self.order[0]
        if self.guard is not None:
            assert list(self.guard.below) == names[1:], "the guard covers the classes below the top"
        self.gate_s = self.reserve * top.sla_ms / 1e3 if self.predicted and top.sla_ms else None

    # -- the API ---------------------------------------------------------------------
    def offer(self, t: Ticket) -> list[tuple[Ticket, str]]:
        """Queue `t`; returns the tickets shed by this offer (perhaps `t` itself), with why."""
        assert t.state == "new" and t.cls.name in self._q, "an unknown class"
        q = self._q[t.cls.name]
        own = self.per_class.get(t.cls.name, self.capacity)
        if len(q) >= own:
            return [self._shed(t, f"class '{t.cls.name}' queue is full ({len(q)} waiting)")]
        if self.predicted:
            assert self.cost_s is not None
            t.cost_s = max(0.0, float(self.cost_s(t.n_items)))
        why = self._refusal(t, t.arrival_s)
        if why is not None:
            return [self._shed(t, why)]
        shed: list[tuple[Ticket, str]] = []
        if self.queued() >= self.capacity:
            victim = self._victim(t.cls.value)
            if victim is None:
                why = (
                    f"server overloaded: {self.queued()} requests queued and none of lower "
                    f"value than class '{t.cls.name}' to shed"
                )
                return [self._shed(t, why)]
            self._q[victim.cls.name].pop()
            self._queued_work[victim.cls.name] -= victim.cost_s
            why = f"shed for higher-value work: class '{victim.cls.name}' has the lowest value"
            shed.append(self._shed(victim, why))
        t.state = "queued"
        q.append(t)
        self._queued_work[t.cls.name] += t.cost_s
        self.check_invariants()
        return shed

    def pop_ready(self, now: float) -> tuple[list[Ticket], list[Ticket]]:
        """`(enter, dropped)`: tickets that enter the engine now, and tickets dropped from the
        head of a queue before their work started: past their deadline (state `expired`) or,
        predicted, too late for their class's SLA (state `shed`, `why` says so).
        """
        enter: list[Ticket] = []
        dropped: list[Ticket] = []
        low = self.order[-1].name
        for rank, c in enumerate(self.order):
            q = self._q[c.name]
            while q and self.running < self.window:
                t = q[0]
                if t.deadline_s <= now:
                    t.state = "expired"
                    self._learn(t, now - t.arrival_s, now)
                elif self.predicted and rank > 0 and self._misses(t, now - t.arrival_s):
                    self._shed(
                        t,
                        f"it waited {(now - t.arrival_s) * 1e3:.1f} ms and would need "
                        f"{t.cost_s * 1e3:.1f} ms more: past class '{c.name}' SLA of "
                        f"{c.sla_ms:g} ms",
                    )
                elif not self._may_enter(t, rank, c.name == low):
                    break
                q.popleft()
                self._queued_work[c.name] -= t.cost_s
                if t.state != "queued":
                    dropped.append(t)
                    continue
                t.state = "running"
                t.entered_s = now
                self.running += 1
                self.work_running += t.cost_s
                self._running_low += c.name == low
                self._running_top += rank == 0
                enter.append(t)
        self.check_invariants()
        return enter, dropped

    def finish(self, t: Ticket) -> None:
        """A running ticket left the engine (done, failed or abandoned): free its place."""
        assert t.state == "running", t.state
        t.state = "done"
        self.running -= 1
        self.work_running = self.work_running - t.cost_s if self.running else 0.0
        self._running_low -= t.cls.name == self.order[-1].name
        self._running_top -= t.cls.name == self.order[0].name
        self.check_invariants()

    def served(self, t: Ticket, now: float) -> None:
        """`t` finished with its scores at `now` (after `finish`): the guard learns from the
        top class's latency, against its predicted time alone (its lane-seconds over the
        lanes)."""
        self._learn(t, now - t.arrival_s, now)

    def cancel(self, t: Ticket, state: str = "cancelled") -> bool:
        """Remove a ticket still queued (timed out, client gone); False if it already left.
        State `expired` (its deadline passed in the queue): the guard learns that a top-class
        request waited at least that long."""
        if t.state != "queued":
            return False
        self._q[t.cls.name].remove(t)
        self._queued_work[t.cls.name] -= t.cost_s
        t.state = state
        if state == "expired":
            self._learn(t, t.deadline_s - t.arrival_s, t.deadline_s)
        return True

    def refuse_early(self, cls: PriorityClass, n_items: int, now: float = 0.0) -> str | None:
        """Why a request of `cls` and `n_items` would be shed by its offer at `now`, predicted
        or by the guard (None: offer it, as a ticket `screened`); counted as shed. For shedding
        before its body is read."""
        if cls.name == self.order[0].name:
            return None
        cost = max(0.0, float(self.cost_s(n_items))) if self.predicted and self.cost_s else 0.0
        why = self._refusal(Ticket(-1, cls, n_items, now, cost_s=cost), now)
        if why is not None:
            self.shed_count[cls.name] += 1
        return why

    def screens(self) -> bool:
        """Whether `refuse_early` can shed anything (predicted mode or a guard)."""
        return self.predicted or self.guard is not None

    def low_cap(self) -> int:
        """Engine places the lowest-value class may hold (all of them with one class)."""
        return self.window if len(self.order) == 1 else self.window - self.window // 2

    def queued(self, cls: str | None = None) -> int:
        if cls is not None:
            return len(self._q[cls])
        return sum(len(q) for q in self._q.values())

    def backlog_s(self) -> float:
        """Predicted seconds of work inside the engine per lane (0 without a cost model)."""
        return max(0.0, self.work_running) / self.lanes

    def predicted_wait_s(self, cls: PriorityClass) -> float:
        """Predicted seconds before a new ticket of `cls` starts: the engine's work and the
        queued work of its value or more, spread over the lanes (0 without a cost model)."""
        ahead = sum(self._queued_work[c.name] for c in self.order if c.value >= cls.value)
        return (max(0.0, self.work_running) + max(0.0, ahead)) / self.lanes

    # -- internals -------------------------------------------------------------------
    def _learn(self, t: Ticket, latency_s: float, now: float) -> None:
        """The guard hears a top-class request's latency: a success's, or for one that timed
        out in the queue, how long it had waited by then (a lower bound: never started, it
        would have taken longer still, so a timeout is news of contention, not silence)."""
        if self.guard is not None and t.cls.name == self.order[0].name:
            self.guard.observe(latency_s, t.cost_s / self.lanes, now, self._top_busy())

    def _top_busy(self) -> bool:
        return self._running_top > 0 or bool(self._q[self.order[0].name])

    def _refusal(self, t: Ticket, now: float) -> str | None:
        """Why an offer of `t` is shed at once, predicted to miss its SLA or by the guard
        (a `screened` ticket passed the guard already); None: it may queue."""
        why = self._predicted_miss(t) if self.predicted else None
        if why is None and not t.screened:
            why = self._guarded(t.cls, now)
        return why

    def _guarded(self, cls: PriorityClass, now: float) -> str | None:
        """Why the guard sheds an offer of `cls` (below the top) at `now`; None: it passes."""
        g = self.guard
        if g is None or cls.name == self.order[0].name:
            return None
        g.tick(now, self._top_busy())
        return None if g.admit(cls.name) else g.why(cls.name)

    def _may_enter(self, t: Ticket, rank: int, lowest: bool) -> bool:
        if lowest and rank > 0 and self._running_low >= self.low_cap():
            return False  # both modes: places for the more valuable
        if self.gate_s is None or rank == 0 or self.running == 0:
            return True
        return (self.work_running + t.cost_s) / self.lanes <= self.gate_s + _EPS

    def _predicted_miss(self, t: Ticket) -> str | None:
        """Why `t` would miss its class's SLA, predicted at its offer (None: it may not)."""
        c = t.cls
        if c.name == self.order[0].name:
            return None
        wait = self.predicted_wait_s(c)
        if not self._misses(t, wait):
            return None
        return (
            f"predicted wait {wait * 1e3:.1f} ms + run {t.cost_s * 1e3:.1f} ms exceeds class "
            f"'{c.name}' SLA of {c.sla_ms:g} ms"
        )

    def _misses(self, t: Ticket, wait_s: float) -> bool:
        """Shed `t` after waiting `wait_s`: over its share of the SLA, and late with its run."""
        sla_s = (t.cls.sla_ms or math.inf) / 1e3
        return wait_s > self.wait_share * sla_s and wait_s + t.cost_s > sla_s

    def _victim(self, value: float) -> Ticket | None:
        for c in reversed(self.order):  # lowest value first
            if c.value >= value:
                return None
            if self._q[c.name]:
                return self._q[c.name][-1]  # the newest: it has waited least
        return None

    def _shed(self, t: Ticket, why: str) -> tuple[Ticket, str]:
        t.state = "shed"
        t.why = why
        self.shed_count[t.cls.name] += 1
        return t, why

    def check_invariants(self) -> None:
        # (`running` may exceed a window shrunk by a reconfiguration until tickets finish)
        assert 0 <= self._running_low <= self.running, "lowest-class places among the running"
        assert 0 <= self._running_top <= self.running, "top-class places among the running"
        assert self.queued() <= self.capacity, "the queues hold at most `capacity`"
        assert self.work_running >= -1e-9 and (self.running or self.work_running == 0.0)

    def check_all(self) -> None:
        """`check_invariants` plus every queued ticket's state and work (O(queued); tests)."""
        self.check_invariants()
        for name, q in self._q.items():
            assert all(t.state == "queued" and t.cls.name == name for t in q)
            assert abs(self._queued_work[name] - sum(t.cost_s for t in q)) < 1e-9
