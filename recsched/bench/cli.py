"""Measuring commands: models, profile, peak, bench, capacity, tune, compare.

Each prints a rich table and, with `--json F`, writes the same figures as JSON.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from recsched.config import DEFAULT_BATCH_SIZE, PRESETS
from recsched.metrics.report import bench_table, capacity_table, compare_table, write_json

if TYPE_CHECKING:
    from recsched.bench.setup import Setup

console = Console(width=None if sys.stdout.isatty() else 140)

ModelArg = Annotated[str, typer.Argument(help="Model name (see `recsched models`).")]
ScaleOpt = Annotated[str, typer.Option("--scale", help="small (tables <= 100K rows) or paper.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for weights and workload.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the result as JSON here.")]
SlaMsOpt = Annotated[float | None, typer.Option("--sla-ms", help="Tail-latency target (ms).")]
SlaXOpt = Annotated[
    float | None,
    typer.Option("--sla-x", help="SLA = K x latency of a median-size query alone."),
]
PctOpt = Annotated[float, typer.Option("--percentile", help="SLA percentile.")]
ClassesOpt = Annotated[
    str | None,
    typer.Option("--classes", help="Value classes, e.g. high:0.2:10:20ms,low:0.8:1:100ms"),
]
SizesOpt = Annotated[
    str,
    typer.Option(
        "--sizes",
        help="production | fixed:N | normal:MEAN:STD | lognormal:MEDIAN:SIGMA | file:PATH",
    ),
]
ArrivalsOpt = Annotated[str, typer.Option("--arrivals", help="poisson | constant | bursty ..")]
LanesOpt = Annotated[int | None, typer.Option("--lanes", help="CPU lanes (worker threads).")]
TplOpt = Annotated[int | None, typer.Option("--threads-per-lane", help="Intra-op threads.")]
SimOpt = Annotated[bool, typer.Option("--sim", help="Measure on the simulator instead.")]
PresetsFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--presets-file",
        help="TOML file of named presets (tables of EngineConfig fields, `preset = BASE` "
        "optional), usable by name in --preset/--presets.",
    ),
]
OffloadOpt = Annotated[
    int | None,
    typer.Option(
        "--offload-threshold",
        min=1,
        help="Queries of >= T items go to accelerator lanes (needs a CUDA device; untested "
        "on a GPU).",
    ),
]
AccelLanesOpt = Annotated[
    int | None,
    typer.Option(
        "--accel-lanes", min=1, help="Accelerator lanes with --offload-threshold (default 1)."
    ),
]
ConfirmOpt = Annotated[
    int,
    typer.Option(
        "--confirm",
        min=0,
        help="re-run a rate up to N more times and take the majority (noisy machines)",
    ),
]


def register(app: typer.Typer) -> None:
    app.command("models")(models_cmd)
    app.command("profile")(profile_cmd)
    app.command("peak")(peak_cmd)
    app.command("bench")(bench_cmd)
    app.command("capacity")(capacity_cmd)
    app.command("compare")(compare_cmd)
    app.command("tune")(tune_cmd)
    app.command("sweep")(sweep_cmd)


def _emit(result: dict, table: Table, json_path: Path | None) -> None:
    console.print(table)
    if json_path is not None:
        write_json(result, json_path)
        console.print(f"[dim]wrote {json_path}[/dim]")


def _presets_file(path: Path | None) -> None:
    """Register the presets of `--presets-file`, their OpStream options checked now."""
    if path is None:
        return
    from recsched.bench.setup import register_presets

    names = register_presets(path)
    _log(f"[dim]presets from {path}: {', '.join(names) or 'none'}[/dim]")


def _fail(msg: str) -> None:
    """Exit 2 with a one-line `error: ...` on stderr (no traceback)."""
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _accel(
    offload_threshold: int | None,
    accel_lanes: int | None,
    presets: Sequence[str] = (),
    sim: bool = False,
) -> dict[str, int]:
    """The config overrides of `--offload-threshold` / `--accel-lanes`, checked before any
    model is loaded: refused (exit 2) without a CUDA device, with `--sim` (the measuring
    commands' simulator path has no accelerator profile) and with operator-level presets."""
    if offload_threshold is None:
        if accel_lanes is not None:
            _fail("--accel-lanes applies only with --offload-threshold")
        return {}
    if sim:
        _fail(
            "--offload-threshold is not supported with --sim here: the measuring commands' "
            "simulator path has no accelerator profile to model the accelerator lanes with; "
            "use `recsched simulate --offload-threshold T --accel-profile F`"
        )
    from recsched.engine import offload_refused

    if (why := offload_refused()) is not None:
        _fail(why)
    for name in presets:
        operator = PRESETS.get(name, {}).get("operator", "sequential")
        if operator != "sequential":
            _fail(
                f"--offload-threshold needs the sequential operator policy; preset {name!r} "
                f"uses {operator!r} (accelerator lanes run whole-model tasks only)"
            )
    over = {"offload_threshold": offload_threshold}
    return over if accel_lanes is None else {**over, "accel_lanes": accel_lanes}


def models_cmd(scale: ScaleOpt = "small", json_path: JsonOpt = None, graphs: bool = True) -> None:
    """List the models: parameters, tables, rows, dim, operator counts."""
    from recsched.bench.setup import describe_models

    rows = describe_models(scale, with_graphs=graphs)
    t = Table(title=f"models ({scale} scale)")
    for col in ("name", "params", "tables", "rows", "dim", "MB", "ops coarse", "ops fine"):
        t.add_column(col, justify="left" if col == "name" else "right")
    for r in rows:
        mb = f"{r['bytes'] / 2**20:,.1f}"
        ops = (str(r.get("ops_coarse", "-")), str(r.get("ops_fine", "-")))
        t.add_row(
            r["name"],
            f"{r['params']:,}",
            str(r["tables"]),
            f"{r['rows']:,}",
            str(r["dim"]),
            mb,
            *ops,
        )
    _emit({"scale": scale, "models": rows}, t, json_path)


def profile_cmd(
    model: ModelArg,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = (
        "1,4,16,64,256,1024"
    ),
    threads: Annotated[int, typer.Option(help="Intra-op threads while profiling.")] = 1,
    scale: ScaleOpt = "small",
    seed: SeedOpt = 0,
    json_path: JsonOpt = None,
) -> None:
    """Per-operator and whole-model latency per batch size."""
    from recsched.bench.setup import load
    from recsched.graph.profile import profile_model

    adapter = load(model, scale, seed)
    sizes = tuple(int(b) for b in batch_sizes.split(","))
    prof = profile_model(adapter, batch_sizes=sizes, threads=threads)
    t = Table(title=f"{model} profile (ms, {prof.get('threads')} thread(s))")
    t.add_column("operator")
    for b in sizes:
        t.add_column(f"b={b}", justify="right")
    t.add_row("[bold]whole model", *[f"{v:.3f}" for v in prof["whole_ms"]])
    for gran, g in prof["granularities"].items():
        t.add_section()
        t.add_row(f"[bold]{gran}: dispatch {g.get('dispatch_us', 0):.1f} us/op", *[""] * len(sizes))
        for name, ms in g["ops"].items():
            t.add_row(f"  {name}", *[f"{v:.3f}" for v in ms])
    _emit(prof, t, json_path)


def peak_cmd(
    model: ModelArg, scale: ScaleOpt = "small", seed: SeedOpt = 0, json_path: JsonOpt = None,
    refresh: Annotated[bool, typer.Option(help="Measure again (ignore the cache).")] = False,
) -> None:  # fmt: skip
    """The offline throughput limit: items/s at the best batch size, every core busy."""
    from recsched.bench.calibrate import peak
    from recsched.bench.setup import load

    adapter = load(model, scale, seed)
    r = {"model": model, "scale": scale, **peak(adapter, refresh=refresh)}
    t = Table(title=f"{model} peak")
    t.add_column("peak items/s", justify="right")
    t.add_column("best batch", justify="right")
    t.add_column("lanes x threads", justify="left")
    t.add_row(f"{r['peak_items_per_s']:,.0f}", str(r["best_batch"]), str(r.get("best_config", "")))
    _emit(r, t, json_path)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(), console=console, transient=True,
    )  # fmt: skip


