"""Operator-level scheduling of concurrent batches across lanes: `roundrobin` and `opstream`.

Every batch is an instance of the model's operator DAG (`GraphInfo`). Ready operators of all
in-flight batches compete for lanes. A `Task` carries a chain of consecutive operators of one
batch (`ops`, run in order on one lane: one dispatch instead of several), or one operator on a
row range of its batch (`rows`: rows of a recommendation batch are independent).

- `roundrobin`: naive multi-lane. Each operator is its own task, sent to the lanes in turn
  as soon as it is ready (lane queues are unbounded; no priority, no load awareness).
- `opstream`: whenever a lane frees or an operator becomes ready, the ready operator with the
  highest priority (`recsched.sched.priority`: value, slack, aging, upward rank) goes to the
  lane where it hurts least: predicted backlog, plus a penalty for co-running with work of the
  same class on the other lanes (two memory-bound lookups interfere), plus a cost per producer
  that ran on another lane. Lanes hold at most `depth` issued tasks, so priority can reorder
  everything else. A lane's task is a chain of the batch's next operators up to a time budget
  (fewer dispatches), cut short to leave parallel operators to other idle lanes when that
  pays; a chain that is a whole batch not yet started is issued as `Task(ops=None)`, the
  model's own forward (no per-op dispatch at all). Low-value work is bounded: its tasks are
  split along the batch dimension to at most `split_s`, and while high-value work is active
  to at most `gate_s` on at most `gate_lanes` lanes. A long high-value op is shared by row
  ranges with lanes that free soon (water-filling). Predictions are corrected by what lanes
  report: per-lane backlog from the results, and a per-operator factor (measured /
  predicted) learned online.

Why the defaults are conservative about spreading work: CPU lanes are threads sharing the
GIL, and every task costs a lock, a queue hand-off and Python scheduling (~0.1 ms here), so
on this 2-core machine more, smaller tasks lose more than parallelism wins except for long
operators (see the report in benchmarks/opstream_mixed.py and BENCHMARKS.md).

Pure (no tensors, threads or wall clock): the engine, the simulator and the tests run it
unchanged. Invariants (every op of every batch runs exactly once, row pieces cover the rows
exactly once, no op is issued before its producers finished, a finished batch has all ops
done) are asserted on every issue and every result, for the batch concerned (O(its ops));
`check_invariants()` checks every batch, task, lane and heap entry, after every step with
the option `check=True` (the tests' setting; `RECSCHED_CHECKS=0` turns it off).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from recsched import sched
from recsched.config import EngineConfig
from recsched.graph.cost import interpolate
from recsched.graph.ops import GraphInfo
from recsched.sched import priority as prio
from recsched.sched.operator import Cost, OperatorPolicy
from recsched.sched.request import saturated_batches
from recsched.types import Batch, LaneKind, LaneResult, Task

WAIT, READY, ISSUED, DONE = 0, 1, 2, 3


# ------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class OpStreamOptions:
    """Knobs of `opstream` (EngineConfig.opstream); the four switches are the ablations.

    Times are seconds.
    - `max_chain_s`, `split_s`, `gate_s` (and `*_frac`): task time budgets, see `budget()`.
    - `engine_overhead_s`: per-task cost outside the lane (lock, queue, callback, thread
      wake-up) that chains save.
    - `min_gain_s`: spreading one batch over more lanes (a parallel chain or a row split)
      must save at least this (default: three engine overheads: an extra task, a join, and
      slack), of which only `parallel_efficiency` is believed: CPU lanes are threads that
      share the GIL, so two lanes are far from twice one at small batches (measured: no
      gain at all for rmc1 at batch 16, 1.4x at 256). Low-value batches are never spread:
      it costs throughput to buy latency.
    - `dispatch_s`: per-op cost inside a task; None takes the cost model's.
    - `piece_efficiency`: low-value work is also cut into the smallest pieces whose cost per
      row (engine overhead included) is within this share of the whole remainder's
      (`_cheap_piece_s`; 0: off), however long its budget: free by the profile on models
      whose per-row cost does not fall with the batch (din), a halving at most of the
      largest batches on the others. (Served din tasks carried ~0.6 ms of fixed cost in
      light-load runs, more than `engine_overhead_s`: at that cost the pieces cost about
      what whole batches do.)
    - `split_cheaper`: work of any value is cut into pieces that cost less per row than the
      whole (din; no other model here): it saves lane time, and the pieces spread.
    - `w_interference`: weight of the same-class co-running penalty (share of the overlap
      lost).
    - `gate_ratio`: a batch is low-value when its value is at most the highest value seen
      (or `high_value`) divided by this.
    - `gate_on`: when low-value work is held to `gate_lanes` lanes: `waiting` (default) only
      while a high-value op is ready and not issued (rarely, since a ready high-value op
      takes a free lane first: in effect the lane limit is off), `active` while any
      high-value batch is in flight. Low-value pieces stay within `gate_s` while high-value
      work is in flight either way. Under 2x overload through the server, `active` held
      low-value work to one lane of two much of the time; `waiting` had the lower median
      high-value p99 there (62 against 114 ms, four runs each, a noisy spread), and in-process
      at 70% load it was within the noise of `active` on rmc1 and din and better on dien
      (BENCHMARKS.md: the HTTP server's overload; OpStream, sixth session).
    - `live_slack`: slack from the *remaining* critical path (least-slack-first). Off by
      default: batches that progressed would lose priority to fresh ones, and the tail grows
      (measured); the slack uses the batch's whole critical path (latest start time).
    - `reserved_lanes`: the first this many CPU lanes take no low-value work: with
      `EngineConfig.lane_nice` giving the others a lower thread priority (and one lane more
      than cores), high-value work runs on a lane the operating system serves first, taking
      a core from low-value lanes while it runs instead of waiting for a piece to end: the
      CPU's analogue of a CUDA stream priority. 0: off.
    - `started_bonus_s`: priority added once a batch has finished an op, so a batch spread
      over lanes is joined and finished before fresh work of about the same urgency (it
      adds `started_bonus_s / (w_slack + w_age)` to the starvation bound of `priority`).
    """

    priority: bool = True
    interference: bool = True
    gating: bool = True
    splitting: bool = True
    chaining: bool = True
    whole_tasks: bool = True
    depth: int = 1
    accel_depth: int = 2
    max_chain_s: float = 20e-3
    split_s: float = 8e-3
    gate_s: float = 3e-3
    chain_frac: float = 0.5
    split_frac: float = 0.5
    gate_frac: float = 0.2
    gate_lanes: int | None = None
    gate_ratio: float = 2.0
    gate_on: str = "waiting"
    high_value: float | None = None
    min_piece_rows: int = 8
    piece_overhead: float = 0.25
    piece_efficiency: float = 0.9
    split_cheaper: bool = True
    chain_margin_s: float = 2e-3
    w_interference: float = 0.3
    cross_s: float = 10e-6
    engine_overhead_s: float = 150e-6
    min_gain_s: float | None = None
    parallel_efficiency: float = 0.3
    dispatch_s: float | None = None
    candidates: int = 4
    calibrate: bool = True
    calib_alpha: float = 0.2
    check: bool = False
    w_value: float = 1.0
    w_slack: float = 1.0
    w_age: float = 0.25
    w_rank: float = 0.1
    live_slack: bool = False
    started_bonus_s: float = 5e-3
    reserved_lanes: int = 0
    default_window_s: float = 0.05
    max_credit_s: float = 1.0

    def __post_init__(self) -> None:
        assert self.depth >= 1 and self.accel_depth >= 1, "a lane takes at least one task"
        assert self.max_chain_s > 0 and self.split_s > 0 and self.gate_s > 0
        assert min(self.chain_frac, self.split_frac, self.gate_frac) >= 0
        assert self.gate_lanes is None or self.gate_lanes >= 0
        assert self.gate_ratio >= 1 and self.min_piece_rows >= 1 and self.candidates >= 1
        assert self.gate_on in ("active", "waiting"), "gate_on is active or waiting"
        assert 0 < self.piece_overhead <= 1 and 0 < self.parallel_efficiency <= 1
        assert 0 <= self.piece_efficiency <= 1, "piece_efficiency is a share (0: off)"
        assert self.reserved_lanes >= 0, "reserved_lanes is a count of CPU lanes"
        assert 0 < self.calib_alpha <= 1 and self.w_interference >= 0 and self.cross_s >= 0
        self.weights()  # checks the priority weights

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> OpStreamOptions:
        """Options from a config dict; an unknown key is an error naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown opstream options {unknown}; known: {sorted(known)}")
        return cls(**options)

    def weights(self) -> prio.Weights:
        return prio.Weights(
            self.w_value,
            self.w_slack,
            self.w_age,
            self.w_rank,
            self.default_window_s,
            self.max_credit_s,
        )


# ------------------------------------------------------------------------------ batch state

Fresh = tuple[tuple[int, ...], tuple[int, ...], frozenset[int]]


def fresh_state(info: GraphInfo) -> Fresh:
    """(pending producers, state, ready ops) of a batch of `info` that has not started."""
    pending = tuple(len(op.deps) for op in info.ops)
    state = tuple(WAIT if p else READY for p in pending)
    return pending, state, frozenset(i for i, s in enumerate(state) if s == READY)


class BatchDag:
    """Execution state of one batch's operator graph: exactly-once accounting per op and row.

    An op is WAIT (producers unfinished), READY (rows left to issue), ISSUED (every row
    issued, some unfinished) or DONE. Row pieces of an op are issued in order from row 0,
    so `next_row` and `rows_done` describe them; `pieces` keeps them for the checks.
    """

    __slots__ = (
        "batch", "bid", "size", "kind", "info", "dur", "rank", "pending", "state",
        "next_row", "rows_done", "pieces", "ran_on", "ready", "running", "n_done",
        "tasks", "version", "key", "low", "rank_max", "total_s",
    )  # fmt: skip

    def __init__(
        self,
        batch: Batch,
        info: GraphInfo,
        kind: LaneKind,
        dur: list[float],
        rank: list[float],
        fresh: Fresh | None = None,
    ) -> None:
        n = len(info.ops)
        self.batch, self.bid, self.size = batch, batch.bid, batch.size
        self.kind, self.info = kind, info
        assert self.size >= 1, "a batch has rows"
        self.dur, self.rank = dur, rank
        self.rank_max = max(rank)
        self.total_s = sum(dur)
        pending, state, ready = fresh or fresh_state(info)
        self.pending = list(pending)
        self.state = list(state)
        self.next_row = [0] * n
        self.rows_done = [0] * n
        self.pieces: dict[int, list[tuple[int, int]]] = {}
        self.ran_on = [-1] * n
        self.ready = set(ready)
        self.running: set[int] = set()
        self.n_done = 0
        self.tasks = 0
        self.version = 0
        self.key = 0.0
        self.low = False

    @property
    def finished(self) -> bool:
        return self.n_done == len(self.state)

    def remaining_s(self) -> float:
        """Predicted remaining critical path: the largest rank among unfinished frontier ops."""
        r = self.rank
        return max((r[i] for i in (*self.ready, *self.running)), default=0.0)

    def issue(self, ops: Sequence[int], rows: tuple[int, int] | None, lane: int) -> None:
        """Mark `ops` (a chain, in order) or one op on `rows` as issued to `lane`."""
        st, deps = self.state, self.info.ops
        if rows is None:
            chain: set[int] = set()
            for o in ops:  # check everything before changing anything
                assert st[o] in (WAIT, READY) and self.next_row[o] == 0, f"op {o} issued twice"
                for d in deps[o].deps:
                    assert st[d] == DONE or d in chain, f"op {o} issued before producer {d}"
                chain.add(o)
            for o in ops:
                st[o] = ISSUED
                self.next_row[o] = self.size
                self.ready.discard(o)
                self.running.add(o)
                self.ran_on[o] = lane
        else:
            assert len(ops) == 1, "a row range is one operator"
            (o,), (a, b) = ops, rows
            assert st[o] == READY, f"op {o} is not ready"
            assert a == self.next_row[o] and a < b <= self.size, f"rows {rows} of op {o}"
            self.pieces.setdefault(o, []).append((a, b))
            self.next_row[o] = b
            self.running.add(o)
            self.ran_on[o] = lane
            if b == self.size:
                st[o] = ISSUED
                self.ready.discard(o)
        self.tasks += 1

    def fresh(self) -> bool:
        """Nothing of this batch was issued yet."""
        return self.tasks == 0 and self.n_done == 0 and not self.running

    def issue_whole(self, lane: int) -> None:
        """Issue every op at once: the model's own forward on a batch not started yet."""
        assert self.fresh(), f"batch {self.bid}: a whole-model task once started"
        n = len(self.state)
        self.state = [ISSUED] * n
        self.next_row = [self.size] * n
        self.ran_on = [lane] * n
        self.ready.clear()
        self.running = set(range(n))
        self.tasks = 1

    def finish_whole(self) -> None:
        """Account the whole-model task: every op done."""
        n = len(self.state)
        assert self.tasks == 1 and self.n_done == 0 and len(self.running) == n
        self.state = [DONE] * n
        self.rows_done = [self.size] * n
        self.pending = [0] * n
        self.running.clear()
        self.n_done, self.tasks = n, 0

    def finish(self, ops: Sequence[int], rows: tuple[int, int] | None) -> list[int]:
        """Account a finished task; returns the ops it made ready."""
        assert self.tasks > 0, "a result for a task never issued"
        n = self.size if rows is None else rows[1] - rows[0]
        for o in ops:  # check everything before changing anything
            assert self.rows_done[o] + n <= self.next_row[o], f"op {o}: more rows done than issued"
            assert self.state[o] != DONE, f"op {o} finished twice"
        newly: list[int] = []
        self.tasks -= 1
        for o in ops:
            self.rows_done[o] += n
            if self.rows_done[o] < self.size:
                continue
            self.state[o] = DONE
            self.running.discard(o)
            self.n_done += 1
            for s in self.info.successors(o):
                self.pending[s] -= 1
                assert self.pending[s] >= 0
                if self.pending[s] == 0 and self.state[s] == WAIT:
                    self.state[s] = READY
                    self.ready.add(s)
                    newly.append(s)
        if self.finished:
            assert self.state[self.info.output_op] == DONE and not self.running and not self.ready
        return newly

    def check(self) -> None:
        """Every invariant of this batch, in full (O(ops))."""
        done = 0
        for i, op in enumerate(self.info.ops):
            s = self.state[i]
            deps_done = all(self.state[d] == DONE for d in op.deps)
            assert 0 <= self.rows_done[i] <= self.next_row[i] <= self.size
            assert self.pending[i] == sum(self.state[d] != DONE for d in op.deps)
            if s == WAIT:
                assert not deps_done and self.next_row[i] == 0
            elif s == READY:
                assert deps_done and self.next_row[i] < self.size and i in self.ready
            elif s == ISSUED:
                assert self.next_row[i] == self.size and self.rows_done[i] < self.size
            else:
                done += 1
                assert self.rows_done[i] == self.size and deps_done
            assert (i in self.ready) == (s == READY)
            assert (i in self.running) == (s in (READY, ISSUED) and self.next_row[i] > 0)
            if i in self.pieces:
                a = 0
                for lo, hi in self.pieces[i]:
                    assert lo == a and hi > lo, f"op {i}: pieces leave a gap or overlap"
                    a = hi
                assert a == self.next_row[i], f"op {i}: pieces do not cover the issued rows"
        assert done == self.n_done


# ------------------------------------------------------------------------------ load monitor


@dataclass(slots=True)
class _Flight:
    task: Task
    issued_s: float
    pred_s: float
    memory_s: float
    low: bool


class LoadMonitor:
    """Per lane: the issued, unfinished tasks, their predicted backlog and class mix.

    `busy_until[lane]` is predicted at issue (`max(busy_until, now) + predicted`) and reset
    from what is left when a lane reports: what actually finished corrects the prediction.
    """

    def __init__(self, n_lanes: int) -> None:
        self.flights: list[dict[int, _Flight]] = [{} for _ in range(n_lanes)]
        self.busy_until = [0.0] * n_lanes
        self.pred_sum = [0.0] * n_lanes  # predicted seconds in flight per lane
        self.mem_sum = [0.0] * n_lanes  # ... of which memory-bound
        self.n_low = [0] * n_lanes  # low-value tasks in flight per lane

    def issue(self, task: Task, now: float, pred_s: float, memory_s: float, low: bool) -> None:
        lane = task.lane
        self.flights[lane][task.tid] = _Flight(task, now, pred_s, memory_s, low)
        self.busy_until[lane] = max(self.busy_until[lane], now) + pred_s
        self.pred_sum[lane] += pred_s
        self.mem_sum[lane] += memory_s
        self.n_low[lane] += low

    def finish(self, lane: int, tid: int, now: float) -> _Flight:
        f = self.flights[lane].pop(tid)
        fl = self.flights[lane]
        if fl:
            self.pred_sum[lane] = sum(g.pred_s for g in fl.values())  # no drift from +-
            self.mem_sum[lane] = sum(g.memory_s for g in fl.values())
        else:
            self.pred_sum[lane] = self.mem_sum[lane] = 0.0
        self.n_low[lane] -= f.low
        self.busy_until[lane] = now + self.pred_sum[lane]
        return f

    def n_inflight(self, lane: int) -> int:
        return len(self.flights[lane])

    def backlog(self, lane: int, now: float) -> float:
        """Predicted seconds until the lane has run everything issued to it."""
        return max(0.0, self.busy_until[lane] - now) if self.flights[lane] else 0.0

    def class_left(self, lane: int, cls: str, now: float) -> float:
        """Predicted seconds of `cls` work still to run on the lane (its share of the backlog)."""
        total = self.pred_sum[lane]
        if not self.flights[lane] or total <= 0:
            return 0.0
        mem = self.mem_sum[lane]
        return self.backlog(lane, now) * (mem if cls == "memory" else total - mem) / total

    def low_lanes(self, lanes: Sequence[int]) -> int:
        """Lanes among `lanes` holding some low-value task."""
        return sum(1 for lane in lanes if self.n_low[lane])


# ------------------------------------------------------------------------------ shared base


class DagPolicy(OperatorPolicy):
    """Bookkeeping shared by the operator-graph policies: batches, tasks, results, checks."""

    def __init__(
        self,
        lane_kinds: Sequence[LaneKind],
        cost: Cost,
        info: GraphInfo,
        engine_overhead_s: float = 150e-6,
        dispatch_s: float | None = None,
        check: bool = False,
    ) -> None:
        super().__init__(lane_kinds, cost)
        self.info = info
        self.n_ops = len(info.ops)
        self.all_ops = tuple(info.topo_order())
        self.out_op = info.output_op
        self.fresh_tpl = fresh_state(info)  # copied into every new batch
        self.deps = [op.deps for op in info.ops]
        self.succ = [info.successors(i) for i in range(self.n_ops)]
        self.memory = [op.cls == "memory" for op in info.ops]
        self.splittable = [bool(getattr(op, "splittable", True)) for op in info.ops]
        self.engine_overhead_s = engine_overhead_s
        self.op_dispatch_s = (
            float(getattr(cost, "dispatch_s", 0.0)) if dispatch_s is None else dispatch_s
        )
        self.check = check
        self.dags: dict[int, BatchDag] = {}
        self.tasks: dict[int, Task] = {}
        self.dead: dict[int, int] = {}  # failed batch -> its tasks still in flight
        self.monitor = LoadMonitor(len(self.lane_kinds))
        self.kinds: tuple[LaneKind, ...] = tuple(dict.fromkeys(self.lane_kinds))
        self.lanes: dict[str, list[int]] = {k: self.lanes_of(k) for k in ("cpu", "accel")}
        self.factor = [1.0] * self.n_ops
        self._raw: dict[tuple[int, int], float] = {}
        self.ready_n: dict[str, int] = {"cpu": 0, "accel": 0}  # ready ops, all batches
        self.ready_low: dict[str, int] = {"cpu": 0, "accel": 0}  # ... of low-value batches
        self.ops_dispatched = 0

    # -- costs ---------------------------------------------------------------------------
    def raw_s(self, op: int, rows: int) -> float:
        """Predicted seconds of op on `rows` items from the cost model (with per-op dispatch)."""
        key = (op, rows)
        t = self._raw.get(key)
        if t is None:
            t = max(0.0, float(self.cost.op_s(op, rows))) + self.op_dispatch_s
            if len(self._raw) > 65536:
                self._raw.clear()
            self._raw[key] = t
        return t

    def op_s(self, op: int, rows: int) -> float:
        """Predicted seconds, corrected by what this op's past tasks measured."""
        return self.raw_s(op, rows) * self.factor[op]

    def kind_of(self, batch: Batch) -> LaneKind:
        k = batch.lane_kind
        return k if self.lanes[k] else ("cpu" if self.lanes["cpu"] else "accel")

    def new_dag(self, batch: Batch) -> BatchDag:
        dur = [self.op_s(i, batch.size) for i in range(self.n_ops)]
        rank = self.info.upward_rank(dur.__getitem__)
        return BatchDag(batch, self.info, self.kind_of(batch), dur, rank, self.fresh_tpl)

    # -- the seam ------------------------------------------------------------------------
    def add(self, batch: Batch, now: float) -> None:
        assert batch.bid not in self.dags and batch.bid not in self.dead, "batch added twice"
        dag = self.new_dag(batch)
        self.dags[batch.bid] = dag
        self.batches_in += 1
        self.ready_delta(dag, len(dag.ready))
        self.on_add(dag, now)

    def update(self, results: Sequence[LaneResult], now: float) -> list[int]:
        done: list[int] = []
        for r in results:
            t = self.tasks.pop(r.tid)
            assert t.lane == r.lane and t.bid == r.bid, "a result for another task"
            flight = self.monitor.finish(r.lane, r.tid, now)
            dag = self.dags.get(t.bid)
            if dag is None:  # a failed batch's straggler
                self.dead[t.bid] -= 1
                if not self.dead[t.bid]:
                    del self.dead[t.bid]
                continue
            if r.error is not None:
                dag.tasks -= 1
                self.ready_delta(dag, -len(dag.ready))
                self.on_remove(dag)
                del self.dags[t.bid]
                if dag.tasks:
                    self.dead[t.bid] = dag.tasks
                done.append(t.bid)
                continue
            self.learn(t, r, flight)
            if t.ops is None:
                dag.finish_whole()
                newly: list[int] = []
            else:
                newly = dag.finish(t.ops, t.rows)
            self.ready_delta(dag, len(newly))
            if dag.finished:
                self.on_remove(dag)
                del self.dags[t.bid]
                done.append(t.bid)
            else:
                self.on_progress(dag, newly, now)
            if self.check:
                dag.check()
        self.batches_done += len(done)
        if self.check:
            self.check_invariants()
        return done

    def queued(self) -> int:
        return len(self.dags)

    def idle_lanes(self, kind: LaneKind = "cpu") -> int:
        free = sum(1 for lane in self.lanes[kind] if not self.monitor.n_inflight(lane))
        return max(0, free - self.ready_n[kind])

    # -- issuing ---------------------------------------------------------------------------
    def issue(
        self,
        dag: BatchDag,
        ops: Sequence[int],
        rows: tuple[int, int] | None,
        lane: int,
        now: float,
        whole: bool = False,
    ) -> Task:
        """Issue `ops` of `dag` (a chain, or one op on `rows`) to `lane`.

        `whole`: the chain is the entire model of a batch not yet started, issued as
        `Task(ops=None)` so the lane runs the model's own forward (no per-op dispatch).
        """
        assert self.lane_kinds[lane] == dag.kind, "a batch runs on lanes of its kind"
        if rows is None:
            times = [dag.dur[o] for o in ops]
        else:
            times = [self.op_s(ops[0], rows[1] - rows[0])]
        pred = self.engine_overhead_s + sum(times)
        mem = sum(t for o, t in zip(ops, times, strict=True) if self.memory[o])
        before = len(dag.ready)
        if whole:
            assert rows is None and len(ops) == self.n_ops
            dag.issue_whole(lane)
        else:
            dag.issue(ops, rows, lane)
        self.ready_delta(dag, len(dag.ready) - before)
        task = Task(next(self._tids), dag.bid, lane, None if whole else tuple(ops), rows, pred)
        self.tasks[task.tid] = task
        self.monitor.issue(task, now, pred, mem, dag.low)
        self.ops_dispatched += len(ops)
        return task

    def ops_of(self, t: Task) -> Sequence[int]:
        """The ops a task runs (`ops=None`: the whole model)."""
        return self.all_ops if t.ops is None else t.ops

    def task_ops(self, tid: int) -> tuple[int, ...] | None:
        """The ops of a running task (None: the whole model, or unknown), for lane traces."""
        t = self.tasks.get(tid)
        return None if t is None else t.ops

    def ready_delta(self, dag: BatchDag, n: int) -> None:
        self.ready_n[dag.kind] += n
        if dag.low:
            self.ready_low[dag.kind] += n

    def set_low(self, dag: BatchDag, low: bool) -> None:
        """(Re)classify a batch as low-value, keeping the ready counts right."""
        if low != dag.low:
            self.ready_low[dag.kind] += len(dag.ready) if low else -len(dag.ready)
            dag.low = low

    def learn(self, t: Task, r: LaneResult, flight: _Flight) -> None:
        """Hook: correct predictions from a measured task (OpStream learns; others do not)."""

    # -- hooks -----------------------------------------------------------------------------
    def on_add(self, dag: BatchDag, now: float) -> None:
        raise NotImplementedError

    def on_progress(self, dag: BatchDag, newly: list[int], now: float) -> None:
        raise NotImplementedError

    def on_remove(self, dag: BatchDag) -> None:
        """A batch finished or failed."""

    # -- checks ------------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Every invariant of every batch, task and lane, in full (off with RECSCHED_CHECKS=0)."""
        if not sched.CHECKS:
            return
        super().check_invariants()
        assert self.batches_in - self.batches_done == len(self.dags)
        per_bid: Counter[int] = Counter(t.bid for t in self.tasks.values())
        for bid, dag in self.dags.items():
            dag.check()
            assert per_bid[bid] == dag.tasks, f"batch {bid}: task count"
        for kind in ("cpu", "accel"):
            n = sum(len(d.ready) for d in self.dags.values() if d.kind == kind)
            assert self.ready_n[kind] == n, "ready ops counted right"
            n = sum(len(d.ready) for d in self.dags.values() if d.kind == kind and d.low)
            assert self.ready_low[kind] == n, "ready low-value ops counted right"
        for bid, n in self.dead.items():
            assert per_bid[bid] == n > 0 and bid not in self.dags
        for lane, fl in enumerate(self.monitor.flights):
            for tid, f in fl.items():
                assert self.tasks[tid] is f.task and f.task.lane == lane
        assert sum(map(len, self.monitor.flights)) == len(self.tasks)


# ------------------------------------------------------------------------------ roundrobin


class RoundRobin(DagPolicy):
    """Naive multi-lane: every ready op is its own task, sent to the lanes in turn."""

    name = "roundrobin"

    def __init__(self, lane_kinds: Sequence[LaneKind], cost: Cost, info: GraphInfo, **kw) -> None:
        super().__init__(lane_kinds, cost, info, **kw)
        self.fifo: dict[str, deque[tuple[int, int]]] = {"cpu": deque(), "accel": deque()}
        self.turn: dict[str, int] = {"cpu": 0, "accel": 0}

    def on_add(self, dag: BatchDag, now: float) -> None:
        self.fifo[dag.kind].extend((dag.bid, o) for o in sorted(dag.ready))

    def on_progress(self, dag: BatchDag, newly: list[int], now: float) -> None:
        self.fifo[dag.kind].extend((dag.bid, o) for o in newly)

    def schedule(self, now: float) -> list[Task]:
        tasks: list[Task] = []
        for kind in self.kinds:
            fifo, lanes = self.fifo[kind], self.lanes[kind]
            while fifo:
                bid, op = fifo.popleft()
                dag = self.dags.get(bid)
                if dag is None or dag.state[op] != READY:
                    continue  # its batch failed
                lane = lanes[self.turn[kind] % len(lanes)]
                self.turn[kind] += 1
                tasks.append(self.issue(dag, (op,), None, lane, now))
        if self.check:
            self.check_invariants()
        return tasks


# ------------------------------------------------------------------------------ opstream


@dataclass(slots=True)
class _Cand:
    entry: tuple
    dag: BatchDag
    op: int
    prio: float


class OpStream(DagPolicy):
    """Priority- and load-aware placement of ready operators (see the module docstring)."""

    name = "opstream"

    def __init__(
        self,
        lane_kinds: Sequence[LaneKind],
        cost: Cost,
        info: GraphInfo,
        options: OpStreamOptions | None = None,
    ) -> None:
        o = options or OpStreamOptions()
        super().__init__(lane_kinds, cost, info, o.engine_overhead_s, o.dispatch_s, o.check)
        self.o = o
        self.w = o.weights()
        self.min_gain_s = 3 * o.engine_overhead_s if o.min_gain_s is None else o.min_gain_s
        self.heaps: dict[str, list[tuple]] = {"cpu": [], "accel": []}
        self.values: dict[str, Counter[float]] = {"cpu": Counter(), "accel": Counter()}
        self.max_value = o.high_value if o.high_value is not None else 0.0
        self._seq = 0
        self._rank_cache: dict[int, tuple[list[float], list[float]]] = {}
        self._raw_whole: dict[int, float] = {}
        self._cache_factor = list(self.factor)  # the factors the cached ranks were made with
        cpu = self.lanes["cpu"]
        if o.reserved_lanes and o.reserved_lanes >= len(cpu):
            raise ValueError(
                f"reserved_lanes={o.reserved_lanes} leaves none of the {len(cpu)} CPU lanes "
                "to low-value work"
            )
        self.reserved = frozenset(cpu[: o.reserved_lanes])  # no low-value work on these

    # -- analysis ------------------------------------------------------------------------
    def new_dag(self, batch: Batch) -> BatchDag:
        hit = self._rank_cache.get(batch.size)
        if hit is None:
            dur = [self.op_s(i, batch.size) for i in range(self.n_ops)]
            hit = (dur, self.info.upward_rank(dur.__getitem__))
            if len(self._rank_cache) > 4096:
                self._rank_cache.clear()
            self._rank_cache[batch.size] = hit
        return BatchDag(batch, self.info, self.kind_of(batch), *hit, self.fresh_tpl)

    def learn(self, t: Task, r: LaneResult, flight: _Flight) -> None:
        """Move each op's factor toward measured / predicted for this task."""
        if not self.o.calibrate:
            return
        ops = self.ops_of(t)
        n = self.dags[t.bid].size if t.rows is None else t.rows[1] - t.rows[0]
        if t.ops is None:
            raw = self._raw_whole.get(n)
            if raw is None:
                raw = self._raw_whole[n] = sum(self.raw_s(o, n) for o in ops)
        else:
            raw = sum(self.raw_s(o, n) for o in ops)
        actual = r.end_s - r.start_s
        if raw <= 0 or actual <= 0:
            return
        ratio = min(10.0, max(0.1, actual / raw))
        a, f = self.o.calib_alpha, self.factor
        if t.ops is None:
            f[:] = [x + a * (ratio - x) for x in f]
        else:
            for o in ops:
                f[o] += a * (ratio - f[o])
        snap = self._cache_factor
        if any(abs(x - y) > 0.1 * y for x, y in zip(f, snap, strict=True)):
            self._rank_cache.clear()  # new batches' durations and ranks use the new factors
            self._cache_factor = list(f)

    # -- priority ------------------------------------------------------------------------
    def batch_key(self, dag: BatchDag) -> float:
        b = dag.batch
        if not self.o.priority:
            return -float(b.bid)  # FIFO by batch
        rem = dag.remaining_s() if self.o.live_slack else dag.rank_max
        key = prio.static_key(b.value, b.created_s, b.deadline_s, rem, self.w)
        return key + (self.o.started_bonus_s if dag.n_done else 0.0)

    def op_prio(self, dag: BatchDag, op: int) -> float:
        """Batch key plus weighted rank (without priority: FIFO; rank breaks ties)."""
        return dag.key + (self.w.rank * dag.rank[op] if self.o.priority else 0.0)

    def push(self, dag: BatchDag, op: int) -> None:
        self._seq += 1
        p = self.op_prio(dag, op)
        entry = (-p, -dag.rank[op], self._seq, dag.bid, op, dag.version)
        heapq.heappush(self.heaps[dag.kind], entry)

    def valid(self, e: tuple) -> BatchDag | None:
        dag = self.dags.get(e[3])
        if dag is None or dag.version != e[5] or dag.state[e[4]] != READY:
            return None
        return dag

    def is_low(self, dag: BatchDag) -> bool:
        return dag.batch.value * self.o.gate_ratio <= self.max_value

    def high_active(self, kind: LaneKind) -> bool:
        return any(v * self.o.gate_ratio > self.max_value for v in self.values[kind])

    def high_waiting(self, kind: LaneKind) -> bool:
        """A high-value batch of `kind` has an op ready and not issued."""
        if not self.high_active(kind):
            return False
        return any(d.ready and d.kind == kind and not d.low for d in self.dags.values())

    # -- hooks ---------------------------------------------------------------------------
    def on_add(self, dag: BatchDag, now: float) -> None:
        v = dag.batch.value
        if self.o.high_value is None and v > self.max_value:
            self.max_value = v  # a new top value: batches in flight may have become low
            for other in self.dags.values():
                self.set_low(other, self.is_low(other))
        self.values[dag.kind][v] += 1
        self.set_low(dag, self.is_low(dag))
        dag.key = self.batch_key(dag)
        for op in dag.ready:
            self.push(dag, op)

    def on_progress(self, dag: BatchDag, newly: list[int], now: float) -> None:
        self.set_low(dag, self.is_low(dag))
        if not self.o.priority:
            for op in newly:
                self.push(dag, op)
            return
        key = self.batch_key(dag)
        if key == dag.key:
            for op in newly:
                self.push(dag, op)
            return
        dag.key = key
        dag.version += 1
        for op in dag.ready:
            self.push(dag, op)

    def on_remove(self, dag: BatchDag) -> None:
        vals = self.values[dag.kind]
        vals[dag.batch.value] -= 1
        if not vals[dag.batch.value]:
            del vals[dag.batch.value]

    def check_invariants(self) -> None:
        """The base checks, plus: every ready op has a live heap entry (none is lost) and
        every batch's value class is current."""
        if not sched.CHECKS:
            return
        super().check_invariants()
        live = {(e[3], e[4]) for k in self.kinds for e in self.heaps[k] if self.valid(e)}
        for dag in self.dags.values():
            assert dag.low == self.is_low(dag), f"batch {dag.bid}: stale value class"
            for op in dag.ready:
                assert (dag.bid, op) in live, f"ready op {op} of batch {dag.bid} is lost"

    # -- scheduling ------------------------------------------------------------------------
    def schedule(self, now: float) -> list[Task]:
        tasks: list[Task] = []
        for kind in self.kinds:
            self._schedule_kind(kind, now, tasks)
        heap = self.heaps
        for kind in self.kinds:  # drop stale entries once they dominate the heap
            if len(heap[kind]) > 64 and len(heap[kind]) > 4 * self.ready_n[kind]:
                heap[kind] = [e for e in heap[kind] if self.valid(e) is not None]
                heapq.heapify(heap[kind])
        if self.check:
            self.check_invariants()
        return tasks

    def _depth(self, kind: LaneKind) -> int:
        return self.o.depth if kind == "cpu" else self.o.accel_depth

    def _gate_lanes(self, kind: LaneKind) -> int:
        n = len(self.lanes[kind])
        return max(1, n - 1) if self.o.gate_lanes is None else self.o.gate_lanes

    def _admissible(self, dag: BatchDag, kind: LaneKind) -> bool:
        """Gating: while high-value work is active (or waiting, `gate_on`), low-value work
        holds few lanes."""
        if not (self.o.gating and dag.low):
            return True
        high = self.high_waiting(kind) if self.o.gate_on == "waiting" else self.high_active(kind)
        if not high:
            return True
        return self.monitor.low_lanes(self.lanes[kind]) < self._gate_lanes(kind)

    def _schedule_kind(self, kind: LaneKind, now: float, tasks: list[Task]) -> None:
        heap, lanes, depth = self.heaps[kind], self.lanes[kind], self._depth(kind)
        aside: list[tuple] = []
        mon = self.monitor
        while True:
            free = [ln for ln in lanes if mon.n_inflight(ln) < depth]
            if not free:
                break
            open_low = any(ln not in self.reserved for ln in free)
            # several candidates only when the interference term can tell them apart
            k = 1
            if self.o.priority and self.o.interference and self.o.w_interference > 0:
                if any(mon.class_left(ln, "memory", now) > 0 for ln in lanes):
                    k = self.o.candidates
            cands: list[_Cand] = []
            while heap and len(cands) < k:
                e = heapq.heappop(heap)
                dag = self.valid(e)
                if dag is None:
                    continue
                if not self._admissible(dag, kind) or (dag.low and not open_low):
                    aside.append(e)
                    continue
                cands.append(_Cand(e, dag, e[4], -e[0]))
            if not cands:
                break
            best, lane = self._place(cands, free, now)
            for c in cands:
                if c is not best:
                    heapq.heappush(heap, c.entry)
            task = self._make_task(best, lane, free, now)
            tasks.append(task)
            if best.dag.state[best.op] == READY:  # row pieces left: it stays a candidate
                heapq.heappush(heap, best.entry)
        for e in aside:
            heapq.heappush(heap, e)

    def _place(self, cands: list[_Cand], free: list[int], now: float) -> tuple[_Cand, int]:
        """The (candidate, lane) of highest priority minus hurt; ties keep heap order; low-value
        work never on a reserved lane (the caller leaves it a free lane it may take)."""
        if len(cands) == 1 and len(free) == 1 and not (cands[0].dag.low and self.reserved):
            return cands[0], free[0]
        best: tuple[float, int, int] | None = None
        for ci, c in enumerate(cands):
            rows = c.dag.size - c.dag.next_row[c.op]
            d = self.op_s(c.op, rows)
            for lane in free:
                if c.dag.low and lane in self.reserved:
                    continue
                score = c.prio - self.hurt(c.dag, c.op, d, lane, now)
                if best is None or score > best[0] + 1e-12:
                    best = (score, ci, lane)
        assert best is not None
        return cands[best[1]], best[2]

    def hurt(self, dag: BatchDag, op: int, d: float, lane: int, now: float) -> float:
        """Predicted harm (seconds) of running `op` (`d` seconds) on `lane` now."""
        mon = self.monitor
        start = mon.backlog(lane, now)
        h = start
        if self.o.interference and self.o.w_interference > 0:
            cls = "memory" if self.memory[op] else "compute"
            if cls == "memory":  # two memory-bound ops share bandwidth; a matmul does not
                overlap = 0.0
                for other in self.lanes[dag.kind]:
                    if other != lane:
                        overlap += min(d, max(0.0, mon.class_left(other, cls, now) - start))
                h += self.o.w_interference * overlap
        if self.o.cross_s:
            h += self.o.cross_s * sum(1 for p in self.deps[op] if dag.ran_on[p] != lane)
        return h

    def budget(self, dag: BatchDag) -> float:
        """The most predicted time one task of this batch may hold a lane.

        Low-value: `split_s` (`gate_s` while high-value work is active); others:
        `max_chain_s`. With a deadline, each is at least its fraction of the batch's deadline
        window: what a task may block is relative to the SLA the waiting work must meet.
        """
        o = self.o
        if dag.low:
            gated = o.gating and self.high_active(dag.kind)
            s, frac = (o.gate_s, o.gate_frac) if gated else (o.split_s, o.split_frac)
        else:
            s, frac = o.max_chain_s, o.chain_frac
        b = dag.batch
        if frac > 0 and math.isfinite(b.deadline_s) and b.deadline_s > b.created_s:
            s = max(s, frac * (b.deadline_s - b.created_s))
        return s

    def _spare(self, dag: BatchDag, free: list[int]) -> int:
        """Other free lanes that no ready op of another batch of similar value would take.

        For a high-value batch, low-value ready ops do not count: a lane they would take is
        better spent on this batch.
        """
        k = dag.kind
        others = self.ready_n[k] - (0 if dag.low else self.ready_low[k]) - len(dag.ready)
        return max(0, len(free) - 1 - others)

    def _piece_rows(self, dag: BatchDag, op: int, lane: int, now: float) -> int:
        """Rows of `op` to issue now: all that are left, or a piece (splitting).

        Low-value: pieces within `budget()` (`split_s`, or `gate_s` while high-value work is
        active), so no low-value task blocks a lane for long. Otherwise: share the op with the
        other lanes that no ready op of similar value claims, so that all finish together
        (water-filling on their predicted free times); this lane takes its share now, the rest
        stays ready.
        """
        left = dag.size - dag.next_row[op]
        if not (self.o.splitting and self.splittable[op]) or left < 2 or dag.kind == "accel":
            return left  # accel: pieces on two streams would race in their concatenation
        d_left = self.op_s(op, left)
        if dag.low:
            cap = min(self.budget(dag), self._cheap_piece_s(op, left, self.o.piece_efficiency))
            return self._rows_within(op, left, cap) if d_left > cap else left
        if left < 2 * self.o.min_piece_rows:
            return left
        if self.o.split_cheaper:  # pieces cheaper per row than the whole, whatever the value
            cap = self._cheap_piece_s(op, left, 1.0)
            if d_left > cap:
                return self._rows_within(op, left, cap)
        if d_left * self.o.parallel_efficiency < self.min_gain_s:
            return left  # too short for any split to pay
        starts = self._helper_starts(dag, op, lane, now)
        if not starts:
            return left
        fixed = self.op_s(op, 1) + self.engine_overhead_s
        share = waterfill(d_left, starts, fixed)
        if (d_left - share) * self.o.parallel_efficiency < self.min_gain_s:
            return left
        return min(left, max(self.o.min_piece_rows, math.ceil(left * share / d_left)))

    def _helper_starts(self, dag: BatchDag, op: int, lane: int, now: float) -> list[float]:
        """When each other lane could start on the rest of `op` (seconds from now).

        Ready ops of other batches of similar value each claim one of the soonest-free lanes
        (they run in parallel at no extra cost); this batch's other ready ops are put, in
        rank order, on the lanes that free first.
        """
        k = dag.kind
        claimed = self.ready_n[k] - (0 if dag.low else self.ready_low[k]) - len(dag.ready)
        starts = sorted(self.monitor.backlog(ln, now) for ln in self.lanes[k] if ln != lane)
        starts = starts[max(0, claimed) :]
        if starts:
            mine = sorted((o for o in dag.ready if o != op), key=lambda o: -dag.rank[o])
            for o in mine:
                rows = dag.size - dag.next_row[o]
                heapq.heapreplace(starts, starts[0] + self.op_s(o, rows))
        return starts

    def _cheap_piece_s(self, op: int, left: int, eff: float) -> float:
        """The predicted time of the smallest piece of `op` (powers of two from
        `min_piece_rows`) whose cost per row, its task's engine overhead included, is within
        `eff` of the whole remainder's (+inf if none): a low-value piece that short
        (`piece_efficiency`) costs the lanes (almost) nothing and lets waiting high-value work
        in sooner; with `eff` 1, pieces that cost less than the whole, worth cutting for any
        batch (and they spread over the lanes). Where the per-row cost falls with the rows
        (most models), that is a large piece or none; where it does not (din: its attention
        costs more per row in larger batches), a small one.
        """
        if eff <= 0:
            return math.inf
        ov = self.engine_overhead_s
        per_row = (self.op_s(op, left) + ov) / left
        rows = self.o.min_piece_rows
        while rows < left:
            d = self.op_s(op, rows)
            if eff * (d + ov) / rows <= per_row:
                return d
            rows *= 2
        return math.inf

    def _rows_within(self, op: int, left: int, cap_s: float) -> int:
        """The most rows whose predicted time fits in `cap_s`, but never so few that the
        piece's fixed cost (op on `min_piece_rows`, plus a dispatch) exceeds
        `piece_overhead` of its time: splitting must not burn the capacity it protects."""
        fixed = self.op_s(op, 1) + self.engine_overhead_s
        cap_s = max(cap_s, fixed / self.o.piece_overhead)
        lo, hi = min(self.o.min_piece_rows, left), left
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.op_s(op, mid) <= cap_s:
                lo = mid
            else:
                hi = mid - 1
        return math.ceil(left / math.ceil(left / lo))  # equal pieces: no runt at the end

    def _make_task(self, c: _Cand, lane: int, free: list[int], now: float) -> Task:
        dag, op = c.dag, c.op
        rows = self._piece_rows(dag, op, lane, now)
        a = dag.next_row[op]
        if rows < dag.size - a or a > 0:
            task = self.issue(dag, (op,), (a, a + rows), lane, now)
        else:
            chain = self._chain(dag, op, free) if self.o.chaining else [op]
            whole = self.o.whole_tasks and len(chain) == self.n_ops
            task = self.issue(dag, chain, None, lane, now, whole)
        return task

    def _chain(self, dag: BatchDag, head: int, free: list[int]) -> list[int]:
        """`head` and the batch's next ops to run after it on the same lane, in order."""
        budget = self.budget(dag)
        spare = 0 if dag.low else min(self._spare(dag, free), len(dag.ready) - 1)
        if spare > 0:  # leave a share of the parallel work to idle lanes, if that pays
            work = sum(dag.dur[o] for o in dag.ready)
            share = work / (1 + spare)
            if (work - share) * self.o.parallel_efficiency >= self.min_gain_s:
                budget = min(budget, max(dag.dur[head], share))
        if dag.n_done == 0 and dag.tasks == 0 and dag.total_s <= budget:
            if not (self.o.priority and self._outranked(self.heaps[dag.kind], dag, self.out_op)):
                return list(self.all_ops)  # a fresh batch that fits: all of it, in order
        chain, inside, t = [head], {head}, dag.dur[head]
        rank, st = dag.rank, dag.state
        cands = [(-rank[o], o) for o in dag.ready if o != head and dag.next_row[o] == 0]
        heapq.heapify(cands)
        self._unlock(dag, head, inside, cands)
        heap = self.heaps[dag.kind]
        while cands:
            _, nxt = cands[0]
            if t + dag.dur[nxt] > budget:
                break
            if self.o.priority and self._outranked(heap, dag, nxt):
                break
            heapq.heappop(cands)
            chain.append(nxt)
            inside.add(nxt)
            t += dag.dur[nxt]
            self._unlock(dag, nxt, inside, cands)
        assert all(st[o] in (WAIT, READY) for o in chain)
        return chain

    def _unlock(self, dag: BatchDag, op: int, inside: set[int], cands: list) -> None:
        """Successors of `op` whose producers are all done or in the chain join `cands`."""
        st = dag.state
        for s in self.succ[op]:
            if st[s] == WAIT and all(st[d] == DONE or d in inside for d in self.deps[s]):
                heapq.heappush(cands, (-dag.rank[s], s))

    def _outranked(self, heap: list[tuple], dag: BatchDag, nxt: int) -> bool:
        """Does another batch's ready op beat continuing this chain by more than the margin?"""
        while heap and self.valid(heap[0]) is None:
            heapq.heappop(heap)
        if not heap or heap[0][3] == dag.bid:
            return False
        return -heap[0][0] > self.op_prio(dag, nxt) + self.o.chain_margin_s


# ------------------------------------------------------------------------------ maths


def waterfill(work_s: float, starts: Sequence[float], piece_s: float = 0.0) -> float:
    """Seconds of `work_s` this lane (free now) should take so that it and helper lanes
    (free after `starts` seconds, each paying `piece_s` for its piece) finish together.

    Returns `work_s` when no helper frees early enough to help.
    """
    assert work_s >= 0 and piece_s >= 0
    offs = sorted(s + piece_s for s in starts)
    total, t = work_s, work_s
    for k, f in enumerate(offs, start=2):
        if f >= t:
            break
        total += f
        t = total / k
    return t


# ------------------------------------------------------------------------------ factory


def make(
    name: str,
    lane_kinds: Sequence[LaneKind],
    cost: Cost | None,
    graph_info: GraphInfo | None,
    **options: Any,
) -> DagPolicy:
    """Build `roundrobin` or `opstream` (called by `make_operator_policy`).

    Without a cost model, an analytic roofline one (`CostModel.analytic`) stands in: the
    policies correct it online from what lanes report.
    """
    if graph_info is None:
        raise ValueError(f"operator policy {name!r} needs the model's operator graph")
    if cost is None:
        from recsched.graph.cost import CostModel

        cost = CostModel.analytic(graph_info)
    opts = OpStreamOptions.from_dict(options)
    if name == "opstream":
        return OpStream(lane_kinds, cost, graph_info, opts)
    if name == "roundrobin":
        return RoundRobin(
            lane_kinds,
            cost,
            graph_info,
            engine_overhead_s=opts.engine_overhead_s,
            dispatch_s=opts.dispatch_s,
            check=opts.check,
        )
    raise ValueError(f"unknown operator-graph policy {name!r}")


@dataclass(frozen=True)
class GranularityChoice:
    """The granularity `choose_granularity` picked, and the lane time it predicted for each
    candidate (ms per 1,000 items served)."""

    choice: str
    lane_ms_per_kitem: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"choice": self.choice, "lane_ms_per_kitem": dict(self.lane_ms_per_kitem)}


