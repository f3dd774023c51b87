"""One simulated server: a `SchedulerCore` driven exactly as `recsched.engine.Engine` drives
it, on simulated lanes and the event loop's `SimClock`.

The engine's three entry points map one to one:

    Engine.submit        -> SimServer.submit       (bounded queue, admit, step)
    Engine._on_lane_done -> SimServer.on_lane_done (complete, finish queries, step)
    Engine._timer_loop   -> SimServer._on_timer    (wake_at reached: step)

and a step issues the tasks of `core.step(now)` to the lanes, as `Engine._step_locked` and
`Engine._issue` do. Nothing in the policies knows it is simulated.

With a host model (`recsched.sim.host`) a query reaches `core.admit` once the host's submit
work for it is done; its completion work keeps the host busy after its last task, but its
latency ends with that task, as the engine stamps it (`Engine._resolve`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recsched.config import EngineConfig
from recsched.metrics.trace import TraceRecorder
from recsched.sched.core import SchedulerCore
from recsched.sched.operator import make_operator_policy
from recsched.sched.request import RequestPolicy
from recsched.sim.events import TIMER, EventLoop
from recsched.sim.host import BACKGROUND, HostCpu, HostModel
from recsched.sim.interference import DEFAULT, InterferenceModel
from recsched.sim.lanes import DurationModel, IdleModel, NullLane, ServiceNoise, cached
from recsched.types import Batch, LaneKind, LaneResult, Query, Task

# on_query(qid, done_s, error): a query finished (error None) or failed
OnQuery = Callable[[int, float, str | None], None]


def _nothing(_: Any) -> None:
    """The end of host work no query's latency waits for."""


def lane_kinds(config: EngineConfig) -> list[LaneKind]:
    """The lanes the engine would build for `config` (CPU lanes, then accelerator lanes)."""
    kinds: list[LaneKind] = ["cpu"] * config.lanes
    if config.offload_threshold is not None:
        kinds += ["accel"] * max(1, config.accel_lanes)
    return kinds


@dataclass(frozen=True)
class ServerType:
    """A kind of server: its engine configuration and the cost models of its lanes.

    `cost` predicts CPU lanes (a `recsched profile` of this machine); `accel_cost` predicts
    accelerator lanes (a GPU profile measured elsewhere), needed when the config offloads.
    `policy_cost` is what the operator policy is given (default: `cost`), as the engine's
    `cost=` argument. `task_overhead_s` is the engine's own cost per task (hand-off, gather,
    scatter) on top of the model's time (`accel_overhead_s` on accelerator lanes). `idle`
    slows tasks that start on a lane that sat idle (`recsched.sim.lanes.IdleModel`). `noise`
    multiplies each CPU task by a measured ratio of its size (`recsched.sim.lanes.ServiceNoise`).
    `host` adds the host's own CPU work per query, sharing the cores with the CPU lanes
    (`recsched.sim.host`).
    """

    name: str
    config: EngineConfig
    cost: Any
    accel_cost: Any = None
    graph_info: Any = None
    policy_cost: Any = None
    interference: InterferenceModel = DEFAULT
    task_overhead_s: float = 0.0
    accel_overhead_s: float | None = None  # None: task_overhead_s
    idle: IdleModel | None = None  # CPU lanes' slowdown after idling (from the profile)
    noise: ServiceNoise | None = None  # CPU lanes' trace-driven service-time spread
    host: HostModel | None = None  # the host's CPU per query, beside the lanes

    def __post_init__(self) -> None:
        assert self.cost is not None, f"server type {self.name!r} needs a cost model"
        if self.config.offload_threshold is not None and self.accel_cost is None:
            raise ValueError(
                f"server type {self.name!r} offloads (threshold "
                f"{self.config.offload_threshold}) but has no accelerator profile"
            )

    def cores(self) -> int:
        return self.config.lanes * self.config.threads_per_lane

    def accelerators(self) -> int:
        return 1 if self.config.offload_threshold is not None else 0


class TypeState:
    """What servers of one type share: lane kinds, memoised costs, duration models and
    interference tables (a 1,000-server cluster asks each cost once, not once per server)."""

    def __init__(self, stype: ServerType) -> None:
        self.kinds = lane_kinds(stype.config)
        cpu = cached(stype.cost)
        self.policy_cost = cached(stype.policy_cost) if stype.policy_cost is not None else cpu
        self.models = {
            "cpu": DurationModel(
                cpu, stype.graph_info, stype.task_overhead_s, idle=stype.idle, noise=stype.noise
            )
        }
        if "accel" in self.kinds:
            over = stype.accel_overhead_s
            over = stype.task_overhead_s if over is None else over
            self.models["accel"] = DurationModel(stype.accel_cost, stype.graph_info, over)
        self.excess = {k: stype.interference.excess(k) for k in set(self.kinds)}
        self.work: dict[int, float] = {}  # n_items -> predicted drain time (balancers)