def bench_cmd(
    model: ModelArg,
    preset: Annotated[str, typer.Option(help="baseline | split | dynamic | deeprecsched | ..")] = (
        "baseline"
    ),
    qps: Annotated[float, typer.Option(help="Offered queries per second.")] = 50.0,
    duration: Annotated[float, typer.Option(help="Seconds of load.")] = 10.0,
    classes: ClassesOpt = None,
    sizes: SizesOpt = "production",
    arrivals: ArrivalsOpt = "poisson",
    sla_ms: SlaMsOpt = None,
    sla_x: SlaXOpt = None,
    percentile: PctOpt = 95.0,
    lanes: LanesOpt = None,
    threads_per_lane: TplOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="B for split/dynamic.")] = None,
    scale: ScaleOpt = "small",
    seed: SeedOpt = 0,
    json_path: JsonOpt = None,
    presets_file: PresetsFileOpt = None,
    driver: Annotated[str, typer.Option(help="native (our open loop) | mlperf (LoadGen).")] = (
        "native"
    ),
    scenario: Annotated[str, typer.Option(help="mlperf: server | offline.")] = "server",
    user_conf: Annotated[Path | None, typer.Option(help="mlperf: LoadGen user.conf.")] = None,
    trace: Annotated[Path | None, typer.Option(help="Write lane traces (Chrome JSON).")] = None,
    retune: Annotated[
        bool, typer.Option(help="Retune batch size and merge delay online while serving.")
    ] = False,
    retune_sizes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated size specs (e.g. fixed:8,lognormal:400:0.3): the request "
            "knobs tuned for each size mix (cached, or tuned now) become the online retuner's "
            "regimes, switched to when the served queries' median size moves (implies --retune).",
        ),
    ] = None,
    offload_threshold: OffloadOpt = None,
    accel_lanes: AccelLanesOpt = None,
) -> None:
    """One open-loop run at a fixed offered rate (or a LoadGen Server/Offline run)."""
    from recsched.bench.run import bench_once
    from recsched.bench.setup import Setup
    from recsched.metrics.trace import TraceRecorder

    if driver not in ("native", "mlperf") or scenario not in ("server", "offline"):
        _fail(f"unknown driver {driver!r} or scenario {scenario!r}")
    _presets_file(presets_file)
    accel = _accel(offload_threshold, accel_lanes, [preset])
    s = Setup.make(model, scale, seed, classes, sizes, arrivals, sla_ms, sla_x, percentile)
    cfg = s.config(  # logs a tuning on a cache miss, and an `auto` granularity's choice
        preset, _log, lanes=lanes, threads_per_lane=threads_per_lane, batch_size=batch_size,
        **accel,
    )  # fmt: skip
    rec = TraceRecorder(process_name=f"{model} {preset}") if trace is not None else None
    online = _online(s, cfg, percentile, retune_sizes) if retune or retune_sizes else None
    if driver == "mlperf":
        from recsched.bench.mlperf import bench_mlperf

        try:
            r = bench_mlperf(
                s, cfg, preset, qps=qps, duration_s=duration, scenario=scenario,
                user_conf=user_conf, json_path=json_path, trace=rec,
            )  # fmt: skip
        except (ValueError, FileNotFoundError) as exc:
            _fail(str(exc))
        m = r["mlperf"]
        console.print(f"LoadGen {m['scenario']}: [bold]{m['validity']}[/bold] ({m['log_dir']})")
    else:
        with _progress() as prog:
            task = prog.add_task(f"{model} {preset} @ {qps:g} qps", total=1)

            def on_progress(done: int, total: int) -> None:
                prog.update(task, completed=done, total=total)

            r = bench_once(
                s.adapter, cfg, s.load(qps, duration), preset=preset, sla_ms=s.sla_ms,
                percentile=percentile, progress=on_progress, trace=rec,
                retune=online,
                **s.engine_extras(cfg),
            )  # fmt: skip
        for sw in r.get("retune", {}).get("switches", []):
            console.print(
                f"  retune at {sw['t_s']:6.1f} s ({sw['reason']}): {sw['request']} batch "
                f"{sw['batch_size']}, merge {sw['merge_delay_ms']} ms"
            )
    if rec is not None:
        rec.write(trace)
        console.print(f"[dim]wrote {trace} ({len(rec)} lane events)[/dim]")
    _emit(r, bench_table(r), json_path)


