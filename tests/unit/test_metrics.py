"""Metrics: exact percentiles, confidence intervals, per-class SLA verdicts, reports, JSON."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
from rich.console import Console

from recsched.metrics import (
    LatencyLog,
    StreamingLatency,
    bench_table,
    capacity_table,
    compare_table,
    cost_core_s_per_1k,
    min_queries_for,
    percentile_confidence,
    percentile_ms,
    summarize_ms,
    write_json,
)
from recsched.metrics.latency import SlaWatch, misses_to_fail
from recsched.types import DEFAULT_CLASS, PriorityClass, QueryResult

HIGH = PriorityClass("high", 0.2, 10.0, 20.0)
LOW = PriorityClass("low", 0.8, 1.0, None)  # the run's SLA and percentile apply


def render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


# ---------------------------------------------------------------- percentiles


def test_summarize_ms_is_exact_on_known_arrays() -> None:
    lat = np.arange(1, 101) / 1000.0  # 1..100 ms
    s = summarize_ms(lat[::-1])
    assert s == pytest.approx({"p50": 50.5, "p95": 95.05, "p99": 99.01, "max": 100.0, "count": 100})
    assert summarize_ms([0.002]) == pytest.approx(
        {"p50": 2.0, "p95": 2.0, "p99": 2.0, "max": 2.0, "count": 1}
    )
    assert percentile_ms(lat, 90) == pytest.approx(90.1)
    assert percentile_ms([0.0, 0.010], 50) == pytest.approx(5.0)


def test_summarize_ms_empty_is_nan_not_a_crash() -> None:
    s = summarize_ms(np.array([]))
    assert s["count"] == 0
    assert all(math.isnan(s[k]) for k in ("p50", "p95", "p99", "max"))
    assert math.isnan(percentile_ms([], 95))


def test_confidence_interval_covers_true_percentile() -> None:
    true_p95_ms = -math.log(0.05) * 1000.0  # exponential, mean 1 s
    hits = 0
    trials = 200
    for seed in range(trials):
        x = np.random.default_rng(seed).exponential(size=400)
        lo, hi = percentile_confidence(x, 95, 0.95)
        assert lo <= percentile_ms(x, 95) <= hi
        hits += lo <= true_p95_ms <= hi
    assert hits / trials >= 0.92  # nominal >= 0.95


def test_confidence_interval_unbounded_when_too_few_queries() -> None:
    n = min_queries_for(99, 0.95)
    assert n == 368  # 0.99^n <= 0.025
    x = np.random.default_rng(0).random(n)
    assert math.isfinite(percentile_confidence(x, 99)[1])
    assert percentile_confidence(x[:-1], 99)[1] == math.inf
    assert percentile_confidence([], 50) == (-math.inf, math.inf)
    lo, hi = percentile_confidence(np.arange(1, 1001) / 1000.0, 50)
    assert 400.0 < lo < 500.0 < hi < 600.0  # narrows around the median


# ---------------------------------------------------------------- the log


def filled_log() -> LatencyLog:
    log = LatencyLog()
    for i in range(100):  # high: 1..100 ms latencies, arriving at t=i
        log.append("high", float(i), i + (i + 1) / 1000.0, 4)
    for i in range(200):  # low: 0.5 .. 100 ms, one failure
        log.append("low", 0.0, (i + 1) / 2000.0, 8, ok=i != 7)
    return log


def test_latency_log_by_class_and_summary() -> None:
    log = filled_log()
    assert len(log) == 300
    by = log.by_class()
    assert sorted(by) == ["high", "low"] and len(by["high"]) == 100 and len(by["low"]) == 199
    s = log.summary((HIGH, LOW), sla_ms=200.0, percentile=99.0)
    hi, lo = s["classes"]["high"], s["classes"]["low"]
    assert hi["queries"] == 100 and hi["value"] == 10.0 and hi["sla_ms"] == 20.0
    assert hi["latency_ms"]["p95"] == pytest.approx(95.05)
    assert hi["sla_met"] is False and hi["sla_percentile"] == 95.0  # p95 95 ms > 20 ms
    assert lo["sla_ms"] == 200.0 and lo["sla_percentile"] == 99.0 and lo["errors"] == 1
    assert lo["sla_met"] is True
    assert s["sla_met"] is False  # not every class meets its SLA
    assert s["sla_percentile"] == 99.0 and s["queries"] == 300 and s["errors"] == 1
    assert s["within_sla"] == 20 + 199
    assert s["latency_ms"]["max"] == pytest.approx(100.0)
    assert log.items() == 100 * 4 + 199 * 8


def test_latency_log_timeline_follows_the_tail_per_window() -> None:
    log = LatencyLog()
    for k in range(10):  # second 0: 1-10 ms; second 1: nothing; second 2: 100 ms and a failure
        log.append("high", 5.0 + 0.1 * k, 5.0 + 0.1 * k + 1e-3 * (k + 1), 1)
    log.append("high", 7.5, 7.6, 1)
    log.append("high", 7.6, 9.0, 1, ok=False)
    log.append("low", 6.2, 6.25, 1)
    tl = log.timeline(1.0, q=100.0)
    assert [row[:2] for row in tl["high"]] == [[0.0, 10], [1.0, 0], [2.0, 2]]
    assert tl["high"][0][2] == pytest.approx(10.0) and math.isnan(tl["high"][1][2])
    assert tl["high"][2][2] == pytest.approx(100.0)  # the failure is counted, not in the tail
    assert [row[1] for row in tl["low"]] == [0, 1, 0]
    assert LatencyLog().timeline() == {}


def test_sla_verdicts_count_failures_as_misses() -> None:
    log = LatencyLog()
    for i in range(100):
        log.append("default", 0.0, 0.001, 1, ok=i >= 6)  # 6% failed, the rest at 1 ms
    s = log.summary((DEFAULT_CLASS,), sla_ms=10.0)
    assert s["latency_ms"]["p95"] == pytest.approx(1.0)  # over successes
    assert s["classes"]["default"]["sla_met"] is False and s["sla_met"] is False
    ok = LatencyLog()
    for i in range(100):
        ok.append("default", 0.0, 0.001, 1, ok=i >= 4)  # 4% failed: p95 still served
    assert ok.summary((DEFAULT_CLASS,), sla_ms=10.0)["sla_met"] is True


def test_summary_without_sla_or_queries_has_no_verdict() -> None:
    log = LatencyLog()
    log.append("high", 0.0, 0.005, 1)
    s = log.summary((HIGH, LOW), sla_ms=None)
    assert s["classes"]["high"]["sla_met"] is True
    assert s["classes"]["low"]["queries"] == 0 and s["classes"]["low"]["sla_met"] is None
    assert math.isnan(s["classes"]["low"]["latency_ms"]["p50"])
    assert s["sla_met"] is True
    assert LatencyLog().summary((DEFAULT_CLASS,), None)["sla_met"] is None
    # a class seen in the log but not declared still gets a row
    log.append("stray", 0.0, 0.001, 1)
    assert log.summary((HIGH,), 50.0)["classes"]["stray"]["sla_met"] is True


def test_latency_log_from_many_threads_and_query_results() -> None:
    log = LatencyLog()

    def work(k: int) -> None:
        for i in range(5000):
            log.append(f"c{k % 2}", 0.0, i / 1e6, 1)

    def read() -> None:  # summaries while appends go on must neither crash nor block them
        for _ in range(50):
            log.summary()
            log.items()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log) == 20000 and log.items() == 20000
    assert {k: len(v) for k, v in log.by_class().items()} == {"c0": 10000, "c1": 10000}
    log.clear()
    log.add(QueryResult(1, "default", 3, 1.0, 1.25))
    log.add(QueryResult(2, "default", 3, 1.0, 9.0, error="boom"))
    assert log.by_class()["default"].tolist() == [0.25]


# ---------------------------------------------------------------- streaming


def test_streaming_latency_is_close_to_exact() -> None:
    x = np.random.default_rng(1).lognormal(-4.0, 1.0, 20000)  # ~18 ms median
    h = StreamingLatency()
    for v in x:
        h.record(float(v))
    exact = summarize_ms(x)
    approx = h.summary_ms()
    assert approx["count"] == 20000 == h.count
    for k in ("p50", "p95", "p99", "max"):
        assert approx[k] == pytest.approx(exact[k], rel=2e-3)
    assert h.percentile_ms(95) == approx["p95"]
    h.record(1e-9)  # clamped to the 1 us floor
    h.record(3600.0)  # clamped to 60 s
    assert h.summary_ms()["max"] == pytest.approx(60_000.0, rel=1e-3)
    h.reset()
    assert h.count == 0 and math.isnan(h.percentile_ms(50))


# ---------------------------------------------------------------- reports


def bench_result() -> dict:
    s = filled_log().summary((HIGH, LOW), sla_ms=200.0)
    return {
        "model": "rmc1", "preset": "baseline", "offered_qps": 300.0, "completed_qps": 298.5,
        "duration_s": 1.0, "rejected": 3, "late_issues": 0, "lane_utilization": [0.5, 0.7],
        "cost_core_s_per_1k": float("nan"), **s,
    }  # fmt: skip


def test_bench_table_has_a_row_per_class() -> None:
    t = bench_table(bench_result())
    assert t.row_count == 3
    text = render(t)
    assert "rmc1 / baseline" in text and "offered 300.00 qps" in text
    assert "95.05" in text and "NO" in text and "yes" in text
    assert "rejected 3" in text and "lane util mean 60%" in text


def test_capacity_and_compare_tables() -> None:
    cap = {
        "model": "rmc1", "preset": "baseline", "sla_ms": 20.0, "latency_bounded_qps": 150.0,
        "peak_items_per_s": 30000.0, "efficiency": 0.55, "cost_core_s_per_1k": 13.3,
        "runs": [bench_result(), bench_result()],
    }  # fmt: skip
    t = capacity_table(cap)
    assert t.row_count == 2
    assert "latency-bounded 150.00 qps" in render(t)
    cmp = {"presets": {"baseline": cap, "opstream": {**cap, "latency_bounded_qps": 300.0}},
           "ratios": {"baseline": 1.0, "opstream": 2.0}}  # fmt: skip
    text = render(compare_table(cmp))
    assert compare_table(cmp).row_count == 2
    assert "opstream" in text and "300.00" in text and "2.00" in text
    assert compare_table(cmp).caption is None and len(t.columns) == 5  # no steal recorded
    # runs that record the machine's CPU shares: a steal column, and a note past 5%
    quiet, stolen = ({"busy": 0.6, "idle": 0.4 - x, "steal": x} for x in (0.01, 0.12))
    cap["runs"] = [bench_result() | {"machine_cpu": m} for m in (quiet, stolen)]
    t = capacity_table(cap)
    assert [c.header for c in t.columns][-1] == "steal" and "12%" in render(t)
    note = compare_table(cmp | {"presets": {"baseline": cap}}).caption
    assert "5% or more of the CPU in 1 of 2 runs (up to 12%)" in note


def test_write_json_atomic_and_nan_to_null(tmp_path) -> None:
    path = tmp_path / "out" / "bench.json"
    r = bench_result()
    r["np"] = {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "a": np.arange(3)}
    r["inf"] = math.inf
    write_json(r, path)
    back = json.loads(path.read_text())
    assert back["cost_core_s_per_1k"] is None and back["inf"] is None
    assert back["np"] == {"i": 3, "f": 0.5, "b": True, "a": [0, 1, 2]}
    assert back["classes"]["high"]["latency_ms"]["p95"] == pytest.approx(95.05)
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]  # no temp file left
    with pytest.raises(TypeError):
        write_json({"x": object()}, path)
    assert json.loads(path.read_text())["model"] == "rmc1"  # the old file survives a failure
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]


def test_cost() -> None:
    assert cost_core_s_per_1k(4.0, 10.0, 2000) == pytest.approx(20.0)
    assert cost_core_s_per_1k(4.0, 10.0, 0) == math.inf


def test_run_percentile_applies_to_classes_without_their_own_sla() -> None:
    log = LatencyLog()
    for i in range(100):
        log.append("default", 0.0, (i + 1) / 1000.0, 1)  # 1..100 ms
    assert log.summary((DEFAULT_CLASS,), sla_ms=96.0, percentile=95.0)["sla_met"] is True
    assert log.summary((DEFAULT_CLASS,), sla_ms=96.0, percentile=99.0)["sla_met"] is False
    own = PriorityClass("default", 1.0, 1.0, 96.0, 95.0)  # its own SLA keeps its own p95
    assert log.summary((own,), sla_ms=1.0, percentile=99.0)["sla_met"] is True


def test_machine_shares_split_cpu_ticks_into_busy_idle_and_steal(tmp_path):
    from recsched.metrics.machine import machine_shares, machine_ticks
    from recsched.metrics.report import bench_table

    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal (then guest fields, ignored)
    stat.write_text("cpu  100 0 20 300 10 0 5 15 0 0\ncpu0 1 2 3\n")
    t0 = machine_ticks(str(stat))
    stat.write_text("cpu  160 0 30 330 10 0 5 35 0 0\ncpu0 1 2 3\n")
    t1 = machine_ticks(str(stat))
    assert t0 == [100, 0, 20, 300, 10, 0, 5, 15]
    s = machine_shares(t0, t1)  # 60 + 10 busy, 30 idle, 20 steal of 120 ticks
    assert s == pytest.approx({"busy": 70 / 120, "idle": 30 / 120, "steal": 20 / 120})
    assert machine_ticks(str(tmp_path / "missing")) is None and machine_shares(None, t1) is None
    assert machine_shares(t1, t1) is None  # no time passed
    r = {"model": "m", "preset": "p", "offered_qps": 1.0, "completed_qps": 1.0,
         "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0}, "classes": {},
         "machine_cpu": s}  # fmt: skip
    assert "hypervisor took 17% of the CPU" in bench_table(r).caption
    r["machine_cpu"] = {"busy": 0.5, "idle": 0.49, "steal": 0.01}
    assert "hypervisor" not in (bench_table(r).caption or "")


def test_misses_to_fail_is_the_fewest_misses_that_decide_the_percentile() -> None:
    for n in range(1, 70):
        for p in (0.0, 50.0, 90.0, 95.0, 99.0, 100.0):
            k = misses_to_fail(n, p)
            assert 1 <= k <= n
            # k misses, however slight: the percentile is over (linear method, as the verdict)
            slight = np.array([1.99] * (n - k) + [2.01] * k)
            assert np.percentile(slight, p) > 2.0, (n, p)
            # one fewer can still be within: misses barely over, the rest far below
            if k > 1:
                near = np.array([0.0] * (n - k + 1) + [2.0 + 1e-12] * (k - 1))
                assert np.percentile(near, p) <= 2.0 + 1e-12, (n, p)
    assert misses_to_fail(20, 90.0) == 3 and misses_to_fail(100, 95.0) == 6


def test_sla_watch_decides_a_miss_at_the_first_certain_query() -> None:
    # high: 20 queries, its own 10 ms at p90 (3 misses decide); low: 100 queries, the run's
    # 50 ms at p95 (6 decide); free: no SLA, never decides
    slas = {"high": (10.0, 90.0), "low": (50.0, 95.0), "free": None}
    w = SlaWatch({"high": 20, "low": 100, "free": 5}, slas)
    low = [(60.0, None), (60.0, None), (1.0, "lane 0 failed"), (60.0, None), (51.0, None)]

    def done(cls: str, ms: float, error: str | None = None) -> None:
        w.add(QueryResult(0, cls, 1, 0.0, ms / 1e3, error))

    for _ in range(50):
        done("free", 1e6)
    for ms, error in low:  # a failure counts as a miss (the verdict's "never served")
        done("low", ms, error)
    done("high", 10.0)  # exactly at the SLA is within
    done("high", 11.0), done("high", 12.0)
    assert w.missed is None and w.misses == {"high": 2, "low": 5}
    done("low", 50.5)  # the sixth of low's: its p95 can no longer be within
    assert w.missed == "low"
    done("high", 13.0)
    assert w.missed == "low" and w.misses["high"] == 3  # the first decided class stays
    log = LatencyLog()  # what the watch saw, the rest of the run within: the same verdict
    for ms, error in [*low, (50.5, None)]:
        log.append("low", 0.0, ms / 1e3, 1, error is None)
    for _ in range(94):
        log.append("low", 0.0, 0.001, 1)
    assert log.summary((PriorityClass("low", 1.0),), 50.0, 95.0)["sla_met"] is False


def test_summary_reports_the_verdict_percentile_with_its_confidence_interval():
    """Each bench result carries the verdict's percentile (also one the summary does not list)
    and a distribution-free 95% interval around it; an end too few samples cannot bound is
    None, so the JSON stays JSON."""
    log = LatencyLog()
    rng = np.random.default_rng(0)
    for i, lat in enumerate(rng.exponential(0.01, 400)):
        log.add(QueryResult(i, "default", 1, 0.0, float(lat)))
    s = log.summary((DEFAULT_CLASS,), sla_ms=50.0, percentile=90.0)
    lo, hi = s["latency_ms"]["p90_ci"]
    assert lo < s["latency_ms"]["p90"] < hi and s["latency_ms"]["p95"] > s["latency_ms"]["p90"]
    assert s["classes"]["default"]["latency_ms"]["p90_ci"] == [lo, hi]
    few = LatencyLog()
    for i in range(20):
        few.add(QueryResult(i, "default", 1, 0.0, 0.001 * (i + 1)))
    assert few.summary((DEFAULT_CLASS,), 50.0, 99.0)["latency_ms"]["p99_ci"][1] is None


def test_confidence_interval_from_a_window_of_the_binomial_matches_the_whole_range() -> None:
    """`percentile_confidence` computes the binomial CDF over a window around n q and selects
    two order statistics: the same ends as the whole range 0..n with a full sort (the old
    computation, here as the reference), at any size."""

    def reference(x: np.ndarray, p: float, conf: float) -> tuple[float, float]:
        a, n, q = np.sort(x), len(x), p / 100.0
        k = np.arange(n + 1, dtype=np.float64)
        log_choose = np.concatenate(([0.0], np.cumsum(np.log((n - k[1:] + 1) / k[1:]))))
        with np.errstate(divide="ignore"):
            logpmf = log_choose + k * math.log(q) + (n - k) * math.log1p(-q)
        pmf = np.exp(logpmf - logpmf.max())
        cdf, alpha = np.cumsum(pmf) / pmf.sum(), (1.0 - conf) / 2.0
        below = np.flatnonzero(cdf <= alpha)
        k_hi = int(np.searchsorted(cdf, 1.0 - alpha, side="left"))
        lo = a[below[-1]] * 1000.0 if len(below) else -math.inf
        return (float(lo), float(a[k_hi] * 1000.0) if k_hi < n else math.inf)

    rng = np.random.default_rng(3)
    for n in (1, 3, 20, 59, 368, 1_000, 20_000, 300_000):
        x = rng.exponential(size=n)
        for p in (50.0, 90.0, 99.0, 99.9):
            for conf in (0.9, 0.95, 0.99):
                assert percentile_confidence(x, p, conf) == reference(x, p, conf), (n, p, conf)
