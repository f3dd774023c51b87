"""Simulated lanes: run nothing, report modelled timings (in the spirit of tinygrad's null
device).

A task's duration on a lane is

    base x (1 + sum over co-running tasks on the other same-kind lanes of (F[cls, other] - 1))
         x (1 + (R(rows) - 1) x w(idle gap))
         + task_overhead_s + n_ops x dispatch_s + extra_s x w(idle gap)

where `base` is the cost model's prediction (`whole_s(rows)` for a whole-model task, the
sum of `op_s(op, rows)` over the task's operators otherwise), `F` the interference table
(`recsched.sim.interference`) and the class is `mixed` for a whole model, else the class
holding most of the task's predicted time. The second line is the optional `IdleModel`: a
forward after the lane sat idle runs slower than one in a back-to-back loop, which is how
profiles are measured (cold caches, a descheduled core, thread wake-ups). With a
`ServiceNoise` (trace-driven service times) `base` is further multiplied by a ratio drawn
for each task from a real run's measured / predicted task times of that size. All factors
are fixed when the task starts. With a host model (`recsched.sim.host`) the task runs
slower while the host's own CPU work shares the cores (`HostCpu`).

`NullLane` meets the `recsched.lanes.base.Lane` protocol: `submit(task, work)` ignores the
closure, queues the task FIFO behind the one running, and reports a `LaneResult` through
`on_done` when the modelled time has passed on the event loop.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from recsched.sim.events import COMPLETE, EventLoop
from recsched.types import LaneKind, LaneResult, LaneStats, Task

WHOLE_CLASS = "mixed"


class CachedCost:
    """A cost model with `whole_s` and `op_s` memoised (same values, so same decisions).

    Profile-based cost models interpolate with numpy on each call (microseconds); the
    simulator asks the same few (op, batch) pairs millions of times. Other attributes are
    forwarded to the wrapped model.
    """

    def __init__(self, cost: Any) -> None:
        assert not isinstance(cost, CachedCost)
        self.inner = cost
        self._whole: dict[int, float] = {}
        self._op: dict[tuple[int, int], float] = {}

    def whole_s(self, batch: int) -> float:
        d = self._whole.get(batch)
        if d is None:
            d = self._whole[batch] = float(self.inner.whole_s(batch))
            assert d >= 0, f"negative predicted time {d} for batch {batch}"
        return d

    def op_s(self, op: int, batch: int) -> float:
        key = (op, batch)
        d = self._op.get(key)
        if d is None:
            d = self._op[key] = float(self.inner.op_s(op, batch))
            assert d >= 0, f"negative predicted time {d} for op {op} at batch {batch}"
        return d

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def cached(cost: Any) -> Any:
    """`cost` wrapped in a `CachedCost` (None stays None; a cached cost is kept)."""
    if cost is None or isinstance(cost, CachedCost):
        return cost
    return CachedCost(cost)


class IdleModel:
    """Slowdown of a task that starts on a lane idle for `gap` seconds.

    The task's solo time is multiplied by `1 + (R(rows) - 1) * w(gap)` and `extra_s * w(gap)`
    is added, where `R` is the measured ratio at a long gap (`gap_s`) interpolated over batch
    sizes, `extra_s` the engine's own extra cost after idling (thread wake-ups), and the
    weight `w` grows with the log of the gap from 0 at `from_s` to 1 at `gap_s` (measured:
    the penalty appears from a fraction of a millisecond and saturates after tens of ms).
    """

    def __init__(
        self,
        batch_sizes: Sequence[int],
        ratios: Sequence[float],
        from_s: float = 2e-4,
        gap_s: float = 0.02,
        extra_s: float = 0.0,
    ) -> None:
        assert len(batch_sizes) == len(ratios) >= 1 and 0 < from_s < gap_s and extra_s >= 0
        self.extra_s = extra_s
        assert list(batch_sizes) == sorted(set(batch_sizes)), "sorted, distinct sizes"
        self.batch_sizes = tuple(int(b) for b in batch_sizes)
        self.ratios = tuple(max(1.0, float(r)) for r in ratios)
        self.from_s, self.gap_s = from_s, gap_s
        self._log_from = math.log(from_s)
        self._log_span = math.log(gap_s) - self._log_from
        self._r: dict[int, float] = {}

    def ratio(self, rows: int) -> float:
        r = self._r.get(rows)
        if r is None:
            xs, ys = self.batch_sizes, self.ratios
            j = bisect.bisect_left(xs, rows)
            if j == 0:
                r = ys[0]
            elif j == len(xs):
                r = ys[-1]
            else:
                x0, x1 = xs[j - 1], xs[j]
                r = ys[j - 1] + (ys[j] - ys[j - 1]) * (rows - x0) / (x1 - x0)
            self._r[rows] = r
        return r

    def weight(self, gap: float) -> float:
        """0 for a task that follows another at once, 1 after a long idle gap."""
        if gap <= self.from_s:
            return 0.0
        if gap >= self.gap_s:
            return 1.0
        return (math.log(gap) - self._log_from) / self._log_span

    def factor(self, rows: int, gap: float) -> float:
        return 1.0 + (self.ratio(rows) - 1.0) * self.weight(gap)

    @classmethod
    def from_profile(cls, profile: Any) -> IdleModel | None:
        """From a profile's "serving_correction" (`recsched.sim.run.serving_correction`)."""
        sc = profile.get("serving_correction") if isinstance(profile, dict) else None
        if not sc or "idle_ratios" not in sc:
            return None
        return cls(
            profile["batch_sizes"], sc["idle_ratios"], sc["idle_from_s"], sc["idle_gap_s"],
            float(sc.get("idle_extra_s", 0.0)),
        )  # fmt: skip