def _online(s, cfg, percentile: float, size_specs: str | None = None):
    """`--retune`: a factory of the online retuner around a live engine (request knobs);
    with `--retune-sizes`, its regime table by size mix (`bench.online.size_regimes`)."""
    import os

    from recsched.bench.online import OnlineTuning, live_retuner, size_regimes

    sla_ms = s.sla_ms
    if sla_ms is None:
        _fail("--retune needs an SLA (--sla-ms or --sla-x)")
    if cfg.request == "whole":
        cfg = cfg.replace(request="dynamic")  # whole has no batch size to move
    table = None
    if size_specs:
        specs = [p.strip() for p in size_specs.split(",") if p.strip()]
        try:
            table = size_regimes(s, cfg, specs, _log)
        except ValueError as e:
            _fail(str(e))
        for (_, level), c in sorted(table.configs.items()):
            knobs = ", ".join(f"{k}={getattr(c, k)}" for k in ("request", "batch_size"))
            console.print(f"  size level {level}: {knobs}, merge {c.merge_delay_ms} ms")
        console.print(
            f"  size edges (median items): {', '.join(f'{e:g}' for e in table.size_edges)}"
        )

    def make(engine):
        retuner = live_retuner(cfg, sla_ms, os.cpu_count() or 1, table=table, percentile=percentile)
        if engine.config != retuner.config:
            engine.reconfigure(retuner.config)
        return OnlineTuning(engine, retuner)

    return make


