"""Simulated runs with the same inputs and the same result shape as a real `bench`.

    r = simulate("rmc1", preset("dynamic"), "rmc1.profile.json", qps=800, duration_s=30,
                 servers=4, balancer="p2c", sla_ms=20)
    r["latency_ms"]["p95"], r["servers"], r["sim_queries_per_s"]

`simulate` draws the workload exactly as the real driver does (`recsched.workload.generate`
with the same arrival spec, sizes, classes, duration and seed), runs it through a `Cluster`,
and summarises it with `recsched.metrics.LatencyLog.summary`, so the figures mean the same
as a real run's: rejected queries count as failures at their arrival, queries unfinished
`drain_timeout_s` after the last arrival are failed, `completed_qps` is over the run's span.
`sim_run_fn` makes a `qps -> result` function for the capacity search and the tuner;
`fidelity` (recsched.sim.fidelity) sets real runs beside simulated ones.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsched.config import EngineConfig, preset
from recsched.graph.cost import interpolate
from recsched.metrics.latency import LatencyLog, summarize_ms
from recsched.metrics.report import cost_core_s_per_1k
from recsched.sim.cluster import FAILED, OK, REJECTED, Cluster, ClusterRun
from recsched.sim.front import FrontModel
from recsched.sim.host import HostModel
from recsched.sim.interference import InterferenceModel, resolve
from recsched.sim.lanes import IdleModel, ServiceNoise
from recsched.sim.server import ServerType
from recsched.types import PriorityClass
from recsched.workload import Workload, generate, parse_arrivals, parse_classes, parse_sizes

# The engine's own time per task beyond the model's forward (lane hand-off, gathering the
# batch's rows, scattering scores, resolving futures): the median "internal" overhead of
# benchmarks/engine_overhead.py (rmc1, batch 1) on the 2-core development VM, ~100 us.
DEFAULT_TASK_OVERHEAD_S = 100e-6
Progress = Callable[[float, int], None]


# -- costs and graphs ---------------------------------------------------------------------------
def load_profile_dict(profile: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A profile dict from a path (JSON written by `recsched profile`) or a dict."""
    if isinstance(profile, Mapping):
        return dict(profile)
    d = json.loads(Path(profile).read_text())
    for key in ("batch_sizes", "whole_ms", "granularities"):
        if key not in d:
            raise ValueError(f"{profile}: not a recsched profile (no {key!r})")
    return d


def profile_graph_info(profile: Mapping[str, Any], granularity: str = "coarse") -> Any:
    """A stand-in `GraphInfo` from a profile alone: its ops in order, as a chain.

    Enough for whole-model (`sequential`) simulation, which needs only `whole_s`; op
    classes are guessed from names (embedding/sparse -> memory). Operator-level policies
    need the real graph (`model_graph_info`).
    """
    from recsched.graph.ops import GraphInfo, OpInfo

    names = list(profile["granularities"][granularity]["ops"])
    assert names, "the profile lists no operators"
    ops = tuple(
        OpInfo(
            i,
            name,
            (i - 1,) if i else (),
            "memory" if any(k in name.lower() for k in ("emb", "sparse", "lookup")) else "compute",
            0.0,
            0.0,
            0.0,
        )
        for i, name in enumerate(names)
    )
    return GraphInfo(str(profile.get("model", "?")), granularity, ops, len(ops) - 1)


def model_graph_info(model: str, granularity: str = "coarse", scale: str = "small") -> Any:
    """The model's real operator graph (loads the model with torch)."""
    from recsched.graph.fx import build_graph
    from recsched.models.registry import load_model

    return build_graph(load_model(model, scale=scale), granularity).info


def make_cost(profile: Any, granularity: str = "coarse", graph_info: Any = None) -> Any:
    """A cost model from a profile (path or dict); an object with `whole_s` is kept as is."""
    if profile is not None and hasattr(profile, "whole_s"):
        return profile
    from recsched.graph.cost import CostModel

    d = load_profile_dict(profile)
    info = graph_info if graph_info is not None else profile_graph_info(d, granularity)
    return CostModel.from_profile(d, granularity, info)


def idle_model(profile: Any) -> IdleModel | None:
    """The lanes' idle slowdown recorded in a profile (path or dict), if any."""
    if profile is None or hasattr(profile, "whole_s"):
        return None
    return IdleModel.from_profile(load_profile_dict(profile))


