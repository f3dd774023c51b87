"""The tuning driver: runs the pure `Tuner` against an injected measurement function, and a
cache of tuned configurations so later runs (the README's main job, `deeprecsched`) reuse them.

`measure(config) -> Measurement` is whatever the caller wires: a capacity search on the real
engine, the simulator, or a synthetic surface in a test. This module owns no engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsched.bench.capacity import find_capacity, passes
from recsched.config import EngineConfig
from recsched.metrics.latency import ci_json
from recsched.sched.retune import RegimeTable
from recsched.sched.tuner import Measurement, Tuner, TuningSpace, combine


@dataclass(frozen=True)
class TuneResult:
    """What a tuning run found: the best config, its measurement, and how it got there."""

    best_config: EngineConfig
    best: Measurement
    trajectory: list[dict[str, Any]]
    runs: int
    budget: int
    wall_s: float
    stop_reason: str | None = None
    restarts: int = 0


SPREAD = 1.1  # the confirmation's rate moves at least this factor after a tie
# Each measurement's capacity search stops when its bracket is within this relative width.
SEARCH_TOL = 0.1
# A new configuration's first look, once some configuration met the SLA, is one run at this
# factor above the best rate: a miss there screens it out (it cannot beat the best by more
# than the search resolves), a pass searches on upwards.
SCREEN = 1 + SEARCH_TOL
# The capacity searches step up by 2 after a pass (the run above fails, and a failing run
# stops early) but down by only this after a first failure: the run below passes, and a
# passing run lasts its full length, 300 queries (8 s for din's start at 25 qps, far below its
# ~40). Further failures in a row step down by 2, 2.8, 4, ... (`find_capacity`), so a first
# guess far above the capacity (tight SLAs) is still left in a few runs.
STEP_DOWN = 2**0.5
# The tuner re-measures a close call (challenger and incumbent within this relative margin).
# A challenger that passed the screen beat the best by SCREEN - 1 in its run, outside it: a
# close call is then only between full searches (before any configuration met the SLA).
REMEASURE_MARGIN = 0.05
assert SCREEN - 1 > REMEASURE_MARGIN, "a passed screen is not a close call"


def search_config(
    run: Callable[[float], dict],
    best_qps: float,
    screen: bool,
    max_runs: int,
    sla_ms: float,
    tail_key: str = "p95",
) -> Measurement:
    """One configuration's latency-bounded throughput, by a capacity search from `best_qps`
    (the best rate so far, or a first guess).

    With `screen` (a first look once the SLA has been met), the search starts at `SCREEN` x
    the best rate and goes no lower: a miss there screens the configuration out (unmet, with
    `screened_qps`); a pass is searched on upwards, and if it was the only passing run, one
    more run at that rate must pass too, so a lucky run cannot raise the bar for the rest.
    """
    q0 = best_qps * SCREEN if screen else best_qps
    s = find_capacity(
        run, start_qps=q0, rel_tol=SEARCH_TOL, max_runs=max_runs, min_qps=q0 if screen else 0.1,
        step_down=STEP_DOWN,
    )  # fmt: skip
    m = measurement_from_capacity(s.qps, s.best, s.runs, sla_ms, tail_key)
    if screen and m.met and s.qps <= q0:  # one pass, at the screen: a second run decides
        again = run(q0)
        if not passes(again):
            m = measurement_from_capacity(0.0, None, [again], sla_ms, tail_key)
    return dataclasses.replace(m, screened_qps=q0) if screen and not m.met else m


def confirm_against_start(
    result: TuneResult,
    start: EngineConfig,
    run_at: Callable[[EngineConfig, float], Measurement],
    rounds: int = 3,
) -> tuple[TuneResult, list[dict[str, Any]]]:
    """Check the tuned best against the start point by paired runs, and keep the best only if
    it wins a majority of `rounds` of them: on a noisy machine one lucky measurement can crown
    a worse configuration, and a start point that is the baseline's then guards against
    serving below it.

    A question of which is better, not of how much: each round runs the start, then the best,
    once each at one offered rate (`run_at(config, qps)`, a Measurement whose `met` is the
    run's verdict), between the start's capacity as measured while tuning and the best's
    (geometric mean; half the best's if the start never met the SLA, 10% below both if they
    read alike; if the best never met it either, the start is kept without a run). A round
    is won by the configuration that meets the SLA when the other misses. When both meet,
    the next round's rate moves up (by at least 10%); when both miss, down; a split keeps
    the rate, so that a lucky single run is checked once more. The rounds
    stop once the outcome is decided (the best has its majority, or can no longer get it).
    Most runs at that rate pass for the better configuration and fail for the worse, and
    failing runs stop early, so this costs two or three pairs of short runs, where the
    capacity searches it replaced cost minutes on models whose runs last seconds (din).

    Returns the (possibly replaced) result and one row per run.
    """
    best = result.best_config
    assert rounds >= 1
    if best == start:
        return result, []
    seen = []  # the start's own measurements during tuning
    for row in result.trajectory:
        knobs = row.get("config") or {}
        if knobs and all(getattr(start, k, None) == v for k, v in knobs.items()):
            tail = row.get("p_tail_ms", math.nan)
            seen.append(Measurement(row["qps"], tail, result.best.sla_ms, bool(row.get("met"))))
    hi = result.best.objective
    if hi <= 0:  # nothing met the SLA: no rate to compare them at; the baseline's point stays
        top = max(seen, key=lambda m: m.objective, default=result.best)
        return dataclasses.replace(result, best_config=start, best=top), []
    lo = combine(seen).objective if seen else 0.0  # as the tuner averaged it
    if lo <= 0:
        lo = hi / 4  # never met: the first rate is half the best's
    elif lo >= hi:  # measured alike (the searches' rates are coarse): just below them
        lo = hi / SPREAD**2
    rows: list[dict[str, Any]] = []
    won, wins = 0, rounds // 2 + 1  # the best's wins, and the majority it needs
    for r in range(rounds):
        if won >= wins or won + rounds - r < wins:
            break  # decided
        qps = math.sqrt(lo * hi)
        met = {}
        for name, cfg in (("start", start), ("best", best)):
            m = run_at(cfg, qps)
            met[name] = m.met
            if name == "start":
                seen.append(m)
            rows.append({"confirm": name, "qps": qps, "met": m.met, "p95_ms": m.p_tail_ms})
        if met["start"] and met["best"]:
            lo, hi = qps, max(hi, qps * SPREAD**2)
        elif not met["start"] and not met["best"]:
            lo, hi = min(lo, qps / SPREAD**2), qps
        elif met["best"]:
            won += 1
    if won < wins:
        top = max(seen, key=lambda m: m.objective, default=result.best)
        result = dataclasses.replace(result, best_config=start, best=top)
    return result, rows


def measurement_from_capacity(
    qps: float,
    best_run: Mapping[str, Any] | None,
    runs: Sequence[Mapping[str, Any]],
    sla_ms: float,
    tail_key: str = "p95",
) -> Measurement:
    """A `Measurement` from a capacity search over `bench` results (DESIGN.md's shape:
    "latency_ms": {"p50", "p95", ...}, "queries"; an optional "latency_ms"[tail_key + "_ci"]).

    Met with the best passing run's tail; if no rate passed, unmet with the lowest tail seen
    (so the tuner can still climb towards feasibility), or +inf without any run.
    """
    if best_run is not None and qps > 0:
        lat = best_run["latency_ms"]
        ci = lat.get(f"{tail_key}_ci")  # an end the run could not bound is None
        if ci:
            ci = (-math.inf if ci[0] is None else ci[0], math.inf if ci[1] is None else ci[1])
        return Measurement(
            qps=float(qps),
            p_tail_ms=float(lat[tail_key]),
            sla_ms=sla_ms,
            met=True,
            queries=int(best_run.get("queries", 0)),
            ci_ms=(float(ci[0]), float(ci[1])) if ci else None,
        )
    tails = [float(r["latency_ms"][tail_key]) for r in runs if r.get("latency_ms")]
    return Measurement(
        qps=0.0,
        p_tail_ms=min(tails, default=math.inf),
        sla_ms=sla_ms,
        met=False,
        queries=sum(int(r.get("queries", 0)) for r in runs),
    )


def run_tuning(
    measure: Callable[[EngineConfig], Measurement],
    space: TuningSpace,
    start: EngineConfig,
    budget: int,
    seed: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    *,
    timer: Callable[[], float] = time.perf_counter,
    **tuner_options: Any,
) -> TuneResult:
    """Propose, measure, feed back until the tuner stops; `progress` gets each trajectory row.

    `tuner_options` go to `Tuner` (tol, remeasure_margin, max_samples, max_restarts).
    """
    tuner = Tuner(space, start, budget, seed, **tuner_options)
    t0 = timer()
    while (config := tuner.propose()) is not None:
        tuner.feedback(config, measure(config))
        if progress is not None:
            progress(tuner.trajectory()[-1])
    if tuner.runs == 0:
        raise ValueError("tuning made no measurement (budget 0?)")
    best_config, best = tuner.best()
    assert tuner.runs <= budget
    return TuneResult(
        best_config=best_config,
        best=best,
        trajectory=tuner.trajectory(),
        runs=tuner.runs,
        budget=budget,
        wall_s=timer() - t0,
        stop_reason=tuner.stop_reason,
        restarts=tuner.restarts,
    )


def _ci_json(ci: Sequence[float] | None) -> list[float | None] | None:
    """`metrics.latency.ci_json`, keeping "no interval" as None."""
    return ci_json(ci) if ci else None


def tune_result_json(result: TuneResult, model: str | None = None) -> dict[str, Any]:
    """The `recsched tune --json` document: model, sla_ms, best (config + qps, p95_ms),
    trajectory, budget, runs (and wall_s, stop_reason, restarts)."""
    best = {
        **result.best_config.to_dict(),
        "qps": result.best.qps,
        "p95_ms": result.best.p_tail_ms,
        "met": result.best.met,
        "ci_ms": _ci_json(result.best.ci_ms),
    }
    trajectory = [dict(row, ci_ms=_ci_json(row.get("ci_ms"))) for row in result.trajectory]
    return {
        "model": model,
        "sla_ms": result.best.sla_ms,
        "best": best,
        "trajectory": trajectory,
        "budget": result.budget,
        "runs": result.runs,
        "wall_s": result.wall_s,
        "stop_reason": result.stop_reason,
        "restarts": result.restarts,
    }


def tune_regimes(
    measure_for: Callable[[tuple[int, int]], Callable[[EngineConfig], Measurement]],
    load_edges: tuple[float, ...],
    size_edges: tuple[float, ...],
    space: TuningSpace,
    start: EngineConfig,
    budget: int,
    seed: int = 0,
    **tuner_options: Any,
) -> tuple[RegimeTable, dict[tuple[int, int], TuneResult]]:
    """Offline tuning of one configuration per (load level, size level), for the online
    retuner. `measure_for(regime)` gives the measure function under that regime's load and
    size mix (the caller decides what a regime's representative rate and sizes are)."""
    results: dict[tuple[int, int], TuneResult] = {}
    for regime in itertools.product(range(len(load_edges) + 1), range(len(size_edges) + 1)):
        results[regime] = run_tuning(
            measure_for(regime), space, start, budget, seed, **tuner_options
        )
    configs = {r: res.best_config for r, res in results.items()}
    return RegimeTable(tuple(load_edges), tuple(size_edges), configs), results


# -- cache -----------------------------------------------------------------------------------


def machine_fingerprint() -> dict[str, Any]:
    """What a tuned configuration depends on besides the workload: cores, CPU model, torch."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "none"
    return {"cpus": os.cpu_count() or 1, "cpu_model": _cpu_model(), "torch": torch_version}


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else (platform.processor() or platform.machine())


def round_sla(sla_ms: float) -> float:
    """The SLA to two significant digits, so a `--sla-x` target re-derived from a slightly
    different measured base latency still hits the same cache entry."""
    assert sla_ms > 0
    return float(f"{sla_ms:.2g}")


# Bumped when what a tuned configuration was measured on, or chosen from, changes (2:
# TorchScript forwards; 3: the space holds `split`, no merging, and starts there).
CACHE_VERSION = 3


class TuneCache:
    """Best configurations on disk, one JSON file per (model, scale, SLA rounded to two
    significant digits, size-distribution spec, machine fingerprint, CACHE_VERSION)."""

    def __init__(self, directory: str | Path, fingerprint: Mapping[str, Any] | None = None):
        self.dir = Path(directory)
        self.fingerprint = dict(fingerprint) if fingerprint is not None else machine_fingerprint()

    def key(self, model: str, scale: str, sla_ms: float, sizes: str) -> dict[str, Any]:
        return {
            "model": model,
            "scale": scale,
            "sla_ms": round_sla(sla_ms),
            "sizes": sizes,
            "machine": self.fingerprint,
            "version": CACHE_VERSION,
        }

    def path(self, model: str, scale: str, sla_ms: float, sizes: str) -> Path:
        key = self.key(model, scale, sla_ms, sizes)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{model}-{scale}")
        return self.dir / f"{safe}-{digest}.json"

    def put(self, model: str, scale: str, sla_ms: float, sizes: str, result: TuneResult) -> Path:
        """Store `result`'s best configuration (and its measurement) under the key."""
        doc = {
            "key": self.key(model, scale, sla_ms, sizes),
            "config": result.best_config.to_dict(),
            "measurement": dataclasses.asdict(result.best),
            "runs": result.runs,
            "budget": result.budget,
        }
        path = self.path(model, scale, sla_ms, sizes)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
        tmp.replace(path)
        return path

    def get(
        self, model: str, scale: str, sla_ms: float, sizes: str
    ) -> tuple[EngineConfig, Measurement] | None:
        """The cached best configuration and measurement, or None (missing, other key, stale)."""
        path = self.path(model, scale, sla_ms, sizes)
        try:
            doc = json.loads(path.read_text())
            if doc["key"] != self.key(model, scale, sla_ms, sizes):
                return None
            known = {f.name for f in dataclasses.fields(EngineConfig)}
            config = EngineConfig(**{k: v for k, v in doc["config"].items() if k in known})
            m = dict(doc["measurement"])
            m["ci_ms"] = tuple(m["ci_ms"]) if m.get("ci_ms") is not None else None
            return config, Measurement(**m)
        except (OSError, ValueError, KeyError, TypeError):
            return None