def capacity_cmd(
    model: ModelArg,
    preset: Annotated[str, typer.Option(help="Preset to measure.")] = "baseline",
    sla_ms: SlaMsOpt = None,
    sla_x: SlaXOpt = None,
    percentile: PctOpt = 95.0,
    classes: ClassesOpt = None,
    sizes: SizesOpt = "production",
    arrivals: ArrivalsOpt = "poisson",
    duration: Annotated[float, typer.Option(help="Seconds per run (at least).")] = 3.0,
    lanes: LanesOpt = None,
    threads_per_lane: TplOpt = None,
    scale: ScaleOpt = "small",
    seed: SeedOpt = 0,
    sim: SimOpt = False,
    confirm: ConfirmOpt = 0,
    json_path: JsonOpt = None,
    presets_file: PresetsFileOpt = None,
    offload_threshold: OffloadOpt = None,
    accel_lanes: AccelLanesOpt = None,
) -> None:
    """Latency-bounded throughput: the highest rate whose tail meets the SLA."""
    from recsched.bench.setup import Setup

    _presets_file(presets_file)
    accel = _accel(offload_threshold, accel_lanes, [preset], sim)
    s = Setup.make(model, scale, seed, classes, sizes, arrivals, sla_ms, sla_x, percentile, sim)
    r = s.capacity(
        preset, duration, lanes=lanes, threads_per_lane=threads_per_lane, log=_log,
        confirm=confirm, **accel,
    )  # fmt: skip
    _emit(r, capacity_table(r), json_path)