def choose_granularity(
    profile: Mapping[str, Any],
    batches: Sequence[int],
    engine_overhead_s: float = OpStreamOptions.engine_overhead_s,
    candidates: Sequence[str] = ("model", "coarse", "fine"),
    margin: float = 0.25,
) -> GranularityChoice:
    """The granularity whose lane time over `batches` (the batch sizes the request level
    forms, `request.saturated_batches`) is least, from a measured profile
    (`recsched.graph.profile`).

    A batch of b rows costs, at `model`, the compiled forward (`whole_ms`) plus one engine
    task; at `coarse` or `fine`, the op-by-op run (`run_ms`: every op with the graph runner's
    measured dispatch, in one sequence, so with the cache misses a real run meets) plus one
    engine task per op (chaining can save some: this is the pessimistic side). Python
    dispatch per op is what makes small batches dear at the finer granularities. The
    parallelism inside one batch is not counted: it shortens a batch only while lanes idle,
    and a capacity is set when they are busy.

    A later candidate displaces an earlier one only when it is predicted `margin` cheaper:
    two profiles of one model here differ by up to 25-40% at a batch size, and a serial
    profile does not see the GIL that eager ops take on concurrent lanes, which the compiled
    `model` forward runs without (measured: BENCHMARKS.md, "OpStream on a mixed-value
    workload").
    """
    assert 0 <= margin < 1, "margin is a fraction"
    assert batches and min(batches) >= 1, "at least one batch, each of at least one row"
    sizes = [float(b) for b in profile["batch_sizes"]]
    grans = profile.get("granularities", {})
    items = float(sum(batches))
    eo_ms = engine_overhead_s * 1e3
    work: dict[str, float] = {}
    for g in candidates:
        if g == "model":
            table, tasks = list(profile["whole_ms"]), 1
        elif g in grans and "run_ms" in grans[g]:
            table, tasks = list(grans[g]["run_ms"]), int(grans[g]["n_ops"])
        else:
            continue  # not profiled at this granularity
        ms = sum(interpolate(sizes, table, b) for b in batches) + len(batches) * tasks * eo_ms
        work[g] = ms / items * 1e3
    assert work, f"the profile has none of {list(candidates)}"
    order = [g for g in candidates if g in work]
    best = order[0]
    for g in order[1:]:
        if work[g] < (1 - margin) * work[best]:
            best = g
    return GranularityChoice(best, work)


def resolve_granularity(
    cfg: EngineConfig, profile: Mapping[str, Any] | None = None, sizes: Sequence[int] = ()
) -> tuple[EngineConfig, GranularityChoice | None]:
    """`cfg` with an `auto` granularity chosen for queries of `sizes` (a sample of the served
    mix) by `choose_granularity` on `profile`, and the choice (None when there was nothing to
    choose). The request knobs must be resolved first (`tuned` reads as `dynamic`). The
    sequential level runs no graph: its `auto` becomes the unused default, `coarse`. With no
    profile (nothing measured to choose from) it is `model`, the measured default."""
    if cfg.granularity != "auto":
        return cfg, None
    if cfg.operator == "sequential":
        return cfg.replace(granularity="coarse"), None
    if profile is None:
        return cfg.replace(granularity="model"), None
    batches = saturated_batches(sizes, cfg.request, cfg.batch_size, cfg.merge_delay_ms * 1e-3)
    choice = choose_granularity(profile, batches)
    return cfg.replace(granularity=choice.choice), choice
