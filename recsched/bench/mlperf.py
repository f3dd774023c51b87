"""MLPerf LoadGen as a second load driver: the engine as a LoadGen SUT, and LoadGen's own
log read back into recsched's `bench` JSON.

The mapping. One LoadGen *sample* is one recsched *query*. The query sample library (QSL) is
a table of `qsl_size` queries drawn once, seeded, from our size distribution and class mix
(`SampleLibrary`): row `i` holds `n_items`, a class and an offset into the input pool.
LoadGen's sample index picks a row; LoadGen alone decides when (Poisson at
`server_target_qps` in the Server scenario, everything at once in Offline) and which rows
(uniformly from the loaded set), so the query sizes of a run are i.i.d. draws from the QSL.

The SUT (`EngineSUT`). LoadGen's issue callback only hands each sample to `Engine.submit`
(Offline: to a local backlog that keeps at most `window` queries in the engine) and returns.
`QuerySamplesComplete` is called from the completion path (the query future's done-callback),
exactly once per sample, with the scores' bytes as the response buffer, kept alive until the
call returns. A sample whose query fails (queue full, lane error) is completed too, with an
empty response, and counted as failed: LoadGen has no notion of an error, so recsched counts.

The result. LoadGen's `mlperf_log_detail.txt` (`:::MLLOG {json}` lines) gives validity,
scheduled and completed samples per second and the latency percentiles (from LoadGen's
scheduled issue time: open loop). Per-class figures, the CDF points and cost come from
recsched's own completion log, whose latencies start at the issue callback (microseconds
after LoadGen's schedule). Settings come from our options, then a `user.conf` (LoadGen's
`model.scenario.key = value` format; only that file, not the official mlperf.conf) may
override them.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsched.config import EngineConfig
from recsched.engine import Engine, EngineClosed, QueueFull
from recsched.metrics.latency import LatencyLog
from recsched.metrics.report import cost_core_s_per_1k
from recsched.metrics.trace import TraceRecorder
from recsched.models.base import Inputs
from recsched.types import DEFAULT_CLASS, PriorityClass, Query
from recsched.workload.classes import assign_classes
from recsched.workload.sizes import parse_sizes

SCENARIOS = ("server", "offline")
DETAIL_LOG = "mlperf_log_detail.txt"
SUMMARY_LOG = "mlperf_log_summary.txt"
_MLLOG = ":::MLLOG"
_USER_CONF_ONLY = 2  # FromConfig conf_type: 1 also loads the official mlperf.conf; 2 does not


@dataclass(frozen=True)
class MlperfSpec:
    """A LoadGen run. `qps`: server_target_qps (Server) or offline_expected_qps (Offline)."""

    scenario: str = "server"
    qps: float = 50.0
    duration_s: float = 10.0
    sla_ms: float | None = None
    percentile: float = 95.0
    min_query_count: int = 100
    qsl_size: int = 1024
    seed: int = 0
    user_conf: Path | None = None
    log_dir: Path | None = None
    window: int = 256  # Offline: queries in the engine at once
    stall_s: float = 30.0  # abort the engine when nothing completes for this long

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; one of {SCENARIOS}")
        if self.scenario == "server" and self.sla_ms is None:
            raise ValueError("the Server scenario needs a target latency (--sla-ms or --sla-x)")
        assert self.qps > 0 and self.duration_s > 0 and self.qsl_size >= 1
        assert 0 < self.percentile < 100 and self.min_query_count >= 1 and self.window >= 1


# -- the query sample library -----------------------------------------------------------------
@dataclass(frozen=True)
class SampleLibrary:
    """Pre-drawn queries, indexed by LoadGen's sample index: sizes, classes, input offsets."""

    n_items: np.ndarray  # int64 [N]
    cls: np.ndarray  # int64 [N], into `classes`
    offsets: np.ndarray  # int64 [N], row offset into the input pool
    classes: tuple[PriorityClass, ...]

    @classmethod
    def make(
        cls,
        sizes: str,
        classes: tuple[PriorityClass, ...],
        n: int,
        pool_rows: int,
        seed: int = 0,
    ) -> SampleLibrary:
        """Draw `n` queries (seeded); sizes are capped at the pool's rows."""
        rng_n, rng_c, rng_o = (
            np.random.default_rng(s) for s in np.random.SeedSequence([seed, 8]).spawn(3)
        )
        n_items = np.minimum(parse_sizes(sizes).sample(n, rng_n).astype(np.int64), pool_rows)
        c = assign_classes(n, classes, rng_c)
        hi = np.maximum(1, pool_rows - n_items + 1)
        offsets = (rng_o.random(n) * hi).astype(np.int64)
        return cls(n_items, c, offsets, classes)

    def __len__(self) -> int:
        return len(self.n_items)

    def mean_items(self) -> float:
        return float(self.n_items.mean())


