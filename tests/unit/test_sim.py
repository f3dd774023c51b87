"""The simulator: exact event traces of hand-built cases (SimPy style), the same decisions as
a hand-driven SchedulerCore on a manual clock, balancers, lanes, results and traces.

Costs are round binary fractions of a second (0.25 s per item...), so every simulated time
below is exact in floating point and traces compare with `==`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from recsched.clock import ManualClock
from recsched.config import EngineConfig, preset
from recsched.metrics.latency import LatencyLog
from recsched.metrics.trace import TraceRecorder, write_trace
from recsched.sched.core import SchedulerCore
from recsched.sched.operator import make_operator_policy
from recsched.sched.request import RequestPolicy
from recsched.sim.cluster import REJECTED, Cluster, balancer_name
from recsched.sim.events import ARRIVAL, COMPLETE, TIMER, EventLoop
from recsched.sim.interference import DEFAULT, NONE, InterferenceModel, calibrate, resolve
from recsched.sim.lanes import CachedCost, IdleModel, ServiceNoise
from recsched.sim.run import (
    _ColumnLog,
    make_workload,
    server_types,
    sim_run_fn,
    simulate,
)
from recsched.sim.server import ServerType, lane_kinds
from recsched.types import DEFAULT_CLASS, LaneResult, Part, PriorityClass, Query
from recsched.workload import Workload


class Linear:
    """whole_s(b) = per_item * b; op_s(op, b) = per_item * b (exact binary fractions)."""

    def __init__(self, per_item: float = 0.25, dispatch_s: float = 0.0) -> None:
        self.per_item = per_item
        self.dispatch_s = dispatch_s
        self.calls = 0

    def whole_s(self, batch: int) -> float:
        self.calls += 1
        return self.per_item * batch

    def op_s(self, op: int, batch: int) -> float:
        self.calls += 1
        return self.per_item * batch


def workload(times, sizes, cls=None, classes=(DEFAULT_CLASS,), duration=None) -> Workload:
    t = np.asarray(times, dtype=np.float64)
    n = np.asarray(sizes, dtype=np.int64)
    c = np.zeros(len(t), dtype=np.int64) if cls is None else np.asarray(cls, dtype=np.int64)
    dur = duration if duration is not None else (float(t[-1]) + 1.0 if len(t) else 1.0)
    return Workload(t, n, c, tuple(classes), dur, 0)


def stype(config: EngineConfig, cost=None, **kw) -> ServerType:
    kw.setdefault("interference", NONE)
    return ServerType("cpu", config, cost or Linear(), **kw)


def run_trace(types, wl, balancer="roundrobin", sla_ms=None):
    log: list[tuple] = []
    cl = Cluster(types, balancer, on_decision=lambda t, k, s, p: log.append((t, k, s, p)))
    run = cl.run(wl, "m", sla_ms)
    return log, run, cl


def strip_server(log):
    return [(t, k, p) for t, k, _, p in log]


# -- the event loop ----------------------------------------------------------------------------
def test_event_loop_orders_by_time_priority_then_fifo_and_sets_the_clock():
    loop = EventLoop()
    seen = []

    def ev(tag):
        seen.append((loop.clock.now(), tag))

    loop.at(1.0, TIMER, ev, "timer@1")
    loop.at(1.0, ARRIVAL, ev, "arrive@1 first")
    loop.at(0.5, TIMER, ev, "timer@0.5")
    loop.at(1.0, COMPLETE, ev, "complete@1")
    loop.at(1.0, ARRIVAL, ev, "arrive@1 second")
    assert loop.run(until=0.75) == 1
    assert loop.run() == 4
    assert seen == [
        (0.5, "timer@0.5"),
        (1.0, "complete@1"),
        (1.0, "arrive@1 first"),
        (1.0, "arrive@1 second"),
        (1.0, "timer@1"),
    ]
    with pytest.raises(AssertionError, match="past"):
        loop.at(0.9, ARRIVAL, ev, "late")


# -- exact traces ------------------------------------------------------------------------------
def test_exact_trace_two_lanes_whole_sequential():
    """Two lanes, 0.25 s per item, three queries: the third waits for a free lane."""
    wl = workload([0.0, 0.25, 0.375], [2, 3, 1])
    log, run, _ = run_trace([stype(preset("baseline", lanes=2))], wl)
    assert strip_server(log) == [
        (0.0, "arrive", 0),
        (0.0, "batch", (0, "cpu", (Part(0, 0, 2),))),
        (0.0, "issue", (0, 0, 0)),
        (0.25, "arrive", 1),
        (0.25, "batch", (1, "cpu", (Part(1, 0, 3),))),
        (0.25, "issue", (1, 1, 1)),
        (0.375, "arrive", 2),
        (0.375, "batch", (2, "cpu", (Part(2, 0, 1),))),
        (0.5, "end", (0, 0, 0)),
        (0.5, "done", 0),
        (0.5, "issue", (2, 2, 0)),
        (0.75, "end", (2, 2, 0)),
        (0.75, "done", 2),
        (1.0, "end", (1, 1, 1)),
        (1.0, "done", 1),
    ]
    assert run.done_s.tolist() == [0.5, 1.0, 0.75]
    assert run.end_s == 1.0


def test_exact_trace_interference_is_fixed_when_a_task_starts():
    """F[mixed, mixed] = 1.5: a task starting beside another runs 1.5x its solo time."""
    inter = InterferenceModel({"mixed|mixed": 1.5}, {}, "test")
    wl = workload([0.0, 0.25, 0.375], [2, 3, 1])
    log, run, _ = run_trace([stype(preset("baseline", lanes=2), interference=inter)], wl)
    ends = [(t, p) for t, k, p in strip_server(log) if k == "end"]
    # q0 alone: 0.5 s; q1 beside q0: 0.75 * 1.5; q2 starts at 0.5 beside q1: 0.25 * 1.5
    assert ends == [(0.5, (0, 0, 0)), (0.875, (2, 2, 0)), (1.375, (1, 1, 1))]
    assert run.done_s.tolist() == [0.5, 1.375, 0.875]


DYNAMIC = EngineConfig(request="dynamic", batch_size=4, merge_delay_ms=250.0, lanes=1)
DYN_TIMES, DYN_SIZES = [0.0, 0.125, 0.25, 0.3125], [2, 1, 1, 6]
DYN_EXPECTED = [
    (0.0, "arrive", 0),
    (0.0, "batch", (0, "cpu", (Part(0, 0, 2),))),  # the lane is idle: flush at once
    (0.0, "issue", (0, 0, 0)),
    (0.125, "arrive", 1),  # lane busy: waits to merge, wake-up at 0.375
    (0.25, "end", (0, 0, 0)),  # completions run before same-time arrivals
    (0.25, "done", 0),
    (0.25, "batch", (1, "cpu", (Part(1, 0, 1),))),  # idle lane again: flush q1
    (0.25, "issue", (1, 1, 0)),
    (0.25, "arrive", 2),  # waits, wake-up at 0.5
    (0.3125, "arrive", 3),  # 6 items: one full batch of 4 now, 2 wait with q2
    (0.3125, "batch", (2, "cpu", (Part(3, 0, 4),))),
    (0.375, "end", (1, 1, 0)),  # the stale 0.375 wake-up does nothing
    (0.375, "done", 1),
    (0.375, "issue", (2, 2, 0)),
    (0.5, "batch", (3, "cpu", (Part(2, 0, 1), Part(3, 4, 6)))),  # merge delay expired
    (0.875, "end", (2, 2, 0)),
    (0.875, "issue", (3, 3, 0)),
    (1.25, "end", (3, 3, 0)),
    (1.25, "done", 2),
    (1.25, "done", 3),
]


def test_exact_trace_dynamic_merge_delay_timers():
    wl = workload(DYN_TIMES, DYN_SIZES, duration=0.5)
    log, run, _ = run_trace([ServerType("cpu", DYNAMIC, Linear(0.125), interference=NONE)], wl)
    assert strip_server(log) == DYN_EXPECTED
    assert run.done_s.tolist() == [0.25, 0.375, 1.25, 1.25]


def test_same_decisions_as_a_hand_driven_core_on_a_manual_clock():
    """The dynamic policy driven by hand (times worked out on paper, as an engine would see
    them) makes exactly the decisions the simulator's server makes on its SimClock."""
    clock = ManualClock()
    cfg = DYNAMIC
    req = RequestPolicy(cfg.request, cfg.batch_size, cfg.merge_delay_ms / 1e3)
    core = SchedulerCore(req, make_operator_policy("sequential", ["cpu"], Linear(0.125)))
    log: list[tuple] = []
    running: dict[int, object] = {}

    def step():
        out = core.step(clock.now())
        for b in out.batches:
            log.append((clock.now(), "batch", (b.bid, b.lane_kind, b.parts)))
        for t in out.tasks:
            log.append((clock.now(), "issue", (t.tid, t.bid, t.lane)))
            running[t.tid] = t
        return out.wake_at

    def arrive(qid, n):
        log.append((clock.now(), "arrive", qid))
        core.admit(Query(qid, "m", n, arrival_s=clock.now()), clock.now())
        return step()

    def finish(tid, start):
        t = running.pop(tid)
        log.append((clock.now(), "end", (t.tid, t.bid, t.lane)))
        fin = core.complete(LaneResult(t.tid, t.bid, t.lane, start, clock.now()), clock.now())
        for qid, err in fin.queries:
            assert err is None
            log.append((clock.now(), "done", qid))
        return step()

    assert arrive(0, 2) is None
    clock.set(0.125)
    assert arrive(1, 1) == 0.375
    clock.set(0.25)
    assert finish(0, 0.0) is None
    assert arrive(2, 1) == 0.5
    clock.set(0.3125)
    assert arrive(3, 6) == 0.5
    clock.set(0.375)  # the wake-up set for 0.375 was cancelled; the lane finishes
    assert finish(1, 0.25) == 0.5
    clock.set(0.5)  # the timer fires
    assert step() is None
    clock.set(0.875)
    finish(2, 0.375)
    clock.set(1.25)
    finish(3, 0.875)
    core.check_invariants()
    assert log == DYN_EXPECTED

    wl = workload(DYN_TIMES, DYN_SIZES, duration=0.5)
    sim_log, _, _ = run_trace([ServerType("cpu", DYNAMIC, Linear(0.125), interference=NONE)], wl)
    assert strip_server(sim_log) == log


