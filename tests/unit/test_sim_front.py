"""The simulator's front tier (recsched.sim.front): FIFO stages and a delay distribution."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsched.config import preset
from recsched.sim.front import FrontModel
from recsched.sim.run import simulate
from tests.unit.test_sim import Linear, stype, workload


def lindley(t, n, stages):
    """FIFO single-server stages in series, one request at a time (the definition);
    `stages`: (fixed s, per item s) each."""
    out = []
    free = [0.0] * len(stages)
    for x, items in zip(t, n, strict=True):
        for k, (c, per) in enumerate(stages):
            x = free[k] = max(free[k], x) + c + per * items
        out.append(x)
    return np.array(out)


def test_departures_follow_lindley_through_every_stage():
    rng = np.random.default_rng(7)
    t = np.sort(rng.exponential(0.004, 500).cumsum())
    n = rng.integers(1, 1000, 500)
    f = FrontModel(stages_ms=(3.0, 1.5), stages_ms_per_item=(0.0, 0.002))
    want = lindley(t, n, [(0.003, 0.0), (0.0015, 0.000002)])
    np.testing.assert_allclose(f.departures(t, n), want, rtol=0, atol=1e-9)
    assert np.all(np.diff(f.departures(t, n)) >= 0)  # FIFO keeps the order
    np.testing.assert_array_equal(FrontModel().departures(t, n), t)


def test_delays_are_seeded_draws_between_the_quantile_points():
    f = FrontModel((10.0, 12.0, 20.0, 60.0))
    ones = np.ones(20_000)
    a, b = f.delays(ones, seed=1), f.delays(ones, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, f.delays(ones, seed=2))
    assert a.min() >= 0.010 and a.max() <= 0.060
    # points at p = 0, 1/3, 2/3, 1: the draws' quantiles land on them
    q = np.quantile(a, [1 / 3, 2 / 3]) * 1e3
    assert q == pytest.approx([12.0, 20.0], rel=0.03)
    np.testing.assert_allclose(FrontModel((5.0,), 0.01).delays([1, 100]), [0.00501, 0.006])
    np.testing.assert_array_equal(FrontModel().delays([1, 2, 3]), [0.0] * 3)


def test_from_idle_subtracts_the_servers_and_the_stages():
    rt = [20.0, 22.0, 30.0, 15.0, 40.0]
    f = FrontModel.from_idle(rt, server_ms=2.0, stages_ms=[1.0, 0.5], points=5)
    assert f.stages_ms == (1.0, 0.5)
    assert f.delay_ms == pytest.approx(np.quantile(np.array(rt) - 3.5, [0, 0.25, 0.5, 0.75, 1]))
    # per-request server latencies, and never a negative delay
    g = FrontModel.from_idle([5.0, 6.0], server_ms=[6.0, 1.0], points=2)
    assert g.delay_ms == (0.0, 5.0) and g.delay_ms_per_item == 0.0
    # two sizes: the slope in the items is the per-item delay, the rest the distribution
    rng = np.random.default_rng(3)
    n = np.repeat([1, 501], 400)
    noise = rng.uniform(10.0, 30.0, n.size)
    rt = 2.0 + 0.04 * n + noise + 1.0 + 0.001 * n  # server 2 ms, stage 1 ms + 1 us/item
    h = FrontModel.from_idle(rt, 2.0, n, stages_ms=[1.0], stages_ms_per_item=[0.001])
    assert h.delay_ms_per_item == pytest.approx(0.04, abs=0.003)
    assert h.delay_ms[0] == pytest.approx(10.0, abs=1.5) and h.delay_ms[-1] == pytest.approx(
        30.0, abs=1.5
    )
    with pytest.raises(AssertionError):
        FrontModel((3.0, 2.0))


def test_files_round_trip_and_refuse_unknown_keys(tmp_path):
    f = FrontModel((1.0, 2.0), 0.01, (0.5,), (0.002,))
    assert f.scaled(2.0) == FrontModel((2.0, 4.0), 0.02, (1.0,), (0.004,))
    p = tmp_path / "front.json"
    p.write_text(json.dumps({"front": f.to_dict(), "other": 1}))
    assert FrontModel.load(p) == f
    p.write_text(json.dumps({"delay": [1.0]}))
    with pytest.raises(ValueError, match="unknown front model keys"):
        FrontModel.load(p)
    p.write_text(json.dumps({"delay_ms": [3.0, 1.0]}))
    with pytest.raises(ValueError, match="must not decrease"):
        FrontModel.load(p)
    with pytest.raises(ValueError, match="cannot read"):
        FrontModel.load(tmp_path / "missing.json")


def test_simulate_queues_at_the_front_then_adds_the_delay_exactly():
    cfg = preset("baseline", lanes=1)
    wl = workload([0.0, 0.1, 5.0], [4, 4, 4])  # each query takes 1 s on one lane
    front = FrontModel((2000.0,), stages_ms=(500.0,))  # a 0.5 s stage, then 2 s of delay
    r = simulate("m", cfg, qps=1, duration_s=wl.duration_s, types=[stype(cfg, Linear(0.25))],
                 workload=wl, front=front)  # fmt: skip
    # q0: stage until 0.5, lane until 1.5, +2 -> 3.5 s; q1: stage 0.5-1.0, waits for the lane
    # until 1.5, done 2.5, +2 -> 4.4 s after its arrival at 0.1; q2 meets nothing -> 3.5 s
    assert r["latency_ms"]["max"] == pytest.approx(4400.0)
    assert r["latency_ms"]["p50"] == pytest.approx(3500.0)
    assert r["front"] == front.to_dict() and r["rejected"] == 0


def test_a_pure_delay_shifts_every_latency_and_changes_nothing_else():
    kw = dict(qps=300, duration_s=3, servers=2, balancer="least", seed=4, sizes="fixed:20")
    base = simulate("m", "dynamic", Linear(1e-4), **kw)
    late = simulate("m", "dynamic", Linear(1e-4), front=FrontModel((7.0,)), **kw)
    for k in ("p50", "p95", "p99", "max"):
        assert late["latency_ms"][k] == pytest.approx(base["latency_ms"][k] + 7.0)
    assert late["lane_busy_s"] == base["lane_busy_s"] > 0
