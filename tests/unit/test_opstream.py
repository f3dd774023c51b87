"""OpStream and RoundRobin with a manual clock and fake lane results: placement decisions
(priority order, interference, gating, splitting, chaining) and the invariants."""

from __future__ import annotations

import math

import pytest

from recsched.graph.ops import GraphInfo, OpInfo
from recsched.sched.operator import make_operator_policy
from recsched.sched.opstream import (
    BatchDag,
    OpStream,
    OpStreamOptions,
    RoundRobin,
    make,
    waterfill,
)
from recsched.types import Batch, LaneResult, Part, Task

MS = 1e-3


class FakeCost:
    """op_s(op, rows) = fixed[op] + per_item[op] * rows; no per-op dispatch."""

    dispatch_s = 0.0

    def __init__(self, fixed: list[float], per_item: list[float] | None = None) -> None:
        self.fixed = fixed
        self.per_item = per_item or [0.0] * len(fixed)

    def op_s(self, op: int, batch: int) -> float:
        return self.fixed[op] + self.per_item[op] * batch

    def whole_s(self, batch: int) -> float:
        return sum(self.op_s(i, batch) for i in range(len(self.fixed)))


def graph(*ops: tuple[tuple[int, ...], str], splittable: bool = True) -> GraphInfo:
    """A GraphInfo from (deps, class) per op; the last op is the output."""
    infos = tuple(
        OpInfo(i, f"op{i}", deps, cls, 1.0, 1.0, 0.0, splittable=splittable)  # type: ignore[arg-type]
        for i, (deps, cls) in enumerate(ops)
    )
    return GraphInfo("test", "coarse", infos, len(ops) - 1)


def batch(bid: int, n: int = 8, value: float = 1.0, t: float = 0.0, sla: float = 0.05) -> Batch:
    return Batch(bid, (Part(bid, 0, n),), "cpu", t, value, t + sla)


def opts(**kw) -> OpStreamOptions:
    base = dict(
        engine_overhead_s=0.0,
        cross_s=0.0,
        calibrate=False,
        check=True,
        whole_tasks=False,
        chain_frac=0.0,  # budgets are the absolute ones unless a test says otherwise
        split_frac=0.0,
        gate_frac=0.0,
        piece_efficiency=0.0,  # pieces by the budgets alone unless a test says otherwise
        split_cheaper=False,
    )
    return OpStreamOptions(**{**base, **kw})


def done(t: Task, start: float, end: float, error: str | None = None) -> LaneResult:
    return LaneResult(t.tid, t.bid, t.lane, start, end, error)


SINGLE = graph(((), "memory"))
CHAIN3 = graph(((), "memory"), ((0,), "compute"), ((1,), "compute"))
FORK = graph(((), "memory"), ((), "compute"), ((0, 1), "compute"))


# ------------------------------------------------------------------------------ priority


def test_high_value_runs_first_and_without_priority_fifo():
    for on, first in ((True, 1), (False, 0)):
        p = OpStream(["cpu"], FakeCost([1 * MS]), SINGLE, opts(priority=on))
        p.add(batch(0, value=1.0, t=0.0), 0.0)
        p.add(batch(1, value=10.0, t=0.001), 0.001)
        (t,) = p.schedule(0.001)
        assert t.bid == first


def test_earlier_deadline_first_at_equal_value():
    p = OpStream(["cpu"], FakeCost([1 * MS]), SINGLE, opts())
    p.add(batch(0, sla=0.100), 0.0)
    p.add(batch(1, sla=0.020), 0.0)
    assert [t.bid for t in p.schedule(0.0)] == [1]


def test_aging_old_low_value_beats_fresh_high_value():
    """A low-value batch that waited long enough outranks a new high-value one."""
    for gap, first in ((0.01, 1), (0.5, 0)):
        p = OpStream(["cpu"], FakeCost([1 * MS]), SINGLE, opts(gating=False))
        p.add(batch(0, value=1.0, t=0.0), 0.0)
        p.add(batch(1, value=10.0, t=gap), gap)
        assert [t.bid for t in p.schedule(gap)] == [first]