def test_lanes_match_the_engine_construction():
    assert lane_kinds(EngineConfig(lanes=3)) == ["cpu"] * 3
    cfg = EngineConfig(lanes=2, offload_threshold=100, accel_lanes=2)
    assert lane_kinds(cfg) == ["cpu", "cpu", "accel", "accel"]
    assert lane_kinds(EngineConfig(lanes=1, offload_threshold=5)) == ["cpu", "accel"]


def test_floating_point_merge_expiry_does_not_livelock():
    """0.1 + 0.001 - 0.1 < 0.001 in floats: the wake-up is due but the policy does not see
    the delay expired. The simulator retries a moment later, as the engine's timer does."""
    cfg = EngineConfig(request="dynamic", batch_size=64, merge_delay_ms=1.0, lanes=1)
    wl = workload([0.0, 0.1, 0.1001], [1, 1, 1], duration=0.2)
    _, run, _ = run_trace([stype(cfg, Linear(0.5))], wl)
    assert np.isfinite(run.done_s).all()


def test_exact_trace_idle_lanes_start_slower():
    """IdleModel(R=2, extra 0.125 s): a task after a long idle gap runs 2x + 0.125 s; one
    that follows another at once runs at its profiled time."""
    idle = IdleModel([1, 1024], [2.0, 2.0], from_s=2e-4, gap_s=0.02, extra_s=0.125)
    st = stype(preset("baseline", lanes=1), idle=idle)
    _, run, _ = run_trace([st], workload([0.0, 0.0625, 10.0], [1, 1, 1]))
    assert run.done_s.tolist() == [0.625, 0.875, 10.625]
    assert idle.weight(1e-4) == 0.0 and idle.weight(1.0) == 1.0
    assert idle.weight(2e-3) == pytest.approx(0.5)  # halfway between 0.2 and 20 ms in log
    assert IdleModel([1, 100], [1.0, 3.0]).ratio(50) == pytest.approx(1.0 + 2.0 * 49 / 99)
    prof = {
        "batch_sizes": [1, 8],
        "serving_correction": {
            "idle_ratios": [1.5, 1.5],
            "idle_from_s": 1e-3,
            "idle_gap_s": 0.01,
            "idle_extra_s": 0.2,
        },
    }
    m = IdleModel.from_profile(prof)
    assert m is not None and m.extra_s == 0.2 and m.factor(4, 1.0) == 1.5
    assert IdleModel.from_profile({"batch_sizes": [1]}) is None