def compare_cmd(
    model: ModelArg,
    presets: Annotated[str, typer.Option(help="Comma-separated presets; ratios to the first.")] = (
        "baseline,deeprecsched,opstream"
    ),
    sla_ms: SlaMsOpt = None,
    sla_x: SlaXOpt = None,
    percentile: PctOpt = 95.0,
    classes: ClassesOpt = None,
    sizes: SizesOpt = "production",
    arrivals: ArrivalsOpt = "poisson",
    duration: Annotated[float, typer.Option(help="Seconds per run (at least).")] = 3.0,
    scale: ScaleOpt = "small",
    seed: SeedOpt = 0,
    sim: SimOpt = False,
    confirm: ConfirmOpt = 0,
    interleave: Annotated[
        bool,
        typer.Option(
            help="Real engine: the presets' capacity searches take turns run by run, so the "
            "machine's slow spells land on all of them alike (after any tuning)."
        ),
    ] = True,
    json_path: JsonOpt = None,
    presets_file: PresetsFileOpt = None,
    offload_threshold: OffloadOpt = None,
    accel_lanes: AccelLanesOpt = None,
) -> None:
    """Capacity of each preset on the same workload seed, side by side."""
    from recsched.bench.setup import Setup

    _presets_file(presets_file)
    names = [p.strip() for p in presets.split(",") if p.strip()]
    accel = _accel(offload_threshold, accel_lanes, names, sim)
    s = Setup.make(model, scale, seed, classes, sizes, arrivals, sla_ms, sla_x, percentile, sim)
    if interleave and not sim and len(names) > 1:
        console.rule(f"[bold]{', '.join(names)}, interleaved")
        caps = s.capacities(names, duration, log=_log, confirm=confirm, **accel)
    else:
        caps = {}
        for name in names:
            console.rule(f"[bold]{name}")
            caps[name] = s.capacity(name, duration, log=_log, confirm=confirm, **accel)
    base = caps[names[0]]["latency_bounded_qps"] or float("nan")
    r = {
        "model": model,
        "sla_ms": s.sla_ms,
        "presets": caps,
        "ratios": {n: c["latency_bounded_qps"] / base for n, c in caps.items()},
        "same_as_first": _same_as_first(s, names, caps),
    }
    _emit(r, compare_table(r), json_path)


def _same_as_first(s: Setup, names: list[str], caps: dict[str, dict]) -> list[str]:
    """The presets after the first that served the first's configuration in effect (the
    tuner can keep its start: then their ratio is the machine's run-to-run noise)."""
    from recsched.config import EngineConfig
    from recsched.sched.request import serving_form
    from recsched.workload.sizes import parse_sizes

    if s.arrivals.startswith("trace") or any(caps[n].get("config") is None for n in names):
        return []  # a trace's sizes are not the spec's
    cap = parse_sizes(s.sizes).cap

    def form(n: str) -> EngineConfig:
        return serving_form(EngineConfig(**caps[n]["config"]), cap)

    return [n for n in names[1:] if form(n) == form(names[0])]


def tune_cmd(
    model: ModelArg,
    sla_ms: SlaMsOpt = None,
    sla_x: SlaXOpt = None,
    percentile: PctOpt = 95.0,
    classes: ClassesOpt = None,
    sizes: SizesOpt = "production",
    arrivals: ArrivalsOpt = "poisson",
    budget: Annotated[int, typer.Option(help="Measurement runs the tuner may make.")] = 12,
    duration: Annotated[float, typer.Option(help="Seconds per run (at least).")] = 2.0,
    scale: ScaleOpt = "small",
    seed: SeedOpt = 0,
    sim: SimOpt = False,
    refresh: Annotated[bool, typer.Option(help="Tune again (ignore the cache).")] = False,
    json_path: JsonOpt = None,
    offload_threshold: OffloadOpt = None,
    accel_lanes: AccelLanesOpt = None,
) -> None:
    """DeepRecSched: hill-climb batch size (and the rest) for latency-bounded throughput.

    With a CUDA device, or --offload-threshold T (the start), the offload threshold too."""
    from recsched.bench.setup import Setup

    accel = _accel(offload_threshold, accel_lanes, sim=sim)
    s = Setup.make(model, scale, seed, classes, sizes, arrivals, sla_ms, sla_x, percentile, sim)
    r = s.tune(budget=budget, duration=duration, refresh=refresh, log=_log, **accel)
    t = Table(title=f"{model} tuning trajectory (SLA {s.sla_ms:.2f} ms p{percentile:g})")
    cols = ("step", "config", "qps", f"p{percentile:g} ms", "95% CI", "met", "accepted")
    for col in cols:
        t.add_column(col, justify="right" if col != "config" else "left")
    for st in r["trajectory"]:
        screened = st.get("screened_qps")  # one run just above the best rate, missed there
        qps = f"< {screened:.1f}" if screened else f"{st.get('qps', 0):.1f}"
        ci = st.get("ci_ms")  # of the passing run's percentile; None: unmet, or no bound
        ends = ["-" if v is None else f"{v:.1f}" for v in ci] if ci else None
        t.add_row(
            str(st.get("step")), str(st.get("knobs", st.get("config"))), qps,
            f"{st.get('p_tail_ms', float('nan')):.2f}", "..".join(ends) if ends else "",
            str(st.get("met")),
            "restart" if st.get("phase") == "restart" else str(st.get("accepted")),
        )  # fmt: skip
    _emit(r, t, json_path)
    console.print(f"best: {r['best']}  (stopped: {r.get('stop_reason')}, {r.get('runs')} runs)")


