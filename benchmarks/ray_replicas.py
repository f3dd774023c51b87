"""recsched on Ray Serve: latency-bounded throughput with 1, 2 and 4 replicas vs in-process,
the recsched router vs Ray's default router (high-value p99), and the simulator's cluster
model vs the Ray deployment on the same scenario.

Every Ray start runs in a fresh network namespace with only loopback (the script re-runs
itself through .ci/ray_netns.sh). Load: the open-loop KServe v2 generator of
benchmarks/http_vs_inprocess.py (Poisson arrivals, production sizes, binary tensors) against
Serve's proxy on 127.0.0.1. Each Ray run also reads the replicas' merged latency histograms
(the cluster tail the tuner sees, `recsched.serving.stats`), their lane-busy seconds and the
CPU of Ray's processes by role. Each deployment first calibrates the simulator's front tier
(`front_calibration`); the simulator is then compared with every run (`sim_agreement`).

    python benchmarks/ray_replicas.py --replicas 1,2,4 --sla-ms 100 --duration 2 --max-runs 5 \
        --start-qps 10 --agree-loads 0.3,0.6,0.9 --json r.json

Local Ray: --cpus logical CPUs (default 2: this machine's cores); a run of N replicas gives
each cpus/N CPUs (lanes = whole CPUs, at least 1). Minutes on 2 cores; never run by tests.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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


def ray_processes() -> dict[str, list[int]]:
    """Ray's processes on this machine by role, from their titles: Serve's HTTP proxy, the
    front (ingress) replica, the engine replicas, and Ray's core (raylet, GCS)."""
    roles: dict[str, list[int]] = {"proxy": [], "front": [], "engines": [], "core": []}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            title = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ProxyActor" in title:
            roles["proxy"].append(int(d.name))
        elif "RecschedFront" in title:
            roles["front"].append(int(d.name))
        elif "RecschedEngine" in title:
            roles["engines"].append(int(d.name))
        elif "raylet" in title or "gcs_server" in title:
            roles["core"].append(int(d.name))
    return roles


def cpu_by_role(hb, roles: dict[str, list[int]]) -> dict[str, float]:
    out = {}
    for role, pids in roles.items():
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):
                total += hb.cpu_s(pid)
        out[role] = total
    return out


def lane_busy_s(before: list, after: list) -> float:
    """Lane-busy seconds of the engine replicas between two report snapshots."""
    old = {r.replica: sum(r.busy_s) for r in before}
    return sum(sum(r.busy_s) - old.get(r.replica, 0.0) for r in after)


def front_calibration(cluster, hb, setup, model: str, k: int, large: int, period_s: float) -> dict:
    """`k` queries of one item, then `k` of `large` items, sent one at a time (no queue
    anywhere): their round trips less the replicas' own latency for them give the
    simulator's front tier (`recsched.sim.front`) as a delay, per item + a distribution, no
    stages. Ray's CPU per request by process role (less what those processes spend idle) is
    recorded beside it: 25-50 ms per request here, more than the round trip, so it is not
    a FIFO service on the request's path; it is why the machine saturates early."""
    import asyncio

    from recsched.serving.stats import diff
    from recsched.sim.front import FrontModel

    async def trips(n: int) -> list[float]:
        bodies, http = hb.Bodies(setup), hb.RawClient(cluster.url)
        out = []
        for _ in range(k + 5):
            parts, headers = bodies.make(n, 0)
            t0 = time.perf_counter()
            status = await http.post(f"/v2/models/{model}/infer", parts, headers)
            out.append((time.perf_counter() - t0) * 1e3)
            assert status == 200, f"calibration request failed with HTTP {status}"
            await asyncio.sleep(0.03)
        await http.close()
        return out[5:]  # the first few open and warm the connection

    roles = ray_processes()
    idle0, t_idle = cpu_by_role(hb, roles), time.monotonic()
    time.sleep(3.0)  # Ray's processes spend CPU when idle too: measured, then subtracted
    rts, own, cpu = {}, {}, {}
    for n in (1, large):
        before, c0, t0 = cluster.reports(), cpu_by_role(hb, roles), time.monotonic()
        rts[n] = hb.run_async(trips(n))
        c1, t1 = cpu_by_role(hb, roles), time.monotonic()
        time.sleep(2 * period_s + 0.2)  # the replicas' next reports
        own[n] = diff(before, cluster.reports()).percentile_ms(50)
        cpu[n] = {}
        for r in c0:
            idle_rate = (c0[r] - idle0[r]) / (t0 - t_idle)
            cpu[n][r] = max(0.0, c1[r] - c0[r] - idle_rate * (t1 - t0)) / (k + 5) * 1e3
    rt = rts[1] + rts[large]
    sizes = [1] * len(rts[1]) + [large] * len(rts[large])
    server = [own[1]] * len(rts[1]) + [own[large]] * len(rts[large])
    front = FrontModel.from_idle(rt, server, sizes)
    for n in (1, large):
        print(f"  front at idle, {n:4d} items: round trip p50 {np.percentile(rts[n], 50):.1f} / "
              f"p95 {np.percentile(rts[n], 95):.1f} ms, replicas' own p50 {own[n]:.2f} ms, "
              f"CPU per request: proxy {cpu[n]['proxy']:.2f}, front {cpu[n]['front']:.2f}, "
              f"core {cpu[n]['core']:.2f} ms", flush=True)  # fmt: skip
    print(f"  front model: delay {front.delay_ms[len(front.delay_ms) // 2]:.1f} ms (median) + "
          f"{front.delay_ms_per_item * 1e3:.1f} us/item", flush=True)  # fmt: skip
    return {"front": front.to_dict(), "requests": k, "large": large,
            "round_trip_ms": {n: {p: float(np.percentile(rts[n], p)) for p in (5, 50, 95, 99)}
                              for n in rts},
            "replicas_p50_ms": own, "cpu_ms_per_request": cpu}  # fmt: skip


