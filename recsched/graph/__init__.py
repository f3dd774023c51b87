"""Model -> operator graph (torch.fx), operator classes, cost profiles: the only bridge
between `recsched.models` and the schedulers.

Tensor-free (no torch import): `ops` (OpInfo, GraphInfo), `cost` (CostModel). With torch:
`fx` (build_graph, OpGraph), `profile` (profile_model, measure_peak, save/load_profile).
Names are imported lazily so that `from recsched.graph import CostModel` stays torch-free.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "OpInfo": "ops",
    "GraphInfo": "ops",
    "classify": "ops",
    "CostModel": "cost",
    "interpolate": "cost",
    "OpGraph": "fx",
    "build_graph": "fx",
    "profile_model": "profile",
    "measure_peak": "profile",
    "save_profile": "profile",
    "load_profile": "profile",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"recsched.graph.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'recsched.graph' has no attribute {name!r}")
