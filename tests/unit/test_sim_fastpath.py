"""The whole+sequential fast path (recsched.sim.fastpath) gives exactly what the event loop
running the real policies gives: per-query completion times, statuses, servers, lane busy
times and task counts, the end time and the event count, with interference, the idle model,
full queues, unfinished queries and every balancer; ties included (times on a coarse grid)."""

from __future__ import annotations

import numpy as np
import pytest

from recsched.config import EngineConfig, preset
from recsched.sim.cluster import Cluster
from recsched.sim.fastpath import why_not
from recsched.sim.interference import DEFAULT, NONE, InterferenceModel
from recsched.sim.lanes import IdleModel
from recsched.sim.run import simulate
from recsched.sim.server import ServerType
from recsched.types import DEFAULT_CLASS
from recsched.workload import Workload


class Linear:
    """whole_s(b) = fixed + per_item * b."""

    dispatch_s = 0.0

    def __init__(self, per_item: float = 0.25, fixed: float = 0.0) -> None:
        self.per_item, self.fixed = per_item, fixed

    def whole_s(self, batch: int) -> float:
        return self.fixed + self.per_item * batch

    def op_s(self, op: int, batch: int) -> float:
        return self.per_item * batch


def _workload(rng: np.random.Generator, n: int, grid: float | None, rate: float) -> Workload:
    gaps = rng.exponential(1.0 / rate, n)
    t = np.cumsum(gaps)
    if grid is not None:  # many exact ties between arrivals and completions
        t = np.floor(t / grid) * grid
    sizes = rng.integers(1, 9, n)
    return Workload(t, sizes, np.zeros(n, dtype=np.int64), (DEFAULT_CLASS,), float(t[-1]) + 0.1)


def _both(types, wl, balancer, until=np.inf, seed=0):
    runs = []
    for fast in (False, True):
        cl = Cluster(types, balancer, seed, fast=fast)
        runs.append((cl.run(wl, "m", None, until=until), cl))
    return runs


def _assert_same(runs) -> None:
    (slow, cs), (fast, cf) = runs
    assert cf.used_fast_path and not cs.used_fast_path
    np.testing.assert_array_equal(slow.done_s, fast.done_s)  # NaN == NaN here, bit-exact
    assert slow.status.tolist() == fast.status.tolist()
    assert slow.server.tolist() == fast.server.tolist()
    assert slow.end_s == fast.end_s and slow.events == fast.events
    for a, b in zip(cs.servers, cf.servers, strict=True):
        assert (a.submitted, a.rejected, a.completed) == (b.submitted, b.rejected, b.completed)
        assert [ln.stats.busy_s for ln in a.lanes] == [ln.stats.busy_s for ln in b.lanes]
        assert [ln.stats.tasks for ln in a.lanes] == [ln.stats.tasks for ln in b.lanes]


IDLE = IdleModel([1, 4, 8], [1.5, 2.0, 3.0], from_s=0.01, gap_s=0.5, extra_s=0.0625)
INTER = InterferenceModel({"mixed|mixed": 1.5}, {}, "test")


@pytest.mark.parametrize("balancer", ["roundrobin", "random", "p2c", "least"])
@pytest.mark.parametrize(
    ("lanes", "inter", "idle", "over", "grid"),
    [
        (1, NONE, None, 0.0, 0.125),
        (2, INTER, None, 0.0, 0.125),
        (3, DEFAULT, IDLE, 1e-3, None),
        (2, DEFAULT, IDLE, 0.0, 0.0625),
        (4, INTER, IDLE, 0.03125, 0.25),
    ],
)
def test_fast_path_is_exact(balancer, lanes, inter, idle, over, grid):
    rng = np.random.default_rng(lanes * 7 + len(balancer))
    servers = 3
    wl = _workload(rng, 600, grid, rate=servers * lanes * 2.0)  # ~110% load: queues fill
    cfg = preset("baseline", lanes=lanes, queue_capacity=6)  # full queues reject
    st = ServerType("cpu", cfg, Linear(0.125), interference=inter, task_overhead_s=over, idle=idle)
    runs = _both([st] * servers, wl, balancer)
    _assert_same(runs)
    assert 0 < runs[0][0].status.sum()  # some rejected


