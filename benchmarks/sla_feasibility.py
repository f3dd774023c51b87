"""Can any scheduler meet a tight SLA? Per model, the SLA that `--sla-x K` sets (K x the
latency of a median-size query alone), against the p95 over the query-size distribution of a
query's own work: alone on one lane (what the baseline serves) and split perfectly over all
lanes (the best any request-level split could do, with no queueing and warm lanes), from the
cached profile of the served forward.

    python benchmarks/sla_feasibility.py --sla-x 5 --json benchmarks/results/sla_feasibility_x5.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from recsched.bench import calibrate
from recsched.bench.setup import Setup
from recsched.graph import build_graph
from recsched.graph.cost import CostModel
from recsched.models.registry import list_models
from recsched.workload.sizes import parse_sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(list_models()))
    ap.add_argument("--sla-x", type=float, default=5.0)
    ap.add_argument("--sizes", default="production")
    ap.add_argument("--lanes", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    sizes = parse_sizes(a.sizes).sample(5000, np.random.default_rng(0))
    rows = []
    print(f"{'model':6s} {'SLA ms':>8s} {'p95 alone':>10s} {'p95 split':>10s}")
    for m in a.models.split(","):
        s = Setup.make(m, "small", 0, sizes=a.sizes, sla_x=a.sla_x)
        info = build_graph(s.adapter, "coarse").info
        cost = CostModel.from_profile(calibrate.profile(s.adapter), "coarse", info)
        alone = np.array([cost.whole_s(int(n)) for n in sizes]) * 1e3
        row = {
            "model": m,
            "sla_ms": s.sla_ms,
            "p95_alone_ms": float(np.percentile(alone, 95)),
            "p95_split_ms": float(np.percentile(alone / a.lanes, 95)),
        }
        rows.append(row)
        marks = [" (misses)" if row[k] > s.sla_ms else "" for k in ("p95_alone_ms", "p95_split_ms")]
        print(
            f"{m:6s} {s.sla_ms:8.2f} {row['p95_alone_ms']:10.2f}{marks[0]} "
            f"{row['p95_split_ms']:10.2f}{marks[1]}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"argv": vars(a), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