def test_exact_trace_service_noise_draws_a_ratio_of_the_tasks_size():
    """Trace-driven service times: small tasks (<= 2 rows) draw 2x, larger ones 0.5x; the
    lane's times follow exactly, and the fast path steps aside."""
    noise = ServiceNoise([2], [[2.0], [0.5]])
    st = stype(preset("baseline", lanes=1), noise=noise)
    log, run, cl = run_trace([st], workload([0.0, 10.0], [2, 4]))
    assert run.done_s.tolist() == [1.0, 10.5]  # 2 x 0.25 x 2, then 4 x 0.25 x 0.5
    assert not cl.used_fast_path
    cl2 = Cluster([st], "roundrobin", fast=None)
    r2 = cl2.run(workload([0.0, 10.0], [2, 4]), "m", None)
    assert r2.done_s.tolist() == [1.0, 10.5] and not cl2.used_fast_path
    with pytest.raises(ValueError, match="noise"):
        Cluster([st], "roundrobin", fast=True).run(workload([0.0], [1]), "m", None)


def test_service_noise_from_tasks_bins_by_rows_and_replays_with_its_seed():
    pred = 1e-3
    tasks = [(n, pred * r) for n, r in [(1, 3.0), (1, 2.0), (10, 1.5), (10, 1.5), (100, 1.0),
                                        (100, 1.2), (1000, 0.8), (1000, 0.9)]]  # fmt: skip
    noise = ServiceNoise.from_tasks(tasks, lambda n: pred, bins=4, seed=3)
    assert noise.edges == (1, 10, 100)
    assert [sorted(r) for r in noise.ratios] == [[2.0, 3.0], [1.5, 1.5], [1.0, 1.2], [0.8, 0.9]]
    assert noise.factor(1) in (2.0, 3.0) and noise.factor(5) == 1.5
    assert noise.factor(50) in (1.0, 1.2) and noise.factor(5000) in (0.8, 0.9)
    a = ServiceNoise.from_tasks(tasks, lambda n: pred, seed=7)
    b = ServiceNoise.from_tasks(tasks, lambda n: pred, seed=7)
    assert [a.factor(1) for _ in range(20)] == [b.factor(1) for _ in range(20)]
    one = ServiceNoise.from_tasks([(64, 0.002)] * 5, lambda n: 0.001)  # one size: one bin
    assert one.edges == () and one.factor(64) == pytest.approx(2.0)
    d = noise.to_dict()
    assert [b["tasks"] for b in d["bins"]] == [2, 2, 2, 2] and d["bins"][-1]["rows_upto"] is None
    with pytest.raises(ValueError, match="lane tasks"):
        ServiceNoise.from_tasks([], lambda n: pred)


