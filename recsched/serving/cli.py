"""`recsched serve MODEL --ray [--replicas N | --autoscale MIN:MAX] [--address A]`.

Called by the `serve` command (recsched/server/cli.py) when `--ray` is given; ray is imported
only here, so the command line works without the `ray` extra.
"""

from __future__ import annotations

import typer


def serve_ray(
    models: list[str],
    *,
    preset: str,
    host: str,
    port: int,
    scale: str,
    classes: str | None,
    token: str | None,
    lanes: int | None,
    queue_capacity: int,
    seed: int,
    replicas: int,
    autoscale: str | None,
    address: str | None,
    replica_cpus: float,
    router: str,
) -> None:
    """Deploy one model on Ray Serve and block until SIGINT/SIGTERM."""
    if len(dict.fromkeys(models)) != 1:
        typer.echo("error: --ray serves one model per application", err=True)
        raise typer.Exit(2)
    try:
        from recsched.serving.ray_deploy import RaySpec, cost_table, parse_autoscale, serve_on_ray
    except ModuleNotFoundError as e:
        typer.echo(
            f"recsched serve --ray needs the ray extra ({e.name} is missing): "
            "pip install 'recsched[ray]'",
            err=True,
        )
        raise typer.Exit(2) from None
    from recsched.config import preset as make_preset
    from recsched.models.registry import load_model
    from recsched.server.cli import preset_resolver
    from recsched.workload.classes import parse_classes

    try:
        parse_classes(classes)
        given = {"lanes": lanes} if lanes is not None else {}
        cfg = make_preset(preset, **given)
        adapter = load_model(models[0], scale=scale, seed=seed)
        if cfg.request == "tuned":  # the tuner's knobs (cached, or tuned now), as `serve`
            resolve = preset_resolver(scale, seed, classes, None, keep=tuple(given))
            cfg = resolve(models[0], adapter, cfg, tune=True)[0]
        spec = RaySpec(
            models[0], cfg.to_dict(), scale=scale, seed=seed, replicas=replicas,
            autoscale=parse_autoscale(autoscale), replica_cpus=replica_cpus,
            fixed_lanes=lanes is not None, router=router, cost=cost_table(adapter),
            classes=classes, queue_capacity=queue_capacity, token=token,
        )  # fmt: skip
    except (ValueError, MemoryError, AssertionError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: binding {host}: reachable beyond this machine", err=True)
    echo = lambda m: typer.echo(m, err=True)  # noqa: E731
    serve_on_ray(spec, address=address, host=host, port=port, echo=echo)
