"""`recsched serve MODEL [MODEL...]`: the KServe v2 HTTP server.

starlette and uvicorn (the `server` extra) are imported inside the command, so the rest of
the command line works without them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from recsched.config import EngineConfig
    from recsched.models.base import ModelAdapter

TOKEN_ENV = "RECSCHED_TOKEN"


def read_token(token_file: Path | None) -> str | None:
    """The bearer token of the state-changing endpoints: `--token-file`, else $RECSCHED_TOKEN."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise typer.BadParameter(f"cannot read token file {token_file}: {e}") from None
        if not token:
            raise typer.BadParameter(f"token file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


GUARD_TARGET = 0.4  # `--guard auto` (BENCHMARKS.md, "The tail guard")


def parse_guard(text: str) -> float | None:
    """`--guard`: auto (GUARD_TARGET), off (None) or a share in (0, 1]."""
    if text == "auto":
        return GUARD_TARGET
    if text == "off":
        return None
    try:
        share = float(text)
    except ValueError:
        share = math.nan
    if not 0.0 < share <= 1.0:
        raise ValueError(f"--guard is auto, off or a share in (0, 1], got {text!r}")
    return share


SHOWN_KNOBS = ("request", "batch_size", "merge_delay_ms", "order", "operator", "lanes")


def preset_resolver(
    scale: str,
    seed: int,
    classes: str | None,
    sla_ms: float | None,
    keep: tuple[str, ...] = (),
) -> Callable[..., tuple[EngineConfig, dict[str, Any]]]:
    """`ServerConfig.configure` for `recsched serve`: a preset resolved as the measuring
    commands resolve it (`recsched.bench.setup.Setup.resolve` and `engine_extras`): the
    `tuned` request knobs from the tuner's cache for this model, SLA (`--sla-ms`, else
    `--sla-x` 20 as `compare`) and classes, and the profiled cost model of the operator-level
    policies. Presets with neither are served as given. It tunes on a cache miss only when
    called with `tune=True` (before serving); a model loaded or reconfigured later with no
    tuned configuration cached is refused (ValueError: 400), not tuned under live traffic.
    `keep`: fields the command line set (`--lanes`), never replaced by tuned ones."""
    from rich.console import Console

    from recsched.bench.setup import Setup

    setups: dict[str, Setup] = {}
    console = Console(stderr=True)

    def configure(
        name: str, adapter: ModelAdapter, cfg: EngineConfig, tune: bool = False
    ) -> tuple[EngineConfig, dict[str, Any]]:
        if cfg.request != "tuned" and cfg.operator == "sequential":
            return cfg, {}
        if name not in setups:
            setups[name] = Setup.make(
                name, scale, seed, classes, sla_ms=sla_ms, adapter=adapter
            )  # fmt: skip
        log = (lambda m: console.print(f"  {name}: {m}")) if tune else None
        s = setups[name]
        cfg = s.resolve(cfg, log, tune=tune, keep=keep)
        return cfg, s.engine_extras(cfg)

    return configure


def register(app: typer.Typer) -> None:
    """Add the `serve` command to the recsched command line."""

    @app.command("serve")
    def serve_cmd(
        models: list[str] = typer.Argument(..., help="Models to serve (rmc1, ncf, din, ...)."),
        preset: str = typer.Option("dynamic", help="Engine preset (baseline, dynamic, ...)."),
        presets_file: Path | None = typer.Option(
            None, help="TOML file of named presets (as the measuring commands' --presets-file)."
        ),
        host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
        port: int = typer.Option(8000, help="TCP port."),
        scale: str = typer.Option("small", help="Model scale: small | paper."),
        classes: str | None = typer.Option(
            None, help="Priority classes NAME:SHARE[:VALUE[:SLA]],...; priority 1 = most valuable."
        ),
        token_file: Path | None = typer.Option(
            None,
            help=f"File holding the bearer token for state-changing endpoints "
            f"(default: ${TOKEN_ENV}).",
        ),  # fmt: skip
        lanes: int | None = typer.Option(None, help="CPU lanes (default: the preset's)."),
        offload_threshold: int | None = typer.Option(
            None,
            help="Queries of at least this many items run on accelerator lanes (needs a CUDA "
            "device; refused without one; untested: no GPU where recsched is developed).",
        ),
        accel_lanes: int | None = typer.Option(
            None, help="With --offload-threshold: accelerator lanes (CUDA streams)."
        ),
        max_batch_size: int = typer.Option(4096, help="Most items one request may carry."),
        max_body_mb: float = typer.Option(64.0, help="Largest request body, MiB."),
        queue_capacity: int = typer.Option(256, help="Requests waiting for the engine, in all."),
        sla_ms: float | None = typer.Option(
            None, help="SLA of the classes that name none (predicted admission needs one)."
        ),
        admission: str = typer.Option(
            "auto",
            help="count | predicted | auto (predicted when several classes all have an SLA): "
            "predicted holds low-value work while the engine has enough, by the model's "
            "profiled cost, and sheds what would miss its SLA.",
        ),
        reserve: float = typer.Option(
            0.25, help="predicted: engine backlog allowed below the top class (share of its SLA)."
        ),
        guard: str = typer.Option(
            "auto",
            help="Tail guard: with several classes and an SLA for the top one, admit the lower "
            "ones at a share steered so the top class's slowest requests wait at most this "
            "share of their SLA's room (AIMD; recsched/server/guard.py). auto = "
            f"{GUARD_TARGET:g} | off | a share in (0, 1].",
        ),
        hang_s: float = typer.Option(30.0, help="A lane task longer than this is a hung lane."),
        wire_ids: str = typer.Option(
            "int32",
            help="int32: index inputs whose ids fit travel as INT32 (half the bytes; metadata "
            "and config say so) | model: the model's own dtype (INT64).",
        ),
        seed: int = typer.Option(0, help="Model weight seed."),
        log_level: str = typer.Option("info", help="uvicorn log level."),
        trace: Path | None = typer.Option(
            None, help="Write lane traces (Chrome trace JSON) here when the server stops."
        ),
        on_ray: bool = typer.Option(False, "--ray", help="Serve on Ray Serve (the ray extra)."),
        replicas: int = typer.Option(1, help="--ray: engine replicas (one engine each)."),
        autoscale: str | None = typer.Option(None, help="--ray: autoscale replicas MIN:MAX."),
        address: str | None = typer.Option(None, help="--ray: a Ray cluster (default: local)."),
        replica_cpus: float = typer.Option(1.0, help="--ray: CPUs per replica (its lanes)."),
        router: str = typer.Option("recsched", help="--ray: request router: recsched|default."),
    ) -> None:
        """Serve MODELs over HTTP with the KServe v2 / Open Inference Protocol (tritonclient,
        perf_analyzer). SIGTERM drains in-flight requests and refuses new ones with 503.
        """
        if on_ray:  # recsched.serving.cli: the same front, engines on Ray Serve replicas
            from recsched.serving.cli import serve_ray

            return serve_ray(
                models, preset=preset, host=host, port=port, scale=scale, classes=classes,
                token=read_token(token_file), lanes=lanes, queue_capacity=queue_capacity,
                seed=seed, replicas=replicas, autoscale=autoscale, address=address,
                replica_cpus=replica_cpus, router=router,
            )  # fmt: skip
        try:
            from recsched.server.app import RecschedServer, ServerConfig, serve
        except ModuleNotFoundError as e:
            typer.echo(
                f"recsched serve needs the server extra ({e.name} is missing): "
                "pip install 'recsched[server]'",
                err=True,
            )
            raise typer.Exit(2) from None
        from recsched.config import preset as make_preset
        from recsched.engine import offload_refused
        from recsched.models.registry import load_model
        from recsched.server.codec import WIRE_IDS, Limits
        from recsched.workload.classes import parse_classes

        try:
            if presets_file is not None:
                from recsched.bench.setup import register_presets

                register_presets(presets_file)
            given = {"lanes": lanes, "offload_threshold": offload_threshold}
            if offload_threshold is not None:
                if (why := offload_refused()) is not None:
                    raise ValueError(why)
                given["accel_lanes"] = accel_lanes
            overrides = {k: v for k, v in given.items() if v is not None}
            cfg = make_preset(preset, **overrides)
            prio = parse_classes(classes)
            if admission not in ("auto", "count", "predicted"):
                raise ValueError(f"--admission is auto, count or predicted, not {admission!r}")
            if admission == "auto":
                slas = all(c.sla_ms or sla_ms for c in prio)
                admission = "predicted" if len(prio) > 1 and slas else "count"
            limits = Limits(max_batch_size, int(max_body_mb * (1 << 20)))
            if not 0.0 < reserve <= 1.0:
                raise ValueError(f"--reserve is a share of an SLA in (0, 1], got {reserve:g}")
            guard_target = parse_guard(guard)
            if wire_ids not in WIRE_IDS:
                raise ValueError(f"--wire-ids is one of {', '.join(WIRE_IDS)}, not {wire_ids!r}")
            adapters = {m: load_model(m, scale=scale, seed=seed) for m in dict.fromkeys(models)}
            configure = preset_resolver(scale, seed, classes, sla_ms, keep=tuple(overrides))
            served = {}
            for m, ad in adapters.items():  # tuned knobs found (or tuned) before serving
                served[m] = configure(m, ad, cfg, tune=True)[0]
        except (ValueError, MemoryError, AssertionError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        token = read_token(token_file)
        if host not in ("127.0.0.1", "localhost", "::1"):
            typer.echo(
                f"warning: binding {host}: the server is reachable beyond this machine", err=True
            )
        sc = ServerConfig(
            limits=limits, queue_capacity=queue_capacity, hang_s=hang_s,
            trace_path=str(trace) if trace else None, admission=admission, sla_ms=sla_ms,
            reserve=reserve, wire_ids=wire_ids, guard=guard_target, configure=configure,
        )  # fmt: skip
        server = RecschedServer(
            adapters, cfg, sc, prio, token, loader=lambda m: load_model(m, scale=scale, seed=seed)
        )
        doors = "need the bearer token" if token else "are disabled"
        guarded = any(h.admission.guard is not None for h in server.hosts.values())
        guard_text = f", tail guard {guard_target:g}" if guarded else ""
        typer.echo(
            f"serving {', '.join(adapters)} ({preset}, {admission} admission{guard_text}) "
            f"on http://{host}:{port}; state-changing endpoints {doors}",
            err=True,
        )
        for m, c in served.items():
            shown = SHOWN_KNOBS + (("granularity",) if c.operator != "sequential" else ())
            knobs = ", ".join(f"{k}={getattr(c, k)}" for k in shown)
            typer.echo(f"  {m}: {knobs}", err=True)
        serve(server, host, port, log_level)
