"""The `report` command: JSON results (bench, capacity, compare, tune, simulate, traces) ->
a static HTML page with PNG plots (recsched.bench.report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)


def report_cmd(
    results: Annotated[list[Path], typer.Argument(help="JSON results and Chrome traces.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for index.html and PNGs.")] = Path(
        "report"
    ),
    title: Annotated[str, typer.Option(help="Page title.")] = "recsched report",
) -> None:
    """Turn JSON results into a static HTML page with plots (readable offline)."""
    from recsched.bench.report import load_results, write_report

    missing = [str(p) for p in results if not p.is_file()]
    if missing:
        console.print(f"[red]error:[/red] no such file: {', '.join(missing)}")
        raise typer.Exit(2)
    try:
        kinds = [r.kind for r in load_results(results)]
        index = write_report(results, out, title)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    skipped = kinds.count(None)
    note = f", {skipped} not recognised" if skipped else ""
    console.print(f"wrote {index} ({len(kinds)} result(s){note})")
