"""How well one factor, and one factor plus a fixed cost per task, describe served lane tasks.

`recsched fidelity --in-run` calibrates the simulator on the real runs' own lane tasks. This
runs the real engine (the baseline: whole queries) at a few offered rates with lane tracing,
and per size bin prints what the tasks took over the cached serving profile's prediction,
and how far each calibration's prediction lands from the measured time: one factor
(`fidelity.in_run_scale`, sum over sum) and `a x predicted + b` (`fidelity.in_run_fit`).

    python benchmarks/in_run_fit.py --model rmc1 --qps 300,600,850 --json F

Not a test: timings.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from recsched.bench.setup import Setup
from recsched.sim.fidelity import in_run_fit, in_run_scale
from recsched.sim.run import lane_profile, make_cost

BINS = ((1, 16), (16, 64), (64, 256), (256, 1025))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--qps", default="300,600,850")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--sla-x", type=float, default=20.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    s = Setup.make(a.model, sla_x=a.sla_x)
    cfg = s.config("baseline")
    cost = make_cost(lane_profile(s.adapter, cfg.threads_per_lane), "coarse")
    run = s.run_fn(cfg, "baseline", a.duration, trace=True)
    out = []
    for q in (float(x) for x in a.qps.split(",")):
        r = run(q)
        tasks = [(int(n), float(d)) for n, d in r["lane_tasks"]]
        items = np.array([n for n, _ in tasks])
        secs = np.array([d for _, d in tasks])
        pred = np.array([cost.whole_s(n) for n in items])
        scale = in_run_scale(tasks, cost.whole_s)
        fa, fb = in_run_fit(tasks, cost.whole_s)
        row = {"qps": q, "p95_ms": r["latency_ms"]["p95"], "tasks": len(tasks), "scale": scale,
               "fit_a": fa, "fit_b_s": fb, "bins": []}  # fmt: skip
        print(f"{q:.0f} qps: p95 {row['p95_ms']:.2f} ms, {len(tasks)} tasks, one factor "
              f"{scale:.2f}, fit {fa:.2f} x predicted + {fb * 1e6:.0f} us")  # fmt: skip
        for lo, hi in BINS:
            m = (items >= lo) & (items < hi)
            if m.sum() < 5:
                continue
            measured = float(secs[m].sum())
            b = {"items": [lo, hi - 1], "tasks": int(m.sum()),
                 "measured_over_profile": measured / float(pred[m].sum()),
                 "one_factor_over_measured": scale * float(pred[m].sum()) / measured,
                 "fit_over_measured": float((fa * pred[m] + fb).sum()) / measured}  # fmt: skip
            row["bins"].append(b)
            print(f"  items {lo}-{hi - 1}: {b['tasks']} tasks, measured / profile "
                  f"{b['measured_over_profile']:.2f}; predicted / measured: one factor "
                  f"{b['one_factor_over_measured']:.2f}, fit "
                  f"{b['fit_over_measured']:.2f}")  # fmt: skip
        out.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "sla_ms": s.sla_ms, "loads": out}, f, indent=2)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
