"""Simulator speed: simulated queries per second of wall time, and a 1,000-server day.

1. `single`: one server, `baseline` (whole + sequential) and `dynamic` presets, Poisson load
   at ~70% utilisation, analytic round-number costs. Reports simulated queries per wall
   second (and per CPU second of this process: the machine may be shared) for the whole
   `simulate()` call and for the event loop alone, and where the time
   goes: inside `SchedulerCore` (admit/step/complete, i.e. the shared policies and their
   messages) vs the simulator's own code (events, lanes, balancer, bookkeeping).
   `baseline` takes the exact whole+sequential fast path (`recsched.sim.fastpath`);
   `--event-loop` forces the policy-driven event loop for every preset.
2. `cluster`: `--servers` servers (default 1000) under a diurnal day compressed into
   `--hours` hours of simulated time (default 1), `least`/`p2c`/`random` balancer, at
   `--qps-per-server` mean load. Reports queries, wall time and queries per second.

    python benchmarks/sim_speed.py single --queries 200000
    python benchmarks/sim_speed.py single --queries 200000 --event-loop
    python benchmarks/sim_speed.py cluster --servers 1000 --hours 1 --qps-per-server 30

Not a test: it takes minutes on a 2-core machine, and its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

from recsched.config import preset
from recsched.sched.core import SchedulerCore
from recsched.sim.fidelity import estimated_capacity_qps
from recsched.sim.run import simulate


class RoundCost:
    """Analytic costs: 0.5 ms + 4 us per item for a whole batch; one op of 50 us."""

    dispatch_s = 0.0

    def whole_s(self, batch: int) -> float:
        return 5e-4 + 4e-6 * batch

    def op_s(self, op: int, batch: int) -> float:
        return 5e-5


def _timed_core() -> tuple[dict[str, float], dict[str, int], callable]:
    """Wrap SchedulerCore's entry points with wall-time accumulators; returns an undo."""
    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    saved = {}
    for name in ("admit", "step", "complete"):
        fn = getattr(SchedulerCore, name)
        saved[name] = fn

        def wrapped(self, *a, _fn=fn, _name=name):
            t = time.perf_counter()
            try:
                return _fn(self, *a)
            finally:
                spent[_name] += time.perf_counter() - t
                calls[_name] += 1

        setattr(SchedulerCore, name, wrapped)

    def undo() -> None:
        for name, fn in saved.items():
            setattr(SchedulerCore, name, fn)

    return spent, calls, undo


def _timer_overhead() -> float:
    """Seconds one `perf_counter` pair plus a wrapper call adds (subtracted per call)."""

    def f(x):
        return x

    def w(x):
        t = time.perf_counter()
        try:
            return f(x)
        finally:
            time.perf_counter() - t

    n = 200_000
    t0 = time.perf_counter()
    for i in range(n):
        f(i)
    t1 = time.perf_counter()
    for i in range(n):
        w(i)
    t2 = time.perf_counter()
    return max(0.0, ((t2 - t1) - (t1 - t0)) / n)


def single(args: argparse.Namespace) -> dict:
    out = {}
    cost = RoundCost()
    for name in args.presets.split(","):
        cfg = preset(name, lanes=2)
        qps = 0.7 * estimated_capacity_qps(cost, cfg, "production")
        dur = args.queries / qps
        kw = dict(qps=qps, duration_s=dur, sla_ms=50.0, seed=1, interference="none")
        if args.event_loop:
            kw["fast"] = False
        c0 = time.process_time()
        r = simulate("bench", cfg, cost, **kw)
        cpu = time.process_time() - c0
        row = {
            "queries": r["queries"],
            "fast_path": r["sim_fast_path"],
            "qps": qps,
            "p95_ms": r["latency_ms"]["p95"],
            "sim_wall_s": r["sim_wall_s"],
            "event_loop_s": r["sim_loop_s"],
            "queries_per_wall_s": r["sim_queries_per_s"],
            "queries_per_loop_s": r["sim_loop_queries_per_s"],
            "sim_cpu_s": cpu,
            "queries_per_cpu_s": r["queries"] / cpu,
        }
        if args.breakdown and not r["sim_fast_path"]:  # the fast path runs no SchedulerCore
            spent, calls, undo = _timed_core()
            try:
                r2 = simulate("bench", cfg, cost, **kw)
            finally:
                undo()
            over = _timer_overhead() * sum(calls.values())
            core = sum(spent.values()) - over
            loop = r2["sim_loop_s"] - over
            row["core_s"] = core
            row["core_share"] = core / loop
            row["core_us_per_query"] = 1e6 * core / r2["queries"]
            row["sim_us_per_query"] = 1e6 * (loop - core) / r2["queries"]
            row["core_calls"] = dict(calls)
        out[name] = row
        print(name, json.dumps(row, indent=1), flush=True)
    return out


def cluster(args: argparse.Namespace) -> dict:
    cost = RoundCost()
    cfg = preset(args.preset, lanes=2)
    dur = args.hours * 3600.0
    qps = args.qps_per_server * args.servers
    t0 = time.perf_counter()
    c0 = time.process_time()
    done = [0]

    def progress(t: float, n: int) -> None:
        if n - done[0] >= 1_000_000:
            done[0] = n
            el = time.perf_counter() - t0
            msg = f"  sim t={t:8.1f}s  queries={n:,}  wall={el:6.1f}s  {n / el:,.0f} q/s"
            print(msg, flush=True)

    r = simulate(
        "bench", cfg, cost, qps=qps, duration_s=dur, servers=args.servers,
        balancer=args.balancer, arrivals=f"diurnal:{dur}:0.5", sla_ms=50.0, seed=1,
        interference="none", progress=progress, fast=False if args.event_loop else None,
    )  # fmt: skip
    row = {
        "servers": args.servers,
        "simulated_s": dur,
        "balancer": args.balancer,
        "qps_per_server": args.qps_per_server,
        "fast_path": r["sim_fast_path"],
        "queries": r["queries"],
        "p95_ms": r["latency_ms"]["p95"],
        "mean_lane_utilization": sum(r["lane_utilization"]) / len(r["lane_utilization"]),
        "sim_wall_s": r["sim_wall_s"],
        "queries_per_wall_s": r["queries"] / r["sim_wall_s"],
        "sim_cpu_s": time.process_time() - c0,
        "queries_per_cpu_s": r["queries"] / (time.process_time() - c0),
        "events": r["sim_events"],
    }
    print(json.dumps(row, indent=1))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("single")
    s.add_argument("--queries", type=int, default=200_000)
    s.add_argument("--presets", default="baseline,dynamic")
    s.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    s.add_argument("--event-loop", action="store_true", help="never the fast path")
    c = sub.add_parser("cluster")
    c.add_argument("--servers", type=int, default=1000)
    c.add_argument("--hours", type=float, default=1.0)
    c.add_argument("--qps-per-server", type=float, default=30.0)
    c.add_argument("--balancer", default="least")
    c.add_argument("--preset", default="baseline")
    c.add_argument("--event-loop", action="store_true", help="never the fast path")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    res = single(args) if args.cmd == "single" else cluster(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