def resolve_auto(cfg: EngineConfig, profile: Any, sizes: str, seed: int = 0) -> EngineConfig:
    """`cfg` with an `auto` granularity chosen from `profile` (a path or dict) for a seeded
    sample of `sizes`, as `Setup.resolve` chooses it for the real engine; `model` when the
    profile is a cost model object (nothing measured to choose from)."""
    from recsched.sched.opstream import resolve_granularity

    if cfg.granularity != "auto":
        return cfg
    if profile is None or hasattr(profile, "whole_s"):  # nothing measured to choose from
        return resolve_granularity(cfg)[0]
    n = parse_sizes(sizes).sample(4096, np.random.default_rng(seed))
    return resolve_granularity(cfg, load_profile_dict(profile), [int(x) for x in n])[0]


def resolve_config(config: EngineConfig | str) -> tuple[EngineConfig, str]:
    """(config, preset name) from a config or a preset name."""
    if isinstance(config, EngineConfig):
        return config, "custom"
    return preset(config), config


def server_types(
    config: EngineConfig,
    cost: Any,
    servers: int = 1,
    *,
    accel_cost: Any = None,
    accel_servers: int | None = None,
    graph_info: Any = None,
    interference: InterferenceModel | str | Path | None = None,
    task_overhead_s: float = DEFAULT_TASK_OVERHEAD_S,
    policy_cost: Any = None,
    idle: IdleModel | None = None,
    noise: ServiceNoise | None = None,
    host: HostModel | None = None,
) -> list[ServerType]:
    """One `ServerType` per server: `accel_servers` of them CPU+accelerator, the rest CPU.

    With an offload threshold and an accelerator profile, every server has accelerator
    lanes unless `accel_servers` says how many; CPU-only servers drop the threshold.
    `policy_cost` is the cost model the operator policy is given (default: `cost`); give it
    the engine's when the simulator must decide exactly as a real run would. `idle`: the CPU
    lanes' slowdown after idling (`IdleModel.from_profile`). `noise`: trace-driven service
    times (`ServiceNoise`; the exact fast path then does not apply). `host`: the host's own
    CPU per query beside the lanes (`recsched.sim.host`; nor does it then).
    """
    assert servers >= 1
    inter = resolve(interference)
    offload = config.offload_threshold is not None
    if offload and accel_cost is None:
        raise ValueError("the offload threshold needs an accelerator profile (--accel-profile)")
    if accel_servers is not None and not offload:
        raise ValueError("accelerator servers need an offload threshold (--offload-threshold)")
    n_accel = (servers if accel_servers is None else accel_servers) if offload else 0
    if not 0 <= n_accel <= servers:
        raise ValueError(f"accel_servers must be within 0..{servers}, got {n_accel}")
    common = {
        "graph_info": graph_info,
        "interference": inter,
        "task_overhead_s": task_overhead_s,
        "policy_cost": policy_cost,
        "idle": idle,
        "noise": noise,
        "host": host,
    }
    out: list[ServerType] = []
    if n_accel:
        gpu = ServerType("cpu+accel", config, cost, accel_cost, **common)
        out += [gpu] * n_accel
    if servers - n_accel:
        cpu = ServerType("cpu", config.replace(offload_threshold=None), cost, None, **common)
        out += [cpu] * (servers - n_accel)
    return out


def make_workload(
    qps: float,
    duration_s: float,
    *,
    arrivals: str | None = "poisson",
    sizes: str = "production",
    classes: str | Sequence[PriorityClass] | None = None,
    seed: int = 0,
) -> Workload:
    """The workload the real driver would issue (`recsched.bench.run.LoadSpec.workload`)."""
    cls = parse_classes(classes) if classes is None or isinstance(classes, str) else classes
    return generate(parse_arrivals(arrivals, qps), parse_sizes(sizes), tuple(cls), duration_s, seed)


def drain_timeout_for(sla_ms: float | None) -> float:
    """The real driver's drain timeout (recsched.bench.run._drain_for): then queries fail."""
    return 10.0 if sla_ms is None else min(10.0, max(1.0, 20 * sla_ms / 1e3))


