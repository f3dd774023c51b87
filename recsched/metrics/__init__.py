"""Latency recording, per-class statistics, SLA verdicts and reports.

Imports nothing of the schedulers: `latency` (exact percentiles, confidence intervals,
`LatencyLog`, `StreamingLatency`) and `report` (rich tables, atomic JSON, cost).
"""

from recsched.metrics.latency import (
    LatencyLog,
    StreamingLatency,
    min_queries_for,
    percentile_confidence,
    percentile_ms,
    summarize_ms,
)
from recsched.metrics.report import (
    bench_table,
    capacity_table,
    compare_table,
    cost_core_s_per_1k,
    to_jsonable,
    write_json,
)

__all__ = [
    "LatencyLog",
    "StreamingLatency",
    "bench_table",
    "capacity_table",
    "compare_table",
    "cost_core_s_per_1k",
    "min_queries_for",
    "percentile_confidence",
    "percentile_ms",
    "summarize_ms",
    "to_jsonable",
    "write_json",
]