def test_ops_of_a_batch_follow_their_upward_rank():
    """Two independent ops on one lane: the one on the longer path to the output first."""
    g = graph(((), "memory"), ((), "memory"), ((1,), "compute"), ((0, 2), "compute"))
    p = OpStream(["cpu"], FakeCost([1 * MS, 1 * MS, 3 * MS, 1 * MS]), g, opts(chaining=False))
    p.add(batch(0), 0.0)
    (t,) = p.schedule(0.0)
    assert t.ops == (1,)


# ------------------------------------------------------------------------------ interference


@pytest.mark.parametrize("on", [True, False])
def test_interference_prefers_a_compute_op_beside_a_memory_op(on):
    p = OpStream(
        ["cpu", "cpu"],
        FakeCost([2 * MS, 1 * MS, 1 * MS]),
        FORK,
        opts(interference=on, chaining=False, splitting=False),
    )
    p.add(batch(0), 0.0)
    first = {t.lane: t for t in p.schedule(0.0)}
    assert {t.ops for t in first.values()} == {(0,), (1,)}
    mem_lane = next(ln for ln, t in first.items() if t.ops == (0,))
    other = 1 - mem_lane
    assert p.update([done(first[other], 0.0, 1 * MS)], 1 * MS) == []
    p.add(batch(1, t=1 * MS), 1 * MS)  # its memory op ranks higher than its compute op
    (t,) = p.schedule(1 * MS)
    assert t.lane == other and t.bid == 1
    assert t.ops == ((1,) if on else (0,))


def test_interference_penalty_grows_with_memory_overlap():
    p = OpStream(["cpu", "cpu"], FakeCost([4 * MS, 1 * MS, 1 * MS]), FORK, opts(chaining=False))
    p.add(batch(0), 0.0)
    tasks = {t.ops: t for t in p.schedule(0.0)}
    p.update([done(tasks[(1,)], 0.0, 1 * MS)], 1 * MS)
    dag, free = p.dags[0], tasks[(1,)].lane
    assert p.monitor.backlog(free, 1 * MS) == 0.0
    short, long_ = p.hurt(dag, 0, 1 * MS, free, 1 * MS), p.hurt(dag, 0, 5 * MS, free, 1 * MS)
    assert short == pytest.approx(0.3 * 1 * MS)
    assert long_ == pytest.approx(0.3 * 3 * MS)  # overlaps only the 3 ms left of the lookup
    assert p.hurt(dag, 1, 3 * MS, free, 1 * MS) == 0.0  # a compute op does not interfere


def test_crossing_lanes_costs_per_producer():
    p = OpStream(["cpu", "cpu"], FakeCost([1 * MS, 1 * MS, 1 * MS]), FORK, opts(cross_s=1e-5))
    dag = BatchDag(batch(0), FORK, "cpu", [MS] * 3, [2 * MS, 2 * MS, MS])
    dag.ran_on = [0, 1, -1]
    assert p.hurt(dag, 2, MS, 0, 0.0) == pytest.approx(1e-5)


# ------------------------------------------------------------------------------ gating


def one_high_three_low(**o) -> tuple[OpStream, list[Task]]:
    """Three lanes, one 1 ms op per batch: high-value batch 0 and low-value batches 1-3 at
    t=0, scheduled once (no splitting); the policy and the tasks it issued."""
    p = OpStream(["cpu"] * 3, FakeCost([1 * MS]), SINGLE, opts(splitting=False, **o))
    p.add(batch(0, value=10.0), 0.0)
    for b in (1, 2, 3):
        p.add(batch(b, value=1.0), 0.0)
    return p, p.schedule(0.0)


@pytest.mark.parametrize("gating, low_tasks", [(True, 1), (False, 2)])
def test_low_value_work_is_gated_while_high_value_is_active(gating, low_tasks):
    p, tasks = one_high_three_low(gating=gating, gate_lanes=1, gate_on="active")
    assert tasks[0].bid == 0
    assert sum(t.bid != 0 for t in tasks) == low_tasks
    assert p.idle_lanes("cpu") == 0  # gated work is still waiting: not idle
    # once the high-value batch is done, low-value work takes every lane
    hi = tasks[0]
    assert p.update([done(hi, 0.0, 1 * MS)], 1 * MS) == [0]
    more = p.schedule(1 * MS)
    assert len(more) == 3 - low_tasks


