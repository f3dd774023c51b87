"""Replica reports and their aggregation: the cluster's tail latency for the tuner.

Tail percentiles do not average: the p95 of a cluster is not the mean (nor the max) of its
replicas' p95s. Each replica therefore reports a *histogram* of its query latencies
(log-spaced buckets, cumulative counts since it started), and the cluster's percentiles come
from the summed histograms: exact up to one bucket's width (`RATIO - 1` = 4% relative).
Two snapshots taken around a run give that run's latencies (`diff`).

Pure Python, JSON-friendly dicts on the wire (replicas report through Ray Serve's routing
stats), no Ray here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from recsched.sched.tuner import Measurement

LOW_S = 1e-5  # bucket 0 holds everything up to 10 us
RATIO = 1.04  # each bucket 4% wider than the last
N_BUCKETS = 450  # up to LOW_S * 1.04**449 ~ 4.4e2 s; the last bucket holds the rest


def bucket_of(latency_s: float) -> int:
    if latency_s <= LOW_S:
        return 0
    return min(N_BUCKETS - 1, 1 + int(math.log(latency_s / LOW_S) / math.log(RATIO)))


def bucket_upper_s(i: int) -> float:
    """The upper edge of bucket `i` (what a percentile falling in it reports)."""
    return LOW_S * RATIO**i


@dataclass
class LatencyHistogram:
    """Counts of latencies per log bucket (sparse: `{bucket: count}`)."""

    counts: dict[int, int] = field(default_factory=dict)

    def add(self, latency_s: float) -> None:
        b = bucket_of(max(0.0, latency_s))
        self.counts[b] = self.counts.get(b, 0) + 1

    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        out = dict(self.counts)
        for b, c in other.counts.items():
            out[b] = out.get(b, 0) + c
        return LatencyHistogram(out)

    def minus(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """This cumulative snapshot less an earlier one of the same replica."""
        out = {}
        for b, c in self.counts.items():
            d = c - earlier.counts.get(b, 0)
            assert d >= 0, "an earlier snapshot never holds more"
            if d:
                out[b] = d
        return LatencyHistogram(out)

    def percentile_s(self, p: float) -> float:
        """The latency under which `p`% of the counted queries fell (bucket upper edge);
        NaN when empty. Same rank rule as nearest-rank: the ceil(p/100 * n)-th smallest."""
        assert 0 <= p <= 100
        n = self.total()
        if n == 0:
            return math.nan
        rank = max(1, math.ceil(p / 100 * n))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return bucket_upper_s(b)
        raise AssertionError("unreachable: ranks stop at n")

    def to_json(self) -> dict[str, int]:
        return {str(b): c for b, c in self.counts.items()}

    @classmethod
    def from_json(cls, d: Mapping[str, int]) -> LatencyHistogram:
        return cls({int(b): int(c) for b, c in d.items()})


@dataclass(frozen=True)
class ReplicaReport:
    """One replica's state, as `record_routing_stats` sends it (a dict on the wire).

    work_s: predicted outstanding lane work. busy_s / tasks / alive: per lane. hist: its
    query latencies since start (arrival at the replica to scores ready). config: the
    EngineConfig dict it serves with now.
    """

    replica: str
    lanes: int
    pending: int
    work_s: float
    completed: int
    failed: int
    busy_s: tuple[float, ...]
    tasks: tuple[int, ...]
    alive: tuple[bool, ...]
    uptime_s: float
    hist: LatencyHistogram
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "replica": self.replica, "lanes": self.lanes, "pending": self.pending,
            "work_s": self.work_s, "completed": self.completed, "failed": self.failed,
            "busy_s": list(self.busy_s), "tasks": list(self.tasks), "alive": list(self.alive),
            "uptime_s": self.uptime_s, "hist": self.hist.to_json(), "config": self.config,
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ReplicaReport:
        return cls(
            str(d["replica"]), int(d["lanes"]), int(d["pending"]), float(d["work_s"]),
            int(d["completed"]), int(d["failed"]), tuple(map(float, d["busy_s"])),
            tuple(map(int, d["tasks"])), tuple(map(bool, d["alive"])), float(d["uptime_s"]),
            LatencyHistogram.from_json(d["hist"]), dict(d.get("config", {})),
        )  # fmt: skip


@dataclass(frozen=True)
class ClusterReport:
    """The cluster as the tuner sees it: merged latencies and summed counters."""

    replicas: int
    lanes: int
    pending: int
    work_s: float
    completed: int
    failed: int
    hist: LatencyHistogram
    configs: tuple[dict[str, Any], ...]

    def percentile_ms(self, p: float) -> float:
        return self.hist.percentile_s(p) * 1e3

    def uniform_config(self) -> bool:
        """Every replica serves the same configuration (the tuner's, once applied)."""
        return all(c == self.configs[0] for c in self.configs)


def aggregate(reports: Iterable[ReplicaReport]) -> ClusterReport:
    """Merge replica reports: histograms summed (percentiles from the merge), counters added."""
    rs = list(reports)
    hist = LatencyHistogram()
    for r in rs:
        hist = hist.merge(r.hist)
    return ClusterReport(
        len(rs), sum(r.lanes for r in rs), sum(r.pending for r in rs),
        sum(r.work_s for r in rs), sum(r.completed for r in rs), sum(r.failed for r in rs),
        hist, tuple(r.config for r in rs),
    )  # fmt: skip


def diff(before: Sequence[ReplicaReport], after: Sequence[ReplicaReport]) -> ClusterReport:
    """What happened between two snapshots: per replica `after - before` (a replica absent
    before, e.g. started by the autoscaler, counts whole), then `aggregate`."""
    old = {r.replica: r for r in before}
    out = []
    for a in after:
        b = old.get(a.replica)
        if b is None:
            out.append(a)
            continue
        out.append(
            ReplicaReport(
                a.replica,
                a.lanes,
                a.pending,
                a.work_s,
                a.completed - b.completed,
                a.failed - b.failed,
                a.busy_s,
                a.tasks,
                a.alive,
                a.uptime_s,
                a.hist.minus(b.hist),
                a.config,
            )  # fmt: skip
        )
    return aggregate(out)


def cluster_measurement(
    cluster: ClusterReport, offered_qps: float, sla_ms: float, percentile: float = 95.0
) -> Measurement:
    """The tuner's `Measurement` of one run from the cluster's merged latencies.

    A query that failed counts as never served (latency inf), as the bench harness does.
    """
    served = cluster.hist.total()
    n = served + cluster.failed
    if n == 0:
        return Measurement(0.0, math.inf, sla_ms, False, 0)
    rank_ok = math.ceil(percentile / 100 * n) <= served
    tail = cluster.hist.percentile_s(min(100.0, percentile * n / max(served, 1))) * 1e3
    tail = tail if rank_ok else math.inf
    return Measurement(offered_qps, tail, sla_ms, tail <= sla_ms, n)
