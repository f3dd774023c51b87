"""`recsched tune` and the `tuned` request policy: the tuner driven by short capacity
searches on the real engine (or the simulator), its result cached per model and machine.

Each tuner measurement is a latency-bounded throughput found by a short bracket-and-bisect
search warm-started at the best rate seen so far (at most `runs_per_config` open-loop runs of
`duration` seconds, 300 queries at least); once the SLA has been met, most are one screening
run just above the best rate that misses and stops early.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from recsched.bench import calibrate
from recsched.bench.capacity import passes
from recsched.bench.tuning import (
    REMEASURE_MARGIN,
    TuneCache,
    TuneResult,
    confirm_against_start,
    measurement_from_capacity,
    run_tuning,
    search_config,
    tune_result_json,
)
from recsched.config import EngineConfig
from recsched.sched.tuner import Knob, Measurement, TuningSpace, default_space

if TYPE_CHECKING:
    from recsched.bench.setup import Log, Setup

AUTO_BUDGET = 8  # tuning on a cache miss (e.g. inside `compare`): about a minute on rmc1
# After the climb, the tuned best and the start run side by side at one rate between their
# capacities, up to this many rounds; the best must win two (bench.tuning.confirm_against_start).
CONFIRM_ROUNDS = 3
AUTO_DURATION_S = 2.5  # per run: shorter runs made p95 too noisy to rank configurations
TUNED_FIELDS = (
    "request",
    "batch_size",
    "order",
    "merge_delay_ms",
    "lanes",
    "threads_per_lane",
    "offload_threshold",
)


def cache_key_sizes(setup: Setup, cfg: EngineConfig) -> str:
    """What besides model, scale and SLA a tuned configuration depends on.

    The request-level knobs are tuned once, with the `sequential` operator policy, and reused
    by the operator-level presets (`opstream`, `roundrobin`), so the operator policy is not in
    the key. Configurations tuned on the simulator (`--sim`) have keys of their own.
    """
    from recsched.workload.classes import format_classes

    key = f"{setup.sizes}|{setup.arrivals}|{format_classes(setup.classes)}"
    return key + "|sim" if setup.sim else key  # tuned on the simulator: never for the engine


# Whether queries are merged: `split` cuts queries larger than B and never merges (DeepRecSys'
# request level; at B=1024 every query runs whole, as the baseline), `dynamic` also merges
# the queued ones up to B. Merging buys little where the per-item cost stops falling (rmc1:
# 13.7 us per item at 256 rows, 13.0 at 1,024; BENCHMARKS.md, the model table) and costs the
# small queries the wait for their batch-mates, so the tuner decides it, after the batch size.
REQUEST_KNOB = Knob("request", ("split", "dynamic"))


def tuning_space(
    cores: int, has_accel: bool = False, min_batch: int = 4, max_batch: int = 1024
) -> TuningSpace:
    """The default space, with batch sizes from `min_batch` (below 4 a batch is all dispatch)
    and `request` (merge or not) after the batch size; a merge delay only with merging. With
    `has_accel`, the offload threshold (`None`: never offload) after `request`."""
    space = default_space(cores, has_accel=has_accel, max_batch=max_batch)
    knobs: list[Knob] = []
    for k in space.knobs:
        if k.name == "batch_size":
            knobs += [Knob(k.name, tuple(v for v in k.values if v >= min_batch)), REQUEST_KNOB]
        else:
            knobs.append(k)
    base = space.constraint

    def fits(c: EngineConfig) -> bool:
        no_idle_delay = c.request != "split" or c.merge_delay_ms == 0.0
        return no_idle_delay and (base is None or base(c))

    return TuningSpace(tuple(knobs), fits)


def tune(
    setup: Setup,
    *,
    budget: int = 12,
    duration: float = 2.0,
    refresh: bool = False,
    log: Log | None = None,
    operator: str = "sequential",
    runs_per_config: int = 4,
    early_stop: bool = True,
    offload_threshold: int | None = None,
    accel_lanes: int | None = None,
) -> dict:
    """Tune the request knobs (`split` or `dynamic`, batch size, queue order, merge delay,
    lanes x threads) for latency-bounded throughput; cache the best. A configuration cached
    for this model, SLA, workload and machine is returned as it is (`"cached": true`, no
    trajectory) unless `refresh`.

    Where an accelerator exists (`recsched.engine.cuda_available()`, with the `sequential`
    operator policy) or an `offload_threshold` is given (the start's, with `accel_lanes`),
    the offload threshold is tuned too; without either, the space and the start are as
    they always were (CPU lanes only).

    With `early_stop`, once a configuration has met the SLA, a new configuration's first look
    is screened (`recsched.bench.tuning.search_config`): one run at 1.1x the best rate so far,
    and a miss there ends it (it cannot win; walking down to its own capacity took minutes at
    tight SLAs, where runs at a few qps last seconds each, and a configuration that merely
    ties the best cost a full passing run at the best rate plus the failing ones above it:
    din's ties were a third of its budget).
    A pass is searched on upwards; if the screen's was its only passing run, one more run at
    the screen's rate must pass too (on rmc1's 2 s runs, single lucky passes walked the best
    rate up 1.1x at a time, each making the next screen harder for no real gain).
    Re-measurements and the confirmation against the start measure in full."""
    from recsched.engine import cuda_available

    assert setup.sla_ms is not None, "tuning needs an SLA"
    lanes, tpl = os.cpu_count() or 1, 1
    # Start where the baseline is (`split` at B=1024 runs every query whole and merges none:
    # the largest query has 1000 items), so on a noisy machine the climb starts from a known
    # good point and only moves for a measured gain.
    start = EngineConfig(
        request="split", batch_size=1024, merge_delay_ms=0.0, operator=operator,
        lanes=lanes, threads_per_lane=tpl,
    )  # fmt: skip
    if offload_threshold is not None:
        n_accel = {} if accel_lanes is None else {"accel_lanes": accel_lanes}
        start = start.replace(offload_threshold=offload_threshold, **n_accel)
    has_accel = offload_threshold is not None or (operator == "sequential" and cuda_available())
    cache = TuneCache(calibrate.cache_dir() / "tuned")
    key = (setup.adapter.name, setup.scale, setup.sla_ms, cache_key_sizes(setup, start))
    hit = None if refresh else cache.get(*key)
    if hit is not None:  # tuned before for this model, SLA, workload and machine
        cfg, m = hit
        if log is not None:
            log(f"[dim]cached: tuned before ({m.qps:.1f} qps then); --refresh tunes again[/dim]")
        doc = tune_result_json(TuneResult(cfg, m, [], 0, budget, 0.0, "cached"), setup.adapter.name)
        return {**doc, "cached": True, "confirm": []}
    best_qps = [setup.start_qps(start)]
    found = [False]
    measured: set[str] = set()  # configurations by their JSON (EngineConfig holds a dict)

    tail = f"p{setup.percentile:g}"  # the verdict's percentile, and its confidence interval
    run_log: list[list[dict[str, Any]]] = []  # per measurement: its runs (rate, verdict, s)

    def timed(run: Callable[[float], dict], into: list[dict[str, Any]]) -> Callable:
        def go(qps: float) -> dict:
            t0 = time.perf_counter()
            r = run(qps)
            s = round(time.perf_counter() - t0, 2)
            into.append({"qps": round(qps, 2), "met": passes(r), "s": s, "stopped": "stopped" in r})
            return r

        return go

    def measure(cfg: EngineConfig) -> Measurement:
        run_log.append([])
        run = timed(setup.run_fn(cfg, "tuning", duration, stop_on_miss=True), run_log[-1])
        runs = runs_per_config if found[0] else 2 * runs_per_config  # the first search is wider
        # a new configuration's first look is screened (see the docstring); re-measurements
        # (the tuner's noise checks) search in full, so a fair second look at the best itself
        # is not cut to zero by one unlucky run
        key = json.dumps(cfg.to_dict(), sort_keys=True)
        first = key not in measured
        measured.add(key)
        screen = found[0] and early_stop and first
        m = search_config(run, best_qps[0], screen, runs, setup.sla_ms, tail)
        if m.met and (m.qps > best_qps[0] or not found[0]):
            best_qps[0] = m.qps
            found[0] = True
        return m

    def progress(row: dict[str, Any]) -> None:
        if log is not None:
            c = row["config"]
            knobs = " ".join(f"{k}={c[k]}" for k in TUNED_FIELDS if k in c)
            if row.get("screened_qps"):
                got = f"[red]missed at {row['screened_qps']:.1f} qps[/red] (cannot beat the best)"
            else:
                ok = "[green]met[/green]" if row["met"] else "[red]missed[/red]"
                got = f"{row['qps']:.1f} qps  {ok}"
            runs = run_log[row["step"] - 1]
            spent = f"[dim]({len(runs)} runs, {sum(r['s'] for r in runs):.1f} s)[/dim]"
            log(f"  tune step {row['step']}: {knobs}  {got}  {spent}")

    confirm_runs: list[dict[str, Any]] = []

    def run_at(cfg: EngineConfig, qps: float) -> Measurement:
        r = timed(setup.run_fn(cfg, "tuning", duration, stop_on_miss=True), confirm_runs)(qps)
        ok = passes(r)
        best = r if ok else None
        return measurement_from_capacity(qps if ok else 0.0, best, [r], setup.sla_ms, tail)

    result = run_tuning(
        measure, tuning_space(lanes, has_accel), start, budget, setup.seed, progress,
        remeasure_margin=REMEASURE_MARGIN,
    )  # fmt: skip
    result, confirm = confirm_against_start(result, start, run_at, CONFIRM_ROUNDS)
    for row, run in zip(confirm, confirm_runs, strict=True):
        row["s"] = run["s"]
    if log is not None and confirm:
        kept = "the tuned best" if result.best_config != start else "the start point"
        rate = ", ".join(f"{r['confirm']} {r['qps']:.1f} qps {'met' if r['met'] else 'missed'}"
                         for r in confirm)  # fmt: skip
        spent = sum(r["s"] for r in confirm)
        log(f"  confirmation, paired runs ({rate}; {spent:.1f} s): kept {kept}")
    cache.put(*key, result)
    doc = tune_result_json(result, setup.adapter.name)
    doc["confirm"] = confirm
    for row, runs in zip(doc["trajectory"], run_log, strict=True):
        row["knobs"] = {k: row["config"][k] for k in TUNED_FIELDS if k in row["config"]}
        row["runs"] = runs
    return doc


def tuned_knobs(
    setup: Setup, cfg: EngineConfig, log: Log | None = None, *, tune_on_miss: bool = True
) -> dict[str, Any]:
    """The tuned knobs for this model, SLA and workload: cached, or tuned now (on a miss
    without `tune_on_miss`: ValueError, naming the command that tunes it)."""
    assert setup.sla_ms is not None, "the tuned policy needs an SLA (--sla-ms or --sla-x)"
    cache = TuneCache(calibrate.cache_dir() / "tuned")
    key_sizes = cache_key_sizes(setup, cfg)
    hit = cache.get(setup.adapter.name, setup.scale, setup.sla_ms, key_sizes)
    if hit is None and not tune_on_miss:
        name = setup.adapter.name
        raise ValueError(
            f"no tuned configuration is cached for {name} at a {setup.sla_ms:.3g} ms SLA on "
            f"this workload; run `recsched tune {name} --sla-ms {setup.sla_ms:.3g}` (with the "
            "same --classes, --sizes, --scale) first"
        )
    if hit is None:
        if log is not None:
            log(f"[yellow]no tuned configuration cached for {setup.adapter.name}; tuning now")
        tune(setup, log=log, budget=AUTO_BUDGET, duration=AUTO_DURATION_S)
        hit = cache.get(setup.adapter.name, setup.scale, setup.sla_ms, key_sizes)
        assert hit is not None, "tuning stores its result"
    best, m = hit
    if log is not None:
        knobs = ", ".join(f"{k}={getattr(best, k)}" for k in TUNED_FIELDS)
        log(f"[dim]tuned request knobs: {knobs} ({m.qps:.1f} qps when tuned)[/dim]")
    knobs = {k: getattr(best, k) for k in TUNED_FIELDS}
    if cfg.operator != "sequential":  # accelerator lanes run whole-model tasks only
        knobs["offload_threshold"] = None
    return knobs
