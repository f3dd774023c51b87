"""Fidelity at CI size: real open-loop runs of a small model beside simulated runs of the same
workload and configuration. Checks that the errors are computed (finite numbers), never
that they are small: timings on a shared CI machine prove nothing. Also `recsched
simulate` and `recsched fidelity` through the CLI, and the capacity search with `--sim`."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from recsched.cli import app
from recsched.graph.profile import profile_model, save_profile
from recsched.models.registry import load_model
from recsched.sim import fidelity as fidelity_mod
from recsched.sim.fidelity import (
    compare,
    fidelity,
    handoff_s,
    in_run_scale,
    rel_error,
    run_loads,
    scaled_profile,
    spread,
    summarize,
)

pytestmark = pytest.mark.slow
MODEL = "ncf"  # the smallest model: quick to load, profile and serve


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSCHED_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory):
    """A quick one-thread profile (what a simulated lane of one thread should see)."""
    ad = load_model(MODEL)
    prof = profile_model(ad, (1, 16, 128, 1024), ("coarse",), repeats=2, warmup=1, threads=1)
    path = tmp_path_factory.mktemp("prof") / f"{MODEL}.json"
    save_profile(prof, path)
    return path


def test_fidelity_errors_are_computed_at_three_loads(profile_path):
    r = fidelity(
        MODEL, json.loads(profile_path.read_text()), [20.0, 40.0, 60.0], "baseline",
        duration_s=0.5, seed=1, sla_ms=500.0, sizes="lognormal:20:0.8", in_run=True,
    )  # fmt: skip
    assert [row["qps"] for row in r["loads"]] == [20.0, 40.0, 60.0]
    for row in r["loads"]:  # the real runs' lane tasks calibrated a second simulation
        assert row["in_run_scale"] > 0 and math.isfinite(row["error_in_run"]["p95"])
        assert math.isfinite(row["error_in_run_noise"]["p95"])  # and drove a third one
        assert 0 < row["in_run_task_overhead_s"] < 1e-3 or row["in_run_task_overhead_s"] == (
            fidelity_mod.DEFAULT_TASK_OVERHEAD_S
        )
        for p in ("p50", "p95", "p99"):
            assert row["real"][p] > 0 and row["sim"][p] > 0
            assert math.isfinite(row["error"][p])
            want = (row["sim"][p] - row["real"][p]) / row["real"][p]
            assert row["error"][p] == pytest.approx(want)
    assert all(math.isfinite(v) for v in r["max_abs_error"].values())
    assert isinstance(r["p95_within_goal"], bool)
    assert "mixed|mixed" in r["interference"]["cpu"]
    # the real runs' CPU accounting calibrated the in-run host model (no probe: loads given)
    assert r["host"] is None
    for row in r["loads"]:
        h = row["in_run_host"]
        assert h["submit_us"] > 0 and h["complete_us"] >= 0 and h["cores"] >= 1
        assert set(row["without_host"]) == {"error_in_run", "error_in_run_noise"}
    assert set(r["without_host"]) == {"error_in_run", "error_in_run_noise"}


def test_error_arithmetic():
    assert rel_error(11.0, 10.0) == pytest.approx(0.1)
    assert math.isnan(rel_error(None, 10.0)) and math.isnan(rel_error(5.0, 0.0))
    real = {"offered_qps": 5.0, "latency_ms": {"p50": 2.0, "p95": 4.0, "p99": 8.0}}
    sim = {"offered_qps": 5.0, "latency_ms": {"p50": 1.0, "p95": 4.4, "p99": 8.0}}
    row = compare(real, sim)
    assert row["error"] == pytest.approx({"p50": -0.5, "p95": 0.1, "p99": 0.0})
    s = summarize([row, compare(real, real)])
    assert s["max_abs_error"]["p95"] == pytest.approx(0.1) and s["p95_within_goal"] is True


def test_simulate_and_fidelity_commands(tmp_path, profile_path):
    out, trace = tmp_path / "sim.json", tmp_path / "trace.json"
    res = CliRunner().invoke(
        app,
        [
            "simulate", MODEL, "--servers", "3", "--qps", "300", "--duration", "2",
            "--preset", "dynamic", "--profile", str(profile_path), "--balancer", "least",
            "--sla-ms", "50", "--seed", "2", "--classes", "high:0.2:10,low:0.8:1",
            "--trace", str(trace), "--json", str(out),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["model"] == MODEL and len(r["servers"]) == 3 and r["sim_queries_per_s"] > 0
    assert set(r["classes"]) == {"high", "low"}
    assert any(e["ph"] == "X" for e in json.loads(trace.read_text())["traceEvents"])
    # the same run behind a front tier: 5 ms more per query, everywhere
    front, out2 = tmp_path / "front.json", tmp_path / "sim_front.json"
    front.write_text(json.dumps({"delay_ms": [5.0]}))
    args = [
        "simulate", MODEL, "--servers", "3", "--qps", "300", "--duration", "2",
        "--preset", "dynamic", "--profile", str(profile_path), "--balancer", "least",
        "--sla-ms", "50", "--seed", "2", "--classes", "high:0.2:10,low:0.8:1",
    ]  # fmt: skip
    res = CliRunner().invoke(app, [*args, "--front", str(front), "--json", str(out2)])
    assert res.exit_code == 0, res.output
    r2 = json.loads(out2.read_text())
    assert r2["front"]["delay_ms"] == [5.0]
    assert r2["latency_ms"]["p50"] == pytest.approx(r["latency_ms"]["p50"] + 5.0)
    # with 0.5 + 0.25 ms of host CPU per query on each server's cores: every query pays the
    # submit part
    out3 = tmp_path / "sim_host.json"
    res = CliRunner().invoke(app, [*args, "--host-us", "500,250", "--json", str(out3)])
    assert res.exit_code == 0, res.output
    r3 = json.loads(out3.read_text())
    assert r3["host"] == {"submit_us": 500.0, "complete_us": 250.0, "background_us": 0.0,
                          "cores": 2}  # fmt: skip
    assert r3["latency_ms"]["p50"] >= r["latency_ms"]["p50"] + 0.5 - 1e-9
    res = CliRunner().invoke(app, [*args, "--host-us", "500"])
    assert res.exit_code == 2 and "SUBMIT,COMPLETE" in res.output
    front.write_text(json.dumps({"delay": [5.0]}))
    res = CliRunner().invoke(app, [*args, "--front", str(front)])
    assert res.exit_code == 2 and "unknown front model keys" in res.output
    fid = tmp_path / "fid.json"
    res = CliRunner().invoke(
        app,
        [
            "fidelity", MODEL, "--qps", "30", "--duration", "0.3", "--profile",
            str(profile_path), "--sizes", "fixed:8", "--sla-ms", "500", "--interference",
            "default", "--json", str(fid),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    f = json.loads(fid.read_text())
    assert len(f["loads"]) == 1 and f["loads"][0]["error"]["p95"] is not None
    assert f["capacity"] == {"source": "given"}


def test_fidelity_command_takes_its_loads_from_a_real_probe_run(tmp_path, profile_path):
    """No `--qps`: a real probe run measures the capacity the three loads are fractions of."""
    fid = tmp_path / "fid.json"
    res = CliRunner().invoke(
        app,
        [
            "fidelity", MODEL, "--duration", "0.3", "--profile", str(profile_path),
            "--sizes", "fixed:8", "--sla-ms", "500", "--interference", "default",
            "--json", str(fid),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    f = json.loads(fid.read_text())
    cap = f["capacity"]
    assert cap["source"] == "run" and cap["qps"] > 0 and cap["probe_qps"] > 0
    loads = [row["qps"] for row in f["loads"]]
    assert loads == [round(x * cap["qps"], 1) for x in fidelity_mod.DEFAULT_LOADS]
    assert "loads from a capacity of" in res.output


def test_capacity_search_on_the_simulator(profile_path, monkeypatch):
    """`recsched capacity --sim`: the bench's Setup hands its options to sim_run_fn."""
    from recsched.bench.setup import Setup
    from recsched.sim import run as sim_run

    monkeypatch.setattr(sim_run, "lane_profile", lambda ad, t: json.loads(profile_path.read_text()))
    s = Setup.make(MODEL, sla_ms=20.0, sim=True, sizes="lognormal:20:0.8")
    r = s.capacity("dynamic", duration_s=2.0)
    assert r["latency_bounded_qps"] > 0
    assert all(run.get("simulated") for run in r["runs"])