# -- the system under test ---------------------------------------------------------------------
Complete = Callable[[list[Any]], None]  # lg.QuerySamplesComplete
Response = Callable[[int, int, int], Any]  # lg.QuerySampleResponse(id, ptr, size)


class EngineSUT:
    """LoadGen's system under test: samples in through `issue`, out through `complete`.

    `complete` and `response` are LoadGen's `QuerySamplesComplete` and `QuerySampleResponse`
    (injected, so the exactly-once bookkeeping is testable without a LoadGen run). Thread-safe.
    """

    def __init__(
        self,
        engine: Engine,
        library: SampleLibrary,
        take: Callable[[int, int], Inputs],
        *,
        complete: Complete,
        response: Response,
        sla_ms: float | None = None,
        window: int | None = None,
        log: LatencyLog | None = None,
    ) -> None:
        self.engine = engine
        self.lib = library
        self.take = take
        self._complete = complete
        self._response = response
        self.sla_ms = sla_ms
        self.window = window
        self.log = log if log is not None else LatencyLog()
        self._lock = threading.Lock()
        self._backlog: deque = deque()
        self._in_flight: dict[int, int] = {}  # LoadGen sample id -> recsched qid
        self._qids = itertools.count()
        self._local = threading.local()
        self.issued = self.completed = self.failed = self.rejected = 0
        self.items_done = 0
        self.last_progress_s = time.perf_counter()

    # LoadGen's callbacks -------------------------------------------------------------------
    def issue(self, samples: Sequence[Any]) -> None:
        """IssueQuery: enqueue each sample (no waiting on the engine)."""
        with self._lock:
            self.issued += len(samples)
            self._backlog.extend(samples)
        self._pump()

    def flush(self) -> None:
        """FlushQueries: nothing is held back beyond the engine's own merge delay."""

    # internals ------------------------------------------------------------------------------
    def outstanding(self) -> int:
        with self._lock:
            return len(self._in_flight) + len(self._backlog)

    def _pump(self) -> None:
        """Submit backlog samples while the window has room (re-entry safe, no recursion)."""
        if getattr(self._local, "pumping", False):
            return
        self._local.pumping = True
        try:
            while True:
                with self._lock:
                    room = self.window is None or len(self._in_flight) < self.window
                    if not (self._backlog and room):
                        return
                    sample = self._backlog.popleft()
                    assert sample.id not in self._in_flight, "a sample issued twice"
                    qid = next(self._qids)
                    self._in_flight[sample.id] = qid
                self._submit(sample, qid)
        finally:
            self._local.pumping = False

    def _submit(self, sample: Any, qid: int) -> None:
        i = int(sample.index)
        n = int(self.lib.n_items[i])
        c = self.lib.classes[int(self.lib.cls[i])]
        now = self.engine.clock.now()
        sla = c.sla_ms if c.sla_ms is not None else self.sla_ms
        deadline = now + sla / 1e3 if sla is not None else math.inf
        q = Query(qid, self.engine.adapter.name, n, c.name, c.value, now, deadline)
        try:
            fut = self.engine.submit(q, self.take(int(self.lib.offsets[i]), n))
        except Exception as exc:  # never let an error escape into LoadGen's thread
            fut = Future()
            fut.set_exception(exc)
        fut.add_done_callback(lambda f: self._done(sample, q, f))

    def _done(self, sample: Any, q: Query, fut: Any) -> None:
        """The completion path: one QuerySamplesComplete per sample, buffer alive meanwhile."""
        err = fut.exception()
        now = self.engine.clock.now()
        arr = None if err is not None else fut.result().detach().contiguous().numpy()
        with self._lock:
            assert self._in_flight.pop(sample.id, None) == q.qid, "a sample completed twice"
            self.completed += 1
            if err is not None:
                self.failed += 1
                self.rejected += isinstance(err, (QueueFull, EngineClosed))
            else:
                self.items_done += q.n_items
            self.last_progress_s = time.perf_counter()
        self.log.append(q.cls, q.arrival_s, now, q.n_items, ok=err is None)
        ptr, size = (0, 0) if arr is None else (arr.ctypes.data, arr.nbytes)
        self._complete([self._response(sample.id, ptr, size)])
        del arr  # the scores may be freed only after LoadGen has seen (or copied) them
        if self.window is not None:
            self._pump()