def test_reserved_lanes_take_no_low_value_work():
    """Three lanes, the first reserved: low-value batches take lanes 1 and 2 only, and wait
    while those are busy though lane 0 is free; a high-value batch takes lane 0."""
    p = OpStream(
        ["cpu"] * 3, FakeCost([1 * MS]), SINGLE,
        opts(splitting=False, gating=False, reserved_lanes=1, high_value=10.0),
    )  # fmt: skip
    for b in (1, 2, 3):
        p.add(batch(b, value=1.0), 0.0)
    low = p.schedule(0.0)
    assert sorted(t.lane for t in low) == [1, 2] and p.reserved == {0}
    assert p.schedule(0.0) == []  # batch 3 waits; lane 0 stays free
    p.add(batch(4, value=10.0, t=0.1 * MS), 0.1 * MS)
    (hi,) = p.schedule(0.1 * MS)
    assert (hi.bid, hi.lane) == (4, 0)
    p.update([done(hi, 0.1 * MS, 1.1 * MS)], 1.1 * MS)
    assert p.schedule(1.1 * MS) == []  # lane 0 free again, still not for low-value work
    p.update([done(low[0], 0.0, 1.2 * MS)], 1.2 * MS)
    (nxt,) = p.schedule(1.2 * MS)
    assert (nxt.bid, nxt.lane) == (3, low[0].lane)
    with pytest.raises(ValueError, match="reserved_lanes"):
        OpStream(["cpu"] * 2, FakeCost([1 * MS]), SINGLE, opts(reserved_lanes=2))


@pytest.mark.parametrize("gate_on, low_tasks", [("active", 0), ("waiting", 2)])
def test_gate_on_waiting_gates_only_while_high_value_work_waits(gate_on, low_tasks):
    """gate_lanes=0: under `active` low-value work waits while the high-value batch runs;
    under `waiting` it takes the free lanes once no high-value op waits for one, and a
    high-value batch that arrives with every lane busy takes the next lane that frees."""
    p, tasks = one_high_three_low(gate_on=gate_on, gate_lanes=0)
    assert tasks[0].bid == 0 and sum(t.bid != 0 for t in tasks) == low_tasks
    if gate_on == "waiting":  # every lane busy; a new high-value batch now waits
        p.add(batch(4, value=10.0), 0.1 * MS)
        assert p.schedule(0.1 * MS) == []
        low = next(t for t in tasks if t.bid != 0)
        p.update([done(low, 0.0, 1 * MS)], 1 * MS)
        nxt = p.schedule(1 * MS)
        assert [t.bid for t in nxt] == [4]  # the freed lane goes to it, not to batch 3
    with pytest.raises(AssertionError, match="gate_on"):
        opts(gate_on="sometimes")


# ------------------------------------------------------------------------------ splitting


def drain_one_lane(p: OpStream, now: float = 0.0) -> list[Task]:
    """Run everything on the policy's lanes, one task at a time, in issue order."""
    issued: list[Task] = []
    queue = p.schedule(now)
    while queue:
        t = queue.pop(0)
        issued.append(t)
        now += t.predicted_s
        p.update([done(t, now - t.predicted_s, now)], now)
        queue += p.schedule(now)
    return issued


def test_long_low_value_op_is_split_into_pieces_that_cover_the_rows_once():
    cost = FakeCost([0.0, 0.1 * MS], [0.1 * MS, 0.0])  # op0: 0.1 ms per row
    g = graph(((), "memory"), ((0,), "compute"))
    p = OpStream(["cpu"], cost, g, opts(high_value=10.0, split_s=1 * MS))
    p.add(batch(0, n=50, value=1.0), 0.0)
    issued = drain_one_lane(p)
    pieces = [t.rows for t in issued if t.ops == (0,)]
    assert pieces == [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50)]
    assert all(t.predicted_s <= 1 * MS + 1e-12 for t in issued if t.ops == (0,))
    assert issued[-1].ops == (1,) and issued[-1].rows is None  # after every piece
    assert p.queued() == 0


class RisingCost(FakeCost):
    """op_s(op, rows) = per_item * rows + square * rows^2: dearer per row in larger batches
    (din's attention)."""

    def __init__(self, per_item: float, square: float) -> None:
        super().__init__([0.0], [per_item])
        self.square = square

    def op_s(self, op: int, batch: int) -> float:
        return self.per_item[op] * batch + self.square * batch * batch


