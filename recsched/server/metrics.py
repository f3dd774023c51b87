"""Prometheus metrics and Triton's statistics extension, one registry per server.

Triton's names, so existing dashboards work (labels `model`, `version`; counters of
cumulative microseconds, as Triton exports them):

    nv_inference_request_success / nv_inference_request_failure{reason}
    nv_inference_count (items) / nv_inference_exec_count (lane tasks)
    nv_inference_request_duration_us, nv_inference_queue_duration_us,
    nv_inference_compute_input_duration_us, nv_inference_compute_infer_duration_us,
    nv_inference_compute_output_duration_us, nv_inference_pending_request_count

What the phases mean here: *compute_input* is decoding the body, *queue* is waiting in the
admission queue for an engine slot, *compute_infer* is the engine (its own batching queue
included), *compute_output* is encoding. Failure reasons as Triton's: REJECTED (shed or
timed out before it ran), CANCELED (shutdown), BACKEND (a lane failed), OTHER.

recsched's own: per-class latency histograms, shed counts, queue depths, lane utilization and
liveness, lane restarts, and the current engine configuration as an info metric.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip


@dataclass
class Timings:
    """Wall-clock marks (seconds, perf_counter) of one request's phases; 0 = not reached."""

    arrival: float
    decoded: float = 0.0
    entered: float = 0.0  # got an engine slot
    computed: float = 0.0  # the engine's future resolved
    encoded: float = 0.0

    def phases_ns(self) -> dict[str, int]:
        """Durations in ns of the phases reached: input, queue, infer, output."""

        def span(a: float, b: float) -> int:
            return max(0, int((b - a) * 1e9)) if a and b else 0

        return {
            "compute_input": span(self.arrival, self.decoded),
            "queue": span(self.decoded, self.entered),
            "compute_infer": span(self.entered, self.computed),
            "compute_output": span(self.computed, self.encoded),
        }


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """Triton's statistics extension counters of one model (version)."""

    inference_count: int = 0
    last_inference_ms: int = 0
    durations: dict[str, _Duration] = field(
        default_factory=lambda: {
            k: _Duration()
            for k in (
                "success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                "cache_hit", "cache_miss",
            )
        }
    )  # fmt: skip

    def json(self, name: str, version: str, execution_count: int) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": execution_count,
            "inference_stats": {k: d.json() for k, d in self.durations.items()},
            "batch_stats": [],
            "memory_usage": [],
        }


class EngineCollector:
    """Scrape-time gauges read from the live engines: lanes, pending work, configuration.

    `engines()` returns `{model: engine}` for the models currently served.
    """

    def __init__(self, engines: Callable[[], Mapping[str, Any]]) -> None:
        self.engines = engines

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        util = GaugeMetricFamily(
            "recsched_lane_utilization",
            "Busy fraction of a lane since start",
            labels=["model", "lane"],
        )
        alive = GaugeMetricFamily(
            "recsched_lane_alive", "1 if the lane's worker is alive", labels=["model", "lane"]
        )
        busy = CounterMetricFamily(
            "recsched_lane_busy_seconds", "Seconds a lane held a task", labels=["model", "lane"]
        )
        cpu = CounterMetricFamily(
            "recsched_lane_cpu_seconds",
            "CPU seconds of a lane's thread while it held a task (busy - cpu: waiting for the "
            "GIL or a core)",
            labels=["model", "lane"],
        )
        pending = GaugeMetricFamily(
            "recsched_engine_pending_queries", "Queries inside the engine", labels=["model"]
        )
        info = InfoMetricFamily(
            "recsched_engine_config", "Current engine configuration", labels=["model"]
        )
        for model, eng in sorted(self.engines().items()):
            for i, u in enumerate(eng.lane_utilization()):
                util.add_metric([model, str(i)], u)
            for lane in list(eng.lanes):
                alive.add_metric([model, str(lane.index)], 1.0 if lane.alive() else 0.0)
                busy.add_metric([model, str(lane.index)], lane.stats.busy_s)
                cpu.add_metric([model, str(lane.index)], lane.stats.cpu_s)
            pending.add_metric([model], eng.pending())
            info.add_metric([model], {k: str(v) for k, v in eng.config.to_dict().items()})
        yield from (util, alive, busy, cpu, pending, info)