# -- settings --------------------------------------------------------------------------------
def loadgen_settings(spec: MlperfSpec, model: str) -> Any:
    """LoadGen `TestSettings` from our options, then the optional user.conf on top."""
    import mlperf_loadgen as lg

    ts = lg.TestSettings()
    ts.mode = lg.TestMode.PerformanceOnly
    if spec.scenario == "server":
        ts.scenario = lg.TestScenario.Server
        ts.server_target_qps = float(spec.qps)
        ts.server_target_latency_ns = int(round(spec.sla_ms * 1e6))
        ts.server_target_latency_percentile = spec.percentile / 100.0
    else:
        ts.scenario = lg.TestScenario.Offline
        ts.offline_expected_qps = float(spec.qps)
    ts.min_duration_ms = int(round(spec.duration_s * 1e3))
    ts.min_query_count = int(spec.min_query_count)
    ts.performance_sample_count_override = int(spec.qsl_size)
    ts.qsl_rng_seed = spec.seed
    ts.sample_index_rng_seed = spec.seed + 1
    ts.schedule_rng_seed = spec.seed + 2
    if spec.user_conf is not None:
        path = Path(spec.user_conf)
        if not path.is_file():
            raise FileNotFoundError(f"user.conf not found: {path}")
        scenario = "Server" if spec.scenario == "server" else "Offline"
        rc = ts.FromConfig(str(path), model, scenario, _USER_CONF_ONLY)
        if rc != 0:
            raise ValueError(f"LoadGen could not read {path} (code {rc})")
    return ts


def log_settings(outdir: Path) -> Any:
    import mlperf_loadgen as lg

    outdir.mkdir(parents=True, exist_ok=True)
    out = lg.LogOutputSettings()
    out.outdir = str(outdir)
    out.copy_summary_to_stdout = False
    ls = lg.LogSettings()
    ls.log_output = out
    ls.enable_trace = False
    return ls


# -- LoadGen's logs ---------------------------------------------------------------------------
def parse_detail_log(path: str | Path) -> dict[str, Any]:
    """`mlperf_log_detail.txt` as {key: value} (the last value of a repeated key), plus
    `"_errors"` and `"_warnings"`: the messages LoadGen flagged as such."""
    out: dict[str, Any] = {"_errors": [], "_warnings": []}
    for line in Path(path).read_text(errors="replace").splitlines():
        if not line.startswith(_MLLOG):
            continue
        try:
            rec = json.loads(line[len(_MLLOG) :])
        except json.JSONDecodeError:
            continue  # a line cut short (a crashed run): skip it, keep the rest
        key, value = rec.get("key"), rec.get("value")
        meta = rec.get("metadata") or {}
        if meta.get("is_error"):
            out["_errors"].append(f"{key}: {value}")
        if meta.get("is_warning"):
            out["_warnings"].append(f"{key}: {value}")
        if key is not None:
            out[key] = value
    return out


def parse_summary_log(path: str | Path) -> dict[str, str]:
    """`mlperf_log_summary.txt` as {label: text} for its `label : value` lines."""
    out: dict[str, str] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        if ":" in line and not line.startswith(("=", " *")):
            label, _, value = line.partition(":")
            if label.strip() and value.strip():
                out.setdefault(label.strip(), value.strip())
    return out