def test_low_value_work_is_cut_into_pieces_that_cost_nothing_extra_per_row():
    """However long the split budget, a low-value op whose cost per row does not fall with
    the rows is cut into short pieces (here the `piece_overhead` floor, 16 rows, binds: 8-row
    pieces would spend over a quarter of their time on the task's fixed cost); one whose cost
    per row falls (a fixed cost per task) stays whole. High-value work is cut only into
    pieces cheaper per row than the whole (`split_cheaper`)."""
    o = dict(high_value=10.0, split_s=1.0, engine_overhead_s=0.1 * MS, piece_efficiency=0.9,
             split_cheaper=True)  # fmt: skip
    p = OpStream(["cpu"], RisingCost(0.01 * MS, 0.001 * MS), SINGLE, opts(**o))
    p.add(batch(0, n=64, value=1.0), 0.0)
    pieces = [t.rows for t in drain_one_lane(p)]
    assert pieces == [(0, 16), (16, 32), (32, 48), (48, 64)]
    p = OpStream(["cpu"], FakeCost([1 * MS], [0.01 * MS]), SINGLE, opts(**o))
    p.add(batch(0, n=64, value=1.0), 0.0)
    assert [t.rows for t in drain_one_lane(p)] == [None]
    off = opts(**{**o, "piece_efficiency": 0.0, "split_cheaper": False})
    p = OpStream(["cpu"], RisingCost(0.01 * MS, 0.001 * MS), SINGLE, off)
    p.add(batch(0, n=64, value=1.0), 0.0)
    assert [t.rows for t in drain_one_lane(p)] == [None]
    # high-value work only into pieces cheaper per row than the whole: as these, but not
    # where the per-row cost falls with the rows
    p = OpStream(["cpu"], RisingCost(0.01 * MS, 0.001 * MS), SINGLE, opts(**o))
    p.add(batch(0, n=64, value=10.0), 0.0)
    assert [t.rows for t in drain_one_lane(p)] == [(0, 16), (16, 32), (32, 48), (48, 64)]
    p = OpStream(["cpu"], FakeCost([1 * MS], [0.01 * MS]), SINGLE, opts(**o))
    p.add(batch(0, n=64, value=10.0), 0.0)
    assert [t.rows for t in drain_one_lane(p)] == [None]


@pytest.mark.parametrize("gate_on", ["active", "waiting"])
def test_gated_low_value_pieces_are_smaller_while_high_value_is_active(gate_on):
    """Under either `gate_on`, low-value pieces stay within `gate_s` while high-value work
    is in flight."""
    cost = FakeCost([0.0, 0.0], [0.1 * MS, 0.1 * MS])
    g = graph(((), "memory"), ((0,), "compute"))
    o = opts(split_s=2 * MS, gate_s=0.5 * MS, min_piece_rows=1, gate_on=gate_on)
    p = OpStream(["cpu", "cpu"], cost, g, o)
    p.add(batch(0, n=1, value=10.0), 0.0)
    p.add(batch(1, n=100, value=1.0), 0.0)
    tasks = p.schedule(0.0)
    assert [t.bid for t in tasks] == [0, 1]
    assert tasks[1].rows == (0, 5)  # 0.5 ms of 0.1 ms rows
    p.update([done(tasks[0], 0.0, 0.2 * MS)], 0.2 * MS)
    p.update([done(tasks[1], 0.0, 0.5 * MS)], 0.5 * MS)  # high-value batch 0 is done
    assert p.dags.keys() == {1}
    rows = [t.rows for t in p.schedule(0.5 * MS)]
    assert rows[0] == (5, 24)  # now up to split_s = 2 ms: 95 rows in 5 equal pieces


def test_splitting_off_runs_the_op_whole():
    cost = FakeCost([0.0, 0.1 * MS], [0.1 * MS, 0.0])
    g = graph(((), "memory"), ((0,), "compute"))
    p = OpStream(["cpu"], cost, g, opts(high_value=10.0, split_s=1 * MS, splitting=False))
    p.add(batch(0, n=50, value=1.0), 0.0)
    (t,) = p.schedule(0.0)
    assert t.rows is None and t.ops == (0,)  # the chain budget still applies


