"""OpStream variants on the simulator: each class's p99 and the lanes' busy time, per variant.

The real comparison (`opstream_mixed.py`) takes minutes per model and its runs spread by 2x
at p99; the simulator runs the same policies (`recsched.sched`) on the profile's costs in
a fraction of a second per variant, with no noise, so it shows what a knob trades: here, how
much lane time OpStream's low-value pieces cost (the lanes' summed utilization, in lanes)
against what they buy the high-value class. The baseline, the value-ordered sequential
engine (the same request level as opstream) and opstream as it comes run first.

    python benchmarks/opstream_sim.py --models rmc2:160,dien:124 \\
        --variant 'pieces0.97={"piece_efficiency": 0.97}' --json opstream_sim.json

Each model's rate is given (qps): use the offered load an `opstream_mixed.py` run printed,
so the two can be read side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from recsched.bench.setup import Setup
from recsched.sched.opstream import OpStreamOptions
from recsched.sim.run import sim_run_fn

console = Console()


def class_p99(r: dict[str, Any], name: str) -> float:
    c = r.get("classes", {}).get(name)
    return float(c["latency_ms"]["p99"]) if c else math.nan


def run_model(model: str, qps: float, variants: dict[str, dict], a: argparse.Namespace) -> dict:
    setup = Setup.make(model, a.scale, a.seed, classes=a.classes, sla_x=a.sla_x)
    lanes = {"lanes": a.lanes, "threads_per_lane": 1}
    op = setup.config("opstream", **lanes)
    cfgs = {
        "baseline": setup.config("baseline", **lanes),
        "value-order": setup.config("deeprecsched", order="value", **lanes),
        "opstream": op,
    }
    for label, opts in variants.items():
        cfgs[label] = setup.config("opstream", opstream={**(op.opstream or {}), **opts}, **lanes)
    rows = []
    for label, cfg in cfgs.items():
        t0 = time.perf_counter()
        r = sim_run_fn(setup, cfg, label, a.duration)(qps)
        rows.append({
            "variant": label, "high_p99_ms": class_p99(r, "high"),
            "low_p99_ms": class_p99(r, "low"), "lanes_busy": sum(r["lane_utilization"]),
            "completed_qps": r["completed_qps"], "batch_size": cfg.batch_size,
            "wall_s": time.perf_counter() - t0,
        })  # fmt: skip
    base = rows[0]
    for row in rows:
        row["high_change"] = row["high_p99_ms"] / base["high_p99_ms"] - 1
        row["low_ratio"] = row["low_p99_ms"] / base["low_p99_ms"]
    return {"model": model, "qps": qps, "sla_ms": setup.sla_ms, "rows": rows}


def print_table(results: list[dict]) -> None:
    t = Table(title="OpStream variants on the simulator (p99 per class; lanes busy, in lanes)")
    for col in ("model", "variant", "high p99", "vs base", "low p99", "vs base", "lanes busy"):
        t.add_column(col, justify="right")
    for res in results:
        for r in res["rows"]:
            t.add_row(
                res["model"], r["variant"], f"{r['high_p99_ms']:.2f}", f"{r['high_change']:+.1%}",
                f"{r['low_p99_ms']:.2f}", f"{r['low_ratio']:.2f}x", f"{r['lanes_busy']:.3f}",
            )  # fmt: skip
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="rmc2:160,dien:124", help="MODEL:QPS,...")
    ap.add_argument("--classes", default="high:0.2:10,low:0.8:1", help="both take the SLA")
    ap.add_argument("--sla-x", type=float, default=20.0)
    ap.add_argument("--scale", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lanes", type=int, default=2)
    ap.add_argument("--duration", type=float, default=20.0, help="simulated seconds per run")
    ap.add_argument("--variant", action="append", help="NAME=JSON of opstream options")
    ap.add_argument("--json")
    a = ap.parse_args()
    variants: dict[str, dict] = {}
    try:
        models = [(m, float(q)) for m, _, q in (s.partition(":") for s in a.models.split(","))]
        for spec in a.variant or []:
            label, _, opts = spec.partition("=")
            variants[label] = json.loads(opts)
            OpStreamOptions.from_dict(variants[label])
    except (ValueError, TypeError, AssertionError) as e:
        ap.error(f"bad --models or --variant: {e}")
    results = [run_model(m, q, variants, a) for m, q in models]
    print_table(results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": results, "argv": vars(a)}, f, indent=2)


if __name__ == "__main__":
    main()
