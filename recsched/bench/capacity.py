"""Latency-bounded throughput: the highest offered rate whose tail latency meets the SLA.

Search on the offered rate by open-loop runs: bracket (double or halve from a start), then
bisect geometrically until the bracket is within `rel_tol`. The run function is injected, so
the same search drives the real engine, the simulator, or a synthetic surface in a test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

RunFn = Callable[[float], dict]


@dataclass
class CapacitySearch:
    """The outcome: best passing rate, its run, and every run in the order made."""

    qps: float
    best: dict | None
    runs: list[dict] = field(default_factory=list)


def passes(result: dict) -> bool:
    """A run meets its SLA when every class meets its percentile target."""
    return bool(result.get("sla_met"))


def find_capacity(
    run: RunFn,
    *,
    start_qps: float,
    rel_tol: float = 0.05,
    max_runs: int = 12,
    min_qps: float = 0.1,
    max_qps: float = 1e7,
    on_run: Callable[[dict], None] | None = None,
    step: float = 2.0,
) -> CapacitySearch:
    """Bracket (multiply or divide by `step`) then bisect the offered rate. Stops after
    `max_runs` runs at the latest.

    Returns rate 0 with no best run when even `min_qps` fails.
    """
    assert start_qps > 0 and rel_tol > 0 and max_runs >= 1 and step > 1
    out = CapacitySearch(0.0, None)

    def measure(q: float) -> bool:
        r = run(q)
        out.runs.append(r)
        if on_run is not None:
            on_run(r)
        ok = passes(r)
        if ok and q > out.qps:
            out.qps, out.best = q, r
        return ok

    lo, hi = 0.0, math.inf
    q = min(max(start_qps, min_qps), max_qps)
    while len(out.runs) < max_runs:  # bracket
        if measure(q):
            lo = q
            if q >= max_qps:
                return out
            q = min(q * step, max_qps)
        else:
            hi = q
            if q <= min_qps:
                return out
            q = max(q / step, min_qps)
        if lo > 0 and hi < math.inf:
            break
    while len(out.runs) < max_runs and hi / lo > 1 + rel_tol:  # bisect
        q = math.sqrt(lo * hi)
        if measure(q):
            lo = q
        else:
            hi = q
    return out


def capacity_result(
    search: CapacitySearch,
    *,
    model: str,
    preset: str,
    sla_ms: float,
    percentile: float,
    peak_items_per_s: float | None,
) -> dict:
    """The `capacity` result of DESIGN.md."""
    best = search.best or {}
    items_per_s = best.get("completed_items_per_s", 0.0)
    eff = items_per_s / peak_items_per_s if peak_items_per_s else None
    return {
        "model": model,
        "preset": preset,
        "sla_ms": sla_ms,
        "sla_percentile": percentile,
        "latency_bounded_qps": search.qps,
        "latency_bounded_items_per_s": items_per_s,
        "peak_items_per_s": peak_items_per_s,
        "efficiency": eff,
        "cost_core_s_per_1k": best.get("cost_core_s_per_1k"),
        "config": best.get("config"),
        "runs": search.runs,
    }