def test_unsplittable_op_is_never_split():
    cost = FakeCost([0.0, 0.0], [0.1 * MS, 0.0])
    g = graph(((), "memory"), ((0,), "compute"), splittable=False)
    p = OpStream(["cpu"], cost, g, opts(high_value=10.0, split_s=1 * MS))
    p.add(batch(0, n=50, value=1.0), 0.0)
    assert all(t.rows is None for t in drain_one_lane(p))


def test_a_long_op_is_shared_with_idle_lanes():
    cost = FakeCost([0.0], [0.1 * MS])
    p = OpStream(["cpu", "cpu"], cost, SINGLE, opts())
    p.add(batch(0, n=100, value=1.0), 0.0)
    tasks = p.schedule(0.0)
    assert sorted(t.lane for t in tasks) == [0, 1]
    rows = sorted(t.rows for t in tasks)
    assert rows[0][0] == 0 and rows[0][1] == rows[1][0] and rows[1][1] == 100
    assert abs((rows[0][1] - rows[0][0]) - (rows[1][1] - rows[1][0])) <= 2


def test_a_split_op_takes_the_lane_that_frees_soon():
    """Lane 1 will be busy 2 ms with a short op: lane 0 takes about (10 + 2) / 2 ms of the
    10 ms op, and its rest goes first to the next free lane."""
    g = graph(((), "compute"), ((), "compute"), ((0, 1), "compute"))
    cost = FakeCost([0.0, 2 * MS, 0.0], [0.1 * MS, 0.0, 0.0])
    p = OpStream(["cpu", "cpu"], cost, g, opts(chaining=False))
    p.add(batch(0, n=100), 0.0)
    first, second = p.schedule(0.0)
    # (10 ms + 2 ms + 0.1 ms for the extra piece) / 2 = 6.05 ms of 0.1 ms rows
    assert (first.ops, first.rows, first.lane) == ((0,), (0, 61), 0)
    assert (second.ops, second.rows, second.lane) == ((0,), (61, 100), 1)
    p.update([done(second, 0.0, 4 * MS)], 4 * MS)
    (short,) = p.schedule(4 * MS)
    assert short.ops == (1,) and short.lane == 1


def test_waterfill():
    assert waterfill(10.0, []) == 10.0
    assert waterfill(10.0, [0.0]) == pytest.approx(5.0)
    assert waterfill(10.0, [2.0]) == pytest.approx(6.0)
    assert waterfill(10.0, [20.0]) == 10.0
    assert waterfill(10.0, [0.0, 0.0, 0.0]) == pytest.approx(2.5)
    assert waterfill(10.0, [0.0], piece_s=1.0) == pytest.approx(5.5)


# ------------------------------------------------------------------------------ chaining


def test_a_batch_runs_as_one_chain_on_one_lane():
    p = OpStream(["cpu"], FakeCost([1 * MS] * 3), CHAIN3, opts())
    p.add(batch(0), 0.0)
    (t,) = p.schedule(0.0)
    assert t.ops == (0, 1, 2) and t.predicted_s == pytest.approx(3 * MS)


def test_a_whole_fresh_batch_is_issued_as_the_model_forward():
    """A chain of every op of a batch not started yet is `Task(ops=None)`: the lane runs the
    model's own forward, with no per-op dispatch. Once started, chains name their ops."""
    p = OpStream(["cpu"], FakeCost([1 * MS] * 3), CHAIN3, opts(whole_tasks=True))
    p.add(batch(0), 0.0)
    (t,) = p.schedule(0.0)
    assert t.ops is None and t.rows is None and p.ops_of(t) == (0, 1, 2)
    assert p.update([done(t, 0.0, 3 * MS)], 3 * MS) == [0]
    p = OpStream(["cpu"], FakeCost([1 * MS] * 3), CHAIN3, opts(whole_tasks=True, max_chain_s=1e-3))
    p.add(batch(1), 0.0)
    assert [t.ops for t in drain_one_lane(p)] == [(0,), (1,), (2,)]


