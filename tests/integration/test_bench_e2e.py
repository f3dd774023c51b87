"""A short open-loop bench end to end on a small model, through the API and the CLI."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from recsched.bench.run import InputPool, LoadSpec, bench_once, run_closed_loop, warm_up
from recsched.cli import app
from recsched.config import preset
from recsched.engine import Engine
from recsched.models.registry import load_model
from recsched.workload.classes import parse_classes


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSCHED_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", ["baseline", "split", "dynamic"])
def test_bench_once_serves_every_query(name):
    ad = load_model("ncf")
    classes = parse_classes("high:0.3:10:500ms,low:0.7:1")
    load = LoadSpec(qps=40, duration_s=1.0, classes=classes, seed=3)
    cfg = preset(name, lanes=2, batch_size=32)
    r = bench_once(ad, cfg, load, preset=name, sla_ms=1000.0, pool=InputPool.make(ad, 1024))
    n = len(load.workload())
    assert r["queries"] == n and r["rejected"] == 0 and r["failed"] == 0
    assert sum(c["queries"] for c in r["classes"].values()) == n
    lat = r["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert r["sla_met"] is True and set(r["classes"]) == {"high", "low"}
    assert r["classes"]["high"]["sla_ms"] == 500.0 and r["classes"]["low"]["sla_ms"] == 1000.0
    assert len(r["lane_utilization"]) == 2 and all(0 <= u <= 1 for u in r["lane_utilization"])
    # each CPU lane ran part of the time it held tasks (CPU / busy, the rest waiting)
    assert 1 <= len(r["lane_running"]) <= 2 and all(0 < s <= 1.05 for s in r["lane_running"])
    m = r["machine_cpu"]  # the machine's CPU shares over the run (None off Linux)
    assert m is None or (set(m) == {"busy", "idle", "steal"} and sum(m.values()) <= 1.0 + 1e-9)
    assert r["cost_core_s_per_1k"] > 0
    # CPU accounting (the simulator's host model is calibrated by it): the lanes' tasks and
    # the driver thread are parts of the process; at least one lane task per query
    c = r["cpu"]
    assert c["completed"] == n and c["tasks"] >= n
    assert 0 < c["lanes_s"] and 0 < c["issue_s"] <= c["driver_s"]
    assert c["lanes_s"] + c["driver_s"] <= c["process_s"] * 1.05
    # per class, per second of arrivals: every query in one second, tails within the run's
    for c, rows in r["timeline"].items():
        assert sum(q for _, q, _ in rows) == r["classes"][c]["queries"]
        assert [t for t, _, _ in rows] == [float(i) for i in range(len(rows))]
        assert all(p <= r["classes"][c]["latency_ms"]["max"] for _, q, p in rows if q)


def test_a_run_that_cannot_meet_its_sla_stops_once_that_is_decided():
    ad = load_model("ncf")
    cfg = preset("baseline", lanes=1)
    pool = InputPool.make(ad, 1024)
    load = LoadSpec(qps=200, duration_s=2.0, seed=3)
    r = bench_once(ad, cfg, load, sla_ms=1e-3, pool=pool, stop_on_miss=True)  # none can meet
    n, st = len(load.workload()), r["stopped"]
    assert r["sla_met"] is False and st["of"] == n and 0 < st["issued"] < n / 2
    assert st["class"] == "default" and st["at_s"] < 1.0
    # every issued query is accounted for: served, or failed when the run stopped
    assert r["queries"] == st["issued"] == r["classes"]["default"]["queries"]
    ok = bench_once(ad, cfg, LoadSpec(qps=40, duration_s=0.5, seed=3), sla_ms=1e3, pool=pool,
                    stop_on_miss=True)  # fmt: skip
    assert "stopped" not in ok and ok["sla_met"] is True and ok["failed"] == 0
    # a burst of large queries, issued before the first finishes: decided while it drains, the
    # rest of the backlog is dropped (failed), not served
    burst = LoadSpec(qps=5000, duration_s=0.004, sizes="fixed:1000", seed=3)
    r = bench_once(ad, cfg, burst, sla_ms=1e-3, pool=pool, stop_on_miss=True)
    assert r["sla_met"] is False and "stopped" in r
    assert r["queries"] == r["stopped"]["issued"] and 0 < r["failed"] < r["queries"]


def test_cli_bench_writes_json(tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        app,
        ["bench", "ncf", "--preset", "dynamic", "--qps", "30", "--duration", "1",
         "--sla-ms", "1000", "--json", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    for key in ("model", "preset", "offered_qps", "completed_qps", "duration_s", "queries",
                "rejected", "late_issues", "latency_ms", "sla_ms", "sla_percentile", "sla_met",
                "classes", "lane_utilization", "cost_core_s_per_1k"):  # fmt: skip
        assert key in r, key
    assert r["model"] == "ncf" and r["queries"] > 0


def test_cli_bench_retune_reports_its_switches(tmp_path):
    """A tight SLA the small batch cannot meet: the online retuner must step the live engine."""
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        app,
        ["bench", "ncf", "--preset", "dynamic", "--batch-size", "1", "--qps", "100",
         "--sizes", "fixed:4", "--duration", "5", "--sla-ms", "0.01", "--retune",
         "--json", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    switches = r["retune"]["switches"]
    assert switches and switches[0]["reason"] == "breach_step", r["retune"]
    assert switches[0]["batch_size"] == 2  # one notch up from 1
    assert r["retune"]["final"]["batch_size"] >= 1


def test_cli_sweep_writes_json_and_plot(tmp_path):
    out, plots = tmp_path / "s.json", tmp_path / "plots"
    res = CliRunner().invoke(
        app,
        ["sweep", "ncf", "--presets", "baseline,dynamic", "--qps", "20,40", "--duration", "0.5",
         "--sla-ms", "1000", "--plot", str(plots), "--json", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert set(r["presets"]) == {"baseline", "dynamic"}
    for cap in r["presets"].values():
        assert [run["offered_qps"] for run in cap["runs"]] == [20.0, 40.0]
    assert (plots / "sweep-ncf.png").stat().st_size > 5000


def test_closed_loop_keeps_queries_in_flight_and_counts_every_item():
    """`run_closed_loop`: every issued query finishes before it returns, and the lanes'
    figures come from the same span."""
    ad = load_model("ncf", scale="small")
    pool = InputPool.make(ad, rows=256)
    with Engine(ad, preset("dynamic", lanes=2, batch_size=32)) as eng:
        warm_up(eng, pool, (1, 32))
        done0 = eng.completed
        r = run_closed_loop(eng, pool, np.array([5, 40, 1, 17]), inflight=3, seconds=0.3)
        assert eng.completed - done0 == r["queries"] > 0 and eng.pending() == 0
    assert r["items_per_s"] > 0 and 0 < r["lane_utilization"] <= 1
    assert 0 < r["lane_running"] <= 1.05 and r["lane_ms_per_1k_items"] > 0
