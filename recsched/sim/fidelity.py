"""Fidelity: the simulator's p50/p95/p99 against real `bench` runs, same seed and config.

For each offered load, one real open-loop run (`recsched.bench`: the engine on this
machine's lanes) and one simulated run of the same workload (same arrival spec, sizes,
classes, duration rule, seed, SLA and engine configuration). The simulator is calibrated
just before, on this machine: the model's profile at the lanes' thread count (the smallest
of three), rescaled to serving conditions (inputs not in cache, slower starts after idling,
the engine's wake-up cost: `recsched.sim.run.serving_correction`), and the slowdown of two
forwards co-running (`model_interference`). The error at a percentile is
`(sim - real) / real`. The goal (issue 6) is |error| <= 15% at p95; on a machine shared
with other work the real runs alone vary by more than that from run to run.

With `repeats=N` (N >= 2) each load's real run is repeated N times (same seed and config:
the spread comes from the machine), the simulator is compared with the median of the real
runs, and the real runs' own spread, `(max - min) / median` at each percentile, is the
noise floor the error has to be read against. The repeats are interleaved over the loads
(all loads once, then all loads again, ...), so a slow spell of the machine does not land
on one load only.

With `in_run=True` the simulator is also run a second time per load, calibrated *by the
real run itself*: the real engine's lane tasks are recorded and fitted as `a x predicted +
b` seconds each (`in_run_fit`); the profile is rescaled by `a`, with the idle model and the
interference table off (the measured times already hold both), and the engine's cost per
task set to `b` plus the real run's hand-off between back-to-back tasks (the median lane gap
under `HANDOFF_MAX_S`, when the run has enough of them: completion bookkeeping, the GIL, the
next task's start; a task's own time does not hold it). The
machine's speed drifts by tens of percent within minutes here, which a profile measured
before the runs cannot know; the in-run error ("error_in_run") separates that drift from
the simulator's own queueing model (trace-driven validation). A third simulation per load
is trace-driven in full ("error_in_run_noise"): each simulated task's time is the profile's
prediction times a ratio drawn from the real tasks of its size (`ServiceNoise`): served
tasks cost more per item at small sizes than at large ones, and they spread, and a
deterministic service time shows neither (the queueing it misses grows with the spread).

With `in_run=True` and loads from a probe run, three more simulations per load are
calibrated *before* any measured run, by probe runs alone: "error_probe" by the first probe's
lane tasks (`probe_fit` fits each task's time with the terms the simulator varies by itself: a
slowdown, the co-run slowdown when another lane is busy at the start, the slower start after
idling, a fixed cost; so what was fitted at the probe's load carries to the others),
"error_probe_flat" by `in_run_fit`'s two terms from the first probe, for comparison, and
"error_probe2" by a second probe run at `PROBE2_LOAD` of the capacity found, each load's fit,
hand-off and host CPU taken on the line through the two probes' (`interpolate_fit`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsched.config import EngineConfig
from recsched.metrics.machine import run_share
from recsched.sim.host import HostModel
from recsched.sim.interference import DEFAULT, InterferenceModel, calibrate_model
from recsched.sim.lanes import WHOLE_CLASS, IdleModel, ServiceNoise
from recsched.sim.run import (
    DEFAULT_TASK_OVERHEAD_S,
    IDLE_FROM_S,
    IDLE_GAP_S,
    add_engine_idle_cost,
    idle_model,
    make_cost,
    resolve_config,
    scaled_profile,
    server_types,
    sim_run_fn,
)
from recsched.workload import parse_sizes

PERCENTILES = ("p50", "p95", "p99")
GOAL_P95 = 0.15
DEFAULT_LOADS = (0.3, 0.6, 0.85)  # fractions of the estimated capacity
PROBE_LOAD = 0.3  # the probe run's load, a fraction of the profile's capacity estimate
PROBE2_LOAD = 0.75  # the second probe's (in-run calibration), a fraction of the capacity found
LOADS_FROM = ("run", "profile")  # what the default loads are fractions of (`fidelity`)
HANDOFF_MAX_S = 1e-3  # lane gaps shorter than this are hand-offs, longer ones idling
HANDOFF_MIN_GAPS = 20


def handoff_s(gaps: Sequence[float], default: float) -> float:
    """The engine's hand-off between back-to-back tasks on a lane: the median of the lane
    gaps under `HANDOFF_MAX_S`; `default` with fewer than `HANDOFF_MIN_GAPS` of them."""
    short = sorted(g for g in gaps if 0.0 <= g < HANDOFF_MAX_S)
    return short[len(short) // 2] if len(short) >= HANDOFF_MIN_GAPS else default


def rel_error(sim: float | None, real: float | None) -> float:
    """(sim - real) / real; NaN when either is missing or real is not positive."""
    if sim is None or real is None or not (real > 0) or math.isnan(sim) or math.isnan(real):
        return math.nan
    return (sim - real) / real


def compare(real: dict, sim: dict) -> dict[str, Any]:
    """One load's row: both runs' percentiles and the relative errors."""
    rl, sl = real["latency_ms"], sim["latency_ms"]
    return {
        "qps": real["offered_qps"],
        "real": {k: rl.get(k) for k in PERCENTILES},
        "sim": {k: sl.get(k) for k in PERCENTILES},
        "error": {k: rel_error(sl.get(k), rl.get(k)) for k in PERCENTILES},
        "real_completed_qps": real.get("completed_qps"),
        "sim_completed_qps": sim.get("completed_qps"),
        "real_lane_utilization": real.get("lane_utilization"),
        "sim_lane_utilization": sim.get("lane_utilization"),
    }


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def _median(values: Sequence[float | None]) -> float:
    """Median of the finite values (mean of the middle two for an even count); NaN if none."""
    xs = _finite(values)
    return float(statistics.median(xs)) if xs else math.nan


def spread(values: Sequence[float | None]) -> float:
    """`(max - min) / median` of the finite values; NaN with fewer than two, or median <= 0."""
    xs = _finite(values)
    med = _median(xs)
    if len(xs) < 2 or not (med > 0):
        return math.nan
    return (max(xs) - min(xs)) / med


def median_real(runs: Sequence[dict]) -> dict[str, Any]:
    """One bench-like result standing for repeated real runs of one load: the median of each
    latency percentile, of the completed rate and of each lane's utilization."""
    utils = [r.get("lane_utilization") for r in runs]
    lane_util = None
    if all(u for u in utils) and len({len(u) for u in utils}) == 1:
        lane_util = [_median(v) for v in zip(*utils, strict=True)]
    return {
        "offered_qps": runs[0]["offered_qps"],
        "latency_ms": {k: _median([r["latency_ms"].get(k) for r in runs]) for k in PERCENTILES},
        "completed_qps": _median([r.get("completed_qps") for r in runs]),
        "lane_utilization": lane_util,
    }


