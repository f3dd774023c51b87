"""recsched on Ray Serve: latency-bounded throughput with 1, 2 and 4 replicas vs in-process,
the recsched router vs Ray's default router (high-value p99), and the simulator's cluster
model vs the Ray deployment on the same scenario.

Every Ray start runs in a fresh network namespace with only loopback (the script re-runs
itself through .ci/ray_netns.sh). Load: the open-loop KServe v2 generator of
benchmarks/http_vs_inprocess.py (Poisson arrivals, production sizes, binary tensors) against
Serve's proxy on 127.0.0.1. Each Ray run also reads the replicas' merged latency histograms
(the cluster tail the tuner sees, `recsched.serving.stats`).

    python benchmarks/ray_replicas.py --replicas 1,2,4 --duration 2 --max-runs 5 --json r.json

Local Ray: --cpus logical CPUs (default 2: this machine's cores); a run of N replicas gives
each cpus/N CPUs (lanes = whole CPUs, at least 1). Minutes on 2 cores; never run by tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _http_bench():
    """benchmarks/http_vs_inprocess.py as a module (its open-loop HTTP load generator)."""
    spec = importlib.util.spec_from_file_location("http_vs_inprocess", ROOT / "benchmarks" /
                                                  "http_vs_inprocess.py")  # fmt: skip
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _p(r: dict, cls: str | None, key: str) -> float:
    lat = r["classes"][cls]["latency_ms"] if cls else r["latency_ms"]
    v = lat.get(key)
    return math.nan if v is None else float(v)


def ray_capacity(a, setup, cfg, n: int, router: str, hb, cost: dict, out: dict) -> dict:
    """Deploy `n` replicas, bracket-and-bisect the offered rate through HTTP."""
    from recsched.bench.capacity import find_capacity
    from recsched.serving.ray_deploy import RayCluster, RaySpec

    spec = RaySpec(a.model, cfg.to_dict(), scale=a.scale, seed=a.seed, replicas=n,
                   replica_cpus=a.cpus / n, router=router, cost=cost, classes=a.classes,
                   queue_capacity=256)  # fmt: skip
    t0 = time.monotonic()
    with RayCluster(spec, port=a.port, num_cpus=a.cpus) as cluster:
        startup = time.monotonic() - t0
        run_http = hb.http_run_fn(cluster.url, a.model, setup, a.duration)
        run_http(min(20.0, a.start_qps))  # warm-up

        def run(qps: float) -> dict:
            before = cluster.reports()
            r = run_http(qps)
            time.sleep(2 * spec.stats_period_s + 0.2)  # the replicas' next reports
            m, c = cluster.measure(before, cluster.reports(), qps, setup.sla_ms, setup.percentile)
            r["replica_tail_ms"] = {
                "p50": c.percentile_ms(50), "p95": c.percentile_ms(95),
                "p99": c.percentile_ms(99), "queries": c.hist.total(),
            }  # fmt: skip
            print(f"  ray x{n} {router:>8}: {qps:8.1f} qps  p95={_p(r, None, 'p95'):8.2f} ms  "
                  f"(replicas' own p95 {m.p_tail_ms:7.2f} ms)  "
                  f"{'meets' if r['sla_met'] else 'misses'}", flush=True)  # fmt: skip
            return r

        search = find_capacity(run, start_qps=a.start_qps * n, max_runs=a.max_runs, rel_tol=0.1)
    res = {"replicas": n, "router": router, "replica_cpus": spec.replica_cpus,
           "lanes_per_replica": spec.lanes(), "startup_s": startup,
           "latency_bounded_qps": search.qps, "runs": search.runs}  # fmt: skip
    out.setdefault("ray", []).append(res)
    return res


def router_duel(a, setup, cfg, n: int, qps: float, hb, cost: dict, out: dict) -> None:
    """Same mixed-value load at `qps` through each router; high-value p99 is the figure."""
    from recsched.serving.ray_deploy import RayCluster, RaySpec

    duel = []
    for router in ("default", "recsched"):
        spec = RaySpec(a.model, cfg.to_dict(), scale=a.scale, seed=a.seed, replicas=n,
                       replica_cpus=a.cpus / n, router=router, cost=cost, classes=a.mixed,
                       queue_capacity=256)  # fmt: skip
        with RayCluster(spec, port=a.port, num_cpus=a.cpus) as cluster:
            run = hb.http_run_fn(cluster.url, a.model, setup, a.duration)
            run(min(20.0, qps))  # warm-up
            rs = [run(qps) for _ in range(a.repeats)]
        for r in rs:
            row = {"router": router, "qps": qps, "hi_p99_ms": _p(r, "hi", "p99"),
                   "hi_p95_ms": _p(r, "hi", "p95"), "lo_p99_ms": _p(r, "lo", "p99"),
                   "all_p99_ms": _p(r, None, "p99"), "status": r["status"]}  # fmt: skip
            duel.append(row)
            print(f"  {router:>8} @ {qps:.0f} qps: high-value p99 {row['hi_p99_ms']:8.2f} ms, "
                  f"low-value p99 {row['lo_p99_ms']:8.2f} ms", flush=True)  # fmt: skip
    out["routers"] = duel


def sim_agreement(a, setup, cfg, out: dict) -> None:
    """The simulator's cluster (least-work balancer = the recsched router) at the rates the
    Ray runs measured; relative error of p50 and p95."""
    from recsched.bench import calibrate
    from recsched.sim.run import simulate

    prof = calibrate.profile(setup.adapter)
    rows = []
    for res in out.get("ray", []):
        if res["router"] != "recsched":
            continue
        n = res["replicas"]
        rcfg = cfg.replace(lanes=res["lanes_per_replica"], threads_per_lane=1)
        for r in res["runs"]:
            if r["status"].get("200", 0) < 0.9 * r["queries"]:
                continue  # overloaded runs: both sides diverge by construction
            s = simulate(a.model, rcfg, prof, qps=r["offered_qps"], duration_s=a.duration,
                         servers=n, balancer="least", sizes=setup.sizes, sla_ms=setup.sla_ms,
                         seed=setup.seed)  # fmt: skip
            row = {"replicas": n, "qps": r["offered_qps"]}
            for k in ("p50", "p95"):
                real, sim = _p(r, None, k), float(s["latency_ms"][k])
                row[f"ray_{k}_ms"], row[f"sim_{k}_ms"] = real, sim
                row[f"rel_err_{k}"] = (sim - real) / real if real else math.nan
            rows.append(row)
            print(f"  sim vs ray x{n} @ {row['qps']:.0f} qps: p50 {row['sim_p50_ms']:.2f} vs "
                  f"{row['ray_p50_ms']:.2f} ms, p95 {row['sim_p95_ms']:.2f} vs "
                  f"{row['ray_p95_ms']:.2f} ms", flush=True)  # fmt: skip
    out["sim_vs_ray"] = rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--preset", default="dynamic")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replicas", default="1,2,4")
    ap.add_argument("--cpus", type=int, default=2, help="logical CPUs of the local Ray")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per run (at least)")
    ap.add_argument("--max-runs", type=int, default=5, help="runs per capacity search")
    ap.add_argument("--start-qps", type=float, default=60.0, help="first rate per replica")
    ap.add_argument("--classes", default=None, help="classes of the capacity runs")
    ap.add_argument("--mixed", default="hi:0.2:10,lo:0.8:1", help="the router duel's classes")
    ap.add_argument("--duel-load", type=float, default=0.8, help="x the 2-replica capacity")
    ap.add_argument("--repeats", type=int, default=2, help="duel runs per router")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--skip-inprocess", action="store_true")
    ap.add_argument("--skip-duel", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    if os.environ.get("RECSCHED_NETNS") != "1":  # Ray only ever starts on loopback
        env = {**os.environ, "RECSCHED_NETNS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = ["bash", str(ROOT / ".ci" / "ray_netns.sh"), sys.executable, *sys.argv]
        sys.exit(subprocess.run(cmd, env=env).returncode)

    import ray

    from recsched.bench.capacity import find_capacity
    from recsched.bench.setup import Setup
    from recsched.serving.ray_deploy import cost_table, start_ray

    hb = _http_bench()
    setup = Setup.make(a.model, a.scale, a.seed, classes=a.classes)
    cfg = setup.config(a.preset)
    cost = cost_table(setup.adapter)
    out: dict = {"model": a.model, "preset": a.preset, "config": cfg.to_dict(),
                 "sla_ms": setup.sla_ms, "percentile": setup.percentile, "cpus": a.cpus,
                 "command": " ".join(sys.argv)}  # fmt: skip
    print(f"{a.model} {a.preset} ({cfg.lanes} lanes in-process), SLA p{setup.percentile:g} "
          f"<= {setup.sla_ms:.2f} ms", flush=True)  # fmt: skip
    if not a.skip_inprocess:
        run = setup.run_fn(cfg, a.preset, a.duration)
        s = find_capacity(run, start_qps=a.start_qps * cfg.lanes, max_runs=a.max_runs,
                          rel_tol=0.1)  # fmt: skip
        out["inprocess"] = {"latency_bounded_qps": s.qps, "runs": s.runs}
        print(f"in-process: {s.qps:.1f} qps", flush=True)
    start_ray(None, a.cpus, 200)
    try:
        caps = {}
        for n in (int(x) for x in a.replicas.split(",")):
            caps[n] = ray_capacity(a, setup, cfg, n, "recsched", hb, cost, out)
            print(f"ray x{n}: {caps[n]['latency_bounded_qps']:.1f} qps", flush=True)
        if not a.skip_duel:
            base = caps.get(2, next(iter(caps.values())))
            qps = max(10.0, a.duel_load * base["latency_bounded_qps"])
            setup_mixed = Setup.make(a.model, a.scale, a.seed, classes=a.mixed,
                                     sla_ms=setup.sla_ms)  # fmt: skip
            router_duel(a, setup_mixed, cfg, base["replicas"], qps, hb, cost, out)
    finally:
        ray.shutdown()
    sim_agreement(a, setup, cfg, out)
    inproc = out.get("inprocess", {}).get("latency_bounded_qps")
    for r in out["ray"]:
        r["ratio_vs_inprocess"] = r["latency_bounded_qps"] / inproc if inproc else None
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))
    print(
        json.dumps(
            {
                "inprocess_qps": inproc,
                "ray_qps": {r["replicas"]: r["latency_bounded_qps"] for r in out["ray"]},
            }
        )
    )


if __name__ == "__main__":
    main()
