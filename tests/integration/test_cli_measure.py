"""`recsched capacity`, `compare` and `tune` through the CLI (on the simulator, `--sim`), and
the `tuned` request policy's use of the tuner's cache (`Setup.config` -> `tuned_knobs`).

Every test has a cache of its own (RECSCHED_CACHE), seeded with this machine's lane profile
of the model and its host's CPU per query, measured once for the module (what a `--sim` run
simulates a server with), so no test measures them again and none sees another's tuned
configurations. The checks are the
results' shapes and invariants, never timings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from recsched.bench import calibrate
from recsched.bench import tune as tune_mod
from recsched.bench.setup import Setup, default_lanes
from recsched.bench.tune import AUTO_BUDGET, AUTO_DURATION_S, TUNED_FIELDS, cache_key_sizes
from recsched.bench.tuning import TuneCache
from recsched.cli import app
from recsched.config import EngineConfig, preset
from tests.tuned import cache_tuned

MODEL = "ncf"  # the smallest model: quick to load, profile and simulate
SLA_MS = 20.0  # fixed, so no command measures the model's latency alone for `--sla-x`
SIM = ["--sim", "--sla-ms", f"{SLA_MS:g}", "--duration", "0.5", "--seed", "3"]
# keys of a `capacity` result (DESIGN.md), and of `tune --json`
CAPACITY_KEYS = {
    "model", "preset", "sla_ms", "latency_bounded_qps", "peak_items_per_s", "efficiency",
    "cost_core_s_per_1k", "runs",
}  # fmt: skip
TUNE_KEYS = {"model", "sla_ms", "best", "trajectory", "budget", "runs", "stop_reason"}
# a configuration no default or preset has: seen in a result, it came from the cache
CACHED = EngineConfig(
    request="dynamic", batch_size=64, merge_delay_ms=0.5, order="size", lanes=1,
    threads_per_lane=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory) -> Path:
    """A cache holding the model's one-thread lane profile and its host model on one lane and
    on the default lanes (measured here, once)."""
    from recsched.models.registry import load_model
    from recsched.sim.run import lane_host, lane_profile

    d = tmp_path_factory.mktemp("warm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECSCHED_CACHE", str(d))
        lane_profile(load_model(MODEL), 1)
        s = Setup.make(MODEL, sla_ms=SLA_MS, sim=True)
        for lanes in sorted({1, default_lanes()[0]}):
            host = lane_host(s, EngineConfig(lanes=lanes, threads_per_lane=1))
            assert host is not None and host.submit_s > 0 and host.cores >= 1
    return d


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch, warm_cache) -> Path:
    """This test's own cache: a copy of the warm one's files, no tuned configurations."""
    d = tmp_path / "cache"
    d.mkdir()
    for f in warm_cache.iterdir():
        if f.is_file():
            shutil.copy(f, d / f.name)
    monkeypatch.setenv("RECSCHED_CACHE", str(d))
    assert calibrate.cache_dir() == d and not (d / "tuned").exists()
    return d


@pytest.fixture
def no_tuning(monkeypatch) -> None:
    """Tuning fails the test (what `tuned_knobs` calls on a cache miss)."""

    def fail(*args: Any, **kw: Any) -> dict:
        raise AssertionError("tuned although a configuration was cached")

    monkeypatch.setattr(tune_mod, "tune", fail)


def invoke(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    # rich wraps long lines and captions; table cells are read without their borders
    return " ".join(res.output.replace("│", " ").split())


def knobs(config: dict | EngineConfig) -> dict[str, Any]:
    if isinstance(config, EngineConfig):
        config = config.to_dict()
    return {k: config[k] for k in TUNED_FIELDS}


def check_capacity(cap: dict, name: str) -> None:
    """A `capacity` result's invariants (the search made no confirming runs)."""
    assert CAPACITY_KEYS <= set(cap), CAPACITY_KEYS - set(cap)
    assert cap["model"] == MODEL and cap["preset"] == name and cap["sla_ms"] == SLA_MS
    runs = cap["runs"]
    assert 2 <= len(runs) <= 12 and all(r["simulated"] and r["preset"] == name for r in runs)
    assert all(r["sla_met"] == (r["latency_ms"]["p95"] <= SLA_MS) for r in runs)
    passing = [r for r in runs if r["sla_met"]]
    assert passing, "ncf meets a 20 ms SLA at some rate"
    # the capacity is the highest rate that met the SLA, bracketed by one that missed above it
    qps = cap["latency_bounded_qps"]
    assert qps == max(r["offered_qps"] for r in passing) > 0
    assert any(not r["sla_met"] and r["offered_qps"] > qps for r in runs)
    best = next(r for r in passing if r["offered_qps"] == qps)
    assert cap["latency_bounded_items_per_s"] == best["completed_items_per_s"] > 0
    assert cap["cost_core_s_per_1k"] == best["cost_core_s_per_1k"] > 0
    assert cap["config"] == best["config"]
    # with `--sim`, the simulated lanes' peak: what lanes that cost what the profile says
    # serve at the best batch size, which no simulated run can pass
    peak = cap["peak_items_per_s"]
    assert peak is not None and peak > 0
    assert cap["efficiency"] == pytest.approx(cap["latency_bounded_items_per_s"] / peak)
    assert 0 < cap["efficiency"] <= 1.0