# -- simulate ----------------------------------------------------------------------------------
def simulate(
    model: str,
    config: EngineConfig | str = "baseline",
    profile: Any = None,
    *,
    qps: float,
    duration_s: float,
    servers: int = 1,
    types: Sequence[ServerType] | None = None,
    balancer: str = "random",
    arrivals: str | None = "poisson",
    sizes: str = "production",
    classes: str | Sequence[PriorityClass] | None = None,
    sla_ms: float | None = None,
    percentile: float = 95.0,
    seed: int = 0,
    accel_profile: Any = None,
    accel_servers: int | None = None,
    graph_info: Any = None,
    interference: InterferenceModel | str | Path | None = None,
    task_overhead_s: float = DEFAULT_TASK_OVERHEAD_S,
    drain_timeout_s: float | None = None,
    workload: Workload | None = None,
    trace: str | Path | None = None,
    progress: Progress | None = None,
    preset_name: str | None = None,
    fast: bool | None = None,
    front: FrontModel | None = None,
    host: HostModel | None = None,
) -> dict[str, Any]:
    """Simulate `servers` servers under an open-loop load of `qps` (whole cluster).

    `profile`: a `recsched profile` JSON path or dict, or a cost model object. `types`
    overrides the server list built from `config`/`profile`/`servers`. Returns a `bench`
    result (DESIGN.md) plus "servers" (per server: type, queries, latency, lanes),
    "sim_wall_s" and "sim_queries_per_s" (the whole call), "sim_loop_s" and
    "sim_loop_queries_per_s" (the event loop alone), "sim_events", "balancer" and
    "sim_fast_path" (whether the exact whole+sequential recurrence ran instead of the event
    loop: `recsched.sim.fastpath`; `fast=False` forbids it, `fast=True` requires it).
    `front`: a front tier before the balancer (`recsched.sim.front`): the servers see each
    query when it leaves the front's stages, and its latency gains the stages and the delay.
    `host`: each server's own CPU per query beside its lanes (`recsched.sim.host`).
    """
    t_start = time.perf_counter()
    cfg, name = resolve_config(config)
    cfg = resolve_auto(cfg, profile, sizes, seed)
    name = preset_name or name
    if types is None:
        if profile is None:
            raise ValueError("simulate needs a profile (recsched profile MODEL --json F)")
        g = cfg.granularity
        cost = make_cost(profile, g, graph_info)
        if graph_info is None:
            graph_info = getattr(cost, "graph", None)
        accel = make_cost(accel_profile, g, graph_info) if accel_profile is not None else None
        types = server_types(
            cfg, cost, servers, accel_cost=accel, accel_servers=accel_servers,
            graph_info=graph_info, interference=interference, task_overhead_s=task_overhead_s,
            idle=idle_model(profile), host=host,
        )  # fmt: skip
    wl = workload if workload is not None else make_workload(
        qps, duration_s, arrivals=arrivals, sizes=sizes, classes=classes, seed=seed
    )  # fmt: skip
    drain = drain_timeout_s if drain_timeout_s is not None else drain_timeout_for(sla_ms)
    extra = None
    if front is not None:  # the servers see each query as it leaves the front's stages
        t_front, extra = front.extra_s(wl.t_s, wl.n_items, seed)
        wl = dataclasses.replace(wl, t_s=t_front)
    until = max(wl.duration_s, float(wl.t_s[-1]) if len(wl) else 0.0) + drain
    cluster = Cluster(types, balancer, seed, trace=trace is not None, fast=fast)
    run = cluster.run(wl, model, sla_ms, progress, until=until)
    if trace is not None:
        cluster.write_trace(str(trace))
    result = sim_result(
        run, cluster, wl, model=model, preset=name, config=cfg, offered_qps=qps,
        sla_ms=sla_ms, percentile=percentile, extra_s=extra,
    )  # fmt: skip
    if front is not None:
        result["front"] = front.to_dict()
    host = next((t.host for t in types if t.host is not None), None)
    if host is not None:  # what the servers were given (the first type's)
        result["host"] = host.to_dict()
    wall = time.perf_counter() - t_start
    result["sim_wall_s"] = wall  # the whole call: workload, event loop, summaries
    result["sim_queries_per_s"] = len(wl) / max(wall, 1e-9)
    result["sim_loop_s"] = run.wall_s  # the event loop alone
    result["sim_loop_queries_per_s"] = len(wl) / max(run.wall_s, 1e-9)
    result["sim_events"] = run.events
    result["balancer"] = cluster.balancer
    result["sim_fast_path"] = cluster.used_fast_path
    if trace is not None:
        result["trace"] = {"path": str(trace), "dropped": cluster.trace_dropped()}
    return result