def test_serving_correction_and_engine_idle_cost(profile_path):
    from recsched.config import EngineConfig
    from recsched.sim.lanes import IdleModel
    from recsched.sim.run import add_engine_idle_cost, serving_correction

    ad = load_model(MODEL)
    prof = json.loads(profile_path.read_text())
    out = serving_correction(ad, prof, threads=1, repeats=2, pool_rows=2048)
    sc = out["serving_correction"]
    assert sc["cold_factor"] >= 1.0 and len(sc["idle_ratios_measured"]) == len(prof["batch_sizes"])
    assert out["whole_ms"] == pytest.approx([v * sc["cold_factor"] for v in prof["whole_ms"]])
    assert prof.get("serving_correction") is None  # the input is not modified
    extra = add_engine_idle_cost(out, ad, EngineConfig(lanes=1))
    assert extra >= 0.0 and sc["idle_extra_s"] == extra
    idle = IdleModel.from_profile(out)
    assert idle is not None and idle.extra_s == extra and idle.ratio(7) >= 1.0


# Repeated real runs (the noise floor). A fake `real` gives a different p95 on each call.
ROW_KEYS = {
    "qps", "real", "sim", "error", "real_completed_qps", "sim_completed_qps",
    "real_lane_utilization", "sim_lane_utilization",
}  # fmt: skip
RESULT_KEYS = {
    "model", "preset", "config", "scale", "seed", "duration_s", "sla_ms", "task_overhead_s",
    "interference", "serving_correction", "loads", "max_abs_error", "goal_p95",
    "p95_within_goal", "capacity", "host",
}  # fmt: skip