# -- offload to accelerator lanes --------------------------------------------------------------
def test_accelerator_lanes_take_large_queries_with_their_own_costs():
    cfg = EngineConfig(request="whole", lanes=1, offload_threshold=100, accel_lanes=1)
    st = ServerType("cpu+accel", cfg, Linear(0.25), accel_cost=Linear(1 / 1024), interference=NONE)
    wl = workload([0.0, 0.0], [2, 256])
    log, run, cl = run_trace([st], wl)
    issues = [p for _, k, p in strip_server(log) if k == "issue"]
    batches = [p for _, k, p in strip_server(log) if k == "batch"]
    assert [b[1] for b in batches] == ["cpu", "accel"]
    assert issues == [(0, 0, 0), (1, 1, 1)]
    assert run.done_s.tolist() == [0.5, 0.25]  # 256 items / 1024 per s on the accelerator
    assert [lane.kind for lane in cl.servers[0].lanes] == ["cpu", "accel"]
    with pytest.raises(ValueError, match="accelerator profile"):
        ServerType("x", cfg, Linear())


def test_heterogeneous_servers_report_their_types():
    cfg = EngineConfig(request="whole", lanes=1, offload_threshold=100, accel_lanes=1)
    types = server_types(cfg, Linear(0.01), 3, accel_cost=Linear(0.001), accel_servers=1)
    assert [t.name for t in types] == ["cpu+accel", "cpu", "cpu"]
    assert types[1].config.offload_threshold is None
    r = simulate("m", cfg, qps=30, duration_s=2, types=types, balancer="roundrobin", seed=1)
    assert [s["type"] for s in r["servers"]] == ["cpu+accel", "cpu", "cpu"]
    assert len(r["servers"][0]["lane_utilization"]) == 2
    assert "cost_gpu_s_per_1k" in r


