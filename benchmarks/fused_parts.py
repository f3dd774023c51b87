"""A merged batch's concatenation inside the compiled forward, or in Python (issue 3).

`dynamic` merges small queries into one batch: the lane concatenates each input tensor of
the parts and runs the model. In Python that is one `torch.cat` per input tensor plus the
forward, each a GIL crossing where the lane can wait for another thread's Python (up to the
switch interval) and a wake-up; `Compiled.parts` does all of it in one TorchScript call.

This runs the engine in a closed loop (`--inflight` queries of the production size mix kept
in flight, `dynamic`), alternating the fused path (the default) with the Python one, round by
round, and reports per variant: items/s, lane utilization, the share of the lanes' busy time
their threads ran (`LaneStats.cpu_s` / `busy_s`), and lane-seconds per 1,000 items.

    python benchmarks/fused_parts.py --models rmc1,din --rounds 4 \
        --json benchmarks/results/fused_parts.json

About a minute per model on 2 cores; never run by tests.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recsched.bench.run import run_closed_loop, warm_up
from recsched.bench.setup import Setup
from recsched.engine import Engine
from recsched.models.compiled import python_parts
from recsched.workload.sizes import parse_sizes

VARIANTS = ("fused", "python")
WARM_SIZES = (1, 64, 256, 1024)  # each size class once, twice over, before the loop


def closed_loop(s: Setup, variant: str, inflight: int, seconds: float, mix: np.ndarray) -> dict:
    """One closed-loop run of the engine with `variant` parts (`run_closed_loop`)."""
    pool = s.pool()
    eng = Engine(s.adapter, s.config("dynamic"), validate=False)
    if variant == "python":
        eng.forward_parts = python_parts(eng.forward)
    with eng:
        warm_up(eng, pool, WARM_SIZES)
        return {"variant": variant, **run_closed_loop(eng, pool, mix, inflight, seconds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="rmc1,din")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=4.0, help="per closed-loop run")
    ap.add_argument("--inflight", type=int, default=8)
    ap.add_argument("--sizes", default="production")
    ap.add_argument("--json")
    a = ap.parse_args()
    out: dict = {"rounds": a.rounds, "seconds": a.seconds, "inflight": a.inflight, "models": {}}
    for model in a.models.split(","):
        s = Setup.make(model, "small", 0, sizes=a.sizes)
        assert s.adapter.compiled().parts_kind == "torchscript", "nothing fused to compare"
        pool = s.pool()
        mix = np.minimum(parse_sizes(a.sizes).sample(4000, np.random.default_rng(0)), pool.rows)
        print(f"{model}: dynamic {s.config('dynamic').batch_size}, {a.inflight} in flight")
        rows = []
        for rnd in range(a.rounds):
            order = VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]
            for v in order:
                r = closed_loop(s, v, a.inflight, a.seconds, mix) | {"round": rnd}
                rows.append(r)
                print(f"  round {rnd} {v:>6}: {r['items_per_s']:9,.0f} items/s, lanes busy "
                      f"{r['lane_utilization']:.2f}, running {r['lane_running']:.2f} of busy, "
                      f"{r['lane_ms_per_1k_items']:.2f} lane-ms/1k items", flush=True)  # fmt: skip
        summary = {}
        for v in VARIANTS:
            rs = [r for r in rows if r["variant"] == v]
            keys = ("items_per_s", "lane_running", "lane_ms_per_1k_items")
            summary[v] = {k: float(np.median([r[k] for r in rs])) for k in keys}
        by = {(r["round"], r["variant"]): r["items_per_s"] for r in rows}
        ratios = [by[(k, "fused")] / by[(k, "python")] for k in range(a.rounds)]
        summary["fused_over_python_items_per_s"] = ratios
        print(f"  medians: {summary['fused']} vs {summary['python']}; fused / python per "
              f"round: {', '.join(f'{x:.3f}' for x in ratios)}")  # fmt: skip
        out["models"][model] = {"runs": rows, "summary": summary}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