def latency_key(p: float) -> str:
    """LoadGen's key for the p-th percentile latency, e.g. 99 -> result_99.00_percentile..."""
    return f"result_{p:.2f}_percentile_latency_ns"


def mlperf_figures(detail: dict[str, Any], summary: dict[str, str] | None = None) -> dict:
    """The figures of a run from the parsed logs (ms, samples/s); the summary fills gaps."""
    summary = summary or {}
    scenario = str(detail.get("effective_scenario", summary.get("Scenario", "?")))
    offline = scenario.lower() == "offline"

    def num(key: str, label: str | None = None) -> float | None:
        v = detail.get(key)
        if v is None and label is not None:
            v = summary.get(label)
        try:
            return float(v) if v is not None else None
        except (TypeError, ValueError):
            return None

    pcts = {}
    for p in (50.0, 90.0, 95.0, 97.0, 99.0, 99.9):
        ns = num(latency_key(p), f"{p:.2f} percentile latency (ns)")
        pcts[f"p{p:g}"] = ns / 1e6 if ns is not None else None
    for k in ("min", "max", "mean"):
        ns = num(f"result_{k}_latency_ns", f"{k.capitalize()} latency (ns)")
        pcts[k] = ns / 1e6 if ns is not None else None
    validity = detail.get("result_validity", summary.get("Result is"))
    if offline:
        completed = num("result_samples_per_second", "Samples per second")
        scheduled = None
    else:
        completed = num("result_completed_samples_per_sec", "Completed samples per second")
        scheduled = num("result_scheduled_samples_per_sec", "Scheduled samples per second")
    spq = num("generated_samples_per_query") or 1.0
    queries = num("result_query_count")
    return {
        "scenario": scenario,
        "validity": validity,
        "perf_constraints_met": detail.get("result_perf_constraints_met"),
        "min_duration_met": detail.get("result_min_duration_met"),
        "min_queries_met": detail.get("result_min_queries_met"),
        "early_stopping_met": detail.get("early_stopping_met"),
        "invalid_reason": detail.get("result_invalid_reason") or None,
        "scheduled_samples_per_s": scheduled,
        "completed_samples_per_s": completed,
        "query_count": int(queries) if queries is not None else None,
        "sample_count": int(queries * spq) if queries is not None else None,
        "overlatency_query_count": detail.get("result_overlatency_query_count"),
        "latency_ms": pcts,
        "target_qps": num("effective_target_qps"),
        "target_latency_ms": (num("effective_target_latency_ns") or 0.0) / 1e6 or None,
        "target_latency_percentile": num("effective_target_latency_percentile"),
        "min_duration_ms": num("effective_min_duration_ms"),
        "min_query_count": num("effective_min_query_count"),
        "num_errors": detail.get("num_errors"),
        "errors": detail.get("_errors", []),
        "warnings": detail.get("_warnings", []),
        "loadgen_version": detail.get("loadgen_version"),
    }


# -- a run -----------------------------------------------------------------------------------
@dataclass
class MlperfRecord:
    """What one LoadGen run produced, before summarising."""

    figures: dict
    log: LatencyLog
    issued: int
    completed: int
    failed: int
    rejected: int
    items_done: int
    wall_s: float
    lane_utilization: list[float]
    cores: float
    log_dir: Path


