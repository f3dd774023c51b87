"""The host's own CPU work per query, on the same cores as the lanes.

A real server spends CPU outside its lanes' tasks on every query: the open-loop driver issues
it and the engine takes it in (`submit`: on the query's latency), and after its last task the
engine finishes it (reassembly, the future, the latency log: off its latency, which the engine
stamps with the task's end, but in the way of the next query's submission). That work is
Python: the GIL runs it one thread at a time, so the simulator models it as one more thread,
the *host*, a FIFO of CPU work beside the lanes. It matters when the lanes fill the cores
(two single-threaded lanes on two cores): then the host's work comes in the same bursts as
the queries, and while it runs the busy lanes share the cores with it and slow down, exactly
when the queue is long.

With `L` CPU lanes busy and `C` cores, while the host has work every runnable thread gets
`min(1, C / (L + 1))` of a core (`L + 2` while the driver's background work runs too, on a
thread of its own that no query waits for): processor sharing, re-timed whenever a thread
starts or stops (`HostCpu`). A lane task's own time is what the lane model gives it (cost,
interference, idle and noise factors, hand-off), and the lanes' contention among themselves
is the interference table's, so the lanes run at `min(1, C / (L + 1)) / min(1, C / L)` of it
while the host works and at full speed while it is idle; on two lanes and two cores, 2/3.

`HostModel.from_run` calibrates it from a real `bench` run's CPU accounting (its `cpu`): the
driver thread's CPU issuing and submitting a query is the submit side, the rest of its CPU
(sleeping to the next arrival, bookkeeping) background work on no query's path, and the
rest of the process's CPU beyond the lanes' tasks and their hand-offs (which the simulated
lanes already charge) the completion side.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from recsched.sim.events import COMPLETE, EventLoop


@dataclass(frozen=True)
class HostModel:
    """CPU seconds of host work per query before it reaches the scheduler (`submit_s`), after
    its last task (`complete_s`: off its latency, on the host's FIFO) and off its path
    (`background_s`: the driver's sleeping and bookkeeping, on a thread of its own that no
    query waits for), on a machine of `cores` CPUs."""

    submit_s: float
    complete_s: float
    cores: int
    background_s: float = 0.0

    def __post_init__(self) -> None:
        if min(self.submit_s, self.complete_s, self.background_s) < 0:
            raise ValueError(f"host CPU per query is >= 0, got {self}")
        if self.cores < 1:
            raise ValueError(f"cores must be >= 1, got {self.cores}")

    @classmethod
    def from_run(
        cls, result: Mapping[str, Any], handoff_s: float = 0.0, cores: int | None = None
    ) -> HostModel | None:
        """From a `bench` result's CPU accounting (`cpu`: process, lanes' tasks, driver and
        issue seconds, tasks, completed queries), per query: submit = the driver's CPU
        issuing and submitting; background = the rest of the driver's; complete = the
        process's CPU beyond the lanes' tasks, the driver and `handoff_s` per task (what the
        simulated lanes charge), at least 0. Without "issue_s" all the driver's CPU is the
        submit side. None when the run did not record it or completed no query."""
        c = result.get("cpu") or {}
        done = float(c.get("completed") or 0)
        if done < 1 or not all(k in c for k in ("process_s", "lanes_s", "driver_s", "tasks")):
            return None
        issue = min(c.get("issue_s", c["driver_s"]), c["driver_s"])
        rest = c["process_s"] - c["lanes_s"] - c["driver_s"] - c["tasks"] * handoff_s
        return cls(
            submit_s=max(0.0, issue / done),
            complete_s=max(0.0, rest / done),
            cores=cores or os.cpu_count() or 1,
            background_s=max(0.0, (c["driver_s"] - issue) / done),
        )

    @classmethod
    def median(cls, models: list[HostModel]) -> HostModel | None:
        """The median of each figure over several runs' models (None for none)."""
        if not models:
            return None
        mid = len(models) // 2
        sub = sorted(m.submit_s for m in models)[mid]
        com = sorted(m.complete_s for m in models)[mid]
        bg = sorted(m.background_s for m in models)[mid]
        return cls(sub, com, models[0].cores, bg)

    @classmethod
    def parse(cls, spec: str, cores: int) -> HostModel:
        """`SUBMIT,COMPLETE[,BACKGROUND]` in microseconds per query (the command line's form),
        on `cores` CPUs; ValueError naming the form otherwise."""
        try:
            us = [float(x) / 1e6 for x in spec.split(",")]
        except ValueError:
            us = []
        if len(us) not in (2, 3):
            raise ValueError(f"{spec!r}: give SUBMIT,COMPLETE[,BACKGROUND] in microseconds")
        return cls(us[0], us[1], cores, *us[2:])

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HostModel:
        """The inverse of `to_dict` (microseconds)."""
        return cls(d["submit_us"] * 1e-6, d["complete_us"] * 1e-6, int(d["cores"]),
                   d.get("background_us", 0.0) * 1e-6)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "submit_us": round(self.submit_s * 1e6, 2),
            "complete_us": round(self.complete_s * 1e6, 2),
            "background_us": round(self.background_s * 1e6, 2),
            "cores": self.cores,
        }