def test_fast_path_is_exact_on_mixed_server_types_and_a_cutoff():
    rng = np.random.default_rng(5)
    wl = _workload(rng, 800, 0.0625, rate=12.0)
    one = ServerType("one", preset("baseline", lanes=1), Linear(0.125, 0.03125), interference=INTER)
    three = ServerType(
        "three", preset("baseline", lanes=3, queue_capacity=5), Linear(0.25), interference=DEFAULT,
        idle=IDLE,
    )  # fmt: skip
    for balancer in ("roundrobin", "p2c", "least"):
        until = float(wl.t_s[600])  # queries unfinished, arrivals never seen
        runs = _both([one, three, three, one], wl, balancer, until=until)
        _assert_same(runs)
        assert np.isnan(runs[1][0].done_s).sum() > 200


def test_simulate_results_are_identical_and_the_fast_path_applies_only_where_exact():
    kw = dict(qps=900, duration_s=3, servers=4, balancer="p2c", sla_ms=30, seed=2)
    cost = Linear(2e-5, 1e-3)
    slow = simulate("m", "baseline", cost, fast=False, **kw)
    fast = simulate("m", "baseline", cost, **kw)
    assert fast["sim_fast_path"] and not slow["sim_fast_path"]
    for key in ("sim_wall_s", "sim_queries_per_s", "sim_loop_s", "sim_loop_queries_per_s",
                "sim_fast_path"):  # fmt: skip
        slow.pop(key), fast.pop(key)
    assert slow == fast
    dyn = simulate("m", "dynamic", cost, **kw)
    assert not dyn["sim_fast_path"]
    with pytest.raises(ValueError, match="does not apply"):
        simulate("m", "dynamic", cost, fast=True, **kw)
    st = ServerType("cpu", EngineConfig(), Linear())
    assert why_not(Cluster([st])) is None
    assert "hook" in why_not(Cluster([st], on_decision=lambda *a: None))
    assert "traces" in why_not(Cluster([st], trace=True))
    by_size = ServerType("s", EngineConfig(order="size"), Linear())
    assert "FIFO" in why_not(Cluster([by_size]))
    off = EngineConfig(offload_threshold=4)
    assert "accelerator" in why_not(Cluster([ServerType("g", off, Linear(), Linear())]))


def test_zero_time_tasks_fall_back_to_the_event_loop():
    st = ServerType("cpu", preset("baseline", lanes=2), Linear(0.0), interference=NONE)
    wl = Workload(np.zeros(5), np.ones(5, dtype=np.int64), np.zeros(5, dtype=np.int64))
    cl = Cluster([st])
    run = cl.run(wl, "m")
    assert not cl.used_fast_path and run.done_s.tolist() == [0.0] * 5


def test_exact_ties_arrival_at_two_same_time_completions():
    """F[mixed, mixed] = 1.5, 0.125 s per item. q0 and q1 both end at 0.5; q2 arrives at 0.5
    after both completions ran, so it runs alone on lane 0 (freed first); q3 then runs beside
    q2; q4 waits and starts at 0.625 beside q3."""
    st = ServerType("cpu", preset("baseline", lanes=2), Linear(0.125), interference=INTER)
    t = np.array([0.0, 0.125, 0.5, 0.5, 0.5625])
    n = np.array([4, 2, 1, 2, 1])
    wl = Workload(t, n, np.zeros(5, dtype=np.int64), (DEFAULT_CLASS,), 1.0)
    runs = _both([st], wl, "roundrobin")
    _assert_same(runs)
    assert runs[1][0].done_s.tolist() == [0.5, 0.5, 0.625, 0.875, 0.8125]
