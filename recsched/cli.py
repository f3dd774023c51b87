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