class SimServer:
    """Request policy + operator policy + lanes of one server, on a shared event loop."""

    def __init__(
        self,
        index: int,
        stype: ServerType,
        loop: EventLoop,
        on_query: OnQuery,
        trace: TraceRecorder | None = None,
        on_decision: Callable[[str, float, Any], None] | None = None,
        state: TypeState | None = None,
    ) -> None:
        self.index = index
        self.stype = stype
        cfg = self.config = stype.config
        self.loop = loop
        self.clock = loop.clock
        self.on_query = on_query
        self.on_decision = on_decision
        self.trace = trace
        st = self.state = state if state is not None else TypeState(stype)
        request = RequestPolicy(
            cfg.request, cfg.batch_size, cfg.merge_delay_ms / 1e3, cfg.offload_threshold
        )
        operator = make_operator_policy(
            cfg.operator,
            st.kinds,
            st.policy_cost,
            stype.graph_info,
            order=cfg.order,
            **cfg.opstream,
        )
        self.core = SchedulerCore(request, operator)
        self.sizes: dict[int, int] = {}  # bid -> rows, for in-flight batches
        self._batch_cls: dict[int, str] = {}  # bid -> class of its first query (traces)
        self._queries: dict[int, tuple[Query, float]] = {}  # qid -> (query, predicted work)
        self._entering: set[int] = set()  # accepted, the host's submit work not yet done
        self._wake_at: float | None = None
        self.submitted = self.rejected = self.completed = self.failed = 0
        self.work_s = 0.0  # predicted drain time of unfinished queries (balancers)
        self.load_slot: tuple[Any, int] | None = None  # (array, i): mirror work_s there
        self.lanes = self._make_lanes()
        self.host: HostCpu | None = None
        if stype.host is not None:
            self.host = HostCpu(stype.host, loop)
            for lane in self.lanes:
                if lane.kind == "cpu":
                    lane.host = self.host

    def _make_lanes(self) -> list[NullLane]:
        st = self.state
        on_trace = self._record if self.trace is not None else None
        lanes = [
            NullLane(
                i, k, self.loop, st.models[k], self.sizes, self.on_lane_done, st.excess[k], on_trace
            )
            for i, k in enumerate(st.kinds)
        ]
        for lane in lanes:
            lane.siblings = [o for o in lanes if o is not lane and o.kind == lane.kind]
            if self.trace is not None:
                self.trace.name_lane(lane.index, f"{lane.kind} {lane.index}")
        return lanes

    # -- the engine's entry points ----------------------------------------------------------
    def submit(self, q: Query) -> bool:
        """Accept a query at the clock's time; False (counted) when the queue is full."""
        if len(self._queries) >= self.config.queue_capacity:
            self.rejected += 1
            return False
        now = self.clock._t
        self.submitted += 1
        if self.load_slot is not None:  # only the `least` balancer reads predicted work
            w = self.predicted_work(q.n_items)
            self.work_s += w
            self.load_slot[0][self.load_slot[1]] = self.work_s
        else:
            w = 0.0
        self._queries[q.qid] = (q, w)
        if self.host is not None:  # the scheduler sees it once the host has taken it in
            self._entering.add(q.qid)
            hm = self.host.model
            self.host.work(now, hm.submit_s, self._enter, q)
            if hm.background_s > 0.0:  # the driver's own, that no query waits for
                self.host.work(now, hm.background_s, _nothing, None, BACKGROUND)
            return True
        self._admit(q, now)
        return True

    def _enter(self, q: Query) -> None:
        """A query reaches the scheduler after the host's submit work (host model)."""
        self._entering.discard(q.qid)
        self._admit(q, self.clock._t)

    def _admit(self, q: Query, now: float) -> None:
        """The scheduler takes `q` in at `now` and steps."""
        if self.on_decision is not None:
            self.on_decision("arrive", now, q.qid)
        self.core.admit(q, now)
        self._step(now)

    def on_lane_done(self, result: LaneResult) -> None:
        now = result.end_s
        fin = self.core.complete(result, now)
        if self.on_decision is not None:
            self.on_decision("end", now, (result.tid, result.bid, result.lane))
        sizes = self.sizes
        for b in fin.batches:
            del sizes[b.bid]
            if self.trace is not None:
                self._batch_cls.pop(b.bid, None)
        if fin.queries:
            queries = self._queries
            for qid, error in fin.queries:
                _, w = queries.pop(qid)
                self.work_s -= w
                if error is None:
                    self.completed += 1
                else:
                    self.failed += 1
                if self.on_decision is not None:
                    self.on_decision("done", now, qid)
                self.on_query(qid, now, error)
                if self.host is not None:  # the host finishes it, off its latency
                    self.host.work(now, self.host.model.complete_s, _nothing, None)
            if not queries:
                self.work_s = 0.0  # no drift from float sums
            if self.load_slot is not None:
                self.load_slot[0][self.load_slot[1]] = self.work_s
        self._step(now)

    def _on_timer(self, wake: float) -> None:
        if wake != self._wake_at:
            return  # superseded by a later step
        self._wake_at = None
        self._step(self.clock._t)

    def _step(self, now: float) -> None:
        out = self.core.step(now)
        if out.batches:
            self._add_batches(out.batches, now)
        wake = out.wake_at
        if wake != self._wake_at:
            self._wake_at = wake
            if wake is not None:
                # A wake-up that is already due fires "a moment later", as the engine's timer
                # thread does: the next float after now. (RequestPolicy tests expiry as
                # `now - since >= delay` but wakes at `since + delay`; in floating point the
                # two can disagree, and the engine's timer then spins until the clock moves.)
                at = wake if wake > now else math.nextafter(now, math.inf)
                self.loop.at(at, TIMER, self._on_timer, wake)
        if out.tasks:
            self._issue(out.tasks, now)

    def _add_batches(self, batches: list[Batch], now: float) -> None:
        sizes = self.sizes
        for b in batches:
            parts = b.parts
            if len(parts) == 1:  # the common case, without Batch.size's generator
                p = parts[0]
                sizes[b.bid] = p.stop - p.start
            else:
                sizes[b.bid] = b.size
            if self.trace is not None:
                self._batch_cls[b.bid] = self._queries[b.parts[0].qid][0].cls
            if self.on_decision is not None:
                self.on_decision("batch", now, (b.bid, b.lane_kind, b.parts))

    def _issue(self, tasks: list[Task], now: float) -> None:
        lanes = self.lanes
        for t in tasks:
            if self.on_decision is not None:
                self.on_decision("issue", now, (t.tid, t.bid, t.lane))
            lanes[t.lane].submit(t)

    # -- helpers -------------------------------------------------------------------------------
    def predicted_work(self, n_items: int) -> float:
        """Predicted lane-seconds of a query of `n_items`, over the lanes that would run it.

        A rough, policy-agnostic estimate for load balancers: batches of the configured
        size (whole queries for `whole`), spread over the lanes of the kind it goes to.
        """
        cache = self.state.work
        w = cache.get(n_items)
        if w is None:
            cfg = self.config
            dm = self.state.models["cpu"]
            kind_lanes = cfg.lanes
            t = cfg.offload_threshold
            if t is not None and n_items >= t:
                dm = self.state.models["accel"]
                kind_lanes = max(1, cfg.accel_lanes)
                w = dm.whole(n_items)
            elif cfg.request == "whole":
                w = dm.whole(n_items)
            else:
                b = cfg.batch_size
                full, rest = divmod(n_items, b)
                w = full * dm.whole(b) + (dm.whole(rest) if rest else 0.0)
            w = cache[n_items] = w / kind_lanes
        return w

    def outstanding(self) -> int:
        """Queries accepted and not finished."""
        return len(self._queries)

    def _record(self, task: Task, start: float, end: float, op_cls: str) -> None:
        """A lane trace event named as the engine names it ("model" or "op+op+...")."""
        assert self.trace is not None
        if task.ops is None:
            name = "model"
        else:
            info = self.stype.graph_info
            name = "+".join(info.ops[i].name if info is not None else str(i) for i in task.ops)
        rows = task.rows[1] - task.rows[0] if task.rows is not None else self.sizes[task.bid]
        args: dict[str, Any] = {"items": rows, "tid": task.tid, "op_cls": op_cls}
        if task.rows is not None:
            args["rows"] = list(task.rows)
        cls = self._batch_cls.get(task.bid)
        self.trace.record(task.lane, name, task.bid, cls, start, end, **args)

    def lane_utilization(self, span_s: float) -> list[float]:
        span = max(span_s, 1e-12)
        return [min(1.0, lane.stats.busy_s / span) for lane in self.lanes]

    def check_invariants(self) -> None:
        self.core.check_invariants()
        assert set(self._queries) == set(self.core.queries) | self._entering, (
            "server and core agree on queries (bar those the host is taking in)"
        )
        assert not (self._entering & set(self.core.queries)), "a query entered twice"
        busy = sum(lane.backlog() for lane in self.lanes)
        assert busy >= len([lane for lane in self.lanes if lane.busy()])