def test_chain_budget_and_chaining_off():
    p = OpStream(["cpu"], FakeCost([1 * MS] * 3), CHAIN3, opts(max_chain_s=2.5 * MS))
    p.add(batch(0), 0.0)
    assert [t.ops for t in drain_one_lane(p)] == [(0, 1), (2,)]
    p = OpStream(["cpu"], FakeCost([1 * MS] * 3), CHAIN3, opts(chaining=False))
    p.add(batch(0), 0.0)
    assert [t.ops for t in drain_one_lane(p)] == [(0,), (1,), (2,)]


def test_parallel_ops_go_to_idle_lanes_not_into_one_chain():
    p = OpStream(["cpu", "cpu"], FakeCost([2 * MS, 2 * MS, 1 * MS]), FORK, opts())
    p.add(batch(0), 0.0)
    tasks = p.schedule(0.0)
    assert sorted(t.ops for t in tasks) == [(0,), (1,)]
    assert {t.lane for t in tasks} == {0, 1}
    one = OpStream(["cpu"], FakeCost([2 * MS, 2 * MS, 1 * MS]), FORK, opts())
    one.add(batch(0), 0.0)
    (t,) = one.schedule(0.0)
    assert sorted(t.ops[:2]) == [0, 1] and t.ops[2] == 2


def test_chain_stops_when_another_batch_outranks_its_next_op():
    g = graph(((), "compute"), ((0,), "compute"))
    cost = FakeCost([2 * MS, 1 * MS])
    for margin, ops in ((0.0, (0,)), (5 * MS, (0, 1))):
        p = OpStream(["cpu"], cost, g, opts(w_rank=1.0, chain_margin_s=margin))
        p.add(batch(0, sla=0.0500), 0.0)
        p.add(batch(1, sla=0.0501), 0.0)  # a hair less urgent than batch 0
        (t,) = p.schedule(0.0)
        assert t.bid == 0 and t.ops == ops


# ------------------------------------------------------------------------------ load monitor


def test_backlog_is_predicted_at_issue_and_corrected_by_results():
    p = OpStream(["cpu"], FakeCost([3 * MS]), SINGLE, opts(depth=2))
    p.add(batch(0), 0.0)
    p.add(batch(1), 0.0)
    a, b = p.schedule(0.0)
    assert p.monitor.backlog(0, 1 * MS) == pytest.approx(5 * MS)
    assert p.monitor.n_inflight(0) == 2
    p.update([done(a, 0.0, 1 * MS)], 1 * MS)  # finished early: only b's 3 ms remain
    assert p.monitor.backlog(0, 1 * MS) == pytest.approx(3 * MS)
    p.update([done(b, 1 * MS, 2 * MS)], 2 * MS)
    assert p.monitor.backlog(0, 2 * MS) == 0.0


def test_predictions_learn_from_measured_durations():
    p = OpStream(["cpu"], FakeCost([1 * MS]), SINGLE, opts(calibrate=True, calib_alpha=0.5))
    now = 0.0
    for i in range(20):
        p.add(batch(i, t=now), now)
        (t,) = p.schedule(now)
        p.update([done(t, now, now + 2 * MS)], now + 2 * MS)
        now += 2 * MS
    assert p.factor[0] == pytest.approx(2.0, rel=1e-3)
    p.add(batch(99, t=now), now)
    (t,) = p.schedule(now)
    assert t.predicted_s == pytest.approx(2 * MS, rel=0.05)


# ------------------------------------------------------------------------------ invariants


def test_batch_dag_refuses_out_of_order_or_repeated_work():
    dag = BatchDag(batch(0), CHAIN3, "cpu", [MS] * 3, [3 * MS, 2 * MS, MS])
    with pytest.raises(AssertionError):
        dag.issue((1,), None, 0)  # before its producer
    dag.issue((0,), (0, 4), 0)
    with pytest.raises(AssertionError):
        dag.issue((0,), (2, 8), 0)  # overlaps the issued piece
    with pytest.raises(AssertionError):
        dag.finish((0,), (0, 8))  # more rows done than issued
    dag.check()  # a refused call changed nothing
    assert dag.finish((0,), (0, 4)) == [] and dag.state[1] == 0


