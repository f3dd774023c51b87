"""How close to the peak can a request policy get at an SLA? (issue 3: `dynamic` >= 0.8.)

Three numbers per configuration, side by side:

1. **Ideal**: the simulator's latency-bounded throughput (same policies, same workload) on
   lanes that cost exactly what `recsched peak` measured per batch size (2 lanes busy at once,
   cycled inputs), with no engine cost, no interference and no jitter, over the peak. No
   real engine can beat it: it is the bound the SLA and the query-size mix leave.
2. **Serving task cost**: the real engine's lane tasks at a few offered rates (`--real-qps`),
   each against what the peak says a batch of its size costs; their ratio (`inflation`).
3. **Ideal x inflation**: the simulator again with every task `inflation` times slower: what
   the measured lane cost alone leaves of the bound.
4. **Closed loops** (`--closed-rounds N`), the production size mix with no arrival process:
   the bare forward on two threads back to back (what the mix costs per item), fixed
   1,024-item batches the same way (the peak's regime), and the engine with `--inflight`
   queries kept in flight (what the engine's own path between tasks costs: lane utilization).

    python benchmarks/efficiency_bound.py --model rmc1 --sla-x 20 --real-qps 400,800 \
        --json benchmarks/results/efficiency_bound_rmc1.json

Minutes on 2 cores (the simulated searches take most of it); never run by tests.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from recsched.bench import calibrate
from recsched.bench.capacity import find_capacity
from recsched.bench.setup import Setup, default_lanes
from recsched.server.predict import whole_s_from_profile
from recsched.sim.run import lane_profile, scaled_profile, simulate
from recsched.workload.sizes import parse_sizes


def ideal_profile(profile: dict, peak: dict, lanes: int, threads: int) -> dict:
    """`profile` with the whole-forward times the peak measured per lane (batch b on one of
    `lanes` lanes busy at once: b / (items/s / lanes)); batch sizes the peak did not time are
    scaled by the ratio at the smallest one it did. No serving correction."""
    per = peak["per_config"].get(f"{lanes}x{threads}") or peak["per_batch"]
    timed = {int(b): int(b) / (r / lanes) * 1e3 for b, r in per.items()}
    out = scaled_profile(profile, 1.0)
    smallest = min(timed)
    i0 = out["batch_sizes"].index(smallest)
    below = timed[smallest] / out["whole_ms"][i0]
    out["whole_ms"] = [
        timed.get(b, v * below if b < smallest else v)
        for b, v in zip(out["batch_sizes"], out["whole_ms"], strict=True)
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--sla-x", type=float, default=20.0)
    ap.add_argument("--sla-ms", type=float, help="instead of --sla-x")
    ap.add_argument("--sizes", default="production")
    ap.add_argument("--configs", default="whole,dynamic:64:1,dynamic:256:1,dynamic:512:1,"
                    "dynamic:1024:0.5,dynamic:1024:1,dynamic:1024:2",
                    help="request[:B:merge ms], comma-separated")  # fmt: skip
    ap.add_argument("--sim-seconds", type=float, default=30.0, help="per simulated run")
    ap.add_argument("--real-qps", default="", help="real runs at these rates (task cost)")
    ap.add_argument("--real-config", default="dynamic:1024:2")
    ap.add_argument("--real-seconds", type=float, default=5.0)
    ap.add_argument(
        "--capacity-rounds",
        type=int,
        default=0,
        help="also measure each config's real capacity, rounds interleaved",
    )
    ap.add_argument("--capacity-seconds", type=float, default=3.0)
    ap.add_argument("--closed-rounds", type=int, default=0)
    ap.add_argument("--inflight", type=int, default=8)
    ap.add_argument("--json")
    a = ap.parse_args()

    s = Setup.make(a.model, "small", 0, sizes=a.sizes, sla_ms=a.sla_ms, sla_x=a.sla_x)
    lanes, tpl = default_lanes()
    peak = calibrate.peak(s.adapter)
    ideal = ideal_profile(lane_profile(s.adapter, tpl), peak, lanes, tpl)
    mean_items = parse_sizes(a.sizes).mean()
    print(f"{a.model}: SLA p95 {s.sla_ms:.2f} ms, peak {peak['peak_items_per_s']:,.0f} items/s "
          f"(batch {peak['best_batch']}, {peak['best_config']}), mean query "
          f"{mean_items:.1f} items, lanes {lanes}x{tpl}")  # fmt: skip
    print("ideal lane ms per batch:", dict(zip(ideal["batch_sizes"],
          [round(v, 3) for v in ideal["whole_ms"]], strict=True)))  # fmt: skip

    def parse(spec: str) -> dict:
        parts = spec.split(":")
        kw: dict = {"request": parts[0]}
        if len(parts) > 1:
            kw["batch_size"] = int(parts[1])
        if len(parts) > 2:
            kw["merge_delay_ms"] = float(parts[2])
        return kw

    def sim_capacity(kw: dict, profile: dict) -> float:
        cfg = s.config("baseline", **kw)

        def run(qps: float) -> dict:
            return simulate(
                a.model, cfg, profile, qps=qps, duration_s=a.sim_seconds, sizes=a.sizes,
                sla_ms=s.sla_ms, interference="none", task_overhead_s=0.0, seed=0,
            )  # fmt: skip

        return find_capacity(run, start_qps=s.start_qps(cfg), max_runs=16, rel_tol=0.02).qps

    out: dict = {
        "model": a.model, "sla_ms": s.sla_ms, "sizes": a.sizes, "mean_items": mean_items,
        "peak_items_per_s": peak["peak_items_per_s"], "lanes": [lanes, tpl],
        "ideal_whole_ms": dict(zip(ideal["batch_sizes"], ideal["whole_ms"], strict=True)),
        "ideal": [], "real": [],
    }  # fmt: skip
    print(f"\n{'config':18s} {'ideal qps':>10s} {'ideal eff':>10s}")
    specs = [c for c in a.configs.split(",") if c]
    for spec in specs:
        qps = sim_capacity(parse(spec), ideal)
        eff = qps * mean_items / peak["peak_items_per_s"]
        out["ideal"].append({"config": spec, "qps": qps, "efficiency": eff})
        print(f"{spec:18s} {qps:10.1f} {eff:10.3f}", flush=True)

    if a.capacity_rounds:
        kws = [parse(c) for c in specs]
        out["capacity"] = real_capacities(s, kws, specs, a, mean_items, peak)
    if a.closed_rounds:
        out["closed"] = closed_loops(s, a, lanes, tpl)
    rates = [float(x) for x in a.real_qps.split(",") if x]
    if not rates:
        _write(a.json, out)
        return
    kw = parse(a.real_config)
    ideal_whole_s = whole_s_from_profile(ideal)  # the simulator's interpolation
    run = s.run_fn(s.config("baseline", **kw), a.real_config, a.real_seconds, trace=True)
    print(f"\nreal {a.real_config}: lane tasks against the peak's cost of the same batch size")
    inflations = []
    for q in rates:
        r = run(q)
        tasks = np.array(r.pop("lane_tasks"))
        real_s, items = tasks[:, 1], tasks[:, 0]
        want_s = np.array([ideal_whole_s(int(n)) for n in items])
        infl = float(real_s.sum() / want_s.sum())
        inflations.append(infl)
        bins = {}
        for lo, hi in ((1, 31), (32, 127), (128, 511), (512, 1024)):
            m = (items >= lo) & (items <= hi)
            if m.any():
                ratio = float(np.median(real_s[m] / want_s[m]))
                bins[f"{lo}-{hi}"] = {"tasks": int(m.sum()), "ratio_median": ratio}
        row = {
            "offered_qps": q, "p95_ms": r["latency_ms"]["p95"], "sla_met": r["sla_met"],
            "completed_items_per_s": r["completed_items_per_s"],
            "lane_utilization": r["lane_utilization"], "late_issues": r["late_issues"],
            "tasks": len(tasks), "mean_task_items": float(items.mean()),
            "inflation": infl, "by_size": bins,
        }  # fmt: skip
        out["real"].append(row)
        print(f"  {q:7.1f} qps  p95 {row['p95_ms']:7.2f} ms  met {row['sla_met']}  util "
              f"{np.mean(row['lane_utilization']):.2f}  tasks {len(tasks)} (mean "
              f"{row['mean_task_items']:.0f} items)  inflation {infl:.2f}  by size "
              + " ".join(f"{k}:{v['ratio_median']:.2f}" for k, v in bins.items()),
              flush=True)  # fmt: skip
    infl = float(np.median(inflations))
    qps = sim_capacity(kw, scaled_profile(ideal, infl))
    eff = qps * mean_items / peak["peak_items_per_s"]
    out["ideal_x_inflation"] = {"config": a.real_config, "inflation": infl, "qps": qps,
                                "efficiency": eff}  # fmt: skip
    print(f"\nideal x {infl:.2f} ({a.real_config}): {qps:.1f} qps, efficiency {eff:.3f}")
    _write(a.json, out)


def real_capacities(s: Setup, kws: list[dict], specs: list[str], a, mean_items: float,
                    peak: dict) -> list[dict]:  # fmt: skip
    """Each config's latency-bounded throughput on the real engine, `a.capacity_rounds`
    rounds, the configs interleaved within a round (the machine drifts)."""
    rows = []
    print(f"\nreal capacity at p95 <= {s.sla_ms:.2f} ms ({a.capacity_rounds} rounds)")
    for rnd in range(a.capacity_rounds):
        for spec, kw in zip(specs, kws, strict=True):
            r = s.capacity("baseline", a.capacity_seconds, **kw)
            qps = r["latency_bounded_qps"]
            eff = qps * mean_items / peak["peak_items_per_s"]
            rows.append({"round": rnd, "config": spec, "qps": qps, "efficiency": eff,
                         "measured_efficiency": r.get("efficiency")})  # fmt: skip
            print(f"  round {rnd} {spec:18s} {qps:8.1f} qps  efficiency {eff:.3f}", flush=True)
    return rows


def closed_loops(s: Setup, a, lanes: int, tpl: int, seconds: float = 3.0) -> list[dict]:
    """Items/s of the size mix back to back: bare forwards on `lanes` threads (each query one
    forward), fixed 1,024-row forwards, and the engine (`baseline`) with `a.inflight` queries
    in flight; rounds interleaved."""
    import threading
    import time

    import torch

    from recsched.bench.run import run_closed_loop, warm_up
    from recsched.engine import Engine

    pool = s.pool()
    forward = s.adapter.runner()
    mix = np.minimum(parse_sizes(a.sizes).sample(4000, np.random.default_rng(0)), pool.rows)

    def bare(sizes: np.ndarray) -> float:
        done = [0] * lanes

        def lane(i: int) -> None:
            torch.set_num_threads(tpl)
            rng = np.random.default_rng(i)
            end, k = time.perf_counter() + seconds, i
            with torch.inference_mode():
                while time.perf_counter() < end:
                    n = int(sizes[k % len(sizes)])
                    forward(pool.take(int(rng.integers(0, pool.rows - n + 1)), n))
                    done[i] += n
                    k += lanes

        t0 = time.perf_counter()
        ts = [threading.Thread(target=lane, args=(i,)) for i in range(lanes)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return sum(done) / (time.perf_counter() - t0)

    def engine() -> tuple[float, float]:
        with Engine(s.adapter, s.config("baseline"), validate=False) as eng:
            warm_up(eng, pool, (1, 64, 256, 1024))
            r = run_closed_loop(eng, pool, mix, a.inflight, seconds)
        return r["items_per_s"], r["lane_utilization"]

    rows = []
    print(f"\nclosed loops, {lanes} lanes x {tpl} thread(s), items/s")
    for rnd in range(a.closed_rounds):
        mix_s, fixed_s = bare(mix), bare(np.array([min(1024, pool.rows)]))
        eng_s, util = engine()
        rows.append({"round": rnd, "bare_mix": mix_s, "bare_fixed_1024": fixed_s,
                     "engine_mix": eng_s, "engine_lane_utilization": util})  # fmt: skip
        print(
            f"  round {rnd}: bare mix {mix_s:9,.0f}  bare 1024 {fixed_s:9,.0f}  engine mix "
            f"{eng_s:9,.0f} (lanes busy {util:.2f}, {a.inflight} in flight)",
            flush=True,
        )
    return rows


def _write(path: str | None, out: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