def run_loadgen(
    engine: Engine,
    library: SampleLibrary,
    take: Callable[[int, int], Inputs],
    spec: MlperfSpec,
) -> MlperfRecord:
    """Run one LoadGen test against a started (warm) engine; read LoadGen's logs back."""
    import mlperf_loadgen as lg

    log_dir = Path(spec.log_dir or tempfile.mkdtemp(prefix="recsched-mlperf-"))
    window = spec.window if spec.scenario == "offline" else None
    sut = EngineSUT(
        engine, library, take, complete=lg.QuerySamplesComplete,
        response=lg.QuerySampleResponse, sla_ms=spec.sla_ms, window=window,
    )  # fmt: skip
    settings = loadgen_settings(spec, engine.adapter.name)
    n = len(library)
    sut_h = lg.ConstructSUT(sut.issue, sut.flush)
    qsl_h = lg.ConstructQSL(n, min(n, spec.qsl_size), lambda _s: None, lambda _s: None)
    stop = threading.Event()
    watchdog = threading.Thread(
        target=_watch, args=(sut, engine, spec.stall_s, stop), daemon=True, name="mlperf-watch"
    )
    busy0 = [lane.stats.busy_s for lane in engine.lanes]
    t0 = time.perf_counter()
    watchdog.start()
    try:
        lg.StartTestWithLogSettings(sut_h, qsl_h, settings, log_settings(log_dir))
    finally:
        stop.set()
        lg.DestroyQSL(qsl_h)
        lg.DestroySUT(sut_h)
    wall = time.perf_counter() - t0
    watchdog.join(timeout=2.0)
    assert sut.outstanding() == 0 and sut.completed == sut.issued, "every sample completed once"
    detail = parse_detail_log(log_dir / DETAIL_LOG)
    summary_path = log_dir / SUMMARY_LOG
    summary = parse_summary_log(summary_path) if summary_path.exists() else {}
    util = [
        min(1.0, (lane.stats.busy_s - b) / max(wall, 1e-9))
        for lane, b in zip(engine.lanes, busy0, strict=True)
    ]
    cfg = engine.config
    return MlperfRecord(
        mlperf_figures(detail, summary), sut.log, sut.issued, sut.completed, sut.failed,
        sut.rejected, sut.items_done, wall, util, float(cfg.lanes * cfg.threads_per_lane),
        log_dir,
    )  # fmt: skip


def _watch(sut: EngineSUT, engine: Engine, stall_s: float, stop: threading.Event) -> None:
    """Abort the engine if samples are outstanding and nothing completes for `stall_s`, so a
    hung engine fails its samples (completing them) instead of hanging LoadGen forever."""
    while not stop.wait(0.25):
        if sut.outstanding() and time.perf_counter() - sut.last_progress_s > stall_s:
            engine.abort(f"mlperf: no completion for {stall_s:g} s")
            return


def mlperf_result(
    rec: MlperfRecord,
    spec: MlperfSpec,
    *,
    model: str,
    preset: str,
    config: EngineConfig,
    classes: tuple[PriorityClass, ...],
    mean_items: float,
) -> dict:
    """A `bench` result (DESIGN.md) from a LoadGen run, with `driver: "mlperf"` and the raw
    LoadGen figures under `"mlperf"`. Headline latency and throughput are LoadGen's (the
    throughput less the share of failed samples, which LoadGen counts as served)."""
    from recsched.bench.run import latency_cdf_ms

    fig = rec.figures
    own = rec.log.summary(classes, spec.sla_ms, spec.percentile)
    lat = fig["latency_ms"]
    # LoadGen counts a failed sample (completed with an empty response) as served: leave it out
    ok_share = (rec.completed - rec.failed) / max(1, rec.completed)
    completed = (fig["completed_samples_per_s"] or 0.0) * ok_share
    items_per_sample = rec.items_done / max(1, rec.completed - rec.failed) or mean_items
    offline = spec.scenario == "offline"
    sla_ms = None if offline else spec.sla_ms
    perf_met = fig["perf_constraints_met"]
    errors = rec.failed > 0
    sla_met = None if offline or perf_met is None else bool(perf_met) and (
        not errors or bool(own["sla_met"])
    )  # fmt: skip
    fig = {
        **fig, "log_dir": str(rec.log_dir), "detail_log": str(rec.log_dir / DETAIL_LOG),
        "summary_log": str(rec.log_dir / SUMMARY_LOG), "issued": rec.issued,
        "completed": rec.completed, "failed_samples": rec.failed,
        "user_conf": str(spec.user_conf) if spec.user_conf else None,
    }  # fmt: skip
    result = {
        "model": model,
        "preset": preset,
        "driver": "mlperf",
        "config": config.to_dict(),
        "offered_qps": fig["scheduled_samples_per_s"] if not offline else None,
        "target_qps": spec.qps,
        "completed_qps": completed,
        "completed_items_per_s": completed * items_per_sample,
        "duration_s": spec.duration_s,
        "wall_s": rec.wall_s,
        "queries": rec.issued,
        "rejected": rec.rejected,
        "failed": rec.failed - rec.rejected,
        "late_issues": None,
        "latency_ms": {k: lat.get(k) for k in ("p50", "p95", "p99", "max")},
        "sla_ms": sla_ms,
        "sla_percentile": spec.percentile,
        "sla_met": sla_met,
        "classes": own["classes"],
        "latency_cdf_ms": latency_cdf_ms(rec.log),
        "lane_utilization": rec.lane_utilization,
        "cost_core_s_per_1k": cost_core_s_per_1k(rec.cores, rec.wall_s, own["within_sla"]),
        "mlperf": fig,
    }
    if offline:
        result["peak_items_per_s"] = result["completed_items_per_s"]
    return result