# -- balancers ---------------------------------------------------------------------------------
def test_balancer_names():
    assert balancer_name("round-robin") == "roundrobin"
    assert balancer_name("power-of-two") == "p2c"
    assert balancer_name("least-work") == "least"
    with pytest.raises(ValueError, match="unknown balancer"):
        balancer_name("fastest")


def test_roundrobin_and_random_placement():
    types = [stype(preset("baseline", lanes=1), Linear(1e-3))] * 4
    wl = workload(np.arange(10) * 0.01, [1] * 10)
    _, run, _ = run_trace(types, wl, "roundrobin")
    assert run.server.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    _, r1, _ = run_trace(types, wl, "random")
    _, r2, _ = run_trace(types, wl, "random")
    assert r1.server.tolist() == r2.server.tolist()  # seeded
    assert set(r1.server.tolist()) <= {0, 1, 2, 3}


def test_least_work_goes_to_the_idle_server():
    types = [stype(preset("baseline", lanes=1), Linear(0.25))] * 2
    # q0 (long) to server 0; q1 finds server 0 loaded -> 1; q2 comes after q1 is done -> 1 has
    # nothing, 0 still works on q0 -> 1; q3 after everything -> ties go to server 0
    wl = workload([0.0, 0.25, 1.0, 10.0], [8, 1, 1, 1])
    _, run, _ = run_trace(types, wl, "least")
    assert run.server.tolist() == [0, 1, 1, 0]


def test_power_of_two_picks_the_less_loaded_of_its_two():
    types = [stype(preset("baseline", lanes=1), Linear(0.25))] * 3
    cl = Cluster(types, "p2c")
    q = Query(0, "m", 4)
    cl.servers[2].submit(q)
    cl._pa, cl._pb = [2, 0, 1], [1, 2, 0]
    assert cl._choose_now(0) == 1  # 2 has one outstanding, 1 none
    assert cl._choose_now(1) == 0
    assert cl._choose_now(2) == 1  # a tie goes to the first drawn
    wl = workload(np.arange(50) * 0.05, [1] * 50)
    _, run, _ = run_trace(types, wl, "p2c")
    assert np.isfinite(run.done_s).all() and len(set(run.server.tolist())) >= 2