class ServiceNoise:
    """Trace-driven service times: how a real run's lane tasks spread around the cost model.

    `ratios[i]` holds measured / predicted seconds of real tasks whose rows fall in bin i,
    the bins split at `edges` (bin i holds rows <= edges[i], the last bin the rest). Each
    simulated task draws one ratio of its bin (seeded, in event order, so a run replays
    exactly) and its modelled time is multiplied by it: the simulator then sees both the
    size-dependent mean and the spread of the real service times, which a deterministic
    service time (one factor for every task) lacks, and which queueing grows with.
    """

    def __init__(
        self, edges: Sequence[int], ratios: Sequence[Sequence[float]], seed: int = 0
    ) -> None:
        assert len(ratios) == len(edges) + 1, "one ratio list per bin"
        assert list(edges) == sorted(set(edges)), "sorted, distinct edges"
        assert all(len(r) >= 1 and min(r) > 0 for r in ratios), "positive ratios in every bin"
        self.edges = tuple(int(e) for e in edges)
        self.ratios = tuple(tuple(float(x) for x in r) for r in ratios)
        self.seed = seed
        self._rng = random.Random(seed)

    @classmethod
    def from_tasks(
        cls,
        tasks: Sequence[tuple[int, float]],
        whole_s: Callable[[int], float],
        bins: int = 4,
        seed: int = 0,
    ) -> ServiceNoise:
        """From a real run's lane tasks `(rows, seconds)` and the cost model's prediction;
        `bins` bins of about equal task counts by rows (fewer when the rows repeat)."""
        assert bins >= 1
        pairs = sorted((int(n), float(d) / whole_s(int(n))) for n, d in tasks if n >= 1 and d > 0)
        if not pairs:
            raise ValueError("service noise needs lane tasks with rows and a positive time")
        edges: list[int] = []
        for k in range(1, bins):
            e = pairs[k * len(pairs) // bins - 1][0]
            if (not edges or e > edges[-1]) and e < pairs[-1][0]:
                edges.append(e)
        groups: list[list[float]] = [[] for _ in range(len(edges) + 1)]
        for n, r in pairs:
            groups[bisect.bisect_left(edges, n)].append(r)
        return cls(edges, groups, seed)

    def factor(self, rows: int) -> float:
        r = self.ratios[bisect.bisect_left(self.edges, rows)]
        return r[self._rng.randrange(len(r))]

    def to_dict(self) -> dict[str, Any]:
        """A summary per bin: its rows' upper edge, task count, median and p90 ratio."""
        out = []
        for i, r in enumerate(self.ratios):
            s = sorted(r)
            p90 = s[min(len(s) - 1, int(0.9 * len(s)))]
            upto = self.edges[i] if i < len(self.edges) else None
            out.append({"rows_upto": upto, "tasks": len(s), "median": s[len(s) // 2], "p90": p90})
        return {"seed": self.seed, "bins": out}


class DurationModel:
    """Solo duration and class of a task on one lane kind, from a cost model."""

    def __init__(
        self,
        cost: Any,
        graph_info: Any = None,
        task_overhead_s: float = 0.0,
        dispatch_s: float | None = None,
        idle: IdleModel | None = None,
        noise: ServiceNoise | None = None,
    ) -> None:
        assert cost is not None, "simulated lanes need a cost model"
        assert task_overhead_s >= 0
        self.idle = idle
        self.noise = noise
        self.cost = cached(cost)
        self.graph_info = graph_info
        self.task_overhead_s = task_overhead_s
        d = dispatch_s if dispatch_s is not None else getattr(cost, "dispatch_s", 0.0)
        self.dispatch_s = float(d() if callable(d) else d)
        assert self.dispatch_s >= 0
        self._whole: dict[int, float] = {}
        self._ops: dict[tuple[tuple[int, ...], int], tuple[float, str]] = {}

    def whole(self, rows: int) -> float:
        """Solo seconds of the whole model on `rows` rows, overhead included."""
        d = self._whole.get(rows)
        if d is None:
            d = self._whole[rows] = self.cost.whole_s(rows)
        return d

    def ops(self, ops: tuple[int, ...], rows: int) -> tuple[float, str]:
        """(solo seconds without overheads, class) of operators `ops` on `rows` rows."""
        key = (ops, rows)
        hit = self._ops.get(key)
        if hit is None:
            by_cls: dict[str, float] = {}
            info = self.graph_info
            for op in ops:
                c = info.ops[op].cls if info is not None else WHOLE_CLASS
                by_cls[c] = by_cls.get(c, 0.0) + self.cost.op_s(op, rows)
            total = sum(by_cls.values())
            cls = max(sorted(by_cls), key=by_cls.__getitem__) if by_cls else WHOLE_CLASS
            hit = self._ops[key] = (total, cls)
        return hit


OnDone = Callable[[LaneResult], None]
OnTrace = Callable[[Task, float, float, str], None]


class NullLane:
    """One simulated lane: a FIFO of tasks, one running at a time, on an event loop."""

    def __init__(
        self,
        index: int,
        kind: LaneKind,
        loop: EventLoop,
        durations: DurationModel,
        sizes: dict[int, int],
        on_done: OnDone,
        excess: dict[str, dict[str, float]],
        on_trace: OnTrace | None = None,
    ) -> None:
        self.index = index
        self.kind: LaneKind = kind
        self.loop = loop
        self.durations = durations
        self.sizes = sizes  # bid -> rows of the batch, kept by the server
        self.on_done = on_done
        self.excess = excess
        self.on_trace = on_trace
        self.stats = LaneStats(index, kind)
        self.siblings: list[NullLane] = []  # other lanes of the same kind on the server
        self.queue: deque[Task] = deque()
        self.cur: Task | None = None
        self.cur_cls: str | None = None
        self.cur_start = 0.0
        self.idle_since = -math.inf  # when the lane last went idle
        self.host: Any = None  # the server's `HostCpu`, when it models host CPU
        self.gen = 0  # of the pending completion event, when the host re-times it
        self.finish_cb = self._finish  # one bound method, not one per task

    # -- the Lane protocol -------------------------------------------------------------------
    def start(self) -> None:
        """Nothing to start: the lane lives on the event loop."""

    def stop(self, timeout: float | None = None) -> None:
        """Nothing to stop; queued work is simply not simulated further."""

    def alive(self) -> bool:
        return True

    def submit(self, task: Task, work: Callable[[], None] | None = None) -> None:
        """Queue `task` (its `work` closure is never run); it starts at once if idle."""
        assert task.lane == self.index, "task given to the wrong lane"
        if self.cur is None:
            self._start(task)
        else:
            self.queue.append(task)

    # -- simulation ----------------------------------------------------------------------------
    def _start(self, task: Task) -> None:
        loop = self.loop
        now = loop.clock._t
        dm = self.durations
        rows = task.rows
        n = rows[1] - rows[0] if rows is not None else self.sizes[task.bid]
        if task.ops is None:
            base = dm._whole.get(n)
            if base is None:
                base = dm.whole(n)
            cls = WHOLE_CLASS
            extra = dm.task_overhead_s
        else:
            base, cls = dm.ops(task.ops, n)
            extra = dm.task_overhead_s + len(task.ops) * dm.dispatch_s
        ex = self.excess[cls]
        f = 1.0
        for s in self.siblings:
            c = s.cur_cls
            if c is not None:
                f += ex[c]
        idle = dm.idle
        if idle is not None:
            w = idle.weight(now - self.idle_since)
            if w:
                f *= 1.0 + (idle.ratio(n) - 1.0) * w
                extra += idle.extra_s * w
        if dm.noise is not None:
            f *= dm.noise.factor(n)
        self.cur, self.cur_cls, self.cur_start = task, cls, now
        if self.host is None:
            loop.at(now + base * f + extra, COMPLETE, self.finish_cb)
        else:  # the cores are shared with the host's work: it times the task
            self.host.start_lane(self, now, base * f + extra)

    def _finish(self, gen: int | None = None) -> None:
        now = self.loop.clock._t
        if self.host is not None:
            if gen != self.gen:
                return  # re-timed since: a later event ends the task
            self.host.lane_done(self, now)
        task = self.cur
        assert task is not None, "a lane finished with nothing running"
        start = self.cur_start
        st = self.stats
        st.busy_s += now - start
        st.tasks += 1
        if self.on_trace is not None:
            self.on_trace(task, start, now, self.cur_cls or WHOLE_CLASS)
        self.cur = self.cur_cls = None
        self.idle_since = now
        if self.queue:
            self._start(self.queue.popleft())
        self.on_done(LaneResult(task.tid, task.bid, self.index, start, now))

    def busy(self) -> bool:
        return self.cur is not None

    def backlog(self) -> int:
        """Tasks queued or running on this lane."""
        return len(self.queue) + (self.cur is not None)
