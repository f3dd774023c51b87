"""The discrete-event simulator: the same request and operator policies (`recsched.sched`)
on simulated time, past one machine.

- `events`: the event loop (heap of (time, priority, seq)) on a `SimClock`.
- `lanes`: simulated lanes (cost model x interference + overheads), a null `Lane` backend.
- `interference`: per class-pair slowdown factors, calibrated by co-running operators.
- `server`: one server = `SchedulerCore` + lanes, driven exactly as `recsched.engine` does.
- `cluster`: N servers of one or more types behind a load balancer.
- `run`: `simulate(...)` (a `bench`-shaped result), `sim_run_fn` (capacity search, tuner).
- `fidelity`: simulated vs real p50/p95/p99 at several loads.
- `cli`: `recsched simulate` and `recsched fidelity`.

Names are imported lazily: `from recsched.sim import simulate` loads no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "EventLoop": "events",
    "NullLane": "lanes",
    "InterferenceModel": "interference",
    "calibrate": "interference",
    "ServerType": "server",
    "SimServer": "server",
    "Cluster": "cluster",
    "BALANCERS": "cluster",
    "simulate": "run",
    "sim_run_fn": "run",
    "server_types": "run",
    "fidelity": "fidelity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"recsched.sim.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'recsched.sim' has no attribute {name!r}")