# -- the commands ----------------------------------------------------------------------------


def test_capacity_prints_the_search_and_writes_the_design_shape(tmp_path):
    out = tmp_path / "cap.json"
    text = invoke("capacity", MODEL, "--preset", "baseline", *SIM, "--json", str(out))
    cap = json.loads(out.read_text())
    check_capacity(cap, "baseline")
    assert cap["config"]["request"] == "whole" and cap["sla_percentile"] == 95.0
    # the simulated server carries this machine's host CPU per query (cached, `lane_host`)
    assert all(r["host"]["submit_us"] > 0 for r in cap["runs"])
    assert f"capacity {MODEL} / baseline at SLA 20.00 ms" in text
    assert f"latency-bounded {cap['latency_bounded_qps']:,.2f} qps" in text
    for r in cap["runs"]:  # a table row per run, and a log line
        assert f"{r['offered_qps']:,.2f}" in text
        assert f"baseline: {r['offered_qps']:.1f} qps" in text
    assert f"wrote {out}" in text


def test_compare_ratios_are_each_capacity_over_the_first(tmp_path, no_tuning):
    out = tmp_path / "cmp.json"
    names = ["split", "baseline", "dynamic"]
    text = invoke("compare", MODEL, "--presets", ",".join(names), *SIM, "--json", str(out))
    r = json.loads(out.read_text())
    assert r["model"] == MODEL and r["sla_ms"] == SLA_MS
    assert list(r["presets"]) == list(r["ratios"]) == names  # in the order given
    for name, cap in r["presets"].items():
        check_capacity(cap, name)
        assert cap["config"]["request"] == preset(name).request
    first = r["presets"]["split"]["latency_bounded_qps"]
    assert r["ratios"]["split"] == 1.0
    for name, cap in r["presets"].items():
        assert r["ratios"][name] == pytest.approx(cap["latency_bounded_qps"] / first)
    for name in names:  # a table row per preset: capacity and ratio
        cap = r["presets"][name]
        row = f"{name} {cap['latency_bounded_qps']:,.2f} {r['ratios'][name]:,.2f}"
        assert row in text, row
    assert not (calibrate.cache_dir() / "tuned").exists()  # no preset here is tuned