def test_a_result_for_an_unknown_or_finished_task_is_refused():
    p = OpStream(["cpu"], FakeCost([1 * MS]), SINGLE, opts())
    p.add(batch(0), 0.0)
    (t,) = p.schedule(0.0)
    assert p.update([done(t, 0.0, 1 * MS)], 1 * MS) == [0]
    with pytest.raises(KeyError):
        p.update([done(t, 0.0, 1 * MS)], 1 * MS)
    with pytest.raises(AssertionError):
        p.add(batch(0), 1 * MS) or p.add(batch(0), 1 * MS)


def test_a_failed_task_fails_its_batch_once_and_stragglers_are_ignored():
    p = OpStream(["cpu", "cpu"], FakeCost([2 * MS, 2 * MS, 1 * MS]), FORK, opts())
    p.add(batch(0), 0.0)
    a, b = p.schedule(0.0)
    p.add(batch(1), 0.0)
    assert p.update([done(a, 0.0, 1 * MS, error="boom")], 1 * MS) == [0]
    nxt = p.schedule(1 * MS)
    assert [t.bid for t in nxt] == [1]
    assert p.update([done(b, 0.0, 2 * MS)], 2 * MS) == []  # the failed batch's straggler
    assert not p.dead
    p.check_invariants()
    assert p.batches_in == 2 and p.batches_done == 1


def test_idle_lanes_and_queued():
    p = OpStream(["cpu", "cpu", "accel"], FakeCost([1 * MS]), SINGLE, opts())
    assert p.idle_lanes("cpu") == 2 and p.idle_lanes("accel") == 1 and p.queued() == 0
    p.add(batch(0), 0.0)
    assert p.idle_lanes("cpu") == 1  # one ready op will take one of them
    p.schedule(0.0)
    assert p.idle_lanes("cpu") == 1 and p.queued() == 1


def test_offloaded_batches_run_on_accelerator_lanes():
    p = OpStream(["cpu", "accel"], FakeCost([1 * MS] * 3), CHAIN3, opts())
    p.add(Batch(0, (Part(0, 0, 8),), "accel", 0.0, 1.0, 0.05), 0.0)
    p.add(batch(1), 0.0)
    lanes = {t.bid: t.lane for t in p.schedule(0.0)}
    assert lanes == {0: 1, 1: 0}


# ------------------------------------------------------------------------------ roundrobin


def test_roundrobin_sends_each_ready_op_to_the_lanes_in_turn():
    g = graph(*[((), "memory")] * 4, ((0, 1, 2, 3), "compute"))
    p = RoundRobin(["cpu", "cpu"], FakeCost([1 * MS] * 5), g, check=True)
    p.add(batch(0), 0.0)
    tasks = p.schedule(0.0)
    assert [(t.ops, t.lane) for t in tasks] == [((0,), 0), ((1,), 1), ((2,), 0), ((3,), 1)]
    for t in tasks[:3]:
        assert p.update([done(t, 0.0, 1 * MS)], 1 * MS) == []
    assert p.schedule(1 * MS) == []  # the output op waits for its last producer
    p.update([done(tasks[3], 0.0, 1 * MS)], 1 * MS)
    (out,) = p.schedule(1 * MS)
    assert out.ops == (4,) and out.lane == 0
    assert p.update([done(out, 1 * MS, 2 * MS)], 2 * MS) == [0]


# ------------------------------------------------------------------------------ factory


def test_make_validates_and_fills_in_a_cost_model():
    with pytest.raises(ValueError, match="operator graph"):
        make("opstream", ["cpu"], FakeCost([MS]), None)
    with pytest.raises(ValueError, match="unknown opstream options"):
        make("opstream", ["cpu"], FakeCost([MS]), SINGLE, bogus=1)
    p = make_operator_policy("opstream", ["cpu"], None, SINGLE, gating=False)
    assert isinstance(p, OpStream) and not p.o.gating and p.cost is not None
    assert isinstance(make_operator_policy("roundrobin", ["cpu"], None, SINGLE), RoundRobin)


def test_options_are_checked():
    with pytest.raises(AssertionError):
        OpStreamOptions(depth=0)
    with pytest.raises(AssertionError):
        OpStreamOptions(w_slack=0.0, w_age=0.0)  # nothing would age: starvation
    assert math.isclose(OpStreamOptions().weights().rate, 1.25)


# ------------------------------------------------------------------------------ CUDA lane


