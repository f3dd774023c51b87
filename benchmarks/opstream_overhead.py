"""OpStream's own time per dispatched task, without lanes, threads or the GIL.

The engine measures the policy's wall time inside its scheduling step (`opstream_mixed.py`:
~135 us per task on dien), where the step also waits for the GIL and for a core while lanes
and the driver run. Here the same policy runs on the simulator (simulated lanes, simulated
time, one thread), so what is timed is the policy's own CPU: `OpStream.update` plus
`OpStream.schedule` per task dispatched (median and p99 over scheduling steps, as
`opstream_mixed.Overhead` counts them), and the mean over the run with `OpStream.add` (a new
batch's analysis) included. `--cprofile N` lists the N
functions with the most own time inside the policy's calls.

    python benchmarks/opstream_overhead.py --models rmc1:400,din:25,dien:60 --json F

Request level `split` B=256 (as the OpStream benchmarks), `model` granularity (the preset's),
classes `high:0.2:10,low:0.8:1`, production sizes, Poisson arrivals, `--sla-x 20`, two lanes,
this machine's lane profile (as `--sim` runs). Not a test: timings.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

import numpy as np
from opstream_mixed import Overhead

from recsched.bench.setup import Setup
from recsched.config import preset
from recsched.sched.opstream import OpStream


def measure(model: str, qps: float, args: argparse.Namespace) -> dict:
    setup = Setup.make(model, classes=args.classes, sla_x=args.sla_x, seed=args.seed, sim=True)
    cfg = preset(
        "opstream", request="split", batch_size=args.batch_size, granularity=args.granularity,
        lanes=2, threads_per_lane=1,
    )  # fmt: skip
    run = setup.run_fn(cfg, "opstream", args.duration)
    ovh = Overhead()
    total = [0.0]
    upd, sch, add = OpStream.update, OpStream.schedule, OpStream.add

    def timed(fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                total[0] += time.perf_counter() - t

        return wrapper

    prof_obj = cProfile.Profile() if args.cprofile else None
    with ovh.patched():
        OpStream.update, OpStream.schedule = timed(OpStream.update), timed(OpStream.schedule)
        OpStream.add = timed(add)  # type: ignore[method-assign]
        try:
            if prof_obj is not None:
                prof_obj.enable()
            t0 = time.perf_counter()
            r = run(qps)
            wall = time.perf_counter() - t0
            if prof_obj is not None:
                prof_obj.disable()
        finally:
            OpStream.update, OpStream.schedule = upd, sch  # type: ignore[method-assign]
            OpStream.add = add  # type: ignore[method-assign]
    s = ovh.summary()
    tasks = s["tasks"]
    out = {
        "model": model,
        "qps": qps,
        "queries": r["queries"],
        "tasks": tasks,
        "per_task_median_us": s["task_median_us"],
        "per_task_p99_us": s["task_p99_us"],
        "per_task_mean_us": 1e6 * total[0] / max(1, tasks),
        "policy_s": total[0],
        "sim_wall_s": wall,
        "p95_ms": {c: v["latency_ms"]["p95"] for c, v in r.get("classes", {}).items()},
    }
    if prof_obj is not None:
        st = pstats.Stats(prof_obj).sort_stats(args.sort)
        st.print_stats(args.cprofile)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="rmc1:400,din:25,dien:60", help="model:qps,...")
    ap.add_argument("--duration", type=float, default=30.0, help="simulated seconds")
    ap.add_argument("--classes", default="high:0.2:10,low:0.8:1")
    ap.add_argument("--sla-x", type=float, default=20.0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--granularity", default="model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cprofile", type=int, default=0, help="print the top N functions")
    ap.add_argument("--sort", default="tottime", help="--cprofile order: tottime, cumulative")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for spec in args.models.split(","):
        model, qps = spec.split(":")
        runs = [measure(model, float(qps), args) for _ in range(args.repeats)]
        row = dict(runs[-1])
        for k in ("per_task_median_us", "per_task_p99_us", "per_task_mean_us"):
            row[k] = float(np.median([x[k] for x in runs]))
        row["runs"] = runs
        rows.append(row)
        print(
            f"{model} at {qps} qps: {row['tasks']} tasks, policy per task median "
            f"{row['per_task_median_us']:.1f} us, p99 {row['per_task_p99_us']:.1f} us, "
            f"mean with admission {row['per_task_mean_us']:.1f} us (median of {args.repeats} runs)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