def _bench(qps: float, p95: float, p50: float = 1.0, p99: float = 50.0) -> dict:
    lat = {"p50": p50, "p95": p95, "p99": p99}
    return {"offered_qps": qps, "latency_ms": lat, "completed_qps": qps, "lane_utilization": [0.5]}


class FakeReal:
    """qps -> bench result; the n-th call at a load returns that load's n-th p95 (cycling),
    and every call is logged as ("real", qps)."""

    def __init__(self, p95s: dict[float, list[float]], log: list | None = None):
        self.p95s, self.log, self.n = p95s, log if log is not None else [], {}

    def __call__(self, qps: float) -> dict:
        i = self.n.get(qps, 0)
        self.n[qps] = i + 1
        self.log.append(("real", qps))
        seq = self.p95s[qps]
        return _bench(qps, seq[i % len(seq)])


def test_repeats_interleave_real_runs_over_the_loads_and_sim_once():
    log: list = []
    real = FakeReal({10.0: [1.0], 20.0: [1.0], 30.0: [1.0]}, log)

    def sim(qps: float) -> dict:
        log.append(("sim", qps))
        return _bench(qps, 1.0)

    seen: list = []
    rows = run_loads([10, 20, 30], real, sim, repeats=3, on_load=lambda r: seen.append(r["qps"]))
    r, s = "real", "sim"
    assert log == [
        (r, 10.0), (r, 20.0), (r, 30.0), (r, 10.0), (r, 20.0), (r, 30.0),
        (r, 10.0), (s, 10.0), (r, 20.0), (s, 20.0), (r, 30.0), (s, 30.0),
    ]  # fmt: skip
    assert seen == [10.0, 20.0, 30.0] and [row["qps"] for row in rows] == seen
    log.clear()
    run_loads([10, 20], real, sim, repeats=1)  # today's order: real then sim, load by load
    assert log == [(r, 10.0), (s, 10.0), (r, 20.0), (s, 20.0)]
    with pytest.raises(ValueError):
        run_loads([10], real, sim, repeats=0)