def ray_capacity(a, setup, cfg, n: int, router: str, hb, cost: dict, out: dict) -> dict:
    """Deploy `n` replicas, calibrate the front at idle, then bracket-and-bisect the offered
    rate through HTTP; each run records what the simulator's comparison needs (its
    workload's length, the replicas' lane-busy seconds, Ray's CPU per query by role)."""
    from recsched.bench.capacity import find_capacity
    from recsched.serving.ray_deploy import RayCluster, RaySpec

    spec = RaySpec(a.model, cfg.to_dict(), scale=a.scale, seed=a.seed, replicas=n,
                   replica_cpus=a.cpus / n, router=router, cost=cost, classes=a.classes,
                   queue_capacity=256)  # fmt: skip
    t0 = time.monotonic()
    with RayCluster(spec, port=a.port, num_cpus=a.cpus) as cluster:
        startup = time.monotonic() - t0
        hb.http_run_fn(cluster.url, a.model, setup, a.duration)(min(20.0, a.start_qps))  # warm
        calib = front_calibration(cluster, hb, setup, a.model, a.calib_requests, a.calib_large,
                                  spec.stats_period_s)  # fmt: skip
        roles = ray_processes()

        def run(qps: float) -> dict:
            d = setup.run_duration(qps, a.duration)
            before, cpu0 = cluster.reports(), cpu_by_role(hb, roles)
            r = hb.http_once(cluster.url, a.model, setup, qps, d, "raw", None)
            cpu1 = cpu_by_role(hb, roles)
            time.sleep(2 * spec.stats_period_s + 0.2)  # the replicas' next reports
            after = cluster.reports()
            m, c = cluster.measure(before, after, qps, setup.sla_ms, setup.percentile)
            q = max(1, r["queries"])
            r["duration_s"] = d
            r["lane_busy_s"] = lane_busy_s(before, after)
            r["ray_cpu_ms_per_query"] = {k: (cpu1[k] - cpu0[k]) / q * 1e3 for k in cpu0}
            r["replica_tail_ms"] = {
                "p50": c.percentile_ms(50), "p95": c.percentile_ms(95),
                "p99": c.percentile_ms(99), "queries": c.hist.total(),
            }  # fmt: skip
            print(f"  ray x{n} {router:>8}: {qps:8.1f} qps  p95={_p(r, None, 'p95'):8.2f} ms  "
                  f"(replicas' own p95 {m.p_tail_ms:7.2f} ms)  "
                  f"{'meets' if r['sla_met'] else 'misses'}", flush=True)  # fmt: skip
            return r

        search = find_capacity(run, start_qps=a.start_qps * n, max_runs=a.max_runs, rel_tol=0.1)
        extra = [run(f * search.qps) for f in a.agree_loads] if search.qps > 0 else []
    res = {"replicas": n, "router": router, "replica_cpus": spec.replica_cpus,
           "lanes_per_replica": spec.lanes(), "startup_s": startup, "front": calib,
           "latency_bounded_qps": search.qps, "runs": search.runs + extra}  # fmt: skip
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
            if a.duel_seconds:  # long runs: enough high-value queries for their p99
                rs = [hb.http_once(cluster.url, a.model, setup, qps, a.duel_seconds, "raw", None)
                      for _ in range(a.repeats)]  # fmt: skip
            else:
                rs = [run(qps) for _ in range(a.repeats)]
        for r in rs:
            row = {"router": router, "qps": qps, "hi_p99_ms": _p(r, "hi", "p99"),
                   "hi_p95_ms": _p(r, "hi", "p95"), "lo_p99_ms": _p(r, "lo", "p99"),
                   "all_p99_ms": _p(r, None, "p99"), "status": r["status"]}  # fmt: skip
            row["hi_queries"] = r["classes"].get("hi", {}).get("queries")
            duel.append(row)
            print(f"  {router:>8} @ {qps:.0f} qps: high-value p99 {row['hi_p99_ms']:8.2f} ms, "
                  f"low-value p99 {row['lo_p99_ms']:8.2f} ms", flush=True)  # fmt: skip
    out["routers"] = duel