HOST, BACKGROUND = 0, 1  # the host's threads: the GIL's FIFO, and work no query waits for


class HostCpu:
    """One server's cores shared by its busy CPU lanes and its host threads (processor
    sharing, module docstring): whenever a thread starts or stops, the others' remaining
    work is re-timed at the new rates.

    Lanes hand it their tasks' solo seconds (`start_lane`) and tell it when one ends
    (`lane_done`); the server queues host work (`work`) on one of two threads, each a FIFO:
    `HOST`, the queries' submit and completion work (Python, in turn under the GIL), and
    `BACKGROUND`, the driver's own work between queries (mostly sleeping and waking, which
    holds no GIL), with a handler to call when it is done. Completion events carry a
    generation number: an event made stale by a re-timing is ignored when it fires.
    """

    def __init__(self, model: HostModel, loop: EventLoop) -> None:
        self.model = model
        self.loop = loop
        self.cores = model.cores
        self.running: dict[Any, float] = {}  # lane -> remaining solo seconds of its task
        # per host thread: a FIFO of (cpu seconds, handler, arg), the head's remaining work,
        # the generation of its pending completion event
        self.queues: tuple[deque, deque] = (deque(), deque())
        self.head_left = [0.0, 0.0]
        self.gens = [0, 0]
        self.lane_rate = 1.0  # of a lane task's own time, the host's share taken out
        self.host_rate = 1.0  # of a core, for a host thread
        self.since = 0.0  # when the remaining work above was last brought up to date
        self._done_cbs = (self._host_done, self._background_done)

    # -- lanes ---------------------------------------------------------------------------------
    def start_lane(self, lane: Any, now: float, solo_s: float) -> None:
        """`lane` starts a task of `solo_s` solo seconds at `now`."""
        self._advance(now)
        self.running[lane] = solo_s
        self._retime(now, lane=lane)

    def lane_done(self, lane: Any, now: float) -> None:
        """`lane`'s task ended at `now` (its completion event was current)."""
        self._advance(now)
        left = self.running.pop(lane)
        assert abs(left) < 1e-9, f"a lane task ended with {left} s of work left"
        self._retime(now)

    # -- host work -----------------------------------------------------------------------------
    def work(
        self, now: float, cpu_s: float, fn: Callable[[Any], None], arg: Any, thread: int = HOST
    ) -> None:
        """Queue `cpu_s` of work on host `thread`; `fn(arg)` runs when it is done (at once,
        for no work and an idle thread)."""
        q = self.queues[thread]
        if cpu_s <= 0.0 and not q:
            fn(arg)
            return
        self._advance(now)
        q.append((cpu_s, fn, arg))
        if len(q) == 1:
            self.head_left[thread] = cpu_s
            self._retime(now, thread=thread)

    def _host_done(self, gen: int) -> None:
        self._done(HOST, gen)

    def _background_done(self, gen: int) -> None:
        self._done(BACKGROUND, gen)

    def _done(self, thread: int, gen: int) -> None:
        if gen != self.gens[thread]:
            return  # re-timed since
        now = self.loop.clock._t
        self._advance(now)
        left = self.head_left[thread]
        assert abs(left) < 1e-9, f"host work ended with {left} s of it left"
        q = self.queues[thread]
        _, fn, arg = q.popleft()
        if q:
            self.head_left[thread] = q[0][0]
        self._retime(now, thread=thread if q else None)
        fn(arg)

    # -- processor sharing ---------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        """Bring every runnable thread's remaining work up to `now` at the current rates."""
        dt = now - self.since
        if dt > 0.0:
            done = dt * self.lane_rate
            for lane in self.running:
                self.running[lane] -= done
            for t, q in enumerate(self.queues):
                if q:
                    self.head_left[t] -= dt * self.host_rate
        self.since = now

    def _retime(self, now: float, lane: Any = None, thread: int | None = None) -> None:
        """Set the rates for the runnable threads now; schedule the completion of `lane` and
        of host `thread`'s head item, or of every thread if a rate changed."""
        c, lanes = self.cores, len(self.running)
        hosts = sum(1 for q in self.queues if q)
        share = 1.0 if lanes + hosts <= c else c / (lanes + hosts)  # each runnable thread's
        host_rate = share if hosts else 1.0
        lane_rate = share / (1.0 if lanes <= c else c / lanes) if hosts else 1.0
        changed = lane_rate != self.lane_rate or host_rate != self.host_rate
        self.lane_rate, self.host_rate = lane_rate, host_rate
        loop = self.loop
        for ln, left in self.running.items():
            if changed or ln is lane:
                ln.gen += 1
                loop.at(now + max(0.0, left) / lane_rate, COMPLETE, ln.finish_cb, ln.gen)
        for t, q in enumerate(self.queues):
            if q and (changed or t == thread):
                self.gens[t] += 1
                at = now + max(0.0, self.head_left[t]) / host_rate
                loop.at(at, COMPLETE, self._done_cbs[t], self.gens[t])