def test_repeats_compare_sim_with_the_median_real_and_report_the_spread():
    real = FakeReal({10.0: [30.0, 10.0, 20.0], 20.0: [4.0, 5.0, 6.0], 30.0: [10.0, 10.0, 12.0]})
    rows = run_loads([10, 20, 30], real, lambda q: _bench(q, 22.0), repeats=3)
    a, b, c = rows
    assert [run["p95"] for run in a["real_runs"]] == [30.0, 10.0, 20.0]
    assert a["real"]["p95"] == 20.0 and a["error"]["p95"] == pytest.approx(0.1)
    assert a["real_spread"]["p95"] == pytest.approx((30 - 10) / 20)
    assert a["real_spread"]["p50"] == 0.0  # identical p50s
    assert b["real"]["p95"] == 5.0 and b["real_spread"]["p95"] == pytest.approx(2 / 5)
    assert c["real"]["p95"] == 10.0 and c["real_spread"]["p95"] == pytest.approx(0.2)
    assert a["real_completed_qps"] == 10.0 and a["real_lane_utilization"] == [0.5]
    s = summarize(rows)
    assert s["median_real_spread"]["p95"] == pytest.approx(0.4)  # of 1.0, 0.4, 0.2
    assert s["max_abs_error"]["p95"] == pytest.approx(22 / 5 - 1)
    # an even count: the median is the mean of the middle two
    two = run_loads([10], FakeReal({10.0: [10.0, 30.0]}), lambda q: _bench(q, 22.0), repeats=2)
    assert two[0]["real"]["p95"] == 20.0 and two[0]["real_spread"]["p95"] == pytest.approx(1.0)
    assert math.isnan(spread([5.0])) and math.isnan(spread([0.0, 0.0]))
    assert spread([None, 2.0, 4.0, math.nan]) == pytest.approx(2 / 3)


def test_repeats_one_keeps_rows_and_summary_unchanged():
    real = FakeReal({10.0: [4.0], 20.0: [8.0]})
    rows = run_loads([10, 20], real, lambda q: _bench(q, 5.0), repeats=1)
    assert rows == [
        compare(_bench(10.0, 4.0), _bench(10.0, 5.0)),
        compare(_bench(20.0, 8.0), _bench(20.0, 5.0)),
    ]
    assert all(set(row) == ROW_KEYS for row in rows)
    assert set(summarize(rows)) == {"max_abs_error", "goal_p95", "p95_within_goal"}


