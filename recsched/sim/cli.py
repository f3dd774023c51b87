"""`recsched simulate` and `recsched fidelity`: the simulator from the command line.

    recsched simulate rmc1 --servers 100 --qps 20000 --duration 60 --preset dynamic \\
        --profile rmc1.json --balancer p2c --sla-ms 20 --json sim.json
    recsched fidelity rmc1 --preset baseline --duration 5 --json fidelity.json

Both print rich tables and, with `--json F`, write the same figures as JSON.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from recsched.config import EngineConfig, preset
from recsched.metrics.report import bench_table, write_json

console = Console(width=None if sys.stdout.isatty() else 140)

ModelArg = Annotated[str, typer.Argument(help="Model name (see `recsched models`).")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the result as JSON here.")]
PresetOpt = Annotated[str, typer.Option("--preset", help="baseline | dynamic | deeprecsched | ..")]
ProfileOpt = Annotated[
    Path | None,
    typer.Option(
        "--profile",
        help="`recsched profile` JSON of the CPU lanes (default: this machine's, measured "
        "once at the lanes' thread count and cached).",
    ),
]
ScaleOpt = Annotated[str, typer.Option("--scale", help="Model scale of the default profile.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Workload seed.")]
ClassesOpt = Annotated[
    str | None, typer.Option("--classes", help="e.g. high:0.2:10:20ms,low:0.8:1:100ms")
]
SizesOpt = Annotated[
    str,
    typer.Option("--sizes", help="production | fixed:N | normal:MEAN:STD | lognormal:MEDIAN:SIGMA"),
]
ArrivalsOpt = Annotated[
    str, typer.Option("--arrivals", help="poisson | constant | bursty | diurnal[:PERIOD:AMP]")
]
SlaOpt = Annotated[float | None, typer.Option("--sla-ms", help="Tail-latency target (ms).")]
PctOpt = Annotated[float, typer.Option("--percentile", help="SLA percentile.")]
LanesOpt = Annotated[int | None, typer.Option("--lanes", help="CPU lanes per server.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="B for split/dynamic.")]
InterOpt = Annotated[
    str | None,
    typer.Option(
        "--interference",
        help="Interference table JSON, 'default', 'none', or 'model' (measure the model's "
        "whole-forward co-run slowdown now).",
    ),
]
OverheadOpt = Annotated[
    float | None,
    typer.Option("--task-overhead-us", help="Engine cost per task beyond the model (us)."),
]


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_cmd)
    app.command("fidelity")(fidelity_cmd)


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(2)


def _config(
    name: str, lanes: int | None, batch_size: int | None, **extra: Any
) -> tuple[EngineConfig, str]:
    over = {k: v for k, v in {"lanes": lanes, "batch_size": batch_size, **extra}.items()}
    try:
        return preset(name, **{k: v for k, v in over.items() if v is not None}), name
    except ValueError as exc:
        _fail(str(exc))
        raise


def _default_profile(model: str, scale: str, cfg: EngineConfig) -> dict:
    from recsched.models.registry import load_model
    from recsched.sim.run import lane_profile

    console.print(f"[dim]using this machine's profile of {model} ({scale}) ...[/dim]")
    return lane_profile(load_model(model, scale=scale), cfg.threads_per_lane)


def simulate_cmd(
    model: ModelArg,
    servers: Annotated[int, typer.Option("--servers", help="Number of servers.")] = 1,
    qps: Annotated[float, typer.Option("--qps", help="Offered queries/s, whole cluster.")] = 100.0,
    duration: Annotated[float, typer.Option("--duration", help="Seconds of arrivals.")] = 10.0,
    preset_name: PresetOpt = "baseline",
    profile: ProfileOpt = None,
    classes: ClassesOpt = None,
    sizes: SizesOpt = "production",
    arrivals: ArrivalsOpt = "poisson",
    sla_ms: SlaOpt = None,
    percentile: PctOpt = 95.0,
    balancer: Annotated[
        str, typer.Option("--balancer", help="random | roundrobin | p2c | least")
    ] = "random",
    seed: SeedOpt = 0,
    lanes: LanesOpt = None,
    batch_size: BatchOpt = None,
    offload_threshold: Annotated[
        int | None, typer.Option("--offload-threshold", help="Queries >= T items to accel.")
    ] = None,
    accel_lanes: Annotated[int, typer.Option("--accel-lanes", help="Accel lanes/server.")] = 1,
    accel_profile: Annotated[
        Path | None, typer.Option("--accel-profile", help="GPU profile (same JSON format).")
    ] = None,
    accel_servers: Annotated[
        int | None, typer.Option("--accel-servers", help="How many servers have the GPU.")
    ] = None,
    interference: InterOpt = None,
    task_overhead_us: OverheadOpt = None,
    scale: ScaleOpt = "small",
    trace: Annotated[Path | None, typer.Option("--trace", help="Chrome trace of lanes.")] = None,
    front: Annotated[
        Path | None,
        typer.Option(
            "--front",
            help="A front tier before the balancer (recsched.sim.front): JSON with delay_ms "
            "(quantile points), delay_ms_per_item, stages_ms and stages_ms_per_item (FIFO "
            "service per request), e.g. the one benchmarks/ray_replicas.py calibrates.",
        ),
    ] = None,
    host_us: Annotated[
        str | None,
        typer.Option(
            "--host-us",
            help="Each server's own CPU per query beside its lanes, in microseconds: "
            "SUBMIT,COMPLETE[,BACKGROUND] (the driver's own, on no query's path), sharing the "
            "server's lanes x threads cores with the lanes (recsched.sim.host; `recsched "
            "fidelity` prints a measured one).",
        ),
    ] = None,
    json_path: JsonOpt = None,
) -> None:
    """Simulate N servers behind a load balancer, running the real scheduling policies."""
    from recsched.sim.front import FrontModel
    from recsched.sim.run import DEFAULT_TASK_OVERHEAD_S, make_workload, resolve_auto, simulate

    extra: dict[str, Any] = {}
    if offload_threshold is not None:
        extra = {"offload_threshold": offload_threshold, "accel_lanes": accel_lanes}
    cfg, name = _config(preset_name, lanes, batch_size, **extra)
    if cfg.request == "tuned" and batch_size is None:
        console.print(
            f"[dim]{name}: the preset's default request knobs (B={cfg.batch_size}); "
            "`recsched capacity --sim` uses the tuner's cached knobs[/dim]"
        )
    prof: Any = profile if profile is not None else _default_profile(model, scale, cfg)
    cfg = resolve_auto(cfg, prof, sizes, seed)
    inter: Any = interference
    if interference == "model":
        from recsched.models.registry import load_model
        from recsched.sim.fidelity import model_interference

        inter = model_interference(load_model(model, scale=scale), sizes, cfg.threads_per_lane)
    graph_info = None
    if cfg.operator != "sequential":
        from recsched.sim.run import model_graph_info

        graph_info = model_graph_info(model, cfg.granularity, scale)
    try:
        wl = make_workload(
            qps, duration, arrivals=arrivals, sizes=sizes, classes=classes, seed=seed
        )
    except ValueError as exc:
        _fail(str(exc))
        raise
    overhead = task_overhead_us * 1e-6 if task_overhead_us is not None else None
    host_model = None
    if host_us is not None:
        from recsched.sim.host import HostModel

        try:
            host_model = HostModel.parse(host_us, cfg.lanes * cfg.threads_per_lane)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--host-us") from None
    front_model = None
    if front is not None:
        try:
            front_model = FrontModel.load(front)
        except ValueError as exc:
            _fail(str(exc))
            raise
    with _progress() as prog:
        task = prog.add_task(f"{model} {name} x{servers}", total=max(1, len(wl)))

        def on_progress(t: float, done: int) -> None:
            prog.update(task, completed=done, description=f"{model} {name} t={t:,.1f}s")

        try:
            r = simulate(
                model, cfg, prof, qps=qps, duration_s=duration, servers=servers,
                balancer=balancer, sla_ms=sla_ms, percentile=percentile, seed=seed,
                accel_profile=accel_profile, accel_servers=accel_servers, graph_info=graph_info,
                interference=inter, workload=wl, trace=trace, progress=on_progress,
                task_overhead_s=overhead if overhead is not None else DEFAULT_TASK_OVERHEAD_S,
                preset_name=name, front=front_model, host=host_model,
            )  # fmt: skip
        except (ValueError, KeyError, FileNotFoundError) as exc:
            _fail(str(exc))
            raise
        prog.update(task, completed=len(wl))
    console.print(bench_table(r))
    if servers > 1:
        console.print(servers_table(r))
    console.print(
        f"[dim]simulated {r['queries']:,} queries, {r['sim_events']:,} events in "
        f"{r['sim_wall_s']:.2f} s ({r['sim_queries_per_s']:,.0f} queries/s of wall time; "
        f"event loop alone {r['sim_loop_queries_per_s']:,.0f}/s)[/dim]"
    )
    if trace is not None:
        console.print(f"[dim]wrote {trace}[/dim]")
    if json_path is not None:
        write_json(r, json_path)
        console.print(f"[dim]wrote {json_path}[/dim]")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}"),
        TimeElapsedColumn(), console=console, transient=True,
    )  # fmt: skip


def servers_table(r: dict, top: int = 8) -> Table:
    """Per server type: servers, queries, p95 spread; then the `top` servers by p95."""
    t = Table(title=f"{len(r['servers'])} servers ({r.get('balancer', '?')} balancer)")
    for col in ("server", "type", "queries", "rejected", "p50 ms", "p95 ms", "p99 ms", "util"):
        t.add_column(col, justify="left" if col in ("server", "type") else "right")

    def p95(s: dict) -> float:
        v = s["latency_ms"]["p95"]
        return -1.0 if v is None or math.isnan(v) else v

    rows = sorted(r["servers"], key=p95, reverse=True)[:top]
    for s in rows:
        lat = s["latency_ms"]
        util = s["lane_utilization"]
        t.add_row(
            str(s["server"]), s["type"], f"{s['queries']:,}", f"{s['rejected']:,}",
            *(_num(lat[k]) for k in ("p50", "p95", "p99")),
            f"{100 * sum(util) / max(1, len(util)):.0f}%",
        )  # fmt: skip
    t.caption = f"the {len(rows)} servers with the highest p95"
    return t


def _num(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.2f}"


def fidelity_cmd(
    model: ModelArg,
    preset_name: PresetOpt = "baseline",
    qps: Annotated[
        str | None,
        typer.Option("--qps", help="Comma-separated loads (default: 30/60/85% of --loads-from)."),
    ] = None,
    loads_from: Annotated[
        str,
        typer.Option(
            "--loads-from",
            help="What the default loads are fractions of: 'run' = the capacity a real probe "
            "run measures (its lane time per query; default), 'profile' = the profile's "
            "estimate (served tasks can cost twice the profile, putting 60-85% past saturation).",
        ),
    ] = "run",
    duration: Annotated[float, typer.Option("--duration", help="Seconds per run.")] = 5.0,
    profile: ProfileOpt = None,
    classes: ClassesOpt = None,
    sizes: SizesOpt = "production",
    arrivals: ArrivalsOpt = "poisson",
    sla_ms: SlaOpt = None,
    lanes: LanesOpt = None,
    batch_size: BatchOpt = None,
    interference: InterOpt = "model",
    task_overhead_us: OverheadOpt = None,
    scale: ScaleOpt = "small",
    seed: SeedOpt = 0,
    repeats: Annotated[
        int,
        typer.Option(
            "--repeats",
            min=1,
            help="Real runs per load (same seed; interleaved over the loads). With 2 or "
            "more, the simulator is compared with their median, and their own spread is "
            "reported as the noise floor.",
        ),
    ] = 1,
    in_run: Annotated[
        bool,
        typer.Option(
            "--in-run",
            help="Also simulate each load calibrated by the real run's own lane task times "
            "(separates the machine's speed drift from the simulator's queueing model): once "
            "with one factor, once trace-driven (each task draws a measured ratio of its size). "
            "With loads from a probe run, also simulate every load calibrated by the probe's "
            "lane tasks alone, before any measured run ('probe'), and by a second probe run "
            "near the top load as well ('probe2').",
        ),
    ] = False,
    host: Annotated[
        bool,
        typer.Option(
            "--host/--no-host",
            help="Model the host's own CPU per query (driver, submission, completion) on the "
            "lanes' cores, calibrated by the probe run and, in-run, by each load's real runs; "
            "the errors without it are reported beside.",
        ),
    ] = True,
    json_path: JsonOpt = None,
) -> None:
    """Simulated vs real p50/p95/p99 at three loads, same seed and configuration."""
    from recsched.sim.fidelity import LOADS_FROM, fidelity
    from recsched.sim.run import DEFAULT_TASK_OVERHEAD_S as DEFAULT_OVERHEAD

    if loads_from not in LOADS_FROM:
        why = f"{' or '.join(map(repr, LOADS_FROM))}, not {loads_from!r}"
        raise typer.BadParameter(why, param_hint="--loads-from")
    cfg, name = _config(preset_name, lanes, batch_size)
    loads = [float(x) for x in qps.split(",")] if qps else None
    overhead = task_overhead_us * 1e-6 if task_overhead_us is not None else DEFAULT_OVERHEAD

    def on_load(row: dict) -> None:
        e = row["error"]
        real = "median real" if "real_runs" in row else "real"
        noise = ""
        if "real_spread" in row:
            noise = f", real runs' spread {_spread(row['real_spread']['p95'])}"
        console.print(
            f"  {row['qps']:8.1f} qps: p95 {real} {_num(row['real']['p95'])} ms, "
            f"sim {_num(row['sim']['p95'])} ms ({_pct(e['p95'])}){noise}"
        )

    def on_real(q: float, rep: int, res: dict) -> None:
        if repeats > 1:
            p95 = _num(res["latency_ms"].get("p95"))
            console.print(f"[dim]  {q:8.1f} qps: real run {rep + 1}/{repeats}, p95 {p95} ms[/dim]")

    r = fidelity(
        model, profile, loads, cfg, duration_s=duration, seed=seed, scale=scale, sla_ms=sla_ms,
        arrivals=arrivals, sizes=sizes, classes=classes, task_overhead_s=overhead,
        interference=interference, on_load=on_load, repeats=repeats, on_real=on_real,
        in_run=in_run, loads_from=loads_from, host=host,
    )  # fmt: skip
    r["preset"] = name
    cap = r["capacity"]
    if cap["source"] != "given":
        how = f"probe run at {cap['probe_qps']:g} qps" if cap["source"] == "run" else "profile"
        console.print(f"[dim]loads from a capacity of {cap['qps']:.1f} qps ({how}; profile "
                      f"estimate {cap['profile_qps']:.1f})[/dim]")  # fmt: skip
    console.print(fidelity_table(r))
    if "without_host" in r:
        console.print(host_note(r))
    if "median_real_spread" in r:
        console.print(noise_floor_note(r))
    if json_path is not None:
        write_json(r, json_path)
        console.print(f"[dim]wrote {json_path}[/dim]")


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:+.1f}%"


def _spread(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def fidelity_table(r: dict) -> Table:
    """Per load: real, sim and error at p50/p95/p99 (real = the median of the real runs with
    `repeats`, plus a column of the real runs' own spread at p95)."""
    repeated = "median_real_spread" in r
    real = f"median of {r.get('repeats', '?')} real runs" if repeated else "real"
    t = Table(title=f"fidelity {r['model']} / {r['preset']}: simulated vs {real} (ms)")
    t.add_column("qps", justify="right")
    for p in ("p50", "p95", "p99"):
        for who in ("real", "sim", "err"):
            t.add_column(f"{p} {who}", justify="right")
    if repeated:
        t.add_column("p95 real spread", justify="right")
    in_run = "in_run" in r
    if in_run:
        t.add_column("p95 sim in-run", justify="right")
        t.add_column("p95 err in-run", justify="right")
        t.add_column("p95 sim traced", justify="right")
        t.add_column("p95 err traced", justify="right")
    probes = [k for k in ("probe", "probe2") if k in r]
    for k in probes:
        t.add_column(f"p95 sim {k}", justify="right")
        t.add_column(f"p95 err {k}", justify="right")
    for row in r["loads"]:
        cells = []
        for p in ("p50", "p95", "p99"):
            cells += [_num(row["real"][p]), _num(row["sim"][p]), _pct(row["error"][p])]
        if repeated:
            cells.append(_spread(row.get("real_spread", {}).get("p95")))
        if in_run:
            cells += [_num(row["sim_in_run"]["p95"]), _pct(row["error_in_run"]["p95"])]
            cells += [_num(row["sim_in_run_noise"]["p95"]), _pct(row["error_in_run_noise"]["p95"])]
        for k in probes:
            cells += [_num(row[f"sim_{k}"]["p95"]), _pct(row[f"error_{k}"]["p95"])]
        t.add_row(f"{row['qps']:,.1f}", *cells)
    w = r["max_abs_error"]
    verdict = "[green]within[/green]" if r["p95_within_goal"] else "[red]outside[/red]"
    t.caption = (
        f"largest |error|: p50 {_pct(w['p50'])}, p95 {_pct(w['p95'])}, p99 {_pct(w['p99'])}; "
        f"p95 {verdict} the {100 * r['goal_p95']:.0f}% goal"
    )
    if in_run:
        wi = r["in_run"]["max_abs_error"]
        ok = "within" if r["in_run"]["p95_within_goal"] else "outside"
        t.caption += (
            f"; calibrated in-run: p50 {_pct(wi['p50'])}, p95 {_pct(wi['p95'])}, "
            f"p99 {_pct(wi['p99'])} (p95 {ok} the goal)"
        )
        wn = r["in_run_noise"]["max_abs_error"]
        ok = "within" if r["in_run_noise"]["p95_within_goal"] else "outside"
        t.caption += (
            f"; trace-driven: p50 {_pct(wn['p50'])}, p95 {_pct(wn['p95'])}, "
            f"p99 {_pct(wn['p99'])} (p95 {ok} the goal)"
        )
    names = {"probe": "the probe run", "probe2": "two probe runs"}
    for k in probes:
        wp = r[k]["max_abs_error"]
        ok = "within" if r[k]["p95_within_goal"] else "outside"
        t.caption += (
            f"; calibrated beforehand by {names[k]}: p50 {_pct(wp['p50'])}, p95 "
            f"{_pct(wp['p95'])}, p99 {_pct(wp['p99'])} (p95 {ok} the goal)"
        )
    return t


def host_note(r: dict) -> str:
    """The host model's calibration and the largest p95 errors without it."""
    parts = []
    if r.get("host"):
        h = r["host"]
        parts.append(f"host CPU per query {h['submit_us']:.0f} + {h['complete_us']:.0f} us "
                     f"(submit + complete) and {h.get('background_us', 0):.0f} us off the "
                     "queries' path (probe run)")  # fmt: skip
    names = {"error": "profile", "error_in_run": "in-run", "error_in_run_noise": "traced"}
    wo = ", ".join(f"{names[k]} {_pct(v['p95'])}" for k, v in r["without_host"].items())
    parts.append(f"largest p95 |error| without the host model: {wo}")
    return "; ".join(parts)


def noise_floor_note(r: dict) -> str:
    """The plain statement: how much the real runs differ among themselves (median over the
    loads of (max - min) / median) against the simulator's largest |error|, at p95."""
    s, w = r["median_real_spread"], r["max_abs_error"]
    return (
        f"noise floor: {r.get('repeats', '?')} real runs per load differ by {_spread(s['p95'])} "
        f"at p95 among themselves ((max - min) / median, median over the loads; p50 "
        f"{_spread(s['p50'])}, p99 {_spread(s['p99'])}); the simulator's error against "
        f"their median is {_spread(w['p95'])} at p95 (largest |error| over the loads)"
    )