def test_tune_caches_its_best_and_compare_then_serves_it_without_tuning(tmp_path, monkeypatch):
    out = tmp_path / "tune.json"
    text = invoke("tune", MODEL, *SIM, "--budget", "4", "--json", str(out))
    t = json.loads(out.read_text())
    assert TUNE_KEYS <= set(t), TUNE_KEYS - set(t)
    assert t["model"] == MODEL and t["sla_ms"] == SLA_MS and t["budget"] == 4
    traj = t["trajectory"]
    assert 1 <= t["runs"] == len(traj) <= 4
    assert [row["step"] for row in traj] == list(range(1, len(traj) + 1))
    for row in traj:  # each step's knobs, and the capacity search's runs behind it
        assert row["knobs"] == {k: row["config"][k] for k in TUNED_FIELDS if k in row["config"]}
        assert row["runs"] and all({"qps", "met", "s"} <= set(run) for run in row["runs"])
        assert row["qps"] == 0.0 or row["met"]
    best = t["best"]
    assert best["met"] and best["qps"] > 0 and best["p95_ms"] <= SLA_MS
    assert any(row["config"] == {k: best[k] for k in row["config"]} for row in traj)
    assert traj[0]["knobs"]["request"] == "split" and traj[0]["knobs"]["batch_size"] == 1024
    assert f"{MODEL} tuning trajectory (SLA 20.00 ms p95)" in text and "best: {" in text

    # stored under the simulator's key, for this model, scale and SLA (never for the engine)
    sim = Setup.make(MODEL, sla_ms=SLA_MS, sim=True)
    tuned = TuneCache(calibrate.cache_dir() / "tuned")
    hit = tuned.get(MODEL, "small", SLA_MS, cache_key_sizes(sim, preset("deeprecsched")))
    assert hit is not None and knobs(hit[0]) == knobs(best) and hit[1].qps == best["qps"]
    real = Setup.make(MODEL, sla_ms=SLA_MS)
    assert tuned.get(MODEL, "small", SLA_MS, cache_key_sizes(real, preset("deeprecsched"))) is None

    # `compare` with the tuned preset: the cached configuration, not a second tuning
    calls: list[Any] = []
    monkeypatch.setattr(tune_mod, "tune", lambda *a, **kw: calls.append(kw) or {})
    cmp_out = tmp_path / "cmp.json"
    presets = "baseline,deeprecsched"
    text = invoke("compare", MODEL, "--presets", presets, *SIM, "--json", str(cmp_out))
    assert calls == [] and "no tuned configuration cached" not in text
    assert "tuned request knobs: request=" in text
    r = json.loads(cmp_out.read_text())
    check_capacity(r["presets"]["deeprecsched"], "deeprecsched")
    assert knobs(r["presets"]["deeprecsched"]["config"]) == knobs(best)
    assert r["ratios"]["baseline"] == 1.0
    base = r["presets"]["baseline"]["latency_bounded_qps"]
    want = r["presets"]["deeprecsched"]["latency_bounded_qps"] / base
    assert r["ratios"]["deeprecsched"] == pytest.approx(want)


def test_capacity_of_the_tuned_preset_runs_the_cached_knobs(tmp_path, no_tuning):
    """The CLI passes None for options not given (`--lanes`, `--threads-per-lane`): they must
    not keep the cached lanes and threads from the tuned configuration."""
    cache_tuned(Setup.make(MODEL, sla_ms=SLA_MS, sim=True), CACHED)
    out = tmp_path / "cap.json"
    text = invoke("capacity", MODEL, "--preset", "deeprecsched", *SIM, "--json", str(out))
    cap = json.loads(out.read_text())
    check_capacity(cap, "deeprecsched")
    assert all(knobs(run["config"]) == knobs(CACHED) for run in cap["runs"])
    assert cap["config"]["operator"] == "sequential"
    assert "tuned request knobs: request=dynamic, batch_size=64, order=size" in text


# -- the tuned policy and the cache (no command) -----------------------------------------------


def test_a_cached_configuration_is_used_without_tuning(no_tuning):
    s = Setup.make(MODEL, sla_ms=SLA_MS)
    cache_tuned(s, CACHED)
    cfg = s.config("deeprecsched")
    assert knobs(cfg) == knobs(CACHED) and cfg.operator == "sequential"
    # what the CLI passes when an option is not given: no override
    unset = s.config("deeprecsched", lanes=None, threads_per_lane=None, batch_size=None)
    assert unset == cfg
    # an option given overrides the cached knob, and only that one
    assert s.config("deeprecsched", batch_size=32) == cfg.replace(batch_size=32)
    # the operator-level presets reuse the request knobs tuned with `sequential`
    ops = s.config("opstream")
    assert knobs(ops) == knobs(CACHED) and (ops.operator, ops.granularity) == ("opstream", "model")
    # presets that are not tuned never read the cache
    lanes, tpl = default_lanes()
    assert s.config("baseline") == preset("baseline", lanes=lanes, threads_per_lane=tpl)
    # the key holds the SLA to two significant digits: 20.4 ms finds the 20 ms entry
    assert knobs(Setup.make(MODEL, sla_ms=20.4).config("deeprecsched")) == knobs(CACHED)


