"""What the `auto` granularity picks per model, and the lane times it weighed (issue 5).

For each model, its cached profile (`recsched profile`, measured on a miss) and the
production size mix cut by several request levels (`request.saturated_batches`), this prints
`choose_granularity`'s predicted lane time per 1,000 items at `model`, `coarse` and `fine`
and its choice; `--refresh` measures the profiles again (two profiles of one model differ by
up to 25-40% at a batch size here, which is what the choice's margin is for).

    python benchmarks/granularity_choice.py --models rmc1,rmc2,rmc3,ncf,wnd,mtwnd,din,dien \
        --json benchmarks/results/granularity_choice.json

Seconds per model with a cached profile, 5-40 s on a miss; never run by tests.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recsched.bench import calibrate
from recsched.bench.setup import load
from recsched.sched.opstream import choose_granularity
from recsched.sched.request import saturated_batches
from recsched.workload.sizes import parse_sizes

LEVELS = (  # (request, B, merge delay s)
    ("whole", 1024, 0.0),
    ("split", 256, 0.0),
    ("split", 64, 0.0),
    ("dynamic", 1024, 0.002),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="rmc1,din")
    ap.add_argument("--sizes", default="production")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--refresh", action="store_true", help="measure the profiles again")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    mix = parse_sizes(a.sizes).sample(4096, np.random.default_rng(a.seed))
    sizes = [int(n) for n in mix]
    rows = []
    for m in a.models.split(","):
        prof = calibrate.profile(load(m), refresh=a.refresh)
        for req, b, delay in LEVELS:
            c = choose_granularity(prof, saturated_batches(sizes, req, b, delay))
            row = {"model": m, "request": req, "batch_size": b, "merge_delay_s": delay}
            rows.append({**row, **c.to_dict()})
            times = "  ".join(f"{g} {ms:7.1f}" for g, ms in c.lane_ms_per_kitem.items())
            print(f"{m:6s} {req:8s} B={b:<5d} -> {c.choice:6s}  lane ms/1k items: {times}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"sizes": a.sizes, "seed": a.seed, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
