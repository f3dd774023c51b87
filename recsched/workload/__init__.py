"""Seeded workloads: arrival processes, query-size distributions and priority classes.

Knows nothing of models or engines (imports only numpy, the standard library and
`recsched.types`).

    wl = generate(parse_arrivals("poisson", qps=200), parse_sizes("production"),
                  parse_classes("high:0.2:10:20ms,low:0.8:1:100ms"), duration_s=30, seed=1)
"""

from recsched.workload.arrivals import (
    ArrivalProcess,
    ArrivalSpecError,
    Bursty,
    Constant,
    Diurnal,
    Poisson,
    TraceData,
    TraceReplay,
    parse_arrivals,
    read_trace,
)
from recsched.workload.classes import (
    ClassSpecError,
    assign_classes,
    format_classes,
    parse_classes,
    parse_sla,
)
from recsched.workload.generate import Arrival, Workload, generate, write_trace_csv
from recsched.workload.sizes import (
    DEFAULT_CAP,
    Fixed,
    LogNormal,
    Normal,
    Percentiles,
    SizeDist,
    SizeSpecError,
    load_percentiles,
    parse_sizes,
    production,
    read_percentiles,
)

__all__ = [
    "DEFAULT_CAP",
    "Arrival",
    "ArrivalProcess",
    "ArrivalSpecError",
    "Bursty",
    "ClassSpecError",
    "Constant",
    "Diurnal",
    "Fixed",
    "LogNormal",
    "Normal",
    "Percentiles",
    "Poisson",
    "SizeDist",
    "SizeSpecError",
    "TraceData",
    "TraceReplay",
    "Workload",
    "assign_classes",
    "format_classes",
    "generate",
    "load_percentiles",
    "parse_arrivals",
    "parse_classes",
    "parse_sizes",
    "parse_sla",
    "production",
    "read_percentiles",
    "read_trace",
    "write_trace_csv",
]