def test_fidelity_repeats_with_an_injected_real(profile_path):
    prof = json.loads(profile_path.read_text())
    kw = dict(duration_s=0.5, seed=1, sla_ms=500.0, sizes="lognormal:20:0.8")
    kw["interference"] = "default"
    one = fidelity(
        MODEL, prof, [20.0, 40.0], "baseline", real=FakeReal({20.0: [3.0], 40.0: [4.0]}), **kw
    )
    assert set(one) == RESULT_KEYS and all(set(row) == ROW_KEYS for row in one["loads"])
    log: list = []
    real = FakeReal({20.0: [3.0, 9.0, 6.0], 40.0: [4.0, 2.0, 3.0]}, log)
    r = fidelity(MODEL, prof, [20.0, 40.0], "baseline", real=real, repeats=3, **kw)
    assert [q for _, q in log] == [20.0, 40.0] * 3
    assert set(r) == RESULT_KEYS | {"repeats", "median_real_spread"} and r["repeats"] == 3
    a, b = r["loads"]
    assert a["real"]["p95"] == 6.0 and b["real"]["p95"] == 3.0
    assert a["real_spread"]["p95"] == pytest.approx(1.0)
    assert b["real_spread"]["p95"] == pytest.approx(2 / 3)
    assert r["median_real_spread"]["p95"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert a["error"]["p95"] == pytest.approx((a["sim"]["p95"] - 6.0) / 6.0)
    assert a["sim"] == one["loads"][0]["sim"]  # the simulator runs once, as before
    with pytest.raises(ValueError):
        fidelity(MODEL, prof, [20.0], "baseline", real=real, repeats=0, **kw)


def test_default_loads_are_fractions_of_the_capacity_a_probe_run_measures(profile_path):
    """Loads default to 30/60/85% of `lanes / (lane-seconds per query)` of a real probe run at
    30% of the profile's estimate; `loads_from="profile"` skips the probe."""
    prof = json.loads(profile_path.read_text())
    kw = dict(duration_s=0.3, seed=1, sla_ms=500.0, sizes="fixed:8", interference="default")
    calls: list[float] = []

    def real(qps: float) -> dict:  # lanes half busy each, whatever the load
        calls.append(qps)
        return _bench(qps, 2.0) | {"lane_utilization": [0.25, 0.25]}

    by_profile = fidelity(MODEL, prof, None, "baseline", real=real, loads_from="profile", **kw)
    cap = by_profile["capacity"]
    assert cap["source"] == "profile" and cap["qps"] == cap["profile_qps"] > 0
    loads = [row["qps"] for row in by_profile["loads"]]
    assert loads == [round(f * cap["qps"], 1) for f in fidelity_mod.DEFAULT_LOADS] == calls
    calls.clear()
    r = fidelity(MODEL, prof, None, "baseline", real=real, **kw)
    lanes = r["config"]["lanes"]
    probe = round(fidelity_mod.PROBE_LOAD * cap["profile_qps"], 1)
    assert r["capacity"] == {
        "source": "run", "profile_qps": cap["profile_qps"], "probe_qps": probe,
        "qps": pytest.approx(lanes * probe / 0.5), "lanes_qps": pytest.approx(lanes * probe / 0.5),
        "cpu_qps": None,
    }  # fmt: skip
    assert calls[0] == probe and len(calls) == 4
    assert [row["qps"] for row in r["loads"]] == [
        round(f * lanes * probe / 0.5, 1) for f in fidelity_mod.DEFAULT_LOADS
    ]
    assert fidelity_mod.run_capacity_qps({"completed_qps": 0.0}, 2) is None
    assert fidelity_mod.cpu_capacity_qps({"completed_qps": 5.0}) is None  # not measured

    def cpu_bound(qps: float) -> dict:  # the machine 60% busy while the lanes are 25% each
        return real(qps) | {"machine_cpu": {"busy": 0.6, "idle": 0.4, "steal": 0.0}}

    r = fidelity(MODEL, prof, None, "baseline", real=cpu_bound, **kw)
    done = _bench(probe, 2.0)["completed_qps"]
    assert r["capacity"]["cpu_qps"] == pytest.approx(done / 0.6)
    assert r["capacity"]["qps"] == min(r["capacity"]["cpu_qps"], r["capacity"]["lanes_qps"])
    with pytest.raises(ValueError, match="loads_from"):
        fidelity(MODEL, prof, None, "baseline", real=real, loads_from="guess", **kw)

    def accounted(qps: float) -> dict:  # 20 us of driver and 130 us more host CPU per query
        n = round(qps * kw["duration_s"])
        cpu = {"process_s": 0.00115 * n, "lanes_s": 0.001 * n, "driver_s": 0.00002 * n,
               "tasks": n, "completed": n}  # fmt: skip
        return real(qps) | {"cpu": cpu}

    r = fidelity(MODEL, prof, None, "baseline", real=accounted, **kw)
    h = r["host"]  # from the probe, the default hand-off taken out of the completion side
    assert h["submit_us"] == pytest.approx(20.0) and h["background_us"] == 0.0
    over_us = fidelity_mod.DEFAULT_TASK_OVERHEAD_S * 1e6
    assert h["complete_us"] == pytest.approx(130.0 - over_us)
    for row in r["loads"]:  # the host's work per query shows in every latency
        assert row["error"]["p50"] > row["without_host"]["error"]["p50"]
    assert set(r["without_host"]) == {"error"}
    off = fidelity(MODEL, prof, None, "baseline", real=accounted, host=False, **kw)
    assert off["host"] is None and "without_host" not in off
    # the engine's extra after idling was measured end to end: beside a host model it is
    # charged less the host's submit work, not twice
    sc = {"idle_ratios": [1.0] * len(prof["batch_sizes"]), "idle_from_s": 2e-4,
          "idle_gap_s": 0.02, "idle_extra_s": 5e-4}  # fmt: skip
    with_sc = {**prof, "serving_correction": sc}
    assert fidelity_mod.idle_beside_host(with_sc, None).extra_s == 5e-4
    hm = fidelity_mod.HostModel(1e-4, 2e-4, 2)
    assert fidelity_mod.idle_beside_host(with_sc, hm).extra_s == pytest.approx(4e-4)
    assert fidelity_mod.idle_beside_host(with_sc, fidelity_mod.HostModel(1e-3, 0, 2)).extra_s == 0
    assert fidelity_mod.idle_beside_host(prof, hm) is None  # no idle model to correct


def test_fidelity_command_repeats_prints_the_noise_floor(tmp_path, profile_path, monkeypatch):
    """`--repeats` (and `--no-host`) through the CLI, with a fake real engine (no real runs)."""
    real = FakeReal({30.0: [10.0, 14.0, 12.0]})
    orig = fidelity_mod.fidelity
    given: dict = {}

    def fake(*a, **k):
        given.update(k)
        return orig(*a, real=real, **k)

    monkeypatch.setattr(fidelity_mod, "fidelity", fake)
    fid = tmp_path / "fid.json"
    res = CliRunner().invoke(
        app,
        [
            "fidelity", MODEL, "--qps", "30", "--duration", "0.3", "--profile",
            str(profile_path), "--sizes", "fixed:8", "--sla-ms", "500", "--interference",
            "default", "--repeats", "3", "--no-host", "--json", str(fid),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    f = json.loads(fid.read_text())
    assert given["host"] is False and f["host"] is None
    assert f["repeats"] == 3 and f["loads"][0]["real"]["p95"] == 12.0
    assert f["median_real_spread"]["p95"] == pytest.approx(4 / 12)
    assert "differ by 33.3% at p95 among themselves" in " ".join(res.output.split())


def test_in_run_scale_and_scaled_profile():
    tasks = [(10, 0.002), (20, 0.004)]
    assert in_run_scale(tasks, lambda n: n * 1e-4) == pytest.approx(0.006 / 0.003)
    assert math.isnan(in_run_scale([], lambda n: 1.0))
    # a fixed cost per task is not a slowdown: 1.1 x the prediction + 0.3 ms, fitted back
    pred = lambda n: n * 1e-4  # noqa: E731
    tasks = [(n, 1.1 * pred(n) + 3e-4) for n in (1, 4, 16, 64, 256)]
    a, b = fidelity_mod.in_run_fit(tasks, pred)
    assert a == pytest.approx(1.1) and b == pytest.approx(3e-4)
    assert in_run_scale(tasks, pred) > 1.1  # one factor overcharges the large tasks
    assert fidelity_mod.in_run_fit([(8, 0.002)], pred) == (pytest.approx(2.5), 0.0)  # one size
    shrinking = [(1, 5e-5), (100, 0.02)]  # b < 0 would fit: one factor instead
    assert fidelity_mod.in_run_fit(shrinking, pred) == (in_run_scale(shrinking, pred), 0.0)
    prof = {
        "whole_ms": [1.0, 2.0],
        "granularities": {"coarse": {"ops": {"a": [0.5, 1.0]}}},
        "serving_correction": {"cold_factor": 1.2},
    }
    out = scaled_profile(prof, 2.0)
    assert out["whole_ms"] == [2.0, 4.0] and out["granularities"]["coarse"]["ops"]["a"] == [1, 2]
    assert "serving_correction" not in out and prof["whole_ms"] == [1.0, 2.0]  # a copy


def test_fidelity_in_run_calibrates_the_simulator_by_the_real_tasks(profile_path):
    """A fake real run whose tasks took 3x the profile's prediction: the in-run simulator runs
    on a profile scaled by 3, so its latencies are well above the uncalibrated one's."""
    prof = json.loads(profile_path.read_text())
    cost = fidelity_mod.make_cost(prof, "coarse")
    seen = []

    def real(q: float) -> dict:
        seen.append(q)
        return {
            "offered_qps": q,
            "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0},
            "lane_tasks": [[n, 3.0 * cost.whole_s(n)] for n in (1, 16, 100)],
        }

    r = fidelity(
        MODEL, prof, [20.0, 40.0], "baseline", duration_s=0.5, seed=1, sla_ms=500.0,
        sizes="fixed:64", real=real, in_run=True, interference="none",
    )  # fmt: skip
    assert seen == [20.0, 40.0]
    for row in r["loads"]:
        assert row["in_run_task_overhead_s"] == fidelity_mod.DEFAULT_TASK_OVERHEAD_S  # no gaps
        assert row["in_run_scale"] == pytest.approx(3.0)
        assert row["in_run_task_extra_s"] == pytest.approx(0.0, abs=1e-9)
        assert row["sim_in_run"]["p50"] > 2.0 * row["sim"]["p50"]
        want = (row["sim_in_run"]["p95"] - 2.0) / 2.0
        assert row["error_in_run"]["p95"] == pytest.approx(want)
        assert "lane_tasks" not in row
    assert set(r["in_run"]) >= {"max_abs_error", "p95_within_goal"}
    # trace-driven: every task drew 3x its prediction (one bin per size seen), as in-run
    for row in r["loads"]:
        assert row["sim_in_run_noise"]["p50"] == pytest.approx(row["sim_in_run"]["p50"])
        assert [b["median"] for b in row["in_run_noise"]["bins"]] == pytest.approx([3.0] * 3)
        assert math.isfinite(row["error_in_run_noise"]["p95"])
    assert set(r["in_run_noise"]) >= {"max_abs_error", "p95_within_goal"}
    with pytest.raises(ValueError, match="sequential"):
        fidelity(MODEL, prof, [20.0], "opstream", real=real, in_run=True)


def test_probe_fit_recovers_slowdown_corun_idle_and_fixed_cost():
    """Tasks built from known terms (1.2x the prediction, 1.5x beside another lane, 1.4x
    and 0.5 ms more after a long idle gap, 0.1 ms fixed) are fitted back exactly."""
    pred = lambda n: n * 1e-4  # noqa: E731
    weight = lambda g: min(1.0, g / 0.02)  # noqa: E731
    tasks, ctx = [], []
    for n in (1, 4, 16, 64, 256):
        for gap, other in ((0.0, 0), (0.0, 1), (0.01, 0), (0.05, 1), (math.inf, 0)):
            w = weight(gap)
            t = 1.2 * pred(n) * (1 + 0.5 * other + 0.4 * w) + 1e-4 + 5e-4 * w
            tasks.append((n, t))
            ctx.append((gap, other))
    f = fidelity_mod.probe_fit(tasks, ctx, pred, weight)
    assert f.a == pytest.approx(1.2) and f.b == pytest.approx(1e-4)
    assert f.interference == pytest.approx(1.5) and f.idle_ratio == pytest.approx(1.4)
    assert f.idle_extra_s == pytest.approx(5e-4) and f.tasks == 25
    # no context to tell apart: the terms it cannot see stay at "none" (no negative terms)
    flat = [(n, 1.1 * pred(n) + 3e-4) for n in (1, 4, 16, 64, 256)]
    f = fidelity_mod.probe_fit(flat, [(0.0, 0)] * 5, pred, weight)
    assert (f.a, f.b) == (pytest.approx(1.1), pytest.approx(3e-4))
    assert (f.interference, f.idle_ratio, f.idle_extra_s) == (1.0, 1.0, 0.0)
    few = fidelity_mod.probe_fit(flat[:2], [(0.0, 0)] * 2, pred, weight)  # too few: in_run_fit
    assert (few.a, few.b) == fidelity_mod.in_run_fit(flat[:2], pred)


def test_interpolate_fit_is_linear_in_the_load_and_kept_in_range():
    f1 = fidelity_mod.ProbeFit(1.2, 2e-4, 1.1, 1.3, 1e-4, 10)
    f2 = fidelity_mod.ProbeFit(1.0, 1e-4, 1.0, 1.1, 0.0, 20)
    fits = [(100.0, f1), (300.0, f2)]
    mid = fidelity_mod.interpolate_fit(fits, 200.0)
    assert (mid.a, mid.b, mid.interference) == pytest.approx((1.1, 1.5e-4, 1.05))
    assert (mid.idle_ratio, mid.idle_extra_s, mid.tasks) == (pytest.approx(1.2), 5e-5, 30)
    far = fidelity_mod.interpolate_fit(fits, 500.0)  # beyond: extrapolated, kept in range
    assert far.a == pytest.approx(0.8) and far.b == 0.0 and far.interference == 1.0
    assert fidelity_mod.interpolate_fit(fits[:1], 500.0) == f1  # one probe: its fit


def test_the_probe_run_calibrates_a_simulation_made_before_the_measured_runs(profile_path):
    """With loads from a probe run and `in_run`, the probe's own lane tasks (3x the profile)
    calibrate two more simulations of every load, "probe" and "probe_flat", before any
    measured run: both charge the 3x, so they run slower than the profile's."""
    prof = json.loads(profile_path.read_text())
    cost = fidelity_mod.make_cost(prof, "coarse")
    calls: list[float] = []

    def real(qps: float) -> dict:
        calls.append(qps)
        tasks = [[n, 3.0 * cost.whole_s(n)] for n in (1, 4, 16, 64, 100) for _ in range(2)]
        return _bench(qps, 2.0) | {
            "lane_utilization": [0.25, 0.25],
            "lane_tasks": tasks,
            "lane_task_context": [[0.0, i % 2] for i in range(len(tasks))],
            # the hand-off between tasks falls with the load: 0.9 ms at the first probe
            "lane_gaps_s": [0.0009 if len(calls) == 1 else 0.0001] * 30,
        }

    r = fidelity(
        MODEL, prof, None, "baseline", duration_s=0.3, seed=1, sla_ms=500.0, sizes="fixed:8",
        real=real, in_run=True, interference="none",
    )  # fmt: skip
    assert len(calls) == 5  # the probe, the second probe near the top load, the three loads
    assert (
        calls[1]
        == r["capacity"]["probe2_qps"]
        == round(fidelity_mod.PROBE2_LOAD * r["capacity"]["qps"], 1)
    )
    fit = r["probe_fit"]
    assert fit["second"]["qps"] == calls[1] and fit["second"]["a"] == pytest.approx(3.0)
    assert (fit["handoff_s"], fit["second"]["handoff_s"]) == (0.0009, 0.0001)
    top = r["loads"][-1]  # near the second probe: its smaller hand-off, a faster simulation
    assert top["sim_probe2"]["p50"] < top["sim_probe"]["p50"]
    assert fit["a"] == pytest.approx(3.0) and fit["b"] == pytest.approx(0.0, abs=1e-12)
    assert fit["interference"] == pytest.approx(1.0) and fit["tasks"] == 10
    assert fit["flat"]["a"] == pytest.approx(3.0)
    for row in r["loads"]:
        assert "lane_task_context" not in row
        for key in ("probe", "probe_flat", "probe2"):
            assert row[f"sim_{key}"]["p50"] > 2.0 * row["sim"]["p50"]
            want = (row[f"sim_{key}"]["p95"] - 2.0) / 2.0
            assert row[f"error_{key}"]["p95"] == pytest.approx(want)
    assert set(r["probe"]) >= {"max_abs_error", "p95_within_goal"} and "probe_flat" in r
    given = fidelity(
        MODEL, prof, [20.0], "baseline", duration_s=0.3, seed=1, sla_ms=500.0,
        sizes="fixed:8", real=real, in_run=True, interference="none",
    )  # fmt: skip
    assert "probe_fit" not in given and "error_probe" not in given["loads"][0]  # no probe


def test_handoff_is_the_median_short_lane_gap():
    gaps = [0.0004] * 15 + [0.0006] * 10 + [0.05] * 40  # idle gaps are left out
    assert handoff_s(gaps, 1e-4) == 0.0004
    assert handoff_s([0.0004] * 19 + [0.05] * 40, 1e-4) == 1e-4  # too few: the default


def test_in_run_uses_the_real_runs_hand_off_as_the_task_overhead(profile_path):
    """Real tasks at the profile's cost, but 2 ms of hand-off between them: the in-run
    simulations charge it per task, so they run slower than the uncalibrated one."""
    prof = json.loads(profile_path.read_text())
    cost = fidelity_mod.make_cost(prof, "coarse")

    def real(q: float) -> dict:
        return {
            "offered_qps": q, "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0},
            "lane_tasks": [[n, cost.whole_s(n)] for n in (1, 16, 100)],
            "lane_gaps_s": [0.0009] * 30 + [0.2] * 5,
        }  # fmt: skip

    r = fidelity(
        MODEL, prof, [20.0], "baseline", duration_s=0.5, seed=1, sla_ms=500.0,
        sizes="fixed:64", real=real, in_run=True, interference="none", task_overhead_s=0.0,
    )  # fmt: skip
    row = r["loads"][0]
    assert row["in_run_task_overhead_s"] == 0.0009
    assert row["sim_in_run"]["p50"] > row["sim"]["p50"] + 0.8  # ms: the hand-off is charged
    assert row["sim_in_run_noise"]["p50"] > row["sim"]["p50"] + 0.8


def test_the_opstream_presets_auto_granularity_is_chosen_before_simulating(profile_path):
    """The `opstream` preset's granularity is `auto`: fidelity picks it from the model's
    profile (as the real engine's setup does) and simulates that graph."""
    prof = json.loads(profile_path.read_text())

    def real(q: float) -> dict:
        return {"offered_qps": q, "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0}}

    r = fidelity(
        MODEL, prof, [20.0], "opstream", duration_s=0.5, seed=1, sla_ms=500.0,
        sizes="fixed:64", real=real, interference="none",
    )  # fmt: skip
    assert r["config"]["granularity"] in ("model", "coarse", "fine")
    assert math.isfinite(r["loads"][0]["sim"]["p95"])