def sim_agreement(a, setup, cfg, out: dict) -> None:
    """The simulator's cluster (least-work balancer = the recsched router) on each Ray run's
    own workload, two ways: the profile alone, and with Ray's front as calibrated at idle
    (`front_calibration`), the profile and the front both rescaled by one factor per run:
    the run's own lane-busy seconds over the simulator's (how much slower the shared cores
    ran everything under that load: Ray's processes, the lanes and the load generator all
    compete for them). Relative errors at p50 and p95; overloaded runs are left out."""
    from recsched.bench import calibrate
    from recsched.sim.front import FrontModel
    from recsched.sim.run import scaled_profile, simulate

    prof = calibrate.profile(setup.adapter)
    rows = []
    for res in out.get("ray", []):
        if res["router"] != "recsched":
            continue
        n = res["replicas"]
        rcfg = cfg.replace(lanes=res["lanes_per_replica"], threads_per_lane=1)
        front = FrontModel.from_dict(res["front"]["front"])  # calibrated at idle
        for r in res["runs"]:
            if r["status"].get("200", 0) < 0.9 * r["queries"] or not r.get("lane_busy_s"):
                continue  # overloaded runs: both sides diverge by construction
            qps, d = r["offered_qps"], r["duration_s"]
            wl = setup.load(qps, d).workload()  # the run's own queries

            def sim(profile, front=None, qps=qps, d=d, n=n, rcfg=rcfg, wl=wl):
                return simulate(a.model, rcfg, profile, qps=qps, duration_s=d, servers=n,
                                balancer="least", workload=wl, sla_ms=setup.sla_ms,
                                seed=setup.seed, front=front, interference="none")  # fmt: skip

            plain = sim(prof)
            scale = r["lane_busy_s"] / max(plain["lane_busy_s"], 1e-9)
            fronted = sim(scaled_profile(prof, scale), front.scaled(scale))
            row = {"replicas": n, "qps": qps, "lane_scale": scale,
                   "ray_cpu_ms_per_query": r["ray_cpu_ms_per_query"]}  # fmt: skip
            for k in ("p50", "p95"):
                real = _p(r, None, k)
                row[f"ray_{k}_ms"] = real
                for tag, s in (("profile", plain), ("front", fronted)):
                    v = float(s["latency_ms"][k])
                    row[f"sim_{tag}_{k}_ms"] = v
                    row[f"err_{tag}_{k}"] = (v - real) / real if real else math.nan
            rows.append(row)
            print(f"  sim vs ray x{n} @ {qps:6.1f} qps: p50 {row['sim_front_p50_ms']:6.1f} vs "
                  f"{row['ray_p50_ms']:6.1f} ms ({row['err_front_p50']:+.0%}), p95 "
                  f"{row['sim_front_p95_ms']:6.1f} vs {row['ray_p95_ms']:6.1f} ms "
                  f"({row['err_front_p95']:+.0%}); profile alone p95 "
                  f"{row['sim_profile_p95_ms']:.1f} ms; lanes x{scale:.2f}",
                  flush=True)  # fmt: skip
    out["sim_vs_ray"] = rows
    if rows:
        out["sim_vs_ray_summary"] = {
            f"median_abs_err_{tag}_{k}": float(np.median([abs(r[f"err_{tag}_{k}"]) for r in rows]))
            for tag in ("profile", "front") for k in ("p50", "p95")
        }  # fmt: skip
        print(json.dumps(out["sim_vs_ray_summary"]), flush=True)


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
    ap.add_argument("--sla-ms", type=float, help="p95 target (default: the model's --sla-x 20)")
    ap.add_argument("--calib-requests", type=int, default=60, help="per size, front at idle")
    ap.add_argument("--calib-large", type=int, default=512, help="the front's larger size")
    ap.add_argument(
        "--agree-loads",
        default="0.3,0.6,0.9",
        help="after each search, runs at these fractions of its capacity (the sim comparison)",
    )
    ap.add_argument("--classes", default=None, help="classes of the capacity runs")
    ap.add_argument("--mixed", default="hi:0.2:10,lo:0.8:1", help="the router duel's classes")
    ap.add_argument("--duel-load", type=float, default=0.8, help="x the 2-replica capacity")
    ap.add_argument("--repeats", type=int, default=2, help="duel runs per router")
    ap.add_argument("--duel-qps", type=float, help="duel at this rate, no capacity searches")
    ap.add_argument("--duel-replicas", type=int, default=2, help="with --duel-qps")
    ap.add_argument("--duel-seconds", type=float, help="length of each duel run")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--skip-inprocess", action="store_true")
    ap.add_argument("--skip-duel", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    a.agree_loads = [float(x) for x in a.agree_loads.split(",") if x]
    if os.environ.get("RECSCHED_NETNS") != "1":  # Ray only ever starts on loopback
        env = {**os.environ, "RECSCHED_NETNS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = ["bash", str(ROOT / ".ci" / "ray_netns.sh"), sys.executable, *sys.argv]
        sys.exit(subprocess.run(cmd, env=env).returncode)

    import ray

    from recsched.bench.capacity import find_capacity
    from recsched.bench.setup import Setup
    from recsched.serving.ray_deploy import cost_table, start_ray

    hb = _http_bench()
    setup = Setup.make(a.model, a.scale, a.seed, classes=a.classes, sla_ms=a.sla_ms)
    cfg = setup.config(a.preset)
    cost = cost_table(setup.adapter)
    out: dict = {"model": a.model, "preset": a.preset, "config": cfg.to_dict(),
                 "sla_ms": setup.sla_ms, "percentile": setup.percentile, "cpus": a.cpus,
                 "command": " ".join(sys.argv)}  # fmt: skip
    print(f"{a.model} {a.preset} ({cfg.lanes} lanes in-process), SLA p{setup.percentile:g} "
          f"<= {setup.sla_ms:.2f} ms", flush=True)  # fmt: skip
    if not a.skip_inprocess and not a.duel_qps:
        run = setup.run_fn(cfg, a.preset, a.duration)
        s = find_capacity(run, start_qps=setup.start_qps(cfg), max_runs=max(8, a.max_runs),
                          rel_tol=0.1)  # fmt: skip
        out["inprocess"] = {"latency_bounded_qps": s.qps, "runs": s.runs}
        print(f"in-process: {s.qps:.1f} qps", flush=True)
    start_ray(None, a.cpus, 200)
    try:
        caps = {}
        for n in (int(x) for x in a.replicas.split(",") if x and not a.duel_qps):
            caps[n] = ray_capacity(a, setup, cfg, n, "recsched", hb, cost, out)
            print(f"ray x{n}: {caps[n]['latency_bounded_qps']:.1f} qps", flush=True)
        if not a.skip_duel:
            if a.duel_qps:
                n_duel, qps = a.duel_replicas, a.duel_qps
            else:
                base = caps.get(2, next(iter(caps.values())))
                n_duel = base["replicas"]
                qps = max(10.0, a.duel_load * base["latency_bounded_qps"])
            setup_mixed = Setup.make(a.model, a.scale, a.seed, classes=a.mixed,
                                     sla_ms=setup.sla_ms)  # fmt: skip
            router_duel(a, setup_mixed, cfg, n_duel, qps, hb, cost, out)
    finally:
        ray.shutdown()
    sim_agreement(a, setup, cfg, out)
    inproc = out.get("inprocess", {}).get("latency_bounded_qps")
    for r in out.get("ray", []):
        r["ratio_vs_inprocess"] = r["latency_bounded_qps"] / inproc if inproc else None
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))
    print(
        json.dumps(
            {
                "inprocess_qps": inproc,
                "ray_qps": {r["replicas"]: r["latency_bounded_qps"] for r in out.get("ray", [])},
            }
        )
    )


if __name__ == "__main__":
    main()
