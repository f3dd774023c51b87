"""The at-scale study (issue 6): baseline vs deeprecsched vs opstream on 100 simulated servers.

For each preset, on `--servers` simulated servers behind a `--balancer` (default p2c):

1. the cluster's latency-bounded throughput: the highest offered rate (whole cluster) whose
   p95 stays under the SLA, by bracket and bisect from `servers x` the preset's one-server
   capacity (itself searched first, on one simulated server);
2. the servers it needs for a fixed traffic level (default: the first preset's cluster
   capacity, i.e. `--servers` servers' worth of baseline capacity) within the same SLA: the
   smallest server count whose run at that rate meets it.

The model, SLA, workload and profile are what `recsched compare MODEL --sim` uses: a
`recsched.bench.setup.Setup` (default SLA: `DEFAULT_SLA_X` x the latency of a median-size
query alone, `calibrate.sla_from_x`), production sizes, Poisson arrivals, and this machine's
serving-corrected lane profile (`recsched.sim.run.lane_profile`, cached; `--profile F`
overrides it). deeprecsched's request knobs (batch size, merge delay; lanes fixed at the
server's shape) are tuned here on one simulated server with the DeepRecSched tuner, not read
from or written to the tuner's cache (that one holds real-engine results); opstream reuses
them, as the `opstream` preset does. Each cluster run simulates `--duration` seconds.

    python benchmarks/sim_at_scale.py                                   # rmc1 small, ~5 min
    python benchmarks/sim_at_scale.py --profile rmc1.json --sla-ms 21 --json out.json
    python benchmarks/sim_at_scale.py --host machine                    # + each server's host CPU

`--host machine` gives every server this machine's host CPU per query beside its lanes
(`recsched.sim.run.lane_host`, cached; `recsched.sim.host`), `--host S,C[,B]` one in
microseconds (submit, completion, background); the default is none (the lanes' costs only).

Not a test: minutes of CPU, machine-dependent figures (the profile is this machine's).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsched.config import EngineConfig, preset

Run = Callable[[float], dict]
# (config, preset name, servers, simulated seconds) -> (qps -> simulated bench result)
MakeRunner = Callable[[EngineConfig, str, int, float], Run]
Log = Callable[[str], None]
RESULTS = Path(__file__).parent / "results" / "sim_at_scale.json"
PRESETS = ("baseline", "deeprecsched", "opstream")


def _ok(r: dict) -> bool:
    """As the capacity search: every class meets its percentile target."""
    return bool(r.get("sla_met"))


def _row(r: dict) -> dict[str, Any]:
    return {
        "offered_qps": r["offered_qps"],
        "queries": r["queries"],
        "p95_ms": r["latency_ms"]["p95"],
        "p99_ms": r["latency_ms"]["p99"],
        "sla_met": _ok(r),
        "sim_wall_s": round(r.get("sim_wall_s", 0.0), 2),
    }


def search_capacity(
    run: Run,
    start_qps: float,
    *,
    step: float = 1.25,
    rel_tol: float = 0.02,
    max_runs: int = 9,
    log: Log | None = None,
) -> tuple[float, dict | None, list[dict]]:
    """Highest passing rate (`recsched.bench.capacity.find_capacity`, bracketing by factors of
    `step`). Returns (qps, its run or None, every run's row)."""
    from recsched.bench.capacity import find_capacity

    rows: list[dict] = []

    def on_run(r: dict) -> None:
        rows.append(_row(r))
        if log is not None:
            p95 = r["latency_ms"]["p95"]
            ok = "ok" if _ok(r) else "miss"
            log(f"    {r['offered_qps']:10.1f} qps  p95 {p95:8.2f} ms  {ok}")

    s = find_capacity(
        run, start_qps=start_qps, rel_tol=rel_tol, max_runs=max_runs, on_run=on_run, step=step
    )
    return s.qps, s.best, rows


def servers_needed(
    make_run: Callable[[int], Run],
    traffic_qps: float,
    guess: int,
    *,
    max_runs: int = 8,
    log: Log | None = None,
) -> tuple[int | None, list[dict]]:
    """Smallest server count whose run at `traffic_qps` meets the SLA, searched from `guess`
    (galloping away from it, then bisecting). None if not found within `max_runs` runs."""
    rows: list[dict] = []
    known: dict[int, bool] = {}

    def meets(n: int) -> bool:
        if n not in known:
            r = make_run(n)(traffic_qps)
            row = _row(r)
            row["servers"] = n
            rows.append(row)
            known[n] = _ok(r)
            if log is not None:
                p95 = r["latency_ms"]["p95"]
                log(f"    {n:5d} servers  p95 {p95:8.2f} ms  {'ok' if known[n] else 'miss'}")
        return known[n]

    n = max(1, guess)
    lo, hi = 0, None  # lo fails (0: trivially), hi meets
    gap = 1
    if meets(n):
        hi = n
        while len(rows) < max_runs and hi - gap >= 1:
            m = hi - gap
            if meets(m):
                hi = m
                gap *= 2
            else:
                lo = m
                break
    else:
        lo = n
        while len(rows) < max_runs:
            m = lo + gap
            if meets(m):
                hi = m
                break
            lo = m
            gap *= 2
    while hi is not None and hi - lo > 1 and len(rows) < max_runs:
        m = (lo + hi) // 2
        if meets(m):
            hi = m
        else:
            lo = m
    if hi is None or hi - lo > 1:
        return None, rows
    return hi, rows


def study(
    make_runner: MakeRunner,
    configs: dict[str, EngineConfig],
    *,
    servers: int = 100,
    duration_s: float = 0.5,
    single_duration_s: float = 4.0,
    single_start_qps: float = 100.0,
    traffic_qps: float | None = None,
    max_runs: int = 9,
    log: Log | None = None,
) -> dict[str, Any]:
    """Cluster capacity and servers needed per preset (`configs`, in order; the first is the
    reference whose cluster capacity is the default traffic level)."""
    out: dict[str, Any] = {"servers": servers, "duration_s": duration_s, "presets": {}}
    for name, cfg in configs.items():
        t0 = time.process_time()
        if log is not None:
            log(f"{name}: one server")
        one, _, one_rows = search_capacity(
            make_runner(cfg, name, 1, single_duration_s), single_start_qps, step=2.0,
            rel_tol=0.05, max_runs=max_runs, log=log,
        )  # fmt: skip
        if log is not None:
            log(f"{name}: {servers} servers")
        start = max(one, single_start_qps / 4) * servers
        qps, best, rows = search_capacity(
            make_runner(cfg, name, servers, duration_s), start, max_runs=max_runs, log=log
        )
        out["presets"][name] = {
            "config": cfg.to_dict(),
            "one_server_qps": one,
            "cluster_qps": qps,
            "cluster_qps_per_server": qps / servers,
            "scaling_efficiency": qps / (servers * one) if one > 0 else None,
            "best_run": _row(best) if best is not None else None,
            "one_server_runs": one_rows,
            "cluster_runs": rows,
        }
        out["presets"][name]["cpu_s"] = time.process_time() - t0
    names = list(configs)
    ref = out["presets"][names[0]]
    traffic = traffic_qps if traffic_qps is not None else ref["cluster_qps"]
    out["traffic_qps"] = traffic
    out["traffic"] = (
        f"{servers} servers' worth of {names[0]} capacity" if traffic_qps is None else "given"
    )
    for name, cfg in configs.items():
        t0 = time.process_time()
        p = out["presets"][name]
        per = p["cluster_qps_per_server"]
        guess = math.ceil(traffic / per) if per > 0 else servers
        if log is not None:
            log(f"{name}: servers for {traffic:.0f} qps (guess {guess})")
        n, rows = servers_needed(
            lambda k, cfg=cfg, name=name: make_runner(cfg, name, k, duration_s),
            traffic, guess, max_runs=max_runs, log=log,
        )  # fmt: skip
        p["servers_needed"] = n
        p["servers_runs"] = rows
        p["cpu_s"] += time.process_time() - t0
    base = out["presets"][names[0]]
    for p in out["presets"].values():
        p["qps_ratio"] = p["cluster_qps"] / base["cluster_qps"] if base["cluster_qps"] else None
        sn, bn = p["servers_needed"], base["servers_needed"]
        p["servers_ratio"] = sn / bn if sn and bn else None
    return out


# -- the rmc1 setup ----------------------------------------------------------------------------
def tune_request_knobs(
    make_runner: MakeRunner,
    base: EngineConfig,
    sla_ms: float,
    *,
    budget: int = 10,
    duration_s: float = 2.0,
    start_qps: float = 100.0,
    seed: int = 0,
    log: Log | None = None,
) -> tuple[EngineConfig, dict[str, Any]]:
    """DeepRecSched's tuner on one simulated server: batch size and merge delay (the server's
    lanes stay as they are: the profile is measured at their width)."""
    from recsched.bench.capacity import find_capacity
    from recsched.bench.tuning import measurement_from_capacity, run_tuning, tune_result_json
    from recsched.sched.tuner import Knob, Measurement, TuningSpace

    space = TuningSpace(
        (
            Knob("batch_size", (4, 8, 16, 32, 64, 128, 256, 512, 1024)),
            Knob("merge_delay_ms", (0.0, 0.5, 1.0, 2.0, 4.0)),
        )
    )
    best_qps = [start_qps]

    def measure(cfg: EngineConfig) -> Measurement:
        s = find_capacity(
            make_runner(cfg, "tuning", 1, duration_s), start_qps=best_qps[0], rel_tol=0.05,
            max_runs=8,
        )  # fmt: skip
        m = measurement_from_capacity(s.qps, s.best, s.runs, sla_ms)
        if m.met and m.qps > best_qps[0]:
            best_qps[0] = m.qps
        return m

    def progress(row: dict[str, Any]) -> None:
        if log is not None:
            c = row["config"]
            log(
                f"  tune: batch_size={c['batch_size']} merge_delay_ms={c['merge_delay_ms']}"
                f"  {row['qps']:.1f} qps  {'met' if row['met'] else 'missed'}"
            )

    result = run_tuning(measure, space, base, budget, seed, progress)
    return result.best_config, tune_result_json(result)


def rmc1_setup(
    args: argparse.Namespace, log: Log
) -> tuple[MakeRunner, dict[str, EngineConfig], dict[str, Any]]:
    """`recsched compare`'s setup on the simulator: SLA, workload, profile, configs."""
    from recsched.bench.setup import DEFAULT_SLA_X, Setup, default_lanes
    from recsched.sim.run import lane_profile, load_profile_dict, sim_run_fn

    setup = Setup.make(args.model, scale=args.scale, sla_ms=args.sla_ms, sim=True)
    assert setup.sla_ms is not None
    lanes, tpl = default_lanes()
    if args.profile:
        profile = load_profile_dict(args.profile)
        source = str(args.profile)
    else:
        profile = lane_profile(setup.adapter, tpl)
        source = f"lane_profile({args.model}, threads={tpl}) (this machine's, cached)"

    host = host_model(args.host, setup, preset("baseline", lanes=lanes, threads_per_lane=tpl))

    def make_runner(cfg: EngineConfig, name: str, servers: int, duration_s: float) -> Run:
        extras = setup.engine_extras(cfg)  # operator-level policies: the engine's graph, cost
        return sim_run_fn(
            args.model, cfg, profile, duration_s, preset_name=name, servers=servers,
            balancer=args.balancer, sla_ms=setup.sla_ms, percentile=setup.percentile,
            arrivals=setup.arrivals, sizes=setup.sizes, classes=setup.classes, seed=setup.seed,
            graph_info=extras["graph"].info if extras else None, policy_cost=extras.get("cost"),
            host=host,
        )  # fmt: skip

    configs = {"baseline": preset("baseline", lanes=lanes, threads_per_lane=tpl)}
    dyn = preset("deeprecsched", lanes=lanes, threads_per_lane=tpl)
    if args.batch_size is not None:
        dyn = dyn.replace(batch_size=args.batch_size, merge_delay_ms=args.merge_delay_ms)
        tuned: dict[str, Any] = {"given": True}
    else:
        log("tuning deeprecsched's request knobs on one simulated server")
        one = make_runner(configs["baseline"], "baseline", 1, 2.0)
        start = max(1.0, _quick_capacity(one))
        dyn, tuned = tune_request_knobs(
            make_runner, dyn, setup.sla_ms, budget=args.tune_budget, start_qps=start, log=log
        )
    configs["deeprecsched"] = dyn
    configs["opstream"] = setup.resolve_granularity(  # `auto`: chosen once, per model
        preset("opstream", lanes=lanes, threads_per_lane=tpl).replace(
            request=dyn.request, batch_size=dyn.batch_size, merge_delay_ms=dyn.merge_delay_ms
        ),
        log,
    )
    meta = {
        "model": args.model,
        "scale": args.scale,
        "sla_ms": setup.sla_ms,
        "sla": "--sla-ms" if args.sla_ms else f"{DEFAULT_SLA_X:g} x alone latency (sla_from_x)",
        "percentile": setup.percentile,
        "sizes": setup.sizes,
        "arrivals": setup.arrivals,
        "balancer": args.balancer,
        "profile": source,
        "profile_whole_ms": dict(zip(profile["batch_sizes"], profile["whole_ms"], strict=True)),
        "profile_used": profile,  # the whole profile: rerun with it (--profile) to reproduce
        "interference": "default placeholder table (recsched.sim.interference.DEFAULT)",
        "host": host.to_dict() if host is not None else None,
        "tuning": {k: v for k, v in tuned.items() if k != "trajectory"},
        "tuned_knobs": {"batch_size": dyn.batch_size, "merge_delay_ms": dyn.merge_delay_ms},
    }
    return make_runner, configs, meta


def host_model(spec: str, setup: Any, cfg: EngineConfig) -> Any:
    """`--host`: none, this machine's (`lane_host`), or SUBMIT,COMPLETE[,BACKGROUND] in us."""
    from recsched.sim.host import HostModel
    from recsched.sim.run import lane_host

    if spec == "none":
        return None
    if spec == "machine":
        return lane_host(setup, cfg)
    try:
        return HostModel.parse(spec, cfg.lanes * cfg.threads_per_lane)
    except ValueError as exc:
        raise SystemExit(f"--host: none, machine or {exc}") from None


def _quick_capacity(run: Run) -> float:
    from recsched.bench.capacity import find_capacity

    return find_capacity(run, start_qps=100.0, rel_tol=0.1, max_runs=10).qps


def print_table(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"{res.get('model', '?')} on {res['servers']} simulated servers "
        f"({res.get('balancer', '?')}), SLA p95 <= {res.get('sla_ms', float('nan')):.1f} ms"
    )
    for col in (
        "preset", "batch / delay", "1 server qps", f"{res['servers']} servers qps", "x baseline",
        f"servers for {res['traffic_qps']:.0f} qps", "x baseline",
    ):  # fmt: skip
        t.add_column(col, justify="right")
    for name, p in res["presets"].items():
        c = p["config"]
        knobs = "-" if c["request"] == "whole" else f"{c['batch_size']} / {c['merge_delay_ms']}"
        t.add_row(
            name, knobs, f"{p['one_server_qps']:.0f}", f"{p['cluster_qps']:.0f}",
            f"{p['qps_ratio']:.2f}" if p["qps_ratio"] else "-",
            str(p["servers_needed"]) if p["servers_needed"] else "not found",
            f"{p['servers_ratio']:.2f}" if p["servers_ratio"] else "-",
        )  # fmt: skip
    Console(width=120).print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--servers", type=int, default=100)
    ap.add_argument("--balancer", default="p2c")
    ap.add_argument("--duration", type=float, default=0.5, help="simulated s per cluster run")
    ap.add_argument("--profile", default=None, help="a `recsched profile` JSON")
    ap.add_argument("--sla-ms", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="skip tuning: these knobs")
    ap.add_argument("--merge-delay-ms", type=float, default=1.0)
    ap.add_argument("--tune-budget", type=int, default=10)
    ap.add_argument("--traffic-qps", type=float, default=None)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--host", default="none", help="none | machine | SUBMIT,COMPLETE[,BG] us")
    ap.add_argument("--json", default=str(RESULTS))
    args = ap.parse_args()

    t0, c0 = time.perf_counter(), time.process_time()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    make_runner, configs, meta = rmc1_setup(args, log)
    configs = {k: configs[k] for k in args.presets.split(",")}
    res = study(
        make_runner, configs, servers=args.servers, duration_s=args.duration,
        traffic_qps=args.traffic_qps, log=log,
    )  # fmt: skip
    res = {**meta, **res, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    print_table(res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
