"""One open-loop run against the real engine, and its result in the shared JSON shape.

The driver issues each query at its scheduled time from its own thread, whatever the engine
does (open loop, MLPerf-style: it issues and moves on). Latency runs from the *scheduled*
arrival, so a late issue counts against the engine, never hides (no coordinated omission).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsched.clock import WallClock
from recsched.config import EngineConfig
from recsched.engine import Engine, EngineClosed, QueueFull
from recsched.metrics.latency import LatencyLog, SlaWatch, class_sla
from recsched.metrics.machine import machine_shares, machine_ticks
from recsched.metrics.report import cost_core_s_per_1k
from recsched.metrics.trace import TraceRecorder
from recsched.models.base import Inputs, ModelAdapter, slice_rows
from recsched.types import DEFAULT_CLASS, PriorityClass, Query, QueryResult
from recsched.workload import Workload, generate
from recsched.workload.arrivals import parse_arrivals
from recsched.workload.sizes import parse_sizes

LATE_S = 1e-3  # an issue more than this behind its schedule counts as late
# Percentiles of the compact latency CDF a bench result carries (49 points, dense in the tail)
CDF_PERCENTILES = (
    *np.arange(0.0, 90.01, 2.5).tolist(), *range(91, 100), 99.5, 99.9, 100.0,
)  # fmt: skip


@dataclass(frozen=True)
class LoadSpec:
    """The workload of a run: rate, duration, arrival process, sizes, classes, seed."""

    qps: float
    duration_s: float = 5.0
    arrivals: str = "poisson"
    sizes: str = "production"
    classes: tuple[PriorityClass, ...] = (DEFAULT_CLASS,)
    seed: int = 0

    def workload(self) -> Workload:
        return generate(
            parse_arrivals(self.arrivals, self.qps),
            parse_sizes(self.sizes),
            self.classes,
            self.duration_s,
            self.seed,
        )


@dataclass
class InputPool:
    """Synthetic inputs made once; query i reads a window of rows at a seeded offset."""

    inputs: Inputs
    rows: int
    seed: int = 0
    _rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    @classmethod
    def make(cls, adapter: ModelAdapter, rows: int = 4096, seed: int = 0) -> InputPool:
        return cls(adapter.make_inputs(rows, seed), rows, seed)

    def offsets(self, sizes: np.ndarray) -> np.ndarray:
        hi = np.maximum(1, self.rows - sizes + 1)
        return (self._rng.random(len(sizes)) * hi).astype(np.int64)

    def take(self, offset: int, n: int) -> Inputs:
        assert n <= self.rows, f"a query of {n} items exceeds the input pool of {self.rows}"
        return slice_rows(self.inputs, offset, offset + n)


@dataclass
class RunRecord:
    """What one run produced, before summarising."""

    log: LatencyLog
    issued: int
    rejected: int
    late_issues: int
    duration_s: float
    wall_s: float
    lane_utilization: list[float]
    cores: float
    unfinished: int = 0
    # per lane: the share of its busy time its thread ran (CPU / busy; the rest waited for
    # the GIL or a core); empty for lanes that do not count CPU
    lane_running: list[float] = field(default_factory=list)
    # the machine's busy / idle / steal CPU shares over the run (None off Linux)
    machine_cpu: dict[str, float] | None = None
    # a run stopped once its SLA verdict could only be a miss (`stop_on_miss`): where
    stopped: dict[str, Any] | None = None
    # CPU seconds over the run: the process, the lanes' tasks, the driver thread (and of it,
    # issuing the queries); lane tasks run (the simulator's host model: `recsched.sim.host`)
    cpu: dict[str, float] | None = None


def run_open_loop(
    engine: Engine,
    pool: InputPool,
    workload: Workload,
    *,
    sla_ms: float | None = None,
    percentile: float = 95.0,
    drain_timeout_s: float = 10.0,
    progress: Callable[[int, int], None] | None = None,
    stop_on_miss: bool = False,
) -> RunRecord:
    """Issue `workload` against a started engine at its scheduled times; wait for the end.

    Queries still unfinished `drain_timeout_s` after the last issue are aborted and count as
    failures (an overloaded configuration fails its SLA rather than running forever).
    With `stop_on_miss`, the run stops as soon as some class has missed its SLA (`sla_ms` at
    `percentile`, or the class's own) on more queries than its whole run allows
    (`SlaWatch`): the verdict is then decided, so a capacity search need not serve the rest,
    whether the run is still issuing (the rest is not issued) or draining its backlog. The
    record's `stopped` says when; its percentiles are those of the queries finished by then,
    what was in flight counting as failed.
    """
    log = LatencyLog()
    watch = sla_watch(workload, sla_ms, percentile) if stop_on_miss else None
    listener = engine.on_complete  # e.g. an online retuner: it keeps hearing completions
    hear = [log.add, *([watch.add] if watch is not None else []), *([listener] if listener else [])]
    if len(hear) == 1:
        engine.on_complete = log.add
    else:

        def every(r) -> None:
            for h in hear:
                h(r)

        engine.on_complete = every
    clock = engine.clock
    assert isinstance(clock, WallClock), "the open-loop driver runs on wall time"
    n = len(workload)
    offsets = pool.offsets(workload.n_items)
    ts = workload.t_s.tolist()
    sizes = workload.n_items.tolist()
    model = engine.adapter.name
    late = rejected = 0
    busy0 = [lane.stats.busy_s for lane in engine.lanes]
    cpu0 = [lane.stats.cpu_s for lane in engine.lanes]
    tasks0 = sum(lane.stats.tasks for lane in engine.lanes)
    ticks0 = machine_ticks()
    proc0, driver0 = time.process_time(), time.thread_time()
    thread_time, issue_cpu = time.thread_time, 0.0
    t0 = clock.now() + 0.02
    last_report = 0.0
    issued, stopped = n, None

    def decided(issued: int) -> dict[str, Any] | None:
        """Where the run stops, once its verdict is decided a miss (`stop_on_miss`)."""
        if watch is None or watch.missed is None:
            return None
        return {"at_s": clock.now() - t0, "class": watch.missed, "issued": issued, "of": n}

    for i in range(n):
        if (stopped := decided(i)) is not None:
            issued = i
            break
        target = t0 + ts[i]
        delay = target - clock.now()
        if delay > 0:
            time.sleep(delay)
        elif -delay > LATE_S:
            late += 1
        c0 = thread_time()  # the CPU on the query's path: the issue and the submission
        q = workload.query(i, model, sla_ms, t0)
        fut = engine.submit(q, pool.take(int(offsets[i]), sizes[i]))
        issue_cpu += thread_time() - c0
        if fut.done() and isinstance(fut.exception(), (QueueFull, EngineClosed)):
            rejected += 1  # never served: a failure for the log and the watch alike
            r = QueryResult(q.qid, q.cls, q.n_items, q.arrival_s, q.arrival_s, "rejected")
            log.add(r)
            if watch is not None:
                watch.add(r)
        if progress is not None and target - last_report > 0.25:
            last_report = target
            progress(i + 1, n)
    t_end = t0 + workload.duration_s if stopped is None else clock.now()
    deadline = max(clock.now(), t_end) + (drain_timeout_s if stopped is None else 0.0)
    while len(log) < issued and clock.now() < deadline:
        if stopped is None and (stopped := decided(issued)) is not None:
            break  # decided while the backlog drains: no need to wait for it
        time.sleep(0.005)
    why = "benchmark drain timeout" if stopped is None else "run stopped: its SLA was missed"
    unfinished = engine.abort(why) if len(log) < issued else 0
    cpu = {
        "process_s": time.process_time() - proc0,
        "lanes_s": sum(lane.stats.cpu_s for lane in engine.lanes) - sum(cpu0),
        "driver_s": time.thread_time() - driver0,
        "issue_s": issue_cpu,  # of the driver's: building and submitting the queries
        "tasks": sum(lane.stats.tasks for lane in engine.lanes) - tasks0,
    }
    wall = max(clock.now(), t_end) - t0
    util = [
        min(1.0, (lane.stats.busy_s - b) / max(wall, 1e-9))
        for lane, b in zip(engine.lanes, busy0, strict=True)
    ]
    running = [
        (lane.stats.cpu_s - c) / (lane.stats.busy_s - b)
        for lane, b, c in zip(engine.lanes, busy0, cpu0, strict=True)
        if lane.kind == "cpu" and lane.stats.busy_s > b
    ]
    if progress is not None:
        progress(n, n)
    cfg = engine.config
    return RunRecord(
        log, issued, rejected, late, workload.duration_s, wall, util,
        float(cfg.lanes * cfg.threads_per_lane), unfinished, running,
        machine_shares(ticks0, machine_ticks()), stopped, cpu,
    )  # fmt: skip


def sla_watch(workload: Workload, sla_ms: float | None, percentile: float) -> SlaWatch:
    """The `SlaWatch` of a run of `workload`: each class's queries and SLA as the verdict
    reads them (`class_sla`, as `LatencyLog.summary` does)."""
    counts = np.bincount(workload.cls, minlength=len(workload.classes)).tolist()
    return SlaWatch(
        {c.name: k for c, k in zip(workload.classes, counts, strict=True)},
        {c.name: class_sla(c, sla_ms, percentile) for c in workload.classes},
    )


def bench_result(
    record: RunRecord,
    *,
    model: str,
    preset: str,
    config: EngineConfig,
    offered_qps: float,
    classes: tuple[PriorityClass, ...],
    sla_ms: float | None,
    percentile: float = 95.0,
) -> dict:
    """The `bench` result of DESIGN.md from a run record."""
    s = record.log.summary(classes, sla_ms, percentile)
    ok_queries = s["queries"] - s["errors"]
    return {
        "model": model,
        "preset": preset,
        "config": config.to_dict(),
        "offered_qps": offered_qps,
        "completed_qps": ok_queries / max(record.wall_s, 1e-9),
        "completed_items_per_s": record.log.items() / max(record.wall_s, 1e-9),
        "duration_s": record.duration_s,
        "queries": record.issued,
        "rejected": record.rejected,
        "failed": s["errors"] - record.rejected,
        "late_issues": record.late_issues,
        "latency_ms": s["latency_ms"],
        "sla_ms": sla_ms,
        "sla_percentile": percentile,
        "sla_met": bool(s["sla_met"]) if s["sla_met"] is not None else None,
        "classes": s["classes"],
        "lane_utilization": record.lane_utilization,
        "lane_running": record.lane_running,
        "machine_cpu": record.machine_cpu,
        **({"cpu": {**record.cpu, "completed": ok_queries}} if record.cpu is not None else {}),
        "cost_core_s_per_1k": cost_core_s_per_1k(record.cores, record.wall_s, s["within_sla"]),
        "latency_cdf_ms": latency_cdf_ms(record.log),
        **({"stopped": record.stopped} if record.stopped is not None else {}),
    }


def latency_cdf_ms(log: LatencyLog) -> dict[str, list[list[float]]]:
    """{"all" | class: [[percentile, ms], ...]} at `CDF_PERCENTILES`, successful queries only
    (for the report's CDF plots; classes without successes are left out)."""
    groups = {"all": log.latencies(), **log.by_class()}
    out = {}
    for name, lat in groups.items():
        if len(lat):
            ms = (np.percentile(lat, CDF_PERCENTILES) * 1e3).tolist()
            pts = zip(CDF_PERCENTILES, ms, strict=True)
            out[name] = [[float(p), round(v, 4)] for p, v in pts]
    return out


def attach_trace(engine: Engine, trace: TraceRecorder | None) -> None:
    """Record the engine's lane tasks into `trace` from now on; lanes named "cpu 0", ...

    The trace's zero is now (events are recorded as tasks end, so the recorder's default
    origin, the first *recorded* start, could put earlier-started tasks at negative times).
    """
    if trace is not None:
        if trace.origin_s is None:
            trace.origin_s = engine.clock.now()
        for lane in engine.lanes:
            trace.name_lane(lane.index, f"{lane.kind} {lane.index}")
    engine.trace = trace


def warm_up(engine: Engine, pool: InputPool, sizes: tuple[int, ...] = (1, 16, 64, 256)) -> None:
    """Run a few queries synchronously so first-call costs stay out of the measurement."""
    qid = -1
    for n in sizes:
        for _ in range(2):
            n = min(n, pool.rows)
            engine.submit(Query(qid, engine.adapter.name, n), pool.take(0, n)).result(timeout=60)
            qid -= 1


def run_closed_loop(
    engine: Engine,
    pool: InputPool,
    sizes: np.ndarray,
    inflight: int,
    seconds: float,
    seed: int = 1,
) -> dict[str, float]:
    """Keep `inflight` queries in flight on a started engine for `seconds`, with no arrival
    process: a new query (the next of `sizes`, cycled; rows at a seeded offset) as soon as one
    finishes. What the engine sustains when it never waits for work: items/s, the lanes' mean
    utilization, the share of their busy time their threads ran (CPU / busy), lane-ms per
    1,000 items, and the queries served."""
    rng = np.random.default_rng(seed)
    slots = threading.Semaphore(inflight)
    lanes = engine.lanes
    busy0 = sum(lane.stats.busy_s for lane in lanes)
    cpu0 = sum(lane.stats.cpu_s for lane in lanes)
    t0, items, i = time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < seconds:
        n = int(sizes[i % len(sizes)])
        slots.acquire()
        x = pool.take(int(rng.integers(0, pool.rows - n + 1)), n)
        fut = engine.submit(Query(i, engine.adapter.name, n), x)
        fut.add_done_callback(lambda _f: slots.release())
        items, i = items + n, i + 1
    for _ in range(inflight):  # every query finished
        slots.acquire()
    wall = time.perf_counter() - t0
    busy = sum(lane.stats.busy_s for lane in lanes) - busy0
    cpu = sum(lane.stats.cpu_s for lane in lanes) - cpu0
    return {
        "items_per_s": items / wall,
        "lane_utilization": busy / wall / len(lanes),
        "lane_running": cpu / busy if busy else 0.0,
        "lane_ms_per_1k_items": busy / items * 1e6,
        "queries": i,
    }


def bench_once(
    adapter: ModelAdapter,
    config: EngineConfig,
    load: LoadSpec,
    *,
    preset: str = "custom",
    sla_ms: float | None = None,
    percentile: float = 95.0,
    pool: InputPool | None = None,
    cost=None,
    graph=None,
    progress: Callable[[int, int], None] | None = None,
    drain_timeout_s: float | None = None,
    trace: TraceRecorder | None = None,
    retune: Callable[[Engine], Any] | None = None,
    stop_on_miss: bool = False,
) -> dict:
    """Start an engine, warm it up, run one open-loop load, return the bench result.
    `stop_on_miss`: stop once the SLA verdict is decided a miss (`run_open_loop`).

    With `trace`, the measured run's lane tasks (not the warm-up's) are recorded into it.
    With `retune`, a factory of a context manager around the run that retunes the engine
    online (`recsched.bench.online.OnlineTuning`); its switches go in the result's "retune".
    """
    pool = pool or InputPool.make(adapter, seed=load.seed)
    workload = load.workload()
    engine = Engine(adapter, config, cost=cost, graph=graph, validate=False)
    with threading_guard():
        engine.start()
        try:
            warm_up(engine, pool)
            attach_trace(engine, trace)
            drain = drain_timeout_s if drain_timeout_s is not None else _drain_for(sla_ms)
            online = retune(engine) if retune is not None else contextlib.nullcontext()
            with online:
                rec = run_open_loop(
                    engine, pool, workload, sla_ms=sla_ms, percentile=percentile,
                    drain_timeout_s=drain, progress=progress, stop_on_miss=stop_on_miss,
                )  # fmt: skip
        finally:
            engine.close(drain=False, timeout=5.0)
    out = bench_result(
        rec,
        model=adapter.name,
        preset=preset,
        config=config,
        offered_qps=load.qps,
        classes=workload.classes,
        sla_ms=sla_ms,
        percentile=percentile,
    )
    # per class, per second of scheduled arrival: [start_s, queries, the SLA percentile's ms]
    out["timeline"] = rec.log.timeline(1.0, percentile)
    if retune is not None:
        out["retune"] = {"switches": online.history, "final": engine.config.to_dict()}
    return out


def _drain_for(sla_ms: float | None) -> float:
    return 10.0 if sla_ms is None else min(10.0, max(1.0, 20 * sla_ms / 1e3))


class threading_guard:
    """Make the driver thread's own torch threads 1 so it never competes with lanes."""

    def __enter__(self) -> None:
        import torch

        self._n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        import torch

        torch.set_num_threads(self._n)