# -- results -----------------------------------------------------------------------------------
BENCH_KEYS = {
    "model", "preset", "offered_qps", "completed_qps", "duration_s", "queries", "rejected",
    "late_issues", "latency_ms", "sla_ms", "sla_percentile", "sla_met", "classes",
    "lane_utilization", "cost_core_s_per_1k",
}  # fmt: skip


def test_simulate_returns_a_bench_result_with_sim_figures():
    classes = "high:0.3:10:200ms,low:0.7:1"
    r = simulate(
        "m", "dynamic", Linear(1e-4), qps=200, duration_s=5, servers=2, balancer="p2c",
        classes=classes, sla_ms=300, seed=3, sizes="fixed:20",
    )  # fmt: skip
    assert BENCH_KEYS <= set(r)
    assert {"servers", "sim_wall_s", "sim_queries_per_s", "sim_events"} <= set(r)
    assert r["preset"] == "dynamic" and r["queries"] > 800 and r["rejected"] == 0
    assert set(r["classes"]) == {"high", "low"}
    assert r["classes"]["high"]["sla_ms"] == 200 and r["classes"]["low"]["sla_ms"] == 300
    assert r["latency_ms"]["p50"] <= r["latency_ms"]["p95"] <= r["latency_ms"]["p99"]
    assert r["sla_met"] is True
    assert len(r["lane_utilization"]) == 4 and all(0 < u < 1 for u in r["lane_utilization"])
    assert sum(s["queries"] for s in r["servers"]) == r["queries"]
    again = simulate(
        "m", "dynamic", Linear(1e-4), qps=200, duration_s=5, servers=2, balancer="p2c",
        classes=classes, sla_ms=300, seed=3, sizes="fixed:20",
    )  # fmt: skip
    assert again["latency_ms"] == r["latency_ms"]  # same seed, same run


def test_full_queue_rejects_and_unfinished_queries_fail_after_the_drain_timeout():
    cfg = preset("baseline", lanes=1, queue_capacity=2)
    wl = workload([0.0, 0.0, 0.0, 0.0], [4, 4, 4, 4], duration=0.1)
    types = [stype(cfg, Linear(0.25))]
    r = simulate("m", cfg, qps=40, duration_s=0.1, types=types, workload=wl, drain_timeout_s=1.6)
    assert r["rejected"] == 2
    # q0 ends at 1.0 s, q1 would end at 2.0 s > 0.1 + 1.6: failed when the run gives up
    assert r["failed"] == 1 and r["classes"]["default"]["errors"] == 3
    assert r["latency_ms"]["max"] == pytest.approx(1000.0)
    cl = Cluster(types)
    run = cl.run(wl, "m", None, until=1.7)
    assert run.status.tolist().count(REJECTED) == 2 and math.isnan(run.done_s[1])


def test_column_log_summarises_exactly_like_latency_log():
    rng = np.random.default_rng(0)
    n = 500
    cls = rng.integers(0, 2, n)
    arr = np.sort(rng.random(n))
    lat = rng.exponential(0.01, n)
    ok = rng.random(n) > 0.05
    items = rng.integers(1, 100, n)
    classes = (PriorityClass("a", 0.5, 2.0, 20.0), PriorityClass("b", 0.5, 1.0, None))
    log = LatencyLog()
    for i in range(n):
        log.append(classes[cls[i]].name, arr[i], arr[i] + lat[i], int(items[i]), bool(ok[i]))
    col = _ColumnLog(["a", "b"], cls, (arr + lat) - arr, items, ok)
    assert col.summary(classes, 15.0) == log.summary(classes, 15.0)
    assert col.items() == log.items() and len(col) == len(log)


def test_workload_is_the_real_drivers():
    from recsched.bench.run import LoadSpec

    classes = (PriorityClass("h", 0.2, 10.0, 20.0), PriorityClass("l", 0.8, 1.0, None))
    ours = make_workload(150.0, 3.0, arrivals="bursty", sizes="production", classes=classes, seed=7)
    theirs = LoadSpec(150.0, 3.0, "bursty", "production", classes, 7).workload()
    for col in ("t_s", "n_items", "cls"):
        assert np.array_equal(getattr(ours, col), getattr(theirs, col))


