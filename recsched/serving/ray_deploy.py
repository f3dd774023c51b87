"""recsched on Ray Serve: one Engine per replica behind the same KServe v2 front.

    client --HTTP--> Serve proxy (127.0.0.1) --> Front (RecschedServer's starlette app)
                                                   | admission by value, metrics
                                                   v  DeploymentHandle + request router
                                       RecschedEngine replicas (one Engine each)

- `EngineReplica` (deployment `RecschedEngine`): loads the model, sizes its lanes to the CPUs
  Ray gave it, serves `infer(meta, inputs)`, runs a lane watchdog, and reports its state
  (`record_routing_stats`: predicted outstanding work, lanes, latency histogram, config),
  which Serve's controller pushes to every router.
- `Front` (deployment `RecschedFront`, the ingress): the unchanged `RecschedServer` app with
  `ServerConfig.engine_factory` making a `RayEngine`: an engine-like object whose `submit`
  sends the query to the replicas through a handle, so admission, codecs, Triton metrics and
  errors are the in-process server's. Its lanes are the replicas' lanes, from their reports.
- Routing: `RecschedRequestRouter` (predicted work, priority class) or Ray's default
  (`router="default"`: power of two choices on queue length), see `recsched.serving.router`.
- Cluster-level tuning: the engine configuration travels as the deployment's `user_config`,
  so `RayCluster.apply_config` reaches every replica (and any the autoscaler adds later)
  through `reconfigure`; `RayCluster.reports` / `measure` give the cluster's tail latency
  from the replicas' merged histograms (`recsched.serving.stats`).

Ray starts on loopback only (`_node_ip_address=127.0.0.1`, proxy on 127.0.0.1) unless
`--address` names an existing cluster. Tests and benchmarks also run it inside a network
namespace (`.ci/ray_netns.sh`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import signal
import threading
import time
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch
from ray import serve
from ray.serve.config import RequestRouterConfig

from recsched.clock import WallClock
from recsched.config import EngineConfig
from recsched.engine import Engine, EngineClosed, EngineError, QueryFailed, QueueFull
from recsched.models.base import ModelAdapter
from recsched.sched.tuner import Measurement
from recsched.serving.ray_router import RecschedRequestRouter, StatsPow2Router, check_ray_api
from recsched.serving.router import WorkCost, router_for
from recsched.serving.stats import (
    ClusterReport,
    LatencyHistogram,
    ReplicaReport,
    aggregate,
    cluster_measurement,
    diff,
)
from recsched.types import LaneStats, Query, QueryResult

log = logging.getLogger("recsched.serving")
ENGINE_DEPLOYMENT = "RecschedEngine"
FRONT_DEPLOYMENT = "RecschedFront"
ROUTERS = ("recsched", "default")


# -- what to deploy ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RaySpec:
    """Everything a deployment needs, JSON-friendly (it travels to the replicas).

    config: the EngineConfig dict (its `lanes` is replaced by the replica's CPUs unless
    `fixed_lanes`). replicas / autoscale (min, max): how many engine replicas. replica_cpus /
    replica_gpus: Ray resources per replica. max_ongoing: requests a replica takes at once
    (None: 4 per lane). router: recsched | default. cost: the work table the router and the
    replicas predict with (`cost_table`). hold_below_value / low_value_backlog_s: the
    router's low-value headroom (see `RouterPolicy`).
    """

    model: str
    config: dict[str, Any]
    scale: str = "small"
    seed: int = 0
    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    fixed_lanes: bool = False
    max_ongoing: int | None = None
    router: str = "recsched"
    cost: dict[str, Any] = field(default_factory=dict)
    hold_below_value: float | None = None
    low_value_backlog_s: float = math.inf
    classes: str | None = None
    queue_capacity: int = 256
    token: str | None = None
    app_name: str = "recsched"
    stats_period_s: float = 0.5

    def __post_init__(self) -> None:
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; one of {', '.join(ROUTERS)}")
        if self.replicas < 1:
            raise ValueError("at least one replica")
        if self.autoscale is not None:
            lo, hi = self.autoscale
            if not 0 <= lo <= hi or hi < 1:
                raise ValueError(f"autoscale MIN:MAX needs 0 <= MIN <= MAX, MAX >= 1: {lo}:{hi}")
        if self.replica_cpus <= 0:
            raise ValueError("replica_cpus must be > 0")
        EngineConfig(**self.config)  # validates

    def engine_config(self) -> EngineConfig:
        return EngineConfig(**self.config)

    def lanes(self) -> int:
        """Lanes of one replica: its CPUs (whole, at least 1) over threads per lane."""
        cfg = self.engine_config()
        if self.fixed_lanes:
            return cfg.lanes
        return max(1, int(self.replica_cpus // cfg.threads_per_lane))

    def slots(self) -> int:
        """Requests one replica takes at once (Serve's `max_ongoing_requests`)."""
        return self.max_ongoing or 4 * self.lanes()

    def max_replicas(self) -> int:
        return self.autoscale[1] if self.autoscale else self.replicas

    def replace(self, **kw: Any) -> RaySpec:
        return dataclasses.replace(self, **kw)


def parse_autoscale(text: str | None) -> tuple[int, int] | None:
    """`MIN:MAX` -> (min, max); None stays None."""
    if text is None:
        return None
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--autoscale takes MIN:MAX (two integers), got {text!r}") from None
    return lo, hi


def cost_table(adapter: ModelAdapter, sizes: tuple[int, ...] = (1, 8, 32, 128, 512, 1024)) -> dict:
    """Whole-model seconds at a few batch sizes on this machine (one thread), cached.

    The router's and the replicas' work predictions (`WorkCost`) interpolate in it. Cached
    per machine as `ray-cost-MODEL-SCALE` in the calibration cache.
    """
    from recsched.bench import calibrate

    def measure() -> dict:
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            out = []
            for b in sizes:
                x = adapter.make_inputs(b, 0)
                adapter.forward(x)
                reps = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    adapter.forward(x)
                    reps.append(time.perf_counter() - t0)
                out.append(float(np.median(reps)))
        finally:
            torch.set_num_threads(n)
        return {"batch_sizes": list(sizes), "whole_s": out, "per_query_s": 60e-6}

    return calibrate.cached(f"ray-cost-{calibrate.model_key(adapter)}", measure)


# -- the engine replica -----------------------------------------------------------------------
class EngineReplica:
    """One Ray Serve replica: one Engine with lanes sized to the replica's CPUs."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from recsched.models.registry import load_model
        from recsched.server.health import LaneWatchdog

        self.spec = RaySpec(**spec)
        self.adapter = load_model(self.spec.model, scale=self.spec.scale, seed=self.spec.seed)
        self.lanes = self.spec.lanes()
        self.rid = _replica_id()
        self._lock = threading.Lock()
        self.hist = LatencyHistogram()
        self.completed = self.failed = 0
        self._work: dict[int, float] = {}  # qid -> predicted work, in flight
        self._qids = itertools.count()
        self.started = time.perf_counter()
        self.engine: Engine | None = None
        self.cost: WorkCost | None = None
        self._use(self.spec.engine_config())
        self.watchdog = LaneWatchdog(lambda: {self.spec.model: self.engine} if self.engine else {})
        self.watchdog.start()

    def _sized(self, cfg: EngineConfig) -> EngineConfig:
        if self.spec.fixed_lanes:
            return cfg
        accel = cfg.accel_lanes
        if self.spec.replica_gpus > 0 and cfg.offload_threshold is not None:
            accel = max(1, accel)  # the GPU this replica was given (untested here)
        return cfg.replace(lanes=self.lanes, accel_lanes=accel)

    def _use(self, cfg: EngineConfig) -> Engine | None:
        cfg = self._sized(cfg)
        new = Engine(self.adapter, cfg, validate=False, on_complete=self._done).start()
        old, self.engine = self.engine, new
        self.cost = WorkCost.from_table(self.spec.cost, cfg.to_dict()) if self.spec.cost else None
        return old

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this on every replica when the deployment's user_config changes (the
        tuner's configuration, cluster-wide): swap engines, drain the old one aside."""
        cfg = self._sized(EngineConfig(**user_config["engine"]))
        if self.engine is not None and cfg == self.engine.config:
            return
        old = self._use(cfg)
        if old is not None:
            threading.Thread(target=old.close, kwargs={"timeout": 30.0}, daemon=True).start()

    def _done(self, r: QueryResult) -> None:
        with self._lock:
            self._work.pop(r.qid, None)
            if r.error is None:
                self.completed += 1
                self.hist.add(r.latency_s)
            else:
                self.failed += 1

    async def infer(self, meta: dict[str, Any], inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Score one query; `meta`: n_items, cls, value, budget_s (time left to its deadline)."""
        eng = self.engine
        if eng is None:
            raise EngineClosed("the replica's engine is not running")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only object-store arrays
            tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
        now = eng.clock.now()
        n = int(meta["n_items"])
        qid = next(self._qids)
        budget = float(meta.get("budget_s", math.inf))
        q = Query(qid, self.spec.model, n, str(meta.get("cls", "default")),
                  float(meta.get("value", 1.0)), now, now + budget)  # fmt: skip
        with self._lock:
            self._work[qid] = self.cost(n) if self.cost is not None else 0.0
        fut = eng.submit(q, tensors)
        if fut.done() and fut.exception() is not None:
            with self._lock:
                self._work.pop(qid, None)
        scores = await asyncio.wrap_future(fut)
        return scores.numpy()

    def report(self) -> ReplicaReport:
        eng = self.engine
        stats = [lane.stats for lane in eng.lanes] if eng is not None else []
        alive = [lane.alive() for lane in eng.lanes] if eng is not None else []
        with self._lock:
            work = sum(self._work.values())
            hist = LatencyHistogram(dict(self.hist.counts))
            done, failed = self.completed, self.failed
        return ReplicaReport(
            self.rid, len(stats), eng.pending() if eng is not None else 0, work, done, failed,
            tuple(s.busy_s for s in stats), tuple(s.tasks for s in stats), tuple(alive),
            time.perf_counter() - self.started, hist,
            eng.config.to_dict() if eng is not None else {},
        )  # fmt: skip

    def record_routing_stats(self) -> dict[str, Any]:
        """Serve's controller polls this every `stats_period_s` and hands it to routers."""
        return self.report().to_json()

    def check_health(self) -> None:
        eng = self.engine
        if eng is not None and not any(lane.alive() for lane in eng.lanes):
            raise RuntimeError("every lane of the engine is dead")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.watchdog.stop()
            if self.engine is not None:
                self.engine.close(drain=False, timeout=2.0)


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside Serve (unit use)
        return f"local-{id(object())}"


# -- the front's engine-like backend ----------------------------------------------------------
@dataclass
class RemoteLane:
    """A replica's lane as the front's metrics and watchdog see it (from its last report)."""

    index: int
    replica: str
    stats: LaneStats
    _alive: bool = True
    kind: str = "cpu"

    def alive(self) -> bool:
        return self._alive


def _as_engine_error(e: BaseException) -> BaseException:
    """Ray wraps a replica's exception; give the server the engine error it knows."""
    for x in (e, getattr(e, "cause", None), e.__cause__):
        if isinstance(x, EngineError):
            return x
    if type(e).__name__ == "BackPressureError":
        return QueueFull(f"the replicas' queues are full: {e}")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return QueryFailed(f"replica failed: {first[:300]}")


class RayEngine:
    """What `ModelHost` takes for an Engine, forwarding each query to the engine replicas.

    `submit` runs on the front's event loop (the server calls it from there) and returns a
    concurrent Future like `Engine.submit`. `lanes`, `lane_utilization` and `config` come from
    the replicas' reports, so the front's Prometheus gauges show the whole cluster.
    """

    def __init__(self, handle: Any, adapter: ModelAdapter, config: EngineConfig) -> None:
        self.adapter = adapter
        self.initial_config = config
        self.clock = WallClock()
        self._handle = handle.options(method_name="infer")
        self._inflight = 0
        self._idle = threading.Event()
        self._idle.set()
        self._open = False
        self._tasks: set[asyncio.Task] = set()

    # -- the Engine surface the server uses -------------------------------------------------
    def start(self) -> RayEngine:
        self._open = True
        return self

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        self._open = False
        if drain:
            self._idle.wait(timeout)

    def submit(self, query: Query, inputs: dict[str, torch.Tensor]) -> Future:
        fut: Future = Future()
        if not self._open:
            fut.set_exception(EngineClosed("the engine is not accepting queries"))
            return fut
        loop = asyncio.get_running_loop()  # the server submits from its event loop
        budget = query.deadline_s - self.clock.now()
        meta = {"n_items": query.n_items, "cls": query.cls, "value": query.value,
                "budget_s": budget if math.isfinite(budget) else math.inf}  # fmt: skip
        arrays = {k: v.numpy() for k, v in inputs.items()}
        self._inflight += 1
        self._idle.clear()
        task = loop.create_task(self._wait(self._handle.remote(meta, arrays), fut))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fut

    async def _wait(self, response: Any, fut: Future) -> None:
        try:
            scores = await response
            fut.set_result(torch.from_numpy(np.asarray(scores)))
        except BaseException as e:  # noqa: BLE001 - every outcome resolves the future
            fut.set_exception(_as_engine_error(e))
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def pending(self) -> int:
        return self._inflight

    def replace_lane(self, index: int, reason: str) -> int:
        return 0  # each replica runs its own lane watchdog

    # -- from the replicas' reports ------------------------------------------------------------
    def reports(self) -> list[ReplicaReport]:
        router = router_for(ENGINE_DEPLOYMENT)
        if router is None:
            return []
        out = []
        for st in router.replica_stats().values():
            if "replica" in st:
                out.append(ReplicaReport.from_json(st))
        return sorted(out, key=lambda r: r.replica)

    @property
    def lanes(self) -> list[RemoteLane]:
        out: list[RemoteLane] = []
        for r in self.reports():
            for i in range(r.lanes):
                st = LaneStats(len(out), "cpu", r.busy_s[i], r.tasks[i])
                out.append(RemoteLane(len(out), r.replica, st, r.alive[i]))
        return out

    def lane_utilization(self, since: float | None = None) -> list[float]:
        util = []
        for r in self.reports():
            util += [min(1.0, b / max(r.uptime_s, 1e-9)) for b in r.busy_s]
        return util

    @property
    def config(self) -> EngineConfig:
        rs = self.reports()
        if rs and rs[0].config and all(r.config == rs[0].config for r in rs):
            return EngineConfig(**rs[0].config)
        return self.initial_config


# -- the front (ingress) ----------------------------------------------------------------------
class Front:
    """The KServe v2 front: `RecschedServer` with a `RayEngine` per model."""

    def __init__(self, engine_handle: Any, spec: dict[str, Any]) -> None:
        from recsched.models.registry import load_model
        from recsched.server.app import RecschedServer, ServerConfig
        from recsched.workload.classes import parse_classes

        s = RaySpec(**spec)
        adapter = load_model(s.model, scale=s.scale, seed=s.seed)  # specs, metadata
        window = s.max_replicas() * s.slots()

        def factory(ad: ModelAdapter, cfg: EngineConfig) -> RayEngine:
            return RayEngine(engine_handle, ad, cfg)

        sc = ServerConfig(queue_capacity=s.queue_capacity, window=window, engine_factory=factory)
        self.server = RecschedServer(
            {s.model: adapter}, s.engine_config(), sc, parse_classes(s.classes), s.token
        )
        self.missing = check_ray_api() if s.router == "recsched" else []
        if self.missing:
            log.warning("Ray lacks router hooks %s: routing by work only", self.missing)

    def __serve_build_asgi_app__(self) -> Any:
        return self.server.app

    async def cluster_report(self) -> list[dict[str, Any]]:
        """The engine replicas' last reports (what the router sees), as dicts."""
        out = []
        for h in self.server.hosts.values():
            if isinstance(h.engine, RayEngine):
                out += [r.to_json() for r in h.engine.reports()]
        return out


def build_app(spec: RaySpec, engine_config: EngineConfig | None = None) -> Any:
    """The Serve application: the engine deployment and the front bound to it.

    `engine_config` (default: the spec's) travels as the engine deployment's user_config, so
    changing it later updates every replica in place (`reconfigure`), front untouched.
    """
    cfg = engine_config or spec.engine_config()
    router_cls = RecschedRequestRouter if spec.router == "recsched" else StatsPow2Router
    kwargs: dict[str, Any] = {"deployment": ENGINE_DEPLOYMENT}
    if spec.router == "recsched":
        kwargs.update(cost=spec.cost, config=cfg.to_dict(), hold_below_value=spec.hold_below_value)
        if math.isfinite(spec.low_value_backlog_s):
            kwargs["low_value_backlog_s"] = spec.low_value_backlog_s
    scaling: dict[str, Any] = {"num_replicas": spec.replicas}
    if spec.autoscale is not None:
        lo, hi = spec.autoscale
        scaling = {"autoscaling_config": {
            "min_replicas": lo, "max_replicas": hi, "initial_replicas": max(lo, 1),
            "target_ongoing_requests": max(1, spec.slots() // 2),
        }}  # fmt: skip
    actor: dict[str, Any] = {"num_cpus": spec.replica_cpus}
    if spec.replica_gpus:
        actor["num_gpus"] = spec.replica_gpus
    engine = serve.deployment(
        EngineReplica,
        name=ENGINE_DEPLOYMENT,
        max_ongoing_requests=spec.slots(),
        ray_actor_options=actor,
        user_config={"engine": cfg.to_dict()},
        health_check_period_s=2.0,
        request_router_config=RequestRouterConfig(
            request_router_class=router_cls,
            request_router_kwargs=kwargs,
            request_routing_stats_period_s=spec.stats_period_s,
            request_routing_stats_timeout_s=max(1.0, 4 * spec.stats_period_s),
        ),
        **scaling,
    )
    front = serve.deployment(
        serve.ingress()(Front),
        name=FRONT_DEPLOYMENT,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=max(1000, 4 * spec.queue_capacity),
    )
    return front.bind(engine.bind(dataclasses.asdict(spec)), dataclasses.asdict(spec))


# -- a cluster to serve on --------------------------------------------------------------------
def start_ray(address: str | None = None, num_cpus: int = 2, object_store_mb: int = 200) -> bool:
    """Connect to `address`, or start a small local Ray on loopback. True if we started it."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=object_store_mb << 20,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    return True


class RayCluster:
    """Deploy a `RaySpec` on Ray Serve and talk to it from the driver.

    with RayCluster(spec, port=8000) as c:      # local Ray on loopback
        c.url                                   # KServe v2 front, http://127.0.0.1:8000
        c.apply_config(cfg)                     # every replica (cluster-level tuning)
        c.measure(before, c.reports(), qps, sla_ms)   # the cluster's tail
    """

    def __init__(
        self,
        spec: RaySpec,
        *,
        address: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        num_cpus: int = 2,
        object_store_mb: int = 200,
    ) -> None:
        self.spec = spec
        self.address, self.host, self.port = address, host, port
        self.num_cpus, self.object_store_mb = num_cpus, object_store_mb
        self.started_ray = False
        self.config = spec.engine_config()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 180.0) -> RayCluster:
        self.started_ray = start_ray(self.address, self.num_cpus, self.object_store_mb)
        serve.start(http_options={"host": self.host, "port": self.port})
        serve.run(build_app(self.spec), name=self.spec.app_name, route_prefix="/")
        self.wait_reports(self.spec.replicas if not self.spec.autoscale else 1, timeout_s)
        return self

    def front(self) -> Any:
        return serve.get_app_handle(self.spec.app_name)

    def reports(self) -> list[ReplicaReport]:
        """The engine replicas' last reports, as the front's router holds them."""
        raw = self.front().cluster_report.remote().result(timeout_s=30)
        return [ReplicaReport.from_json(d) for d in raw]

    def wait_reports(self, replicas: int, timeout_s: float = 60.0, config=None) -> list:
        """Wait until `replicas` replicas report (with `config`, if given)."""
        want = self._sized(config).to_dict() if config is not None else None
        t0 = time.monotonic()
        while True:
            with contextlib.suppress(Exception):
                self._poke()
                rs = self.reports()
                if len(rs) >= replicas and (want is None or all(r.config == want for r in rs)):
                    return rs
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{replicas} replica reports not seen in {timeout_s:.0f} s")
            time.sleep(0.25)

    def _poke(self) -> None:
        """The front's handle (and so its router) exists only after a first request."""
        import urllib.request

        with contextlib.suppress(Exception):
            urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=5).read()

    def _sized(self, cfg: EngineConfig) -> EngineConfig:
        return cfg if self.spec.fixed_lanes else cfg.replace(lanes=self.spec.lanes())

    def apply_config(self, cfg: EngineConfig, timeout_s: float = 120.0) -> list[ReplicaReport]:
        """Serve `cfg` on every replica (the tuner's choice, cluster-wide); returns the
        replicas' reports once all of them serve it. Lanes stay sized to each replica."""
        serve.run(build_app(self.spec, cfg), name=self.spec.app_name, route_prefix="/")
        self.config = cfg
        n = self.spec.replicas if not self.spec.autoscale else 1
        return self.wait_reports(n, timeout_s, cfg)

    @staticmethod
    def measure(
        before: list[ReplicaReport],
        after: list[ReplicaReport],
        offered_qps: float,
        sla_ms: float,
        percentile: float = 95.0,
    ) -> tuple[Measurement, ClusterReport]:
        """The tuner's Measurement of the run between two snapshots, from merged histograms."""
        c = diff(before, after)
        return cluster_measurement(c, offered_qps, sla_ms, percentile), c

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            serve.delete(self.spec.app_name)
        with contextlib.suppress(Exception):
            serve.shutdown()
        if self.started_ray:
            ray.shutdown()

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def cluster_status(cluster: RayCluster) -> ClusterReport:
    return aggregate(cluster.reports())


# -- `recsched serve MODEL --ray` -------------------------------------------------------------
def serve_on_ray(
    spec: RaySpec,
    *,
    address: str | None,
    host: str,
    port: int,
    num_cpus: int | None = None,
    echo: Any = print,
) -> None:
    """Deploy and block until SIGINT/SIGTERM; then delete the app (and a local Ray)."""
    import os

    # a local Ray gets the machine's cores, or enough logical CPUs to place every replica
    need = math.ceil(spec.max_replicas() * spec.replica_cpus)
    cpus = num_cpus or max(os.cpu_count() or 2, need)
    cluster = RayCluster(spec, address=address, host=host, port=port, num_cpus=cpus)
    # Ray's core installs a SIGTERM handler that aborts the process: block the signals in
    # every thread (Ray's inherit the mask) and take them synchronously with sigwait.
    sigs = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    cluster.start()
    how = f"{spec.autoscale[0]}..{spec.autoscale[1]}" if spec.autoscale else str(spec.replicas)
    echo(
        f"serving {spec.model} on Ray Serve: {how} replica(s) x {spec.lanes()} lane(s), "
        f"router {spec.router}, KServe v2 at {cluster.url} (metrics at {cluster.url}/metrics)"
    )
    try:
        got = signal.sigwait(sigs)
        echo(f"signal {signal.Signals(got).name}")
    finally:
        echo("stopping: deleting the application")
        cluster.shutdown()
