"""How the best batch size moves with the SLA and with the query-size distribution.

DeepRecSys' finding: the batch size that maximises latency-bounded throughput grows with the
SLA (a loose target lets large batches amortise fixed costs) and shrinks as queries get
larger (large queries must be split over lanes to meet a tail target). This tunes DeepRecSched
(`recsched.bench.tune.tune`, the same tuner as `recsched tune`) for each (SLA, size
distribution) cell and prints the best configuration.

`--sim` tunes on the simulator with this machine's measured profile (deterministic, fast,
no noise from other jobs; tuned configurations are cached under keys of their own); without
it, on the real engine (minutes per cell, noisy on a shared machine).

    python benchmarks/batch_size_table.py --model rmc1 --sim \
        --json benchmarks/results/batch_size_table_sim.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from recsched.bench.setup import Setup
from recsched.bench.tune import tune

console = Console()
SIZES = ("fixed:60", "lognormal:60:0.8", "production")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--sla-x", default="5,10,20,40")
    ap.add_argument("--sizes", default=",".join(SIZES), help="size specs, ';'-free, comma list")
    ap.add_argument("--budget", type=int, default=10)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--sim", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    for sizes in a.sizes.split(","):
        for x in (float(v) for v in a.sla_x.split(",")):
            s = Setup.make(a.model, sizes=sizes, sla_x=x, sim=a.sim)
            doc = tune(s, budget=a.budget, duration=a.duration, refresh=True)
            best = doc["best"]  # the best configuration's fields, qps, p95_ms
            row = {
                "sizes": sizes, "sla_x": x, "sla_ms": s.sla_ms, "batch_size": best["batch_size"],
                "merge_delay_ms": best["merge_delay_ms"], "order": best.get("order", "fifo"),
                "lanes": best["lanes"], "qps": best["qps"], "runs": doc["runs"],
            }  # fmt: skip
            rows.append(row)
            console.print(row)
    where = "simulated" if a.sim else "real engine"
    t = Table(title=f"best DeepRecSched configuration, {a.model} ({where})")
    for col in ("sizes", "--sla-x", "SLA ms", "best B", "merge ms", "order", "qps"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            r["sizes"], f"{r['sla_x']:g}", f"{r['sla_ms']:.2f}", str(r["batch_size"]),
            f"{r['merge_delay_ms']:g}", r["order"], f"{r['qps']:.1f}",
        )  # fmt: skip
    console.print(t)
    if a.json:
        doc = {"model": a.model, "sim": a.sim, "rows": rows}
        Path(a.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
