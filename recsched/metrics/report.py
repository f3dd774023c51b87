"""Readable tables (rich) and machine-readable JSON for bench, capacity and compare results.

The JSON shapes are those of /work/shared/DESIGN.md; NaN and infinities become `null`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from recsched.metrics.machine import run_share

STEAL_NOTE = 0.05  # a run's table notes the hypervisor's share of the CPU from this much on


def cost_core_s_per_1k(cores: float, duration_s: float, queries_within_sla: int) -> float:
    """Resource-seconds held per 1000 queries served within SLA; inf when none were."""
    assert cores >= 0 and duration_s >= 0 and queries_within_sla >= 0
    if queries_within_sla == 0:
        return math.inf
    return cores * duration_s / queries_within_sla * 1000.0


def to_jsonable(x: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN/inf -> None, tuples -> lists."""
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [to_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} as JSON")


def write_json(result: Mapping[str, Any], path: str | Path) -> None:
    """Write `result` as JSON atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(result), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _f(x: Any, digits: int = 2) -> str:
    """A number for a table cell: '-' for missing/NaN, 'inf' for infinities."""
    if x is None:
        return "-"
    if isinstance(x, bool | np.bool_):
        return "yes" if x else "NO"
    if isinstance(x, int | np.integer):
        return f"{int(x):,}"
    x = float(x)
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:,.{digits}f}"


def _met(x: Any) -> str:
    return "-" if x is None else ("[green]yes[/]" if x else "[red]NO[/]")


def bench_table(result: Mapping[str, Any]) -> Table:
    """One row for the whole run, then one per class: queries, SLA, p50/p95/p99/max, verdict."""
    title = (
        f"{result.get('model', '?')} / {result.get('preset', '?')}: "
        f"offered {_f(result.get('offered_qps'))} qps, "
        f"completed {_f(result.get('completed_qps'))} qps"
    )
    t = Table(title=title)
    cols = ("queries", "value", "SLA ms", "p50 ms", "p95 ms", "p99 ms", "max ms", "SLA met")
    for col in ("class", *cols):
        t.add_column(col, justify="left" if col == "class" else "right")

    def row(name: str, r: Mapping[str, Any], lat: Mapping[str, Any], style: str = "") -> None:
        sla = r.get("sla_ms")
        pct = r.get("sla_percentile")
        sla_txt = _f(sla) + (f" @p{pct:g}" if sla is not None and pct not in (None, 95.0) else "")
        t.add_row(
            name,
            _f(r.get("queries")),
            _f(r.get("value")),
            sla_txt,
            *(_f(lat.get(k)) for k in ("p50", "p95", "p99", "max")),
            _met(r.get("sla_met")),
            style=style or None,
        )

    row("all", result, result.get("latency_ms", {}), style="bold")
    for name, c in (result.get("classes") or {}).items():
        row(name, c, c.get("latency_ms", {}))
    extra = []
    for key, label in (("rejected", "rejected"), ("late_issues", "late issues")):
        if key in result:
            extra.append(f"{label} {_f(result[key])}")
    if "cost_core_s_per_1k" in result:
        extra.append(f"cost {_f(result['cost_core_s_per_1k'], 3)} core-s/1k")
    if result.get("lane_utilization"):
        u = result["lane_utilization"]
        extra.append(f"lane util mean {_f(100 * float(np.mean(u)), 0)}%")
    if result.get("lane_running"):
        r = result["lane_running"]
        extra.append(f"running {_f(100 * float(np.mean(r)), 0)}% of busy")
    steal = _steal(result)
    if steal is not None and steal >= STEAL_NOTE:
        extra.append(f"the hypervisor took {_f(100 * steal, 0)}% of the CPU (steal)")
    t.caption = ", ".join(extra) or None
    return t


def capacity_table(result: Mapping[str, Any]) -> Table:
    """The search's runs (offered load vs tail) with the found capacity in the caption."""
    t = Table(
        title=(
            f"capacity {result.get('model', '?')} / {result.get('preset', '?')} "
            f"at SLA {_f(result.get('sla_ms'))} ms"
        )
    )
    runs = result.get("runs") or []
    steal = any(_steal(r) is not None for r in runs)
    cols = ("offered qps", "completed qps", "p95 ms", "p99 ms", "SLA met") + (
        ("steal",) if steal else ()
    )
    for col in cols:
        t.add_column(col, justify="right")
    for r in runs:
        lat = r.get("latency_ms", {})
        row = [
            _f(r.get("offered_qps")),
            _f(r.get("completed_qps")),
            _f(lat.get("p95")),
            _f(lat.get("p99")),
            _met(r.get("sla_met")),
        ]
        if steal:
            st = _steal(r)
            row.append("-" if st is None else f"{100 * st:.0f}%")
        t.add_row(*row)
    t.caption = (
        f"latency-bounded {_f(result.get('latency_bounded_qps'))} qps, "
        f"peak {_f(result.get('peak_items_per_s'), 0)} items/s, "
        f"efficiency {_f(result.get('efficiency'), 3)}, "
        f"cost {_f(result.get('cost_core_s_per_1k'), 3)} core-s/1k"
    )
    return t


def compare_table(result: Mapping[str, Any]) -> Table:
    """One row per preset: capacity, ratio to the first preset, efficiency, cost."""
    t = Table(title="compare")
    for col in ("preset", "latency-bounded qps", "ratio", "efficiency", "cost core-s/1k", "SLA ms"):
        t.add_column(col, justify="left" if col == "preset" else "right")
    ratios = result.get("ratios") or {}
    for name, cap in (result.get("presets") or {}).items():
        t.add_row(
            name,
            _f(cap.get("latency_bounded_qps")),
            _f(ratios.get(name)),
            _f(cap.get("efficiency"), 3),
            _f(cap.get("cost_core_s_per_1k"), 3),
            _f(cap.get("sla_ms")),
        )
    steals = [
        _steal(r) for cap in (result.get("presets") or {}).values() for r in cap.get("runs") or []
    ]
    stolen = [x for x in steals if x is not None and x >= STEAL_NOTE]
    notes = []
    same = result.get("same_as_first") or []
    if same:
        first = next(iter(result.get("presets") or {}), "the first")
        notes.append(
            f"{', '.join(same)} served {first}'s configuration in effect: "
            f"{'its ratio is' if len(same) == 1 else 'their ratios are'} the machine's "
            "run-to-run noise, not a gain"
        )
    if stolen:
        notes.append(
            f"the hypervisor took {100 * STEAL_NOTE:.0f}% or more of the CPU in {len(stolen)} "
            f"of {len(steals)} runs (up to {100 * max(stolen):.0f}%): read those verdicts "
            "with care"
        )
    if notes:
        t.caption = "; ".join(notes)
    return t


def _steal(run: Mapping[str, Any]) -> float | None:
    """The hypervisor's share of the CPU during a run (`machine_cpu`), if recorded."""
    return run_share(run, "steal")
