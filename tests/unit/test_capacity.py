"""Capacity search against a synthetic response: a known capacity it must bracket."""

import pytest

from recsched.bench.capacity import capacity_result, find_capacity


def surface(capacity: float):
    calls = []

    def run(q: float) -> dict:
        calls.append(q)
        return {"offered_qps": q, "sla_met": q <= capacity, "completed_items_per_s": q * 10}

    return run, calls


@pytest.mark.parametrize("cap,start", [(100.0, 10.0), (100.0, 1000.0), (7.3, 7.3), (1e4, 1.0)])
def test_finds_capacity_within_tolerance(cap, start):
    run, calls = surface(cap)
    s = find_capacity(run, start_qps=start, rel_tol=0.05, max_runs=40)
    assert cap / 1.05 <= s.qps <= cap
    assert s.best["offered_qps"] == s.qps
    assert len(s.runs) == len(calls)


def test_budget_is_respected_and_zero_when_nothing_passes():
    run, calls = surface(0.0)
    s = find_capacity(run, start_qps=10.0, max_runs=5, min_qps=1.0)
    assert s.qps == 0.0 and s.best is None and len(calls) <= 5


def test_capacity_result_efficiency():
    run, _ = surface(50.0)
    s = find_capacity(run, start_qps=40.0, rel_tol=0.01, max_runs=30)
    r = capacity_result(s, model="m", preset="p", sla_ms=10, percentile=95, peak_items_per_s=1000)
    assert r["latency_bounded_qps"] == s.qps
    assert r["efficiency"] == pytest.approx(s.qps * 10 / 1000)