class FakeEvent:
    """Completes after `polls` queries; `elapsed_time` in ms like torch.cuda.Event."""

    def __init__(self, polls: int = 2) -> None:
        self.polls, self.recorded = polls, 0

    def record(self, stream) -> None:
        self.recorded += 1

    def query(self) -> bool:
        self.polls -= 1
        return self.polls < 0

    def synchronize(self) -> None:
        self.polls = -1

    def elapsed_time(self, end: FakeEvent) -> float:
        return 2.0


class FakeCuda:
    def __init__(self) -> None:
        self.launched: list[str] = []

    def stream(self, priority: int) -> str:
        return f"stream(priority={priority})"

    def event(self) -> FakeEvent:
        return FakeEvent()

    def on_stream(self, stream):
        import contextlib

        return contextlib.nullcontext()

    def inference(self):
        import contextlib

        return contextlib.nullcontext()


def test_cuda_lane_reports_in_order_with_gpu_times_and_errors():
    """The lane's thread and polling logic on CPU with a fake backend (no GPU here)."""
    import threading

    from recsched.lanes.cuda import CudaLane

    got: list[LaneResult] = []
    all_done = threading.Event()

    def on_done(r: LaneResult) -> None:
        got.append(r)
        if len(got) == 3:
            all_done.set()

    fake = FakeCuda()
    lane = CudaLane(0, on_done, backend=fake, priority=-1)
    assert lane.stream == "stream(priority=-1)"
    lane.start()

    def boom() -> None:
        raise RuntimeError("launch failed")

    for tid, work in enumerate([lambda: fake.launched.append("a"), boom, lambda: None]):
        lane.submit(Task(tid, tid, 0, (0,), None, 0.0), work)
    lane.stop(timeout=5)
    assert all_done.is_set() and not lane.alive()
    assert [r.tid for r in got] == [0, 1, 2] and fake.launched == ["a"]
    assert got[0].error is None and "launch failed" in (got[1].error or "")
    assert all(r.end_s - r.start_s == pytest.approx(2e-3) for r in got)
    assert lane.stats.tasks == 3 and lane.stats.busy_s == pytest.approx(6e-3)


def test_accelerator_batches_are_never_split_into_row_pieces():
    cost = FakeCost([0.0], [0.1 * MS])
    p = OpStream(["accel", "accel"], cost, SINGLE, opts(high_value=10.0, split_s=1 * MS))
    p.add(Batch(0, (Part(0, 0, 100),), "accel", 0.0, 1.0, 0.05), 0.0)
    (t,) = p.schedule(0.0)
    assert t.rows is None


def test_a_started_batch_is_finished_before_fresh_work_of_similar_urgency():
    g = graph(((), "memory"), ((), "memory"), ((0, 1), "compute"))
    for bonus, first in ((5 * MS, 0), (0.0, 1)):
        p = OpStream(
            ["cpu"], FakeCost([1 * MS] * 3), g, opts(chaining=False, started_bonus_s=bonus)
        )
        p.add(batch(0, sla=0.050), 0.0)
        (t,) = p.schedule(0.0)
        p.add(batch(1, sla=0.049), 0.0)  # 1 ms more urgent, but not started
        p.update([done(t, 0.0, 1 * MS)], 1 * MS)
        (nxt,) = p.schedule(1 * MS)
        assert nxt.bid == first


def test_task_budgets_scale_with_the_deadline_window():
    """A task may block a lane for a fraction of the SLA at least: 20 ms of 100 ms here."""
    o = opts(chain_frac=0.2, max_chain_s=1e-3)
    p = OpStream(["cpu"], FakeCost([10 * MS] * 3), CHAIN3, o)
    p.add(batch(0, sla=0.100), 0.0)
    assert p.budget(p.dags[0]) == pytest.approx(20 * MS)
    assert [t.ops for t in drain_one_lane(p)] == [(0, 1), (2,)]
    p = OpStream(["cpu"], FakeCost([10 * MS] * 3), CHAIN3, o)
    p.add(Batch(0, (Part(0, 0, 8),), "cpu", 0.0, 1.0, math.inf), 0.0)  # no deadline: absolute
    assert p.budget(p.dags[0]) == pytest.approx(1 * MS)