def compare_repeats(reals: Sequence[dict], sim: dict) -> dict[str, Any]:
    """One load's row from repeated real runs: `compare` against their median, plus each real
    run's percentiles and the CPU share the hypervisor took meanwhile (`real_runs`, "steal":
    None when not measured) and their spread at each percentile (`real_spread`)."""
    row = compare(median_real(reals), sim)
    runs = [{k: r["latency_ms"].get(k) for k in PERCENTILES} for r in reals]
    row["real_runs"] = [
        {**run, "steal": run_share(r, "steal")} for run, r in zip(runs, reals, strict=True)
    ]
    row["real_spread"] = {k: spread([r[k] for r in runs]) for k in PERCENTILES}
    return row


def run_loads(
    qps_list: Sequence[float],
    real: Callable[[float], dict],
    sim: Callable[[float], dict],
    repeats: int = 1,
    on_load: Callable[[dict[str, Any]], None] | None = None,
    on_real: Callable[[float, int, dict], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per load. Real runs go round the loads `repeats` times (repeat outermost);
    each load's simulator run follows its last real run, once (it is deterministic).

    `repeats=1` gives `compare` rows (real then sim, load by load); more gives
    `compare_repeats` rows. `on_real(qps, repeat, result)` follows each real run,
    `on_load(row)` each finished row.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    reals: list[list[dict]] = [[] for _ in qps_list]
    rows = []
    for rep in range(repeats):
        for i, q in enumerate(qps_list):
            r = real(float(q))
            reals[i].append(r)
            if on_real is not None:
                on_real(float(q), rep, r)
            if rep < repeats - 1:
                continue
            s = sim(float(q))
            row = compare(r, s) if repeats == 1 else compare_repeats(reals[i], s)
            rows.append(row)
            if on_load is not None:
                on_load(row)
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Largest |error| per percentile over the loads, and whether p95 meets the goal; with
    repeated real runs, also the median over the loads of the real runs' spread."""
    worst = {}
    for k in PERCENTILES:
        errs = [abs(r["error"][k]) for r in rows if not math.isnan(r["error"][k])]
        worst[k] = max(errs) if errs else math.nan
    ok = not math.isnan(worst["p95"]) and worst["p95"] <= GOAL_P95
    out: dict[str, Any] = {"max_abs_error": worst, "goal_p95": GOAL_P95, "p95_within_goal": ok}
    if any("real_spread" in r for r in rows):
        out["median_real_spread"] = {
            k: _median([r["real_spread"][k] for r in rows if "real_spread" in r])
            for k in PERCENTILES
        }
    return out


def estimated_capacity_qps(cost: Any, config: EngineConfig, sizes: str, seed: int = 0) -> float:
    """A rough capacity: CPU lanes / mean predicted service time of a query (whole model)."""
    n = parse_sizes(sizes).sample(2000, np.random.default_rng(seed))
    if config.request == "whole":
        mean_s = float(np.mean([cost.whole_s(int(x)) for x in n]))
    else:
        b = config.batch_size
        per = [(x // b) * cost.whole_s(b) + (cost.whole_s(x % b) if x % b else 0.0) for x in n]
        mean_s = float(np.mean(per))
    return config.lanes / max(mean_s, 1e-9)


def run_capacity_qps(result: dict[str, Any], lanes: int) -> float | None:
    """Capacity measured by a real run: the rate at which the lanes would be busy all the
    time, `lanes / (lane-seconds per completed query)`, from a `bench` result's completed QPS
    and lane utilization (None when the run completed nothing)."""
    util = sum(result.get("lane_utilization") or [])
    done = float(result.get("completed_qps") or 0.0)
    if util <= 0 or done <= 0:
        return None
    return lanes * done / util


def cpu_capacity_qps(result: dict[str, Any]) -> float | None:
    """Capacity measured by a real run from the machine's side: the rate at which every CPU
    would be busy, `completed QPS / busy share of all CPUs` (`machine_cpu`; None without it).
    The engine's own per-query work (the driver, submission, completion) runs on the same
    cores as the lanes, so the machine can fill before the lanes do."""
    busy = float(run_share(result, "busy") or 0.0)
    done = float(result.get("completed_qps") or 0.0)
    if busy <= 0 or done <= 0:
        return None
    return done / busy


def fresh_profile(adapter: Any, config: EngineConfig, rounds: int = 3) -> dict[str, Any]:
    """The model's profile measured now (not cached: the machine's load drifts), at the
    lanes' thread count and granularity, rescaled to serving conditions.

    Each figure is the smallest of `rounds` profiles: other processes' bursts of load only
    ever make a measurement slower.
    """
    from recsched.graph.profile import profile_model
    from recsched.sim.run import serving_correction

    t = config.threads_per_lane
    prof = profile_model(adapter, granularities=(config.granularity,), threads=t, rounds=rounds)
    out = serving_correction(adapter, prof, t)
    add_engine_idle_cost(out, adapter, config)
    return out


def engine_overhead_s(
    adapter: Any, config: EngineConfig, n: int = 40, items: int = 16, gap_s: float = 0.02
) -> float:
    """The engine's own latency per query at low load, beyond its lane's task time.

    Queries of `items` rows are issued one at a time, each after `gap_s` of idling, like
    the open-loop driver does (sleep to the scheduled time, slice the input pool, submit);
    the median of (completion - scheduled time) - (the lane's task time) is the cost the
    engine adds around a task: driver wake-up, hand-off to the lane thread, completion.
    """
    import statistics
    import time

    from recsched.engine import Engine
    from recsched.metrics.trace import TraceRecorder
    from recsched.models.base import slice_rows
    from recsched.types import Query

    pool = adapter.make_inputs(max(256, items), 0)
    rec = TraceRecorder()
    done: dict[int, float] = {}
    cfg = config.replace(request="whole", operator="sequential", offload_threshold=None)
    over = []
    with Engine(adapter, cfg, validate=False, trace=rec) as eng:
        eng.on_complete = lambda r: done.__setitem__(r.qid, r.done_s)
        for i in range(n + 3):
            target = time.perf_counter() + gap_s
            time.sleep(max(0.0, target - time.perf_counter()))
            x = slice_rows(pool, 0, items)
            eng.submit(Query(i, adapter.name, items, arrival_s=target), x).result(timeout=30)
            if i >= 3:  # warm-up
                over.append(done[i] - target)
    durs = [e["dur"] * 1e-6 for e in rec.events() if e["ph"] == "X"][3:]
    assert len(durs) == len(over), "one lane task per query"
    return max(0.0, statistics.median(o - d for o, d in zip(over, durs, strict=True)))


def idle_beside_host(profile: Any, host: HostModel | None) -> Any:
    """The profile's idle model (`idle_model`), its engine extra after idling less the host's
    submit work per query when `host` models that: the extra was measured end to end
    (`engine_overhead_s`: the driver's wake-up, the submission, the hand-off to the lane; a
    query's latency ends with its task), so it holds the submit work, which must not be
    charged twice."""
    idle = idle_model(profile)
    if idle is not None and host is not None:
        idle.extra_s = max(0.0, idle.extra_s - host.submit_s)
    return idle


def model_interference(adapter: Any, sizes: str, threads: int = 1, seed: int = 0) -> Any:
    """The default table with F[mixed, mixed] measured on `adapter` at the median and p90
    query sizes, with the lanes' thread count (`calibrate_model`)."""
    n = parse_sizes(sizes).sample(2000, np.random.default_rng(seed))
    batches = sorted({int(np.percentile(n, 50)), int(np.percentile(n, 90))})
    return calibrate_model(adapter, batches, DEFAULT, threads=threads)


def in_run_scale(tasks: Sequence[tuple[int, float]], whole_s: Callable[[int], float]) -> float:
    """(sum of measured task seconds) / (sum of predicted whole-model seconds) over a real
    run's lane tasks `(items, seconds)`; NaN without tasks."""
    pred = sum(whole_s(int(n)) for n, _ in tasks)
    if not tasks or not (pred > 0):
        return math.nan
    return sum(d for _, d in tasks) / pred


def in_run_fit(
    tasks: Sequence[tuple[int, float]], whole_s: Callable[[int], float]
) -> tuple[float, float]:
    """`(a, b)`: a real run's lane tasks `(items, seconds)` as `a x predicted + b` seconds each
    (least squares on the relative error): a slowdown of the model's own work and a fixed cost
    per task (a lane's wake-up after idling, gathering the batch). One factor alone
    (`in_run_scale`) is pulled up by the small tasks, whose fixed cost is a large share of
    their time, and then overcharges the large ones that set a p95: by 18% at rmc1's lowest
    fidelity load (`benchmarks/in_run_fit.py`, BENCHMARKS.md). With a negative fit (or fewer
    than two distinct predictions), `(in_run_scale, 0)`."""
    scale = in_run_scale(tasks, whole_s)
    pred = np.array([whole_s(int(n)) for n, _ in tasks], dtype=float)
    if len(pred) < 2 or not (np.ptp(pred) > 0):
        return scale, 0.0
    secs = np.array([float(d) for _, d in tasks])
    # in relative terms (secs / pred = a + b / pred), so the many small tasks count as much
    # as the few large ones whose seconds would otherwise swamp the fit
    ok = pred > 0
    x = np.vstack([np.ones(int(ok.sum())), 1.0 / pred[ok]]).T
    (a, b), *_ = np.linalg.lstsq(x, secs[ok] / pred[ok], rcond=None)
    if not (a > 0 and b >= 0):
        return scale, 0.0
    return float(a), float(b)


@dataclass(frozen=True)
class ProbeFit:
    """A run's lane tasks as `a x predicted x (1 + (interference - 1) x o) x (1 + (idle_ratio
    - 1) x w) + b + idle_extra_s x w` seconds each, where `o` is 1 when another lane was busy
    at the task's start and `w` the idle model's weight of the gap before it
    (`IdleModel.weight`): the slowdown of the model's own work, its co-run slowdown, its
    slower start after idling, and a fixed cost per task, busy and after idling. Unlike
    `in_run_fit` (whose `b` holds the load's own mix of idle starts, falling from 1.1 ms to
    0.6 ms per dien task from 30% to 85% load), it carries from the run it was fitted on
    to other loads, where the simulator sets `o` and `w` from its own lanes."""

    a: float
    b: float = 0.0
    interference: float = 1.0
    idle_ratio: float = 1.0
    idle_extra_s: float = 0.0
    tasks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def probe_fit(
    tasks: Sequence[tuple[int, float]],
    context: Sequence[tuple[float, int]],
    whole_s: Callable[[int], float],
    weight: Callable[[float], float],
) -> ProbeFit:
    """`ProbeFit` of a real run's lane tasks `(items, seconds)` with their `context` (`(idle
    seconds before, another lane busy at the start)`, `recsched.bench.setup.lane_task_context`),
    by non-negative least squares on the relative error (`secs / predicted = a + b /
    predicted + k o + c w + e w / predicted`, every subset of the terms beside `a` solved,
    the best with no negative coefficient kept; 16 subsets). Falls back to `in_run_fit`'s
    slowdown alone when no subset has a positive `a`."""
    assert len(tasks) == len(context), "one context per task"
    rows = [
        (whole_s(int(n)), float(d), float(o), weight(float(g)))
        for (n, d), (g, o) in zip(tasks, context, strict=True)
        if whole_s(int(n)) > 0
    ]
    if len(rows) < 5:
        a, b = in_run_fit(tasks, whole_s)
        return ProbeFit(a, b, tasks=len(tasks))
    pred, secs, o, w = (np.array(c, dtype=float) for c in zip(*rows, strict=True))
    cols = np.vstack([np.ones_like(pred), 1.0 / pred, o, w, w / pred]).T
    y = secs / pred
    best: tuple[float, np.ndarray] | None = None
    for mask in itertools.product((False, True), repeat=4):
        keep = [0] + [i + 1 for i, m in enumerate(mask) if m]
        coef, *_ = np.linalg.lstsq(cols[:, keep], y, rcond=None)
        if coef[0] <= 0 or (coef < 0).any():
            continue
        full = np.zeros(5)
        full[keep] = coef
        res = float(np.sum((cols @ full - y) ** 2))
        if best is None or res < best[0]:
            best = (res, full)
    if best is None:
        a, b = in_run_fit(tasks, whole_s)
        return ProbeFit(a, b, tasks=len(tasks))
    a, b, k, c, e = (float(x) for x in best[1])
    return ProbeFit(a, b, 1.0 + k / a, 1.0 + c / a, e, len(rows))


def fidelity(
    model: str,
    profile: Any = None,
    qps_list: Sequence[float] | None = None,
    config: EngineConfig | str = "baseline",
    *,
    duration_s: float = 5.0,
    seed: int = 0,
    scale: str = "small",
    sla_ms: float | None = None,
    percentile: float = 95.0,
    arrivals: str = "poisson",
    sizes: str = "production",
    classes: str | None = None,
    task_overhead_s: float = DEFAULT_TASK_OVERHEAD_S,
    interference: Any = "model",
    real: Callable[[float], dict] | None = None,
    on_load: Callable[[dict[str, Any]], None] | None = None,
    repeats: int = 1,
    on_real: Callable[[float, int, dict], None] | None = None,
    in_run: bool = False,
    loads_from: str = "run",
    host: bool = True,
) -> dict[str, Any]:
    """Run real and simulated loads side by side; per-load errors at p50/p95/p99.

    `profile` defaults to the model's profile measured now (`fresh_profile`). `qps_list`
    defaults to 30/60/85% of an estimated capacity: with `loads_from="run"` (the default),
    measured by a real probe run at 30% of the profile's estimate: the lower of the rate that
    would keep the lanes busy (`run_capacity_qps`, from the probe's lane time per query) and
    the rate that would keep every CPU busy (`cpu_capacity_qps`, from the machine's busy
    share: the engine's per-query work shares the cores with the lanes); with
    "profile", the profile's own estimate (`estimated_capacity_qps`). Served lane tasks
    cost up to twice the profile here, so the profile's 60% and 85% loads can lie past the
    real engine's saturation, where an open-loop p95 grows with the run's length and is no
    steady state to compare. The result's "capacity" says which estimate set the loads.
    `task_overhead_s` is the engine's cost per task when busy; after idling, the profile's
    measured extra applies (`add_engine_idle_cost`).
    `interference="model"` measures the model's own co-run slowdown now (`model_interference`);
    otherwise a table, a JSON path, "default" or "none". `real` replaces the real engine's
    run (`qps -> bench result`), for tests.
    `repeats=N` (N >= 2) runs each load's real run N times, interleaved over the loads, and
    compares the simulator with their median; rows gain `real_runs` and `real_spread`, the
    result `repeats` and `median_real_spread` (`run_loads`, `summarize`).
    `in_run=True` adds, per load, the simulator calibrated by the real runs' own task times
    (module docstring): rows gain "sim_in_run", "error_in_run", "in_run_scale" and
    "in_run_task_extra_s" (`in_run_fit`'s a and b), the result "in_run" (the `summarize` of
    those errors), and "in_run_task_overhead_s" (the hand-off, `handoff_s`); and the
    trace-driven simulation: rows
    gain "sim_in_run_noise", "error_in_run_noise" and "in_run_noise" (the ratios per size
    bin), the result "in_run_noise". With loads from a probe run it also makes a second
    probe run and adds the probe-calibrated simulations (module docstring): rows gain
    "sim_probe"/"error_probe", "sim_probe_flat"/"error_probe_flat" and
    "sim_probe2"/"error_probe2", the result their summaries under those keys, "probe_fit"
    (the fits, hand-offs and host models) and "capacity"'s "probe2_qps". It needs the
    sequential operator policy (whole-model tasks); with an injected `real`, its results
    carry the tasks under "lane_tasks" (a list of [items, seconds]) and, for the probes,
    their "lane_task_context" and "lane_gaps_s".
    `host=True` models the host's CPU per query beside the lanes (`recsched.sim.host`),
    calibrated by the probe run's CPU accounting for the simulation from the profile, and by
    each load's own real runs for the in-run ones; the result's "host" and rows' "in_run_host"
    say what was used (None: the runs did not record it), and rows' "without_host" and the
    result's "without_host" give the same simulations' errors without it, side by side.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if loads_from not in LOADS_FROM:
        raise ValueError(f"loads_from is one of {LOADS_FROM}, got {loads_from!r}")
    from recsched.bench.setup import Setup  # the real engine and torch: only when asked

    cfg, name = resolve_config(config)
    if in_run and cfg.operator != "sequential":
        raise ValueError(
            "in-run calibration times whole-model lane tasks: use the sequential operator "
            f"policy (a preset such as baseline or dynamic), not {cfg.operator!r}"
        )
    setup = Setup.make(
        model, scale, seed, classes, sizes, arrivals, sla_ms, None, percentile, need_sla=False
    )
    cfg = setup.resolve_granularity(cfg)  # `auto` (the opstream preset's) chosen per model
    if profile is None:
        profile = fresh_profile(setup.adapter, cfg)
    graph_info = policy_cost = None
    if cfg.operator != "sequential":
        extras = setup.engine_extras(cfg)  # the real engine's graph and policy cost
        graph_info, policy_cost = extras["graph"].info, extras["cost"]
    cost = make_cost(profile, cfg.granularity, graph_info)
    if isinstance(interference, str) and interference == "model":
        interference = model_interference(setup.adapter, sizes, cfg.threads_per_lane, seed)
    graph_info = graph_info if graph_info is not None else getattr(cost, "graph", None)

    def types_with(host_model: HostModel | None) -> list:
        return server_types(
            cfg, cost, 1, graph_info=graph_info, interference=interference,
            task_overhead_s=task_overhead_s, policy_cost=policy_cost,
            idle=idle_beside_host(profile, host_model), host=host_model,
        )  # fmt: skip

    host_model: HostModel | None = None
    probe_sims: dict[str, Any] | None = None
    if real is None:
        real = setup.run_fn(cfg, name, duration_s, trace=in_run)
    capacity: dict[str, Any] = {"source": "given"}
    if qps_list is None:
        cap = estimated_capacity_qps(cost, cfg, sizes, seed)
        capacity = {"source": "profile", "profile_qps": cap, "qps": cap}
        if loads_from == "run":
            probe = round(PROBE_LOAD * cap, 1)
            probed = real(probe)
            probe_tasks, probe_ctx, probe_gaps = _take_trace(probed)
            by_lanes, by_cpu = run_capacity_qps(probed, cfg.lanes), cpu_capacity_qps(probed)
            found = [q for q in (by_lanes, by_cpu) if q is not None]
            if found:
                capacity.update(source="run", probe_qps=probe, qps=min(found),
                                lanes_qps=by_lanes, cpu_qps=by_cpu)  # fmt: skip
            if host:
                host_model = HostModel.from_run(probed, task_overhead_s)
            if in_run and probe_tasks and probe_ctx and isinstance(profile, dict):
                probes = [(probe, probed, probe_tasks, probe_ctx, probe_gaps)]
                q2 = round(PROBE2_LOAD * capacity["qps"], 1)
                second = real(q2)  # the second probe, near the top load
                t2, c2, g2 = _take_trace(second)
                if t2 and c2:
                    probes.append((q2, second, t2, c2, g2))
                    capacity["probe2_qps"] = q2
                probe_sims = _probe_calibrated(
                    setup, cfg, name, duration_s, profile, cost, graph_info, policy_cost,
                    probes, task_overhead_s, host,
                )  # fmt: skip
        qps_list = [round(f * capacity["qps"], 1) for f in DEFAULT_LOADS]
    types = types_with(host_model)
    sim_host = sim_run_fn(setup, cfg, name, duration_s, types=types)
    plain: dict[float, dict] = {}  # the same simulation without the host model
    sim_plain = None
    if host_model is not None:
        sim_plain = sim_run_fn(setup, cfg, name, duration_s, types=types_with(None))
    probed_sims: dict[str, dict[float, dict]] = {}  # the probe-calibrated simulations

    def sim(q: float) -> dict:
        if sim_plain is not None:
            plain[q] = sim_plain(q)
        for key, fn in (probe_sims or {}).get("runs", {}).items():
            probed_sims.setdefault(key, {})[q] = fn(q)
        return sim_host(q)

    fits: dict[float, list[tuple[float, float]]] = {}  # in_run_fit's (a, b) per real run
    task_lists: dict[float, list] = {}
    gap_lists: dict[float, list[float]] = {}
    cpu_lists: dict[float, list[dict]] = {}

    def real_and_scale(q: float) -> dict:
        r = real(q)
        tasks, _, gaps = _take_trace(r)
        if in_run:
            if not tasks:
                raise ValueError("in-run calibration needs the real run's lane tasks")
            fits.setdefault(q, []).append(in_run_fit(tasks, cost.whole_s))
            task_lists.setdefault(q, []).extend(tasks)
            gap_lists.setdefault(q, []).extend(gaps)
            if host and r.get("cpu"):
                cpu_lists.setdefault(q, []).append(r)
        return r

    rows = run_loads(qps_list, real_and_scale, sim, repeats, on_load=on_load, on_real=on_real)
    for row in rows:
        if float(row["qps"]) in plain:
            row["without_host"] = {
                "error": compare(_as_real(row), plain[float(row["qps"])])["error"]
            }
    extra: dict[str, Any] = {}
    if in_run:
        if not isinstance(profile, dict):
            raise ValueError("in-run calibration rescales a profile dict, not a cost object")

        def in_run_sim(
            row: dict, cost_model: Any, over: float, noise: Any = None, hm: Any = None
        ) -> dict:
            """The simulator against `row`'s real runs, interference and idle model off (the
            measured task times hold both), the real hand-off `over` per task, host `hm`."""
            t = server_types(
                cfg, cost_model, 1, graph_info=graph_info, interference="none",
                task_overhead_s=over, policy_cost=policy_cost, noise=noise, host=hm,
            )  # fmt: skip
            s = sim_run_fn(setup, cfg, name, duration_s, types=t)(float(row["qps"]))
            return compare(_as_real(row), s)

        for row in rows:
            q = float(row["qps"])
            f, fixed_s = (_median([fit[k] for fit in fits[q]]) for k in (0, 1))
            over = handoff_s(gap_lists.get(q, []), task_overhead_s)
            hm = HostModel.median(
                [m for r in cpu_lists.get(q, []) if (m := HostModel.from_run(r, over))]
            )
            scaled = make_cost(scaled_profile(profile, f), cfg.granularity, graph_info)
            noise = ServiceNoise.from_tasks(task_lists[q], cost.whole_s, seed=seed)
            c = in_run_sim(row, scaled, over + fixed_s, hm=hm)
            row["in_run_scale"] = f
            row["in_run_task_extra_s"] = fixed_s
            row["in_run_task_overhead_s"] = over
            row["in_run_host"] = hm.to_dict() if hm is not None else None
            row["sim_in_run"], row["error_in_run"] = c["sim"], c["error"]
            c = in_run_sim(row, cost, over, noise, hm)
            row["in_run_noise"] = noise.to_dict()
            row["sim_in_run_noise"], row["error_in_run_noise"] = c["sim"], c["error"]
            if hm is not None:
                wo = row.setdefault("without_host", {})
                wo["error_in_run"] = in_run_sim(row, scaled, over + fixed_s)["error"]
                wo["error_in_run_noise"] = in_run_sim(row, cost, over, noise)["error"]
        extra["in_run"] = summarize([{"error": r["error_in_run"]} for r in rows])
        extra["in_run_noise"] = summarize([{"error": r["error_in_run_noise"]} for r in rows])
    for key, by_q in probed_sims.items():
        for row in rows:
            c = compare(_as_real(row), by_q[float(row["qps"])])
            row[f"sim_{key}"], row[f"error_{key}"] = c["sim"], c["error"]
        extra[key] = summarize([{"error": r[f"error_{key}"]} for r in rows])
    if probe_sims is not None:
        extra["probe_fit"] = probe_sims["fit"]
    wo_rows = [r["without_host"] for r in rows if "without_host" in r]
    if wo_rows:
        extra["without_host"] = {
            k: summarize([{"error": w[k]} for w in wo_rows if k in w])["max_abs_error"]
            for k in ("error", "error_in_run", "error_in_run_noise")
            if any(k in w for w in wo_rows)
        }
    return {
        "model": model,
        "preset": name,
        "config": cfg.to_dict(),
        "scale": scale,
        "seed": seed,
        "duration_s": duration_s,
        "capacity": capacity,
        "sla_ms": setup.sla_ms,
        "task_overhead_s": task_overhead_s,
        "host": host_model.to_dict() if host_model is not None else None,
        "interference": types[0].interference.to_dict(),
        "serving_correction": (profile or {}).get("serving_correction")
        if isinstance(profile, dict)
        else None,
        **({"repeats": repeats} if repeats > 1 else {}),
        "loads": rows,
        **summarize(rows),
        **extra,
    }


def interpolate_fit(fits: Sequence[tuple[float, ProbeFit]], qps: float) -> ProbeFit:
    """The `ProbeFit` at `qps`, each term linear in the load between (and beyond) the
    probes' `(qps, fit)`, kept in its range (a > 0; b, idle extra >= 0; factors >= 1)."""
    if len(fits) == 1 or fits[0][0] == fits[-1][0]:
        return fits[0][1]
    (q1, f1), (q2, f2) = fits[0], fits[-1]

    def lin(name: str, lo: float) -> float:
        return max(lo, _lerp([(q1, getattr(f1, name)), (q2, getattr(f2, name))], qps))

    return ProbeFit(
        lin("a", 0.05 * min(f1.a, f2.a)), lin("b", 0.0), lin("interference", 1.0),
        lin("idle_ratio", 1.0), lin("idle_extra_s", 0.0), f1.tasks + f2.tasks,
    )  # fmt: skip


def _probe_calibrated(
    setup: Any,
    cfg: EngineConfig,
    name: str,
    duration_s: float,
    profile: dict[str, Any],
    cost: Any,
    graph_info: Any,
    policy_cost: Any,
    probes: Sequence[tuple[float, dict, Sequence, Sequence, Sequence[float]]],
    task_overhead_s: float,
    host: bool,
) -> dict[str, Any]:
    """The simulations calibrated by probe runs alone, made before any measured run, from
    `probes`' `(qps, result, lane tasks, their context, lane gaps)`: "probe" (the first
    probe's `probe_fit`: slowdown, co-run and idle terms, fixed cost, its hand-off and, with
    `host`, its host CPU), "probe_flat" (the first probe's `in_run_fit`, neither co-run nor
    idle) and, with a second probe, "probe2" (each load's fit, hand-off between tasks and
    host CPU per query interpolated in the load between the two probes', `interpolate_fit`:
    the hand-off and the host's CPU per query fall as the load rises, rmc1's hand-off from
    ~180 to ~60 us per task); `{"runs": {key: qps -> result}, "fit": ...}`."""
    idle = idle_model(profile) or IdleModel([1], [1.0], IDLE_FROM_S, IDLE_GAP_S)
    fits, overs, hosts = [], [], []
    for q, result, t, c, g in probes:
        fits.append((q, probe_fit(t, c, cost.whole_s, idle.weight)))
        overs.append((q, handoff_s(g, task_overhead_s)))
        hosts.append((q, HostModel.from_run(result, overs[-1][1]) if host else None))
    tasks = probes[0][2]
    a, b = in_run_fit(tasks, cost.whole_s)
    sizes = profile["batch_sizes"]

    def run_fn(f: ProbeFit | None, over: float, hm: HostModel | None) -> Callable[[float], dict]:
        if f is None:  # the flat fit
            scaled, fixed, table, idle_m = a, b, "none", None
        else:
            scaled, fixed = f.a, f.b
            table = InterferenceModel(
                {f"{WHOLE_CLASS}|{WHOLE_CLASS}": f.interference}, source="probe"
            )
            idle_m = IdleModel(
                sizes, [f.idle_ratio] * len(sizes), idle.from_s, idle.gap_s, f.idle_extra_s
            )
        types = server_types(
            cfg, make_cost(scaled_profile(profile, scaled), cfg.granularity, graph_info), 1,
            graph_info=graph_info, interference=table, task_overhead_s=over + fixed,
            policy_cost=policy_cost, idle=idle_m, host=hm,
        )  # fmt: skip
        return sim_run_fn(setup, cfg, name, duration_s, types=types)

    over1, hm1 = overs[0][1], hosts[0][1]
    runs: dict[str, Callable[[float], dict]] = {
        "probe": run_fn(fits[0][1], over1, hm1),
        "probe_flat": run_fn(None, over1, hm1),
    }

    def at(q: float) -> tuple[ProbeFit, float, HostModel | None]:
        """The probes' fit, hand-off and host CPU, each interpolated to load `q`."""
        over = max(0.0, _lerp(overs, q))
        hm = None
        if all(h is not None for _, h in hosts):
            fields = ("submit_s", "complete_s", "background_s")
            hm = HostModel(
                **{k: max(0.0, _lerp([(p, getattr(h, k)) for p, h in hosts], q)) for k in fields},
                cores=hosts[0][1].cores,
            )
        return interpolate_fit(fits, q), over, hm

    if len(fits) > 1:
        runs["probe2"] = lambda q: run_fn(*at(q))(q)

    def described(i: int) -> dict[str, Any]:
        h = hosts[i][1]
        return {"handoff_s": overs[i][1], "host": h.to_dict() if h is not None else None}

    fit = {**fits[0][1].to_dict(), "flat": {"a": a, "b": b}, **described(0)}
    if len(fits) > 1:
        fit["second"] = {"qps": fits[1][0], **fits[1][1].to_dict(), **described(1)}
    return {"runs": runs, "fit": fit}


def _lerp(points: Sequence[tuple[float, float]], x: float) -> float:
    """The line through the first and last `(x, y)` of `points` at `x` (the first's y alone
    when they share an x)."""
    (x1, y1), (x2, y2) = points[0], points[-1]
    return y1 if x1 == x2 else y1 + (x - x1) * (y2 - y1) / (x2 - x1)


def _take_trace(result: dict[str, Any]) -> tuple[list | None, list | None, list[float]]:
    """A traced real run's lane records, taken out of its result (they are not reported):
    its lane tasks, their context and its lane gaps (`Setup.run_fn` with `trace`)."""
    tasks = result.pop("lane_tasks", None)
    context = result.pop("lane_task_context", None)
    return tasks, context, result.pop("lane_gaps_s", None) or []


def _as_real(row: dict[str, Any]) -> dict[str, Any]:
    """A row's real percentiles in the shape `compare` reads."""
    return {"offered_qps": row["qps"], "latency_ms": dict(row["real"])}
