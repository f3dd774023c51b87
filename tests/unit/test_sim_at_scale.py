"""A tiny run of benchmarks/sim_at_scale.py's core (`study`): the searches give a passing
capacity and a server count for each preset, with analytic costs (no model, no timing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from recsched.config import preset
from recsched.sim.run import simulate

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "sim_at_scale.py"


def _module():
    spec = importlib.util.spec_from_file_location("sim_at_scale", _PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Linear:
    dispatch_s = 0.0

    def whole_s(self, batch: int) -> float:
        return 5e-4 + 2e-5 * batch

    def op_s(self, op: int, batch: int) -> float:
        return 1e-5 * batch


def _runner(cfg, name, servers, duration_s):
    def run(qps: float) -> dict:
        return simulate(
            "m", cfg, Linear(), qps=qps, duration_s=duration_s, servers=servers, balancer="p2c",
            sla_ms=10.0, sizes="lognormal:20:0.8", seed=1, preset_name=name,
        )  # fmt: skip

    return run


def test_study_finds_capacity_and_servers_needed():
    mod = _module()
    configs = {"baseline": preset("baseline"), "dynamic": preset("dynamic", batch_size=16)}
    r = mod.study(
        _runner, configs, servers=3, duration_s=0.5, single_duration_s=0.5,
        single_start_qps=400.0, max_runs=5,
    )  # fmt: skip
    assert list(r["presets"]) == ["baseline", "dynamic"]
    assert r["traffic_qps"] == r["presets"]["baseline"]["cluster_qps"] > 0
    for p in r["presets"].values():
        assert p["cluster_qps"] > 0 and p["one_server_qps"] > 0
        assert p["best_run"]["sla_met"] and p["best_run"]["p95_ms"] <= 10.0
        n = p["servers_needed"]
        assert n is not None and n >= 1
        met = {row["servers"]: row["sla_met"] for row in p["servers_runs"]}
        assert met[n] and (n == 1 or met.get(n - 1) is not True)
    assert r["presets"]["baseline"]["qps_ratio"] == 1.0


def test_servers_needed_gallops_and_bisects():
    mod = _module()

    def make_run(n: int):
        return lambda q: {
            "offered_qps": q, "queries": 1, "sla_met": n >= 37,
            "latency_ms": {"p95": 1.0, "p99": 1.0},
        }  # fmt: skip

    assert mod.servers_needed(make_run, 100.0, 10, max_runs=12)[0] == 37
    assert mod.servers_needed(make_run, 100.0, 90, max_runs=12)[0] == 37
    assert mod.servers_needed(make_run, 100.0, 37)[0] == 37
    assert mod.servers_needed(make_run, 100.0, 1, max_runs=2)[0] is None