class _ColumnLog(LatencyLog):
    """A `LatencyLog` over columns already held as arrays (no per-query append).

    Overrides the column accessor only, so `summary` keeps LatencyLog's exact semantics.
    """

    def __init__(
        self, names: Sequence[str], cls: np.ndarray, lat: np.ndarray, n: np.ndarray, ok: np.ndarray
    ) -> None:
        super().__init__()
        assert len(cls) == len(lat) == len(n) == len(ok)
        self._names, self._c, self._lat, self._items, self._okc = names, cls, lat, n, ok

    def __len__(self) -> int:
        return len(self._okc)

    def items(self) -> int:
        return int(self._items[self._okc].sum())

    def _columns(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        for code, name in enumerate(self._names):
            m = self._c == code
            if m.any():
                out[name] = (self._lat[m], self._okc[m])
        return out


def outcome_columns(run: ClusterRun, wl: Workload) -> tuple[np.ndarray, np.ndarray]:
    """(latency s, ok) per query, as the real driver logs them: rejected -> latency 0,
    unfinished -> failed at the end of the run."""
    done = run.done_s.copy()
    status = run.status.copy()
    unfinished = np.isnan(done) & (status == OK)
    status[unfinished] = FAILED
    done[status == REJECTED] = wl.t_s[status == REJECTED]
    done[np.isnan(done)] = run.end_s
    return done - wl.t_s, status == OK


def sim_result(
    run: ClusterRun,
    cluster: Cluster,
    wl: Workload,
    *,
    model: str,
    preset: str,
    config: EngineConfig,
    offered_qps: float,
    sla_ms: float | None,
    percentile: float = 95.0,
    extra_s: np.ndarray | None = None,
) -> dict[str, Any]:
    """The `bench` result of a simulated run (same keys as recsched.bench.run.bench_result).

    `extra_s` [N]: latency each query paid outside the servers (a front tier), added to the
    latency of every query the servers did not reject."""
    lat, ok = outcome_columns(run, wl)
    if extra_s is not None:
        lat = lat + np.where(run.status == REJECTED, 0.0, extra_s)
    names = [c.name for c in wl.classes]
    log = _ColumnLog(names, wl.cls, lat, wl.n_items, ok)
    s = log.summary(wl.classes, sla_ms, percentile)
    span = max(run.end_s, wl.duration_s)
    rejected = int((run.status == REJECTED).sum())
    servers = cluster.servers
    cores = float(sum(sv.stype.cores() for sv in servers))
    gpus = float(sum(sv.stype.accelerators() for sv in servers))
    util = [u for sv in servers for u in sv.lane_utilization(span)]
    out = {
        "model": model,
        "preset": preset,
        "config": config.to_dict(),
        "simulated": True,
        "offered_qps": offered_qps,
        "completed_qps": int(ok.sum()) / max(span, 1e-9),
        "completed_items_per_s": log.items() / max(span, 1e-9),
        "duration_s": wl.duration_s,
        "queries": len(wl),
        "rejected": rejected,
        "failed": s["errors"] - rejected,
        "late_issues": 0,
        "latency_ms": s["latency_ms"],
        "sla_ms": sla_ms,
        "sla_percentile": percentile,
        "sla_met": bool(s["sla_met"]) if s["sla_met"] is not None else None,
        "classes": s["classes"],
        "lane_utilization": util,
        "lane_busy_s": float(sum(ln.stats.busy_s for sv in servers for ln in sv.lanes)),
        "cost_core_s_per_1k": cost_core_s_per_1k(cores, span, s["within_sla"]),
        "servers": server_rows(run, cluster, lat, ok, span),
    }
    if gpus:
        out["cost_gpu_s_per_1k"] = cost_core_s_per_1k(gpus, span, s["within_sla"])
    return out


def server_rows(
    run: ClusterRun, cluster: Cluster, lat: np.ndarray, ok: np.ndarray, span: float
) -> list[dict[str, Any]]:
    """Per server: type, queries, rejected, p50/p95/p99/max of its served queries, lanes."""
    order = np.argsort(run.server, kind="stable")
    bounds = np.searchsorted(run.server[order], np.arange(len(cluster.servers) + 1))
    rows = []
    for sv in cluster.servers:
        idx = order[bounds[sv.index] : bounds[sv.index + 1]]
        s = summarize_ms(lat[idx][ok[idx]])
        del s["count"]
        rows.append(
            {
                "server": sv.index,
                "type": sv.stype.name,
                "queries": len(idx),
                "rejected": sv.rejected,
                "completed": sv.completed,
                "latency_ms": s,
                "lane_utilization": sv.lane_utilization(span),
            }
        )
    return rows


# -- capacity search and tuning ------------------------------------------------------------------
def sim_run_fn(
    model: Any,
    config: EngineConfig | str = "baseline",
    profile: Any = None,
    duration_s: float = 10.0,
    **options: Any,
) -> Callable[[float], dict]:
    """`qps -> simulated bench result`, for `find_capacity` and the tuner (`--sim`).

    Two call forms. `sim_run_fn("rmc1", config, profile, duration_s, servers=..,
    sla_ms=.., ...)` with `simulate`'s keyword options; or the bench's
    `sim_run_fn(setup, config, preset_name, duration_s)` with a `recsched.bench.setup.Setup`,
    from which the model, workload options, SLA and a profile (measured with the lanes'
    thread count, cached per machine) are taken. Costs are loaded once, not per run.
    """
    if not isinstance(model, str):
        return _setup_run_fn(model, config, profile, duration_s, **options)
    cfg, name = resolve_config(config)
    cfg = resolve_auto(cfg, profile, options.get("sizes", "production"), options.get("seed", 0))
    name = options.pop("preset_name", None) or name
    if "types" not in options:
        options["types"] = _types_for(cfg, profile, options)
    for key in _TYPE_OPTIONS:
        options.pop(key, None)

    def run(qps: float) -> dict:
        return simulate(
            model, cfg, None, qps=qps, duration_s=duration_s, preset_name=name, **options
        )

    return run


_TYPE_OPTIONS = (
    "servers", "accel_profile", "accel_servers", "graph_info", "interference", "task_overhead_s",
    "policy_cost", "host",
)  # fmt: skip


def _types_for(cfg: EngineConfig, profile: Any, options: dict[str, Any]) -> list[ServerType]:
    g = cfg.granularity
    graph_info = options.get("graph_info")
    cost = make_cost(profile, g, graph_info)
    graph_info = graph_info if graph_info is not None else getattr(cost, "graph", None)
    accel = options.get("accel_profile")
    return server_types(
        cfg, cost, options.get("servers", 1),
        accel_cost=make_cost(accel, g, graph_info) if accel is not None else None,
        accel_servers=options.get("accel_servers"), graph_info=graph_info,
        interference=options.get("interference"),
        task_overhead_s=options.get("task_overhead_s", DEFAULT_TASK_OVERHEAD_S),
        policy_cost=options.get("policy_cost"),
        idle=idle_model(profile), host=options.get("host"),
    )  # fmt: skip


def _setup_run_fn(
    setup: Any, cfg: EngineConfig, name: Any, duration_s: float, **options: Any
) -> Callable[[float], dict]:
    """The bench's form: a `Setup` gives the model, workload options, SLA and profile."""
    ad = setup.adapter
    profile = options.pop("profile", None)
    types = options.pop("types", None)
    if types is None:
        if profile is None:
            profile = lane_profile(ad, cfg.threads_per_lane)
        if "host" not in options:  # this machine's host CPU per query, measured once
            options["host"] = lane_host(setup, cfg)
        if cfg.operator != "sequential":
            extras = setup.engine_extras(cfg)  # what the real engine's policy is given
            options.setdefault("graph_info", extras["graph"].info)
            options.setdefault("policy_cost", extras["cost"])
        types = _types_for(cfg, profile, options)
    for key in _TYPE_OPTIONS:
        options.pop(key, None)
    common = {
        "preset_name": str(name or "custom"),
        "sla_ms": setup.sla_ms,
        "percentile": setup.percentile,
        "arrivals": setup.arrivals,
        "sizes": setup.sizes,
        "classes": setup.classes,
        "seed": setup.seed,
        **options,
    }

    def run(qps: float) -> dict:
        d = setup.run_duration(qps, duration_s)  # as Setup.run_fn's real runs
        return simulate(ad.name, cfg, None, qps=qps, duration_s=d, types=types, **common)

    return run


def lane_profile(adapter: Any, threads: int = 1, serving: bool = True) -> dict[str, Any]:
    """This machine's profile of `adapter` measured with a lane's intra-op thread count
    (cached per machine): the costs a simulated lane of that width should see.

    With `serving`, the profile is rescaled to serving conditions (`serving_correction`).
    """
    from recsched.bench import calibrate

    key = calibrate.profile_key(adapter, threads)

    def measure() -> dict[str, Any]:
        prof = calibrate.profile(adapter, threads=threads)  # the same cache entry
        if not serving:
            return prof
        out = serving_correction(adapter, prof, threads)
        add_engine_idle_cost(out, adapter, EngineConfig(lanes=1, threads_per_lane=threads))
        return out

    return calibrate.cached(f"{key}-serving-v5", measure) if serving else measure()


HOST_PROBE_S = 2.0  # the real run that calibrates `lane_host`


def lane_host(setup: Any, cfg: EngineConfig) -> HostModel | None:
    """The host's CPU per query for `setup`'s model served on `cfg`'s lanes on this machine
    (`recsched.sim.host`), cached per machine: from one real run of the baseline at
    `fidelity.PROBE_LOAD` of the capacity the lane profile predicts, as fidelity's probe
    (`HostModel.from_run`; None if the run recorded no CPU accounting). The lanes' costs
    alone would put `--sim` above the real engine where the driver and the engine share the
    lanes' cores."""
    import dataclasses as dc

    from recsched.bench import calibrate
    from recsched.sim.fidelity import PROBE_LOAD, estimated_capacity_qps

    ad = setup.adapter
    lanes, tpl = cfg.lanes, cfg.threads_per_lane
    key = f"host-{calibrate.model_key(ad)}-l{lanes}t{tpl}-v1"

    def measure() -> dict[str, Any]:
        base = EngineConfig(lanes=lanes, threads_per_lane=tpl)  # whole + sequential
        cost = make_cost(lane_profile(ad, tpl), base.granularity, None)
        qps = PROBE_LOAD * estimated_capacity_qps(cost, base, setup.sizes, setup.seed)
        real = dc.replace(setup, sim=False).run_fn(base, "baseline", HOST_PROBE_S)
        hm = HostModel.from_run(real(round(qps, 1)), DEFAULT_TASK_OVERHEAD_S)
        return hm.to_dict() if hm is not None else {}

    d = calibrate.cached(key, measure)
    return HostModel.from_dict(d) if d else None


class PeakCost:
    """Whole-model seconds of a batch from a measured peak (`recsched peak`): with `lanes`
    lanes of `threads` threads all busy at `rate(b)` items/s, a lane runs `b` rows in
    `lanes * b / rate(b)` seconds; piecewise linear in `b`, through 0 at 0 rows.

    Costs measured under full load (the lanes share caches and memory bandwidth), without
    operator timings: enough for whole-model (`sequential`) simulation."""

    def __init__(self, peak: Mapping[str, Any], lanes: int, threads: int = 1) -> None:
        rates = (peak.get("per_config") or {}).get(f"{lanes}x{threads}")
        if not rates:
            raise ValueError(f"the peak was not measured with {lanes} lanes x {threads} threads")
        sizes = sorted(int(b) for b in rates)
        assert all(float(rates[str(b)]) > 0 for b in sizes), "positive rates"
        self.sizes = [0.0] + [float(b) for b in sizes]
        self.secs = [0.0] + [lanes * b / float(rates[str(b)]) for b in sizes]

    def whole_s(self, batch: int) -> float:
        return interpolate(self.sizes, self.secs, float(batch))


def profile_peak(profile: Mapping[str, Any], lanes: int) -> dict[str, Any]:
    """The peak of a simulated server (DESIGN.md: items/s at the best batch size with every
    core busy): `lanes` x the best `b / whole_s(b)` over the profile's batch sizes, the limit
    of lanes that cost what the profile says and nothing else."""
    assert lanes >= 1, "at least one lane"
    sizes, whole = profile["batch_sizes"], profile["whole_ms"]
    rates = [(b / (ms * 1e-3), b) for b, ms in zip(sizes, whole, strict=True)]
    rate, best = max(r for r in rates if r[0] > 0)
    return {"peak_items_per_s": lanes * rate, "best_batch": int(best), "simulated": True}


IDLE_FROM_S, IDLE_GAP_S = 2e-4, 0.02  # see recsched.sim.lanes.IdleModel


def scaled_profile(profile: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """A copy of `profile` with every time (whole model and each op) multiplied by `factor`
    and no serving correction (so no idle model)."""
    out = json.loads(json.dumps(profile))  # a deep copy
    out["whole_ms"] = [v * factor for v in out["whole_ms"]]
    for g in out.get("granularities", {}).values():
        g["ops"] = {k: [v * factor for v in ms] for k, ms in g["ops"].items()}
    out.pop("serving_correction", None)
    return out


def serving_correction(
    adapter: Any, profile: Mapping[str, Any], threads: int = 1, pool_rows: int = 4096,
    repeats: int = 15, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """A profile rescaled to serving conditions: inputs not in cache, lanes that idle.

    A profile times the same input again and again, back to back, so an embedding-heavy
    model finds its rows in cache and the core stays warm. Served queries read other rows
    (the bench's input pool: windows of `pool_rows` rows at random offsets), and at low load
    a lane waits between tasks. Per batch size, the whole forward is timed on the same input
    and on fresh windows, interleaved so that load from other processes hits both alike: the
    ratio of the medians (at least 1; one factor, the median over sizes) scales `whole_ms`
    and every op's time. Then fresh windows are timed after `IDLE_GAP_S` of sleep: their
    ratio to back-to-back fresh windows is the `IdleModel`'s. Both go under
    "serving_correction", with the per-size measurements.
    """
    import statistics

    import torch

    from recsched.models.base import slice_rows

    pool = adapter.make_inputs(pool_rows, seed)
    rng = np.random.default_rng(seed)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    ratios, idle = [], []

    def fresh(rows: int) -> Any:
        a = int(rng.integers(0, pool_rows - rows + 1))
        return slice_rows(pool, a, a + rows)

    forward = adapter.runner()  # the forward the lanes serve (TorchScript unless it failed)

    def timed(x: Any, sleep_s: float = 0.0) -> float:
        if sleep_s:
            time.sleep(sleep_s)
        t0 = time.perf_counter()
        forward(x)
        return time.perf_counter() - t0

    try:
        with torch.inference_mode():
            for b in profile["batch_sizes"]:
                rows = min(int(b), pool_rows)
                same = slice_rows(pool, 0, rows)
                timed(same)
                pairs = [(timed(same), timed(fresh(rows))) for _ in range(repeats)]
                hot = statistics.median(p[0] for p in pairs)
                cold = statistics.median(p[1] for p in pairs)
                after = statistics.median(timed(fresh(rows), IDLE_GAP_S) for _ in range(repeats))
                ratios.append(max(1.0, cold / hot))
                idle.append(max(1.0, after / cold))
    finally:
        torch.set_num_threads(saved)
    # One factor each (the median over batch sizes): per-size ratios are mostly noise on a
    # shared machine, and the effects vary little with the batch size.
    cold_f, idle_f = float(np.median(ratios)), float(np.median(idle))
    out = scaled_profile(profile, cold_f)
    out["serving_correction"] = {
        "pool_rows": pool_rows,
        "cold_factor": cold_f,
        "cold_ratios_measured": ratios,
        "idle_ratios": [idle_f] * len(idle),
        "idle_ratios_measured": idle,
        "idle_from_s": IDLE_FROM_S,
        "idle_gap_s": IDLE_GAP_S,
    }
    return out


def add_engine_idle_cost(
    profile: dict[str, Any],
    adapter: Any,
    config: EngineConfig,
    task_overhead_s: float = DEFAULT_TASK_OVERHEAD_S,
) -> float:
    """Record in a serving-corrected profile what the engine adds around a task after idling,
    beyond `task_overhead_s` (`recsched.sim.fidelity.engine_overhead_s`); returns it."""
    from recsched.sim.fidelity import engine_overhead_s

    extra = max(0.0, engine_overhead_s(adapter, config) - task_overhead_s)
    profile["serving_correction"]["idle_extra_s"] = extra
    return extra


def fidelity(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Simulated vs real p50/p95/p99 at several loads: see `recsched.sim.fidelity.fidelity`."""
    from recsched.sim.fidelity import fidelity as run_fidelity

    return run_fidelity(*args, **kwargs)


__all__ = [
    "simulate",
    "fidelity",
    "sim_run_fn",
    "server_types",
    "make_cost",
    "make_workload",
    "load_profile_dict",
    "profile_graph_info",
    "model_graph_info",
    "lane_profile",
]
