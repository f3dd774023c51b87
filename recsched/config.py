"""Frozen configuration dataclasses, loadable from TOML.

`EngineConfig` is everything the engine and the tuner agree on: how queries are cut into
batches (request level), how batches' operators are placed (operator level), and the lanes.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUEST_POLICIES = ("whole", "split", "dynamic", "tuned")
OPERATOR_POLICIES = ("sequential", "roundrobin", "opstream")
# B for split/dynamic unless set. 64 (the first default) was the worst B tried on rmc1 at every
# SLA, on the simulator with the peak's costs and on the real engine (2 lanes): splitting the
# 5% of queries with 380-1,000 items into 64-row batches costs more lane time than it saves in
# latency; 256 is within a few percent of the best B at --sla-x 5, 10 and 20 and is what the
# tuner chose for four of the eight models (BENCHMARKS.md, "How close to the peak").
DEFAULT_BATCH_SIZE = 256


@dataclass(frozen=True)
class EngineConfig:
    """One serving configuration.

    request: whole | split | dynamic | tuned (tuned = split or dynamic, as the tuner chose,
    with its knobs; `dynamic` until chosen).
    batch_size: B for split/dynamic. merge_delay_ms: the most a small query waits to be merged.
    offload_threshold: queries with n_items >= T go to accelerator lanes (None: never).
    operator: sequential | roundrobin | opstream. lanes / threads_per_lane: CPU lanes.
    granularity: coarse | fine | model operator graphs (operator policies other than
    sequential); `model` is the whole model as one operator (recsched.graph.whole); `auto`
    picks one per model from its measured profile at the batch sizes the request level
    forms (`recsched.sched.opstream.choose_granularity`, resolved by `Setup.resolve` and the
    simulator; an engine given `auto` with no graph takes `model`).
    order: the `sequential` queue's order: `fifo`, `size` (small queries overtake the
    queued pieces of large ones) or `value` (and high-value ones overtake low-value ones;
    recsched.sched.operator.SizeOrdered).
    compiled: whole-model tasks run the TorchScript forward (`ModelAdapter.compiled`), which
    runs without the GIL; False runs the eager module (for comparison and for debugging).
    lane_nice: each CPU lane thread's nice value (the value, not an increment), in lane order;
    0, or a lane past the list, keeps the process's. The operating system's thread priority:
    a lane at the process's priority beside lanes at 10 takes the cores it needs while they
    wait, the CPU's analogue of CUDA stream priorities (with OpStream's `reserved_lanes`).
    A value below the process's needs the privilege to raise a priority (else a warning).
    """

    request: str = "whole"
    batch_size: int = DEFAULT_BATCH_SIZE
    merge_delay_ms: float = 1.0
    offload_threshold: int | None = None
    operator: str = "sequential"
    lanes: int = 2
    threads_per_lane: int = 1
    accel_lanes: int = 0
    granularity: str = "coarse"
    queue_capacity: int = 4096
    opstream: dict[str, Any] = field(default_factory=dict)
    compiled: bool = True
    order: str = "fifo"
    lane_nice: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lane_nice", tuple(int(n) for n in self.lane_nice))
        if len(self.lane_nice) > self.lanes or not all(-20 <= n <= 19 for n in self.lane_nice):
            raise ValueError("lane_nice: at most one nice value per CPU lane, each in -20..19")
        if self.request not in REQUEST_POLICIES:
            raise ValueError(f"unknown request policy {self.request!r}; one of {REQUEST_POLICIES}")
        if self.operator not in OPERATOR_POLICIES:
            raise ValueError(
                f"unknown operator policy {self.operator!r}; one of {OPERATOR_POLICIES}"
            )
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.merge_delay_ms < 0:
            raise ValueError("merge_delay_ms must be >= 0")
        if self.lanes < 1 or self.threads_per_lane < 1:
            raise ValueError("lanes and threads_per_lane must be >= 1")
        if self.offload_threshold is not None and self.offload_threshold < 1:
            raise ValueError("offload_threshold must be >= 1")
        if self.granularity not in ("coarse", "fine", "model", "auto"):
            raise ValueError("granularity is coarse, fine, model or auto")
        if self.order not in ("fifo", "size", "value"):
            raise ValueError(f"unknown queue order {self.order!r}; fifo, size or value")
        if self.queue_capacity < 1:
            raise ValueError("queue_capacity must be >= 1")

    def replace(self, **changes: Any) -> EngineConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {"request": "whole", "operator": "sequential"},
    "split": {"request": "split", "operator": "sequential"},
    "dynamic": {"request": "dynamic", "operator": "sequential"},
    "deeprecsched": {"request": "tuned", "operator": "sequential"},
    "roundrobin": {"request": "tuned", "operator": "roundrobin"},
    "opstream": {"request": "tuned", "operator": "opstream", "granularity": "auto"},
}


BUILTIN_PRESETS = tuple(PRESETS)


def preset(name: str, **overrides: Any) -> EngineConfig:
    """The configuration a preset names (`baseline`, `deeprecsched`, `opstream`, ...)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; one of {', '.join(PRESETS)}")
    return EngineConfig(**{**PRESETS[name], **overrides})


def load_presets(path: str | Path) -> list[str]:
    """Register the presets a TOML file defines and return their names, in file order.

    Each table is one preset: `preset = "BASE"` (optional: a preset whose fields come first)
    and `EngineConfig` fields, with OpStream's options as an `opstream` table:

        [din-short]
        preset = "opstream"
        request = "split"
        batch_size = 64
        opstream = { gate_frac = 0.05, split_frac = 0.1 }

    A name that is a built-in preset, an unknown base or field, or a value `EngineConfig`
    refuses is a ValueError naming the file and the table (OpStream's option names are
    checked when an engine is made, `OpStreamOptions.from_dict`)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not TOML ({exc})") from None
    names = []
    for name, table in data.items():
        where = f"{path} [{name}]"
        if not isinstance(table, dict):
            raise ValueError(f"{where}: a preset is a table of EngineConfig fields")
        if name in BUILTIN_PRESETS:
            raise ValueError(f"{where}: {name!r} is a built-in preset; choose another name")
        merged = _preset_fields(table, where)
        try:
            EngineConfig(**merged)
        except (TypeError, ValueError, AssertionError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        PRESETS[name] = merged
        names.append(name)
    return names


def _preset_fields(table: dict[str, Any], where: str) -> dict[str, Any]:
    """A TOML table's `EngineConfig` fields, its base preset's (`preset = NAME`) first;
    ValueError naming `where` for an unknown base or field."""
    fields = dict(table)
    base = fields.pop("preset", None)
    if base is not None and base not in PRESETS:
        raise ValueError(f"{where}: unknown base preset {base!r}; one of {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown}; known: {sorted(known)}")
    return {**(PRESETS[base] if base is not None else {}), **fields}


def load_config(path: str | Path) -> EngineConfig:
    """An EngineConfig from a TOML file (keys as the dataclass fields; `preset` allowed)."""
    return EngineConfig(**_preset_fields(tomllib.loads(Path(path).read_text()), str(path)))