_TRITON_FAMILIES: dict[str, tuple[str, str]] = {
    "nv_inference_request_success": ("counter", "Number of successful inference requests"),
    "nv_inference_request_failure": ("counter", "Number of failed inference requests"),
    "nv_inference_count": ("counter", "Number of inferences performed (items)"),
    "nv_inference_exec_count": ("counter", "Number of model executions (lane tasks)"),
    "nv_inference_request_duration_us": ("counter", "Cumulative inference request duration"),
    "nv_inference_queue_duration_us": ("counter", "Cumulative inference queuing duration"),
    "nv_inference_compute_input_duration_us": ("counter", "Cumulative input decode duration"),
    "nv_inference_compute_infer_duration_us": ("counter", "Cumulative compute duration"),
    "nv_inference_compute_output_duration_us": ("counter", "Cumulative output encode duration"),
    "nv_inference_pending_request_count": ("gauge", "Requests accepted and not yet answered"),
}


_PHASE_METRIC = {
    k: f"nv_inference_{k}_duration_us"
    for k in ("compute_input", "queue", "compute_infer", "compute_output")
}


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class TritonMetrics:
    """Triton's metric families under their exact names (prometheus_client would append
    `_total` to counters, which Triton's dashboards do not expect), rendered as text.
    """

    def __init__(self) -> None:
        self._v: dict[str, dict[tuple[tuple[str, str], ...], float]] = {
            k: {} for k in _TRITON_FAMILIES
        }
        self._lock = threading.Lock()

    def add(self, name: str, labels: dict[str, str], value: float = 1.0) -> None:
        self.add_many(tuple(sorted(labels.items())), ((name, value),))

    def add_many(self, key: tuple[tuple[str, str], ...], updates: Iterable) -> None:
        """Add each `(name, value)` of `updates` under the sorted label `key` (one lock)."""
        with self._lock:
            for name, value in updates:
                fam = self._v[name]
                fam[key] = fam.get(key, 0.0) + value

    def set(self, name: str, labels: dict[str, str], value: float) -> None:
        with self._lock:
            self._v[name][tuple(sorted(labels.items()))] = value

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._v[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            for name, (kind, doc) in _TRITON_FAMILIES.items():
                out += [f"# HELP {name} {doc}\n", f"# TYPE {name} {kind}\n"]
                for key, value in sorted(self._v[name].items()):
                    lab = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
                    out.append(f"{name}{{{lab}}} {value!r}\n")
        return "".join(out)


class ServerMetrics:
    """All of a server's metrics: Triton's families, recsched's own, and the statistics."""

    def __init__(self, version: str = "1") -> None:
        self.version = version
        self.triton = TritonMetrics()
        self.registry = r = CollectorRegistry()
        self.latency = Histogram(
            "recsched_request_latency_seconds",
            "End-to-end request latency by priority class",
            ["model", "class"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.shed = Counter(
            "recsched_shed_total", "Requests shed or timed out before running",
            ["model", "class", "why"], registry=r,
        )  # fmt: skip
        self.bad = Counter(
            "recsched_bad_requests_total", "Requests refused as bad input (4xx)", ["model"],
            registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "recsched_admission_queued", "Requests waiting for an engine slot",
            ["model", "class"], registry=r,
        )  # fmt: skip
        self.backlog = Gauge(
            "recsched_admission_backlog_seconds",
            "Predicted seconds of work per lane inside the engine (predicted admission)",
            ["model"], registry=r,
        )  # fmt: skip
        self.cost_scale = Gauge(
            "recsched_admission_cost_scale",
            "Measured / profiled lane time of finished work (predicted admission)",
            ["model"], registry=r,
        )  # fmt: skip
        self.guard_share = Gauge(
            "recsched_admission_guard_share",
            "Share of a class's offers the tail guard admits (1: not throttled)",
            ["model", "class"], registry=r,
        )  # fmt: skip
        self.restarts = Counter(
            "recsched_lane_restarts_total", "Lanes replaced by the watchdog",
            ["model", "lane", "why"], registry=r,
        )  # fmt: skip
        self._stats: dict[str, ModelStats] = {}
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[tuple[str, str], ...]] = {}  # model -> sorted mv labels
        self._hist: dict[tuple[str, str], Any] = {}  # (model, class) -> latency child

    def watch_engines(self, engines: Callable[[], Mapping[str, Any]]) -> None:
        self.registry.register(EngineCollector(engines))

    # -- recording ---------------------------------------------------------------------
    def stats_of(self, model: str) -> ModelStats:
        with self._lock:
            return self._stats.setdefault(model, ModelStats())

    def _mv(self, model: str) -> dict[str, str]:
        return {"model": model, "version": self.version}

    def _key(self, model: str) -> tuple[tuple[str, str], ...]:
        key = self._keys.get(model)
        if key is None:
            key = self._keys[model] = tuple(sorted(self._mv(model).items()))
        return key

    def accepted(self, model: str) -> None:
        self.triton.add_many(self._key(model), (("nv_inference_pending_request_count", 1),))

    def succeeded(self, model: str, cls: str, n_items: int, t: Timings) -> None:
        """A request answered with scores."""
        ph = t.phases_ns()
        total = max(0, int((t.encoded - t.arrival) * 1e9))
        self.triton.add_many(
            self._key(model),
            [
                ("nv_inference_pending_request_count", -1),
                ("nv_inference_request_success", 1),
                ("nv_inference_count", n_items),
                ("nv_inference_request_duration_us", total // 1000),
                *((_PHASE_METRIC[k], ns // 1000) for k, ns in ph.items()),
            ],
        )
        hist = self._hist.get((model, cls))
        if hist is None:
            hist = self._hist[(model, cls)] = self.latency.labels(model, cls)
        hist.observe(total / 1e9)
        st = self.stats_of(model)
        with self._lock:
            st.inference_count += n_items
            st.last_inference_ms = int(time.time() * 1000)
            st.durations["success"].add(total)
            for k, ns in ph.items():
                st.durations[k].add(ns)

    def failed(self, model: str, reason: str, t: Timings | None, now: float) -> None:
        """A request answered with an error (shed, timeout, lane, shutdown).

        `t=None`: refused at the door (shutting down), never counted as pending.
        """
        assert reason in REASONS, reason
        mv = self._mv(model)
        if t is not None:
            self.triton.add("nv_inference_pending_request_count", mv, -1)
        self.triton.add("nv_inference_request_failure", {**mv, "reason": reason})
        st = self.stats_of(model)
        with self._lock:
            st.durations["fail"].add(max(0, int((now - t.arrival) * 1e9)) if t else 0)

    def refused(self, model: str) -> None:
        """Bad input (4xx) for a model; unknown models count under `_unknown`."""
        self.bad.labels(model).inc()

    def stats_json(self, models: Mapping[str, Any]) -> dict[str, Any]:
        """Triton's `$stats_model_response` for `{model: engine or None}`."""
        out = []
        for name, eng in sorted(models.items()):
            execs = sum(lane.stats.tasks for lane in eng.lanes) if eng is not None else 0
            self.triton.set("nv_inference_exec_count", self._mv(name), execs)
            st = self.stats_of(name)
            with self._lock:
                out.append(st.json(name, self.version, execs))
        return {"model_stats": out}

    def render(self, models: Mapping[str, Any]) -> bytes:
        """The Prometheus text exposition."""
        self.stats_json(models)  # refresh exec counts
        return self.triton.render().encode() + generate_latest(self.registry)
