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
from recsched.sim.fidelity import compare, fidelity, rel_error, summarize

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
        duration_s=0.5, seed=1, sla_ms=500.0, sizes="lognormal:20:0.8",
    )  # fmt: skip
    assert [row["qps"] for row in r["loads"]] == [20.0, 40.0, 60.0]
    for row in r["loads"]:
        for p in ("p50", "p95", "p99"):
            assert row["real"][p] > 0 and row["sim"][p] > 0
            assert math.isfinite(row["error"][p])
            want = (row["sim"][p] - row["real"][p]) / row["real"][p]
            assert row["error"][p] == pytest.approx(want)
    assert all(math.isfinite(v) for v in r["max_abs_error"].values())
    assert isinstance(r["p95_within_goal"], bool)
    assert "mixed|mixed" in r["interference"]["cpu"]


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
