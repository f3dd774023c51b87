"""The `recsched` command line (typer + rich)."""

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="recsched: serve and schedule recommendation models.",
)


@app.callback()
def main() -> None:
    """recsched."""
