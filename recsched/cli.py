"""The `recsched` command line (typer + rich).

Each part registers its own commands (`register(app)` in its `cli` module), so this file only
assembles them: bench/cli.py (models, profile, peak, bench, capacity, tune, compare),
sim/cli.py (simulate, fidelity), server/cli.py (serve).
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="recsched: serve and schedule neural recommendation models.",
)

_COMMAND_MODULES = (
    "recsched.bench.cli",
    "recsched.bench.report_cli",
    "recsched.sim.cli",
    "recsched.server.cli",
)

for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a part not built yet, or an optional extra missing
        if exc.name != _name:
            raise
        continue
    _mod.register(app)


# What a command raises for input it cannot use (an unknown model or preset, a malformed size,
# class or arrival spec, a missing file): the user's to fix, so said in one line, not a trace.
USER_ERRORS = (ValueError, FileNotFoundError)


def main() -> None:
    """The `recsched` console script: `app`, with user errors printed as one red line and exit
    status 2 (`RECSCHED_DEBUG=1` re-raises them, traceback and all)."""
    import os
    import sys

    from rich.console import Console
    from rich.markup import escape

    try:
        app()
    except USER_ERRORS as exc:
        if os.environ.get("RECSCHED_DEBUG"):
            raise
        err = Console(stderr=True, soft_wrap=True, highlight=False)
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        err.print("[dim](RECSCHED_DEBUG=1 shows the traceback)[/dim]")
        sys.exit(2)