def mlperf_once(
    adapter: Any,
    config: EngineConfig,
    spec: MlperfSpec,
    *,
    preset: str = "custom",
    sizes: str = "production",
    classes: tuple[PriorityClass, ...] = (DEFAULT_CLASS,),
    pool: Any = None,
    cost: Any = None,
    graph: Any = None,
    trace: TraceRecorder | None = None,
) -> dict:
    """Start an engine, warm it up, run LoadGen against it, return the bench-shaped result."""
    from recsched.bench.run import InputPool, attach_trace, threading_guard, warm_up

    pool = pool or InputPool.make(adapter, seed=spec.seed)
    lib = SampleLibrary.make(sizes, classes, spec.qsl_size, pool.rows, spec.seed)
    engine = Engine(adapter, config, cost=cost, graph=graph, validate=False)
    with threading_guard():
        engine.start()
        try:
            warm_up(engine, pool)
            attach_trace(engine, trace)
            rec = run_loadgen(engine, lib, pool.take, spec)
        finally:
            engine.close(drain=False, timeout=5.0)
    return mlperf_result(
        rec, spec, model=adapter.name, preset=preset, config=config, classes=classes,
        mean_items=lib.mean_items(),
    )  # fmt: skip


def default_log_dir(json_path: Path | None, model: str, scenario: str) -> Path:
    """Beside the JSON result (`r.json` -> `r.mlperf/`), else a fresh temporary folder."""
    if json_path is not None:
        return Path(json_path).with_suffix(".mlperf")
    return Path(tempfile.mkdtemp(prefix=f"recsched-mlperf-{model}-{scenario}-"))


def bench_mlperf(
    setup: Any,
    config: EngineConfig,
    preset: str,
    *,
    qps: float,
    duration_s: float,
    scenario: str = "server",
    user_conf: Path | None = None,
    json_path: Path | None = None,
    trace: TraceRecorder | None = None,
) -> dict:
    """`recsched bench --driver mlperf`: a `Setup` (model, SLA, sizes, classes) under LoadGen.

    The Server run needs at least 100 queries or `qps x duration`, whichever is fewer, so a
    short run is still a run; LoadGen's logs go beside `json_path` (or to a temporary folder).
    LoadGen draws its own Poisson arrivals: another `--arrivals` is refused (ValueError).
    """
    if setup.arrivals != "poisson":
        raise ValueError(
            f"LoadGen draws Poisson arrivals; --arrivals {setup.arrivals} is native-only"
        )
    spec = MlperfSpec(
        scenario=scenario, qps=qps, duration_s=duration_s,
        sla_ms=setup.sla_ms if scenario == "server" else None, percentile=setup.percentile,
        min_query_count=max(1, min(100, int(qps * duration_s))), seed=setup.seed,
        user_conf=user_conf, log_dir=default_log_dir(json_path, setup.adapter.name, scenario),
    )  # fmt: skip
    return mlperf_once(
        setup.adapter, config, spec, preset=preset, sizes=setup.sizes, classes=setup.classes,
        pool=setup.pool(), trace=trace, **setup.engine_extras(config),
    )  # fmt: skip
