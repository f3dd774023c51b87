"""Everything a measuring command needs, resolved once: the model, the SLA, the workload,
each preset's configuration (tuned ones from the tuner's cache), graphs and cost models.

`Setup` is what the CLI, the benchmarks and the README's main job share, so the same
options mean the same thing everywhere.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsched.bench import calibrate
from recsched.bench.capacity import RunFn, capacity_result, find_capacity, in_turns
from recsched.bench.run import InputPool, LoadSpec, bench_once
from recsched.config import PRESETS, EngineConfig, preset
from recsched.metrics.trace import TraceRecorder
from recsched.models.base import ModelAdapter
from recsched.sched.opstream import GranularityChoice, resolve_granularity
from recsched.types import PriorityClass
from recsched.workload.classes import parse_classes
from recsched.workload.sizes import parse_sizes

DEFAULT_SLA_X = 20.0  # loose, as DeepRecSys; the production p95 query is ~6x the median
# The first guess at a capacity from the cached peak (`Setup.start_qps`) is this share of the
# simulated one: the simulation leaves out the host's CPU and the served tasks' extra cost, and
# read 1.13-1.28x the real capacity of whole queries for six of the eight models at `--sla-x
# 20`, ~2x for rmc1 and ncf (benchmarks/first_guess.py). Under it, the first run usually passes
# and the doubling after it fails at once; a first run just over the capacity fails slowly.
GUESS_FRACTION = 0.7
GUESS_RUN_S = 2.0  # simulated run length (at least 300 queries, as the real runs)
Log = Callable[[str], None]


def register_presets(path: str | Path) -> list[str]:
    """`--presets-file`: register the presets a TOML file defines (`config.load_presets`),
    their OpStream options checked now rather than when an engine is made; their names."""
    from recsched.config import load_presets
    from recsched.sched.opstream import OpStreamOptions

    names = load_presets(path)
    for n in names:
        try:
            OpStreamOptions.from_dict(dict(PRESETS[n].get("opstream") or {}))
        except (TypeError, ValueError, AssertionError) as exc:
            del PRESETS[n]
            raise ValueError(f"{path} [{n}]: opstream options: {exc}") from None
    return names


def load(model: str, scale: str = "small", seed: int = 0) -> ModelAdapter:
    from recsched.models.registry import load_model

    return load_model(model, scale=scale, seed=seed)


def describe_models(scale: str = "small", with_graphs: bool = True) -> list[dict]:
    """One row per model: params, tables, rows, dim, bytes, op counts per granularity."""
    from recsched.models.registry import list_models

    rows = []
    for name in list_models():
        ad = load(name, scale)
        info = dict(ad.info)
        row = {"name": name, **{k: info.get(k) for k in ("params", "tables", "rows", "dim")}}
        row["bytes"] = info.get("bytes", 4 * int(info.get("params", 0)))
        if with_graphs:
            from recsched.graph import build_graph

            for g in ("coarse", "fine"):
                row[f"ops_{g}"] = len(build_graph(ad, g).info.ops)
        rows.append(row)
    return rows


def default_lanes() -> tuple[int, int]:
    """(lanes, threads per lane): one single-threaded lane per core, no oversubscription."""
    return max(1, os.cpu_count() or 1), 1


@dataclass
class Setup:
    """A model plus the options every measuring command shares."""

    adapter: ModelAdapter
    scale: str
    seed: int
    classes: tuple[PriorityClass, ...]
    sizes: str
    arrivals: str
    sla_ms: float | None
    percentile: float
    sim: bool = False
    _pool: InputPool | None = None
    _graphs: dict[str, Any] = field(default_factory=dict)
    _costs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(
        cls,
        model: str,
        scale: str = "small",
        seed: int = 0,
        classes: str | None = None,
        sizes: str = "production",
        arrivals: str = "poisson",
        sla_ms: float | None = None,
        sla_x: float | None = None,
        percentile: float = 95.0,
        sim: bool = False,
        need_sla: bool = True,
        adapter: ModelAdapter | None = None,
    ) -> Setup:
        """`adapter`: the model already loaded (by the server), else loaded here."""
        adapter = adapter if adapter is not None else load(model, scale, seed)
        size_dist = parse_sizes(sizes)
        parsed = tuple(
            PriorityClass(c.name, c.share, c.value, c.sla_ms, percentile)
            if c.percentile == 95.0 else c
            for c in parse_classes(classes)
        )  # fmt: skip
        if sla_ms is None and (sla_x is not None or need_sla):
            median = max(1, round(size_dist.median()))
            sla_ms = calibrate.sla_from_x(adapter, sla_x or DEFAULT_SLA_X, median)
        return cls(adapter, scale, seed, parsed, sizes, arrivals, sla_ms, percentile, sim)

    # -- configurations ---------------------------------------------------------------------
    def config(self, name: str, log: Log | None = None, **overrides: Any) -> EngineConfig:
        """The configuration of a preset; `tuned` request knobs come from the tuner."""
        lanes, tpl = default_lanes()
        base: dict[str, Any] = {"lanes": lanes, "threads_per_lane": tpl}
        own = PRESETS.get(name, {})  # a preset from a file may set its lanes
        base = {k: v for k, v in base.items() if k not in own}
        given = {k: v for k, v in overrides.items() if v is not None}
        return self.resolve(preset(name, **{**base, **given}), log, keep=tuple(given))

    def resolve(
        self,
        cfg: EngineConfig,
        log: Log | None = None,
        *,
        tune: bool = True,
        keep: Sequence[str] = (),
    ) -> EngineConfig:
        """`cfg` with its `tuned` request knobs from the tuner's cache (tuned now on a miss
        if `tune`, else ValueError), except the fields in `keep` (the caller's overrides),
        then an `auto` granularity chosen from the model's profile for this size mix."""
        if cfg.request == "tuned":
            knobs = self.tuned_knobs(cfg, log, tune=tune)
            cfg = cfg.replace(**{k: v for k, v in knobs.items() if k not in keep})
        return self.resolve_granularity(cfg, log)

    def resolve_granularity(self, cfg: EngineConfig, log: Log | None = None) -> EngineConfig:
        """`cfg` with an `auto` granularity chosen for this model and size mix
        (`opstream.resolve_granularity` on the model's profile)."""
        cfg, choice = self._granularity(cfg)
        if log is not None and choice is not None:
            costs = ", ".join(f"{g} {ms:.1f}" for g, ms in choice.lane_ms_per_kitem.items())
            log(f"granularity {choice.choice} (lane ms per 1k items: {costs})")
        return cfg

    def granularity_choice(self, cfg: EngineConfig) -> GranularityChoice | None:
        """`choose_granularity` for `cfg`'s request knobs (resolved) on this model's profile
        (cached per machine) and a seeded sample of the size mix; None for `sequential`."""
        return self._granularity(cfg.replace(granularity="auto"))[1]

    def _granularity(self, cfg: EngineConfig) -> tuple[EngineConfig, GranularityChoice | None]:
        if cfg.granularity != "auto" or cfg.operator == "sequential":
            return resolve_granularity(cfg)  # nothing to measure
        prof = calibrate.profile(self.adapter, threads=cfg.threads_per_lane)
        mix = parse_sizes(self.sizes).sample(4096, np.random.default_rng(self.seed))
        return resolve_granularity(cfg, prof, [int(n) for n in mix])

    def tuned_knobs(
        self, cfg: EngineConfig, log: Log | None = None, *, tune: bool = True
    ) -> dict[str, Any]:
        from recsched.bench.tune import tuned_knobs

        return tuned_knobs(self, cfg, log, tune_on_miss=tune)

    # -- engines ----------------------------------------------------------------------------
    def pool(self) -> InputPool:
        if self._pool is None:
            self._pool = InputPool.make(self.adapter, rows=4096, seed=self.seed)
        return self._pool

    def engine_extras(self, cfg: EngineConfig) -> dict[str, Any]:
        """Graph and cost model for operator-level policies (none for `sequential`)."""
        if cfg.operator == "sequential":
            return {}
        g = self.resolve_granularity(cfg).granularity  # `auto` if not resolved before
        if g not in self._graphs:
            from recsched.graph import build_graph
            from recsched.graph.cost import CostModel

            graph = build_graph(self.adapter, g)
            prof = calibrate.profile(self.adapter, threads=cfg.threads_per_lane)
            self._graphs[g] = graph
            self._costs[g] = CostModel.from_profile(prof, g, graph.info)
        return {"graph": self._graphs[g], "cost": self._costs[g]}

    def load(self, qps: float, duration_s: float) -> LoadSpec:
        return LoadSpec(qps, duration_s, self.arrivals, self.sizes, self.classes, self.seed)

    @staticmethod
    def run_duration(qps: float, duration_s: float) -> float:
        """A real run's length at `qps`: `duration_s`, longer at low rates so a p95 has
        about 300 queries behind it, at most 4x."""
        return min(4 * duration_s, max(duration_s, 300.0 / qps))

    def run_fn(
        self,
        cfg: EngineConfig,
        name: str,
        duration_s: float,
        trace: bool = False,
        stop_on_miss: bool = False,
    ) -> Callable[[float], dict]:
        """qps -> bench result, on the real engine (or the simulator with `sim`). With
        `stop_on_miss` (searches that need only the verdict), a real run stops as soon as its
        SLA verdict is decided a miss (`recsched.bench.run.run_open_loop`). With
        `trace` (real engine), the result also holds "lane_tasks": [items, seconds] of every
        lane task of the measured run, "lane_task_context": for each of those tasks,
        [idle seconds before it on its lane, 1 if another lane was busy when it started else 0]
        (`lane_task_context`), and "lane_gaps_s": per lane, the time from each task's end to
        the next one's start (the engine's hand-off between tasks, plus idling); the
        simulator's in-run and probe calibrations read them."""
        if self.sim:
            from recsched.sim.run import sim_run_fn

            return sim_run_fn(self, cfg, name, duration_s)
        extras = self.engine_extras(cfg)
        pool = self.pool()

        def run(qps: float) -> dict:
            rec = TraceRecorder() if trace else None
            load = self.load(qps, self.run_duration(qps, duration_s))
            r = bench_once(
                self.adapter, cfg, load, preset=name, sla_ms=self.sla_ms,
                percentile=self.percentile, pool=pool, trace=rec, stop_on_miss=stop_on_miss,
                **extras,
            )  # fmt: skip
            if rec is not None:
                ev = [e for e in rec.events() if e.get("ph") == "X"]
                ctx = lane_task_context(ev)
                ok = [i for i, e in enumerate(ev) if not e["args"].get("error")]
                r["lane_tasks"] = [[ev[i]["args"].get("items", 0), ev[i]["dur"] * 1e-6] for i in ok]
                r["lane_task_context"] = [list(ctx[i]) for i in ok]
                r["lane_gaps_s"] = finite_gaps(ctx)  # every lane's gaps, errors included
            return r

        return run

    def start_qps(self, cfg: EngineConfig) -> float:
        """A first guess at capacity, where the search brackets from.

        With this machine's peak cached (`recsched peak`, measured on these lanes): the
        simulator's capacity for `cfg`'s request policy on lanes that cost what the peak
        measured per batch size (`sim.run.PeakCost`; whole-model tasks, no host model), times
        `GUESS_FRACTION`. Otherwise lanes / latency of a mean-size query alone (plus ~0.3 ms
        of serving per query), halved, which for din was 1.3-1.7x over its capacity and for
        rmc1 0.7-1.5x under it."""
        guess = self.simulated_start_qps(cfg)
        if guess is not None:
            return guess
        mean = max(1, round(parse_sizes(self.sizes).mean()))
        ms = calibrate.alone_ms(self.adapter, mean, cfg.threads_per_lane, repeats=5)
        return 0.5 * cfg.lanes * 1e3 / (ms + 0.3)

    def simulated_start_qps(self, cfg: EngineConfig) -> float | None:
        """`start_qps` from the cached peak, or None (no peak cached, none measured on these
        lanes, or nothing met the SLA in simulation)."""
        from recsched.sim.run import PeakCost, server_types, sim_run_fn

        peak = calibrate.peek(calibrate.peak_key(self.adapter))
        if not peak or self.sla_ms is None:
            return None
        try:
            cost = PeakCost(peak, cfg.lanes, cfg.threads_per_lane)
        except ValueError:
            return None
        # the request level as configured; tasks run whole on CPU lanes
        whole = cfg.replace(
            operator="sequential", offload_threshold=None, granularity="model", opstream={}
        )
        types = server_types(whole, cost)
        run = sim_run_fn(dataclasses.replace(self, sim=True), whole, "guess", GUESS_RUN_S,
                         types=types)  # fmt: skip
        mean = max(1, round(parse_sizes(self.sizes).mean()))
        first = 0.5 * cfg.lanes / max(cost.whole_s(mean), 1e-6)
        qps = find_capacity(run, start_qps=first, rel_tol=0.05, max_runs=24).qps
        return GUESS_FRACTION * qps if qps > 0 else None

    def capacity(
        self,
        name: str,
        duration_s: float = 3.0,
        log: Log | None = None,
        *,
        confirm: int = 0,
        **overrides: Any,
    ) -> dict:
        """Latency-bounded throughput of a preset (bracket and bisect on the offered rate;
        `confirm` as in `find_capacity`)."""
        run, start, peak = self._prepare(name, duration_s, log, **overrides)
        return self._search(name, run, start, log, confirm, peak=peak)

    def capacities(
        self,
        names: Sequence[str],
        duration_s: float = 3.0,
        log: Log | None = None,
        *,
        confirm: int = 0,
        interleave: bool = True,
        **overrides: Any,
    ) -> dict[str, dict]:
        """`capacity` of several presets. With `interleave` (real engine, two or more), their
        searches take turns run by run (`capacity.in_turns`; one run at a time, each search in
        its own thread), so the machine's slow spells land on every preset alike; their
        configurations (tuning included), start rates and the peak are settled first, in
        order (a peak measured while another preset's runs go on would read low).
        `overrides`: configuration fields for every preset (`--offload-threshold`)."""
        if not interleave or self.sim or len(names) < 2:
            return {
                n: self.capacity(n, duration_s, log, confirm=confirm, **overrides) for n in names
            }
        prepared = {n: self._prepare(n, duration_s, log, **overrides) for n in names}

        def search(name: str) -> Callable[[Callable[[RunFn], RunFn]], dict]:
            run, start, peak = prepared[name]
            return lambda wrap: self._search(name, wrap(run), start, log, confirm, peak=peak)

        return in_turns({n: search(n) for n in names})

    def _prepare(
        self, name: str, duration_s: float, log: Log | None, **overrides: Any
    ) -> tuple[Callable[[float], dict], float, float | None]:
        """A preset's run function, the search's start rate (tuning it if it is tuned) and
        the peak: on the simulator, the simulated lanes' (`profile_peak`); on the real engine,
        `recsched peak`'s, measured before anything else (the start rates are guessed from
        it, `start_qps`)."""
        assert self.sla_ms is not None, "capacity needs an SLA"
        # measured (or read) first: the start rates are guessed from it
        peak = None if self.sim else calibrate.peak(self.adapter)["peak_items_per_s"]
        cfg = self.config(name, log, **overrides)
        if self.sim:
            from recsched.sim.run import lane_profile, profile_peak

            prof = lane_profile(self.adapter, cfg.threads_per_lane)
            peak = profile_peak(prof, cfg.lanes)["peak_items_per_s"]
        run = self.run_fn(cfg, name, duration_s, stop_on_miss=True)
        return run, self.start_qps(cfg), peak

    def _search(
        self,
        name: str,
        run: Callable[[float], dict],
        start: float,
        log: Log | None,
        confirm: int,
        peak: float | None = None,
    ) -> dict:
        """One preset's capacity search; `peak` (items/s) as measured before, else read (or
        measured) after the search, on the real engine only."""

        def on_run(r: dict) -> None:
            if log is not None:
                lat = r["latency_ms"]
                mark = "[green]meets[/green]" if r["sla_met"] else "[red]misses[/red]"
                if "stopped" in r:
                    mark += f" (stopped at {r['stopped']['at_s']:.1f} s: decided)"
                log(
                    f"  {name}: {r['offered_qps']:8.1f} qps  p{self.percentile:g}="
                    f"{_pct(r, self.percentile):8.2f} ms  p99={lat['p99']:8.2f} ms  {mark}"
                )

        # confirming runs come out of the same budget: give them room (12 runs without)
        search = find_capacity(
            run, start_qps=start, on_run=on_run, confirm=confirm, max_runs=12 + 4 * confirm
        )
        if peak is None and not self.sim:
            peak = calibrate.peak(self.adapter)["peak_items_per_s"]
        return capacity_result(
            search, model=self.adapter.name, preset=name, sla_ms=self.sla_ms,
            percentile=self.percentile, peak_items_per_s=peak,
        )  # fmt: skip

    def tune(self, **kw: Any) -> dict:
        from recsched.bench.tune import tune

        return tune(self, **kw)


def lane_gaps_s(events: list[dict]) -> list[float]:
    """From a lane trace's "X" events: per lane, the seconds from each task's end to the next
    task's start (negative gaps, from clock rounding, count as 0); in the events' order."""
    return finite_gaps(lane_task_context(events))


def finite_gaps(context: Sequence[tuple[float, int]]) -> list[float]:
    """The idle gaps of `lane_task_context`'s entries, without each lane's first (inf)."""
    return [g for g, _ in context if math.isfinite(g)]


def lane_task_context(events: list[dict]) -> list[tuple[float, int]]:
    """For each of a lane trace's "X" events, in the given order: (seconds its lane sat idle
    before it, at least 0, inf for a lane's first task; 1 if a task on another lane was running
    when it started, else 0), what a task's time depends on beside its size (`IdleModel`, the
    interference table)."""
    spans = [(e.get("tid"), e["ts"], e["ts"] + e["dur"]) for e in events]
    by_lane: dict[Any, list[int]] = {}
    for i, (lane, _, _) in enumerate(spans):
        by_lane.setdefault(lane, []).append(i)
    idle = [math.inf] * len(spans)
    starts: dict[Any, list[float]] = {}
    ends: dict[Any, list[float]] = {}
    for lane, idx in by_lane.items():
        idx.sort(key=lambda i: spans[i][1:])  # start order (then end)
        for a, b in itertools.pairwise(idx):
            idle[b] = max(0.0, (spans[b][1] - spans[a][2]) * 1e-6)
        starts[lane] = [spans[i][1] for i in idx]
        ends[lane] = [spans[i][2] for i in idx]
    out = []
    for i, (lane, start, _) in enumerate(spans):
        other = 0
        for ln in by_lane:  # the last task started before it on each other lane
            k = bisect.bisect_left(starts[ln], start) - 1
            if ln != lane and k >= 0 and ends[ln][k] > start:
                other = 1
        out.append((idle[i], other))
    return out


def _pct(r: dict, p: float) -> float:
    key = f"p{p:g}"
    v = r["latency_ms"].get(key)
    if v is None:
        classes = r.get("classes", {})
        v = max((c["latency_ms"].get("p95", math.nan) for c in classes.values()), default=math.nan)
    return math.nan if v is None else v
