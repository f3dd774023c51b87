"""The recsched request router's policy and the cluster-tail aggregation, without Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsched.clock import ManualClock
from recsched.serving.router import (
    ReplicaView,
    RouteRequest,
    RouterPolicy,
    WorkCost,
    WorkLedger,
    register_router,
    request_of,
    router_for,
)
from recsched.serving.stats import (
    RATIO,
    LatencyHistogram,
    ReplicaReport,
    aggregate,
    cluster_measurement,
    diff,
)

TABLE = {"batch_sizes": [1, 64, 1024], "whole_s": [0.001, 0.002, 0.020], "per_query_s": 0.0}


# -- the cost of a query ---------------------------------------------------------------------------
def test_work_cost_whole_and_split():
    whole = WorkCost.from_table(TABLE, {"request": "whole"})
    split = WorkCost.from_table(TABLE, {"request": "dynamic", "batch_size": 64})
    assert whole(1) == pytest.approx(0.001)
    assert whole(1024) == pytest.approx(0.020)
    # 1000 items split by 64: 15 full batches and one of 40
    assert split(1000) == pytest.approx(15 * 0.002 + split.batch_s(40))
    assert split(10) == pytest.approx(whole(10)), "a small query is one batch either way"
    sizes = [1, 5, 63, 64, 65, 200, 1000]
    assert all(split(a) <= split(b) for a, b in zip(sizes, sizes[1:], strict=False))


def test_request_of_reads_the_front_metadata():
    cost = WorkCost.from_table(TABLE)
    r = request_of({"n_items": 64, "value": 10.0, "cls": "hi"}, cost, 3.0)
    assert r == RouteRequest(64, 10.0, pytest.approx(0.002), 3.0)


# -- ranking replicas --------------------------------------------------------------------------
def test_rank_prefers_least_predicted_work_not_shortest_queue():
    """One big query vs several small ones: queue length says the other way round."""
    pol = RouterPolicy()
    req = RouteRequest(10, work_s=0.001)
    views = [ReplicaView("big", work_s=0.050, ongoing=1), ReplicaView("small", 0.006, ongoing=4)]
    assert pol.rank(req, views) == [["small"], ["big"]]
    # what power of two choices on queue length would pick:
    assert min(views, key=lambda v: v.ongoing).rid == "big"


def test_rank_divides_work_by_lanes_and_skips_full_replicas():
    pol = RouterPolicy()
    req = RouteRequest(1, work_s=0.0)
    views = [
        ReplicaView("a", 0.010, lanes=1),
        ReplicaView("b", 0.016, lanes=2),  # drains in 8 ms
        ReplicaView("c", 0.0, ongoing=4, max_ongoing=4),  # idle by work, but full
    ]
    assert pol.rank(req, views) == [["b"], ["a"]]
    assert pol.rank(req, [views[2]]) == [], "every replica full: wait"


def test_rank_ties_are_deterministic_and_idle_replicas_take_turns():
    pol = RouterPolicy()
    views = [ReplicaView(r, 0.0) for r in ("r2", "r0", "r1")]
    assert pol.rank(RouteRequest(1), views) == [["r0"], ["r1"], ["r2"]]
    led, clock = WorkLedger(), ManualClock()
    seen = []
    for q in range(6):  # one request at a time: every replica is idle at each choice
        clock.advance(1.0)
        vs = [ReplicaView(r, led.booked(r), last_s=led.last(r)) for r in ("r0", "r1", "r2")]
        pick = pol.rank(RouteRequest(1), vs)[0][0]
        led.routed(q, pick, 0.001, clock.now())
        led.completed(q)
        seen.append(pick)
    assert seen == ["r0", "r1", "r2"] * 2


def test_low_value_requests_keep_headroom_for_high_value():
    pol = RouterPolicy(hold_below_value=5.0, low_value_backlog_s=0.010)
    views = [ReplicaView("a", 0.012), ReplicaView("b", 0.004)]
    low, high = RouteRequest(1, 1.0, 0.002), RouteRequest(1, 10.0, 0.002)
    assert pol.rank(low, views) == [["b"]], "only the replica under the headroom"
    assert pol.rank(high, views) == [["b"], ["a"]], "high value may go anywhere"
    assert pol.rank(low, [ReplicaView("a", 0.012)]) == [], "held at the router"
    assert RouterPolicy().rank(low, views) == [["b"], ["a"]], "no headroom by default"


def test_next_request_most_valuable_then_oldest():
    w = [RouteRequest(1, 1.0, created_s=0.0), RouteRequest(1, 10.0, created_s=2.0),
         RouteRequest(1, 10.0, created_s=1.0)]  # fmt: skip
    assert RouterPolicy.next_index(w) == 2
    assert RouterPolicy.next_index([]) is None


# -- the work ledger -------------------------------------------------------------------------------
def test_ledger_books_and_frees_work():
    led = WorkLedger()
    led.routed("q1", "a", 0.010)
    led.routed("q2", "a", 0.005)
    led.routed("q3", "b", 0.001)
    assert led.booked("a") == pytest.approx(0.015) and led.count("a") == 2
    assert led.completed("q1") and not led.completed("q1"), "frees once"
    assert not led.completed("never-routed")
    led.routed("q3", "a", 0.001)  # a retry moves the booking
    assert led.booked("b") == 0.0 and led.count("a") == 2
    led.check_invariants()
    led.completed("q2")
    led.completed("q3")
    assert led.booked("a") == 0.0 and led.count("a") == 0
    led.check_invariants()


def test_ledger_takes_fresh_reports_from_other_fronts():
    clock = ManualClock()
    led = WorkLedger(report_ttl_s=1.0)
    led.routed("q", "a", 0.002)
    led.report("a", 0.030, clock.now())  # other fronts' work there too
    assert led.work("a", clock.now()) == pytest.approx(0.030)
    clock.advance(1.5)
    assert led.work("a", clock.now()) == pytest.approx(0.002), "a stale report is ignored"
    led.report("a", 0.0, clock.now())
    assert led.work("a", clock.now()) == pytest.approx(0.002), "never below what we booked"


def test_ledger_forgets_replicas_that_left():
    led = WorkLedger()
    led.routed("q1", "a", 0.01)
    led.routed("q2", "b", 0.02)
    led.retain(["b"])
    assert led.booked("a") == 0.0 and not led.completed("q1")
    assert led.booked("b") == pytest.approx(0.02)
    led.check_invariants()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 15), st.integers(0, 2),
                          st.floats(0, 0.1)), max_size=60))  # fmt: skip
def test_ledger_invariants_under_random_traffic(ops):
    led = WorkLedger()
    live: dict[int, tuple[int, float]] = {}
    for route, key, rep, w in ops:
        if route:
            led.routed(key, rep, w)
            live[key] = (rep, w)
        else:
            assert led.completed(key) == (key in live)
            live.pop(key, None)
        led.check_invariants()
    for rep in range(3):
        want = sum(w for r, w in live.values() if r == rep)
        assert led.booked(rep) == pytest.approx(want, abs=1e-9)


# -- the router registry ---------------------------------------------------------------------------
def test_registry_is_per_deployment():
    assert router_for("nobody") is None
    marker = object()
    register_router("test-deployment", marker)
    assert router_for("test-deployment") is marker


# -- cluster tail: aggregation of replica reports ----------------------------------------------
def _report(name: str, lat_s, failed: int = 0, config=None) -> ReplicaReport:
    h = LatencyHistogram()
    for x in lat_s:
        h.add(float(x))
    return ReplicaReport(name, 1, 0, 0.0, len(lat_s), failed, (1.0,), (len(lat_s),), (True,),
                         10.0, h, config or {"batch_size": 64})  # fmt: skip


def test_histogram_percentile_within_one_bucket():
    rng = np.random.default_rng(0)
    lat = rng.lognormal(np.log(0.005), 0.8, 5000)
    h = LatencyHistogram()
    for x in lat:
        h.add(float(x))
    for p in (50, 95, 99):
        exact = np.percentile(lat, p, method="inverted_cdf")
        got = h.percentile_s(p)
        assert exact <= got <= exact * RATIO * 1.0001, (p, exact, got)
    assert math.isnan(LatencyHistogram().percentile_s(95))


def test_cluster_tail_comes_from_merged_histograms_not_averaged_percentiles():
    """A busy fast replica and a quiet slow one: the cluster p95 is the pooled one."""
    rng = np.random.default_rng(1)
    fast = rng.uniform(0.001, 0.002, 950)
    slow = rng.uniform(0.050, 0.060, 50)
    a, b = _report("a", fast), _report("b", slow)
    cluster = aggregate([a, b])
    pooled = np.percentile(np.concatenate([fast, slow]), 95, method="inverted_cdf")
    got = cluster.percentile_ms(95) / 1e3
    assert pooled <= got <= pooled * RATIO * 1.0001
    mean_of_p95 = (a.hist.percentile_s(95) + b.hist.percentile_s(95)) / 2
    max_of_p95 = max(a.hist.percentile_s(95), b.hist.percentile_s(95))
    assert abs(mean_of_p95 - pooled) > 0.01 and abs(max_of_p95 - pooled) > 0.04
    assert cluster.replicas == 2 and cluster.completed == 1000 and cluster.uniform_config()


def test_diff_of_snapshots_and_new_replicas():
    before = [_report("a", [0.001] * 10)]
    after = [_report("a", [0.001] * 10 + [0.020] * 5), _report("new", [0.003] * 4)]
    c = diff(before, after)
    assert c.completed == 5 + 4 and c.hist.total() == 9
    assert c.percentile_ms(99) == pytest.approx(20.0, rel=RATIO - 1)


def test_json_round_trip():
    r = _report("a", [0.001, 0.002, 0.5], failed=2, config={"lanes": 1})
    assert ReplicaReport.from_json(r.to_json()) == r


def test_cluster_measurement_counts_failures_as_never_served():
    ok = _report("a", [0.002] * 96)
    m = cluster_measurement(aggregate([ok]), 100.0, sla_ms=5.0)
    assert m.met and m.qps == 100.0 and m.queries == 96 and m.p_tail_ms <= 2.0 * RATIO
    bad = _report("a", [0.002] * 90, failed=10)  # 10% never served: p95 is infinite
    m = cluster_measurement(aggregate([bad]), 100.0, sla_ms=5.0)
    assert not m.met and m.p_tail_ms == math.inf and m.objective == 0.0
    some = _report("a", [0.002] * 97, failed=3)  # 3% failed: the p95 is a served query
    m = cluster_measurement(aggregate([some]), 100.0, sla_ms=5.0)
    assert m.met and m.queries == 100


def test_mixed_configs_are_visible():
    c = aggregate([_report("a", [0.001], config={"batch_size": 64}),
                   _report("b", [0.001], config={"batch_size": 32})])  # fmt: skip
    assert not c.uniform_config()