def _log(msg: str) -> None:
    console.print(msg)


def sweep_cmd(
    model: ModelArg,
    presets: Annotated[str, typer.Option(help="Comma-separated presets.")] = (
        "baseline,split,dynamic"
    ),
    qps: Annotated[
        str | None, typer.Option(help="Comma-separated offered rates (default: from capacity).")
    ] = None,
    points: Annotated[int, typer.Option(help="Rates when --qps is not given.")] = 6,
    batch_size: Annotated[int, typer.Option(help="B for split/dynamic.")] = DEFAULT_BATCH_SIZE,
    sla_ms: SlaMsOpt = None,
    sla_x: SlaXOpt = None,
    percentile: PctOpt = 95.0,
    classes: ClassesOpt = None,
    sizes: SizesOpt = "production",
    arrivals: ArrivalsOpt = "poisson",
    duration: Annotated[float, typer.Option(help="Seconds per run.")] = 3.0,
    scale: ScaleOpt = "small",
    seed: SeedOpt = 0,
    plot: Annotated[Path | None, typer.Option(help="Write p95/p99 vs load plots here.")] = None,
    json_path: JsonOpt = None,
    presets_file: PresetsFileOpt = None,
) -> None:
    """Offered load vs p95/p99 for several presets (the same workload seed at each rate)."""
    from recsched.bench.setup import Setup

    _presets_file(presets_file)
    s = Setup.make(model, scale, seed, classes, sizes, arrivals, sla_ms, sla_x, percentile)
    names = [p.strip() for p in presets.split(",") if p.strip()]
    if qps:
        rates = [float(q) for q in qps.split(",")]
    else:
        top = 2.5 * s.start_qps(s.config("baseline"))
        rates = [round(top * (i + 1) / points, 1) for i in range(points)]
    curves: dict[str, dict] = {}
    for name in names:
        cfg = s.config(name, _log, batch_size=batch_size)
        run = s.run_fn(cfg, name, duration)
        runs = []
        for q in rates:
            r = run(q)
            runs.append(r)
            lat = r["latency_ms"]
            _log(f"  {name}: {q:8.1f} qps  p95={lat['p95']:8.2f} ms  p99={lat['p99']:8.2f} ms")
        passing = [r["offered_qps"] for r in runs if r.get("sla_met")]
        curves[name] = {
            "preset": name, "sla_ms": s.sla_ms, "runs": runs, "config": cfg.to_dict(),
            "latency_bounded_qps": max(passing) if passing else 0.0,
        }  # fmt: skip
    result = {"model": model, "sla_ms": s.sla_ms, "qps": rates, "presets": curves}
    t = Table(title=f"{model}: p95 / p99 (ms) vs offered load")
    t.add_column("qps", justify="right")
    for name in names:
        t.add_column(name, justify="right")
    for i, q in enumerate(rates):
        cells = []
        for name in names:
            lat = curves[name]["runs"][i]["latency_ms"]
            cells.append(f"{lat['p95']:.1f} / {lat['p99']:.1f}")
        t.add_row(f"{q:g}", *cells)
    _emit(result, t, json_path)
    if plot is not None:
        from recsched.bench.report import plot_load_curves

        plot.mkdir(parents=True, exist_ok=True)
        out = plot / f"sweep-{model}.png"
        plot_load_curves(curves, out, f"{model}: offered load vs tail latency")
        console.print(f"[dim]wrote {out}[/dim]")