def test_cost_model_is_asked_once_per_batch_size():
    cost = Linear(1e-4)
    kw = dict(qps=300, duration_s=2, sizes="fixed:7", seed=0, servers=3, balancer="least")
    simulate("m", "baseline", cost, **kw)
    assert cost.calls == 1  # policies, lanes and balancer estimates of all servers share it
    cc = CachedCost(Linear(0.5))
    assert cc.whole_s(3) == 1.5 and cc.op_s(1, 2) == 1.0 and cc.dispatch_s == 0.0


def test_sim_run_fn_drives_the_capacity_search():
    from recsched.bench.capacity import find_capacity

    run = sim_run_fn(
        "m", "baseline", Linear(1e-3), 2.0, sla_ms=50.0, sizes="fixed:10", seed=0, servers=2
    )
    r = run(100.0)
    assert r["offered_qps"] == 100.0 and r["sla_met"] is True and len(r["servers"]) == 2
    search = find_capacity(run, start_qps=50.0, max_runs=8, rel_tol=0.1)
    # 2 servers x 2 lanes, 10 ms per query: 400 qps saturates
    assert 100.0 < search.qps < 400.0


# -- traces ------------------------------------------------------------------------------------
def test_lane_traces_are_chrome_trace_events_for_every_lane(tmp_path):
    path = tmp_path / "trace.json"
    r = simulate(
        "m", preset("baseline", lanes=2), Linear(1e-3), qps=400, duration_s=1, servers=2,
        balancer="roundrobin", classes="high:0.5:10,low:0.5:1", sizes="fixed:4", trace=path,
        seed=2, interference="none",
    )  # fmt: skip
    doc = json.loads(path.read_text())
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == r["queries"]  # one whole-model task per query
    assert {(e["pid"], e["tid"]) for e in xs} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(e["dur"] == pytest.approx(4000.0 + 100.0) for e in xs)  # 4 ms + overhead, in us
    assert {e["args"]["cls"] for e in xs} == {"high", "low"}
    names = [e for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"]
    assert len(names) == 4


def test_trace_recorder_bounds_its_memory(tmp_path):
    rec = TraceRecorder(pid=3, process_name="engine", max_events=2)
    for i in range(4):
        rec.record(i % 2, "whole", i, "default", 10.0 + i, 10.5 + i, rows=i)
    assert len(rec) == 2 and rec.dropped == 2
    n = write_trace(tmp_path / "t.json", [rec, TraceRecorder(pid=4)])
    ev = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    assert n == 2
    x = [e for e in ev if e["ph"] == "X"]
    assert x[0]["ts"] == 0.0 and x[1]["ts"] == pytest.approx(1e6) and x[0]["dur"] == 5e5
    assert x[1]["args"] == {"batch": 1, "cls": "default", "rows": 1} and x[0]["pid"] == 3


# -- interference ------------------------------------------------------------------------------
def test_interference_factor_adds_the_excess_of_each_co_runner(tmp_path):
    m = InterferenceModel({"memory|memory": 1.4, "memory|compute": 1.1}, {"memory|memory": 1.2})
    assert m.factor("cpu", "memory", []) == 1.0
    assert m.factor("cpu", "memory", ["memory", "compute"]) == pytest.approx(1.5)
    assert m.factor("cpu", "compute", ["memory"]) == 1.0  # not in the table
    assert m.factor("accel", "memory", ["memory"]) == pytest.approx(1.2)
    ex = m.excess("cpu")
    assert ex["memory"]["memory"] == pytest.approx(0.4) and ex["mixed"]["compute"] == 0.0
    m.save(tmp_path / "i.json")
    assert InterferenceModel.load(tmp_path / "i.json") == m
    assert resolve(tmp_path / "i.json") == m
    assert resolve(None) is DEFAULT and resolve("none") is NONE


def test_calibrate_measures_a_factor_for_every_class_pair():
    m = calibrate(reps=2, scale=0.01, rounds=1)
    assert len(m.cpu) == 9
    assert all(math.isfinite(f) and f >= 1.0 for f in m.cpu.values())
    assert m.accel == {}


# -- operator-level policies run unchanged -----------------------------------------------------
def _chain_graph():
    from recsched.graph.ops import GraphInfo, OpInfo

    ops = (
        OpInfo(0, "emb", (), "memory", 0.0, 0.0, 0.0),
        OpInfo(1, "bottom", (), "compute", 0.0, 0.0, 0.0),
        OpInfo(2, "top", (0, 1), "compute", 0.0, 0.0, 0.0),
    )
    return GraphInfo("toy", "coarse", ops, 2)


@pytest.mark.parametrize("policy", ["roundrobin", "opstream"])
def test_operator_policies_run_every_op_once_on_the_simulator(policy):
    pytest.importorskip("recsched.sched.opstream")
    graph = _chain_graph()
    cfg = EngineConfig(request="dynamic", batch_size=8, operator=policy, lanes=2)
    st = ServerType("cpu", cfg, Linear(1e-4), graph_info=graph, interference=DEFAULT)
    wl = workload(np.arange(40) * 0.002, [5, 9, 3, 12] * 10, duration=0.1)
    log, run, cl = run_trace([st], wl)
    assert np.isfinite(run.done_s).all()
    batches = {p[0] for _, k, p in strip_server(log) if k == "batch"}
    srv = cl.servers[0]
    ran = sum(lane.stats.tasks for lane in srv.lanes)
    assert ran >= len(batches)  # at least one task per batch
    srv.check_invariants()
    assert srv.core.outstanding() == 0 and not srv.sizes


def test_lane_gaps_are_per_lane_from_end_to_next_start():
    from recsched.bench.setup import lane_gaps_s

    ev = [  # Chrome-trace "X" events, microseconds; lane 1 interleaved with lane 0
        {"tid": 0, "ts": 0.0, "dur": 100.0},
        {"tid": 1, "ts": 50.0, "dur": 500.0},
        {"tid": 0, "ts": 400.0, "dur": 100.0},
        {"tid": 1, "ts": 549.0, "dur": 10.0},  # starts 1 us before the last one ended
        {"tid": 0, "ts": 150.0, "dur": 100.0},
    ]
    assert sorted(lane_gaps_s(ev)) == pytest.approx([0.0, 50e-6, 150e-6])
    assert lane_gaps_s([]) == []


def test_lane_task_context_is_the_idle_gap_and_whether_another_lane_was_busy():
    from recsched.bench.setup import lane_task_context

    ev = [  # microseconds
        {"tid": 0, "ts": 0.0, "dur": 100.0},
        {"tid": 1, "ts": 50.0, "dur": 500.0},  # starts while lane 0 runs
        {"tid": 0, "ts": 400.0, "dur": 100.0},  # idle 300 us; lane 1 busy
        {"tid": 0, "ts": 700.0, "dur": 10.0},  # idle 200 us; lane 1 done at 550
    ]
    ctx = lane_task_context(ev)
    assert [c[1] for c in ctx] == [0, 1, 1, 0]
    assert ctx[0][0] == ctx[1][0] == math.inf  # a lane's first task
    assert ctx[2][0] == pytest.approx(300e-6) and ctx[3][0] == pytest.approx(200e-6)
    assert lane_task_context([]) == []


def test_profile_peak_is_the_best_batch_on_every_lane():
    from recsched.sim.run import profile_peak

    prof = {"batch_sizes": [1, 64, 1024], "whole_ms": [0.1, 2.0, 32.0]}  # 32k items/s at 1,024
    peak = profile_peak(prof, lanes=2)
    assert peak["best_batch"] == 1024 and peak["peak_items_per_s"] == pytest.approx(64_000)
    with pytest.raises(AssertionError):
        profile_peak(prof, lanes=0)
