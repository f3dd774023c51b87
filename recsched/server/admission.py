"""Admission control: bounded queues per priority class in front of the engine.

A pure state machine with time passed in (no asyncio, no engine): the server `offer`s each
accepted request as a `Ticket`, `pop_ready` hands out the tickets that may enter the engine
now (at most `window` at once, the most valuable class first, FIFO within a class) and
`finish` frees a slot. Holding the backlog here rather than in the engine is what lets the
server serve high-value traffic first, drop work that timed out before it started, and
shed the lowest value first when it overloads:

- a class whose own queue is full refuses the newcomer (it is told at once, with a 503);
- when all queues together hold `capacity` tickets, a newcomer evicts the newest ticket of
  the lowest-value class below its own value; with nothing cheaper to evict, it is refused;
- with several classes, the lowest-value class may hold only `window - window // 2` engine
  slots: the rest stay free for more valuable work, which then waits only for what is
  already running, not behind a full engine of cheap work.

Priority levels follow Triton's schedule-policy extension: 1 is the highest; level k is
the k-th most valuable class; 0 (unset) is the default level, the lowest-value class.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from recsched.types import PriorityClass


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
    """One accepted request waiting for, or holding, a slot in the engine.

    `arrival_s` / `deadline_s` are on the server's clock (deadline inf: no timeout).
    `payload` and `waiter` belong to the caller (inputs, an asyncio future).
    """

    seq: int
    cls: PriorityClass
    n_items: int
    arrival_s: float
    deadline_s: float = float("inf")
    state: str = "new"  # new -> queued -> running -> done | shed | expired | cancelled
    entered_s: float = 0.0  # when it took an engine slot
    payload: Any = None
    waiter: Any = None


@dataclass
class AdmissionQueue:
    """Per-class FIFO queues with a total `capacity`, and a `window` of engine slots."""

    classes: Sequence[PriorityClass]
    capacity: int = 256
    window: int = 8
    per_class: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.capacity >= 1 and self.window >= 1
        self.order = priority_order(self.classes)
        names = [c.name for c in self.order]
        assert len(set(names)) == len(names), "class names are unique"
        self._q: dict[str, deque[Ticket]] = {n: deque() for n in names}
        self.running = 0
        self._running_low = 0  # slots held by the lowest-value class
        self.shed_count: dict[str, int] = dict.fromkeys(names, 0)

    # -- the API ---------------------------------------------------------------------
    def offer(self, t: Ticket) -> list[tuple[Ticket, str]]:
        """Queue `t`; returns the tickets shed by this offer (perhaps `t` itself), with why."""
        assert t.state == "new" and t.cls.name in self._q, "an unknown class"
        q = self._q[t.cls.name]
        own = self.per_class.get(t.cls.name, self.capacity)
        if len(q) >= own:
            return [self._shed(t, f"class '{t.cls.name}' queue is full ({len(q)} waiting)")]
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
            why = f"shed for higher-value work: class '{victim.cls.name}' has the lowest value"
            shed.append(self._shed(victim, why))
        t.state = "queued"
        q.append(t)
        self.check_invariants()
        return shed

    def pop_ready(self, now: float) -> tuple[list[Ticket], list[Ticket]]:
        """`(enter, expired)`: tickets that take an engine slot now, and tickets past deadline.

        Expired tickets met at the head of a queue are dropped (their work never started).
        """
        enter: list[Ticket] = []
        expired: list[Ticket] = []
        low = self.order[-1].name
        for c in self.order:
            q = self._q[c.name]
            while q and self.running < self.window:
                if c.name == low and self._running_low >= self.low_cap():
                    break
                t = q.popleft()
                if t.deadline_s <= now:
                    t.state = "expired"
                    expired.append(t)
                    continue
                t.state = "running"
                t.entered_s = now
                self.running += 1
                self._running_low += c.name == low
                enter.append(t)
        self.check_invariants()
        return enter, expired

    def finish(self, t: Ticket) -> None:
        """A running ticket left the engine (done, failed or abandoned): free its slot."""
        assert t.state == "running", t.state
        t.state = "done"
        self.running -= 1
        self._running_low -= t.cls.name == self.order[-1].name
        self.check_invariants()

    def cancel(self, t: Ticket, state: str = "cancelled") -> bool:
        """Remove a ticket still queued (timed out, client gone); False if it already left."""
        if t.state != "queued":
            return False
        self._q[t.cls.name].remove(t)
        t.state = state
        return True

    def low_cap(self) -> int:
        """Engine slots the lowest-value class may hold (all of them with a single class)."""
        return self.window if len(self.order) == 1 else self.window - self.window // 2

    def queued(self, cls: str | None = None) -> int:
        if cls is not None:
            return len(self._q[cls])
        return sum(len(q) for q in self._q.values())

    # -- internals -------------------------------------------------------------------
    def _victim(self, value: float) -> Ticket | None:
        for c in reversed(self.order):  # lowest value first
            if c.value >= value:
                return None
            if self._q[c.name]:
                return self._q[c.name][-1]  # the newest: it has waited least
        return None

    def _shed(self, t: Ticket, why: str) -> tuple[Ticket, str]:
        t.state = "shed"
        self.shed_count[t.cls.name] += 1
        return t, why

    def check_invariants(self) -> None:
        # (`running` may exceed a window shrunk by a reconfiguration until tickets finish)
        assert 0 <= self._running_low <= self.running, "lowest-class slots among the running"
        assert self.queued() <= self.capacity, "the queues hold at most `capacity`"

    def check_all(self) -> None:
        """`check_invariants` plus every queued ticket's state (O(queued); for tests)."""
        self.check_invariants()
        for name, q in self._q.items():
            assert all(t.state == "queued" and t.cls.name == name for t in q)