def test_a_miss_tunes_once_and_stores_what_it_found(monkeypatch):
    tuned_best = CACHED.replace(batch_size=128, order="fifo")
    calls: list[tuple[Setup, dict]] = []

    def fake_tune(setup: Setup, **kw: Any) -> dict:  # stores its best, as `tune` does
        calls.append((setup, kw))
        cache_tuned(setup, tuned_best, qps=77.0)
        return {}

    monkeypatch.setattr(tune_mod, "tune", fake_tune)
    s = Setup.make(MODEL, sla_ms=SLA_MS)
    logged: list[str] = []
    first = s.config("deeprecsched", logged.append)
    assert len(calls) == 1 and calls[0][0] is s
    assert calls[0][1]["budget"] == AUTO_BUDGET and calls[0][1]["duration"] == AUTO_DURATION_S
    assert knobs(first) == knobs(tuned_best)
    assert any("no tuned configuration cached" in m for m in logged)
    assert any("77.0 qps when tuned" in m for m in logged)
    # later look-ups (the same preset, or another tuned one) hit the cache
    assert s.config("deeprecsched") == first and knobs(s.config("roundrobin")) == knobs(first)
    assert len(calls) == 1
    # another SLA, or the simulator, is another key: a miss, tuned in its turn
    for other in (Setup.make(MODEL, sla_ms=50.0), Setup.make(MODEL, sla_ms=SLA_MS, sim=True)):
        assert knobs(other.config("deeprecsched")) == knobs(tuned_best)
        assert calls[-1][0] is other
    assert len(calls) == 3


def test_tune_without_refresh_reuses_a_cached_configuration(monkeypatch, tmp_path):
    cache_tuned(Setup.make(MODEL, sla_ms=SLA_MS, sim=True), CACHED)

    def no_climb(*args: Any, **kw: Any) -> Any:
        raise AssertionError("tuned again although a configuration was cached")

    monkeypatch.setattr(tune_mod, "run_tuning", no_climb)
    res = CliRunner().invoke(app, ["tune", MODEL, *SIM, "--budget", "4"])
    assert res.exit_code == 0, res.output
    assert "--refresh tunes again" in res.output
    out = tmp_path / "tune_cached.json"
    res = CliRunner().invoke(app, ["tune", MODEL, *SIM, "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["cached"] is True and doc["trajectory"] == [] and doc["runs"] == 0
    assert knobs(doc["best"]) == knobs(CACHED) and doc["best"]["qps"] == 123.0

    climbed = []

    def climb(*args: Any, **kw: Any) -> Any:
        climbed.append(1)
        raise RuntimeError("stop here")

    monkeypatch.setattr(tune_mod, "run_tuning", climb)
    res = CliRunner().invoke(app, ["tune", MODEL, *SIM, "--budget", "4", "--refresh"])
    assert climbed == [1] and isinstance(res.exception, RuntimeError)


def test_compare_says_when_a_preset_served_the_first_ones_configuration(tmp_path, no_tuning):
    """The tuner can keep its start, `split` B=1024, which serves every production query
    whole, as the baseline does: `compare` says so rather than show the ratio as a gain."""
    sim = Setup.make(MODEL, sla_ms=SLA_MS, sim=True)
    lanes, tpl = default_lanes()
    cache_tuned(sim, {"request": "split", "batch_size": 1024, "merge_delay_ms": 0.0,
                      "lanes": lanes, "threads_per_lane": tpl})  # fmt: skip
    out = tmp_path / "cmp.json"
    text = invoke("compare", MODEL, "--presets", "baseline,deeprecsched,dynamic", *SIM,
                  "--json", str(out))  # fmt: skip
    r = json.loads(out.read_text())
    assert r["same_as_first"] == ["deeprecsched"]  # `dynamic` (B=256, merging) is not
    assert "deeprecsched served baseline's configuration in effect" in text
