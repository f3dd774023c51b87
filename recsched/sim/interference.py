"""Slowdown of co-running work: a factor per (class, class running beside it) pair.

A task of class `a` that starts while tasks of classes `b1, b2, ...` run on the *other*
lanes of the same kind on the same server takes `1 + sum_i (F[a, b_i] - 1)` times its solo
duration (additive excess: each co-runner takes its share of the shared resource; a sum,
not a product, so many light co-runners do not compound). The factor is fixed when the
task starts. Classes: `compute` and `memory` (the operator classes of `recsched.graph`) and
`mixed`, a whole model run by the `sequential` policy (lookups then MLPs).

`calibrate()` measures the factors on this machine by running two operators at once on two
threads (torch releases the GIL inside operators, so they truly co-run), each with its own
intra-op thread count like a CPU lane; `calibrate_model()` measures F[mixed, mixed] on a
real model's forward. `DEFAULT` is a placeholder table (memory-bound pairs contend most,
as for DRAM bandwidth): the 2-core development VM was too busy with other work for a stable
calibration (factors swung between 1.0 and 2.9 from one minute to the next). Calibrate on
an idle machine and pass the JSON (`calibrate().save(path)`, `--interference path`).
Accelerator lanes default to no interference: no GPU was available to measure (load a
table measured elsewhere with `load`).
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WHOLE = "mixed"  # the class of a whole-model task
CLASSES = ("compute", "memory", WHOLE)
KINDS = ("cpu", "accel")


def _key(a: str, b: str) -> str:
    return f"{a}|{b}"


@dataclass(frozen=True)
class InterferenceModel:
    """Per lane kind, `factors["a|b"]`: slowdown of class `a` while `b` runs beside it."""

    cpu: Mapping[str, float]
    accel: Mapping[str, float] = field(default_factory=dict)
    source: str = "default"

    def __post_init__(self) -> None:
        for table in (self.cpu, self.accel):
            for k, f in table.items():
                a, _, b = k.partition("|")
                assert a and b, f"interference key {k!r} is not 'class|class'"
                assert f >= 1.0 - 1e-9 or f > 0, f"factor {k}={f} must be positive"

    def pair(self, kind: str, a: str, b: str) -> float:
        """F[a, b] for lanes of `kind` (1.0 when the pair is not in the table)."""
        table = self.cpu if kind == "cpu" else self.accel
        return float(table.get(_key(a, b), 1.0))

    def factor(self, kind: str, cls: str, others: Iterable[str]) -> float:
        """Slowdown of a `cls` task starting beside tasks of classes `others` (same kind)."""
        return 1.0 + sum(self.pair(kind, cls, o) - 1.0 for o in others)

    def excess(self, kind: str) -> dict[str, dict[str, float]]:
        """`excess[a][b] = F[a, b] - 1` for every class pair: the simulator's lookup table."""
        names = set(CLASSES)
        for k in self.cpu if kind == "cpu" else self.accel:
            a, _, b = k.partition("|")
            names |= {a, b}
        return {a: {b: self.pair(kind, a, b) - 1.0 for b in names} for a in names}

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "cpu": dict(self.cpu), "accel": dict(self.accel)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InterferenceModel:
        unknown = set(d) - {"source", "cpu", "accel", "measured"}
        if unknown:
            raise ValueError(f"interference table: unknown keys {sorted(unknown)}")
        return cls(dict(d.get("cpu", {})), dict(d.get("accel", {})), str(d.get("source", "")))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> InterferenceModel:
        return cls.from_dict(json.loads(Path(path).read_text()))


NONE = InterferenceModel({}, {}, "none")

# Placeholder factors (see the module docstring): not a measurement.
DEFAULT = InterferenceModel(
    cpu={
        "compute|compute": 1.05,
        "compute|memory": 1.05,
        "compute|mixed": 1.05,
        "memory|compute": 1.10,
        "memory|memory": 1.30,
        "memory|mixed": 1.20,
        "mixed|compute": 1.08,
        "mixed|memory": 1.18,
        "mixed|mixed": 1.12,
    },
    accel={},
    source="default placeholder (not measured)",
)


# -- calibration ----------------------------------------------------------------------------
def _ops(scale: float = 1.0) -> dict[str, Callable[[], object]]:
    """One representative operator per class, as closures over fixed tensors.

    compute: a [128, 512] x [512, 512] fp32 matmul (high arithmetic intensity).
    memory: a sum-pooled embedding bag of 256 x 80 random rows of a 500K x 64 fp32 table
    (128 MB, far beyond the caches: every lookup misses).
    mixed: half a lookup then half a matmul (a miniature whole model).
    """
    import torch

    g = torch.Generator().manual_seed(0)
    rows = max(1000, int(500_000 * scale))
    table = torch.randn(rows, 64, generator=g)
    idx = torch.randint(0, rows, (256 * 80,), generator=g)
    offsets = torch.arange(0, 256 * 80, 80)
    half_idx, half_off = idx[: 128 * 80], offsets[:128]
    a = torch.randn(128, 512, generator=g)
    w = torch.randn(512, 512, generator=g)
    ah = a[:64]
    fn = torch.nn.functional.embedding_bag

    def compute() -> object:
        return torch.mm(a, w)

    def memory() -> object:
        return fn(idx, table, offsets, mode="sum")

    def mixed() -> object:
        fn(half_idx, table, half_off, mode="sum")
        return torch.mm(ah, w)

    return {"compute": compute, "memory": memory, "mixed": mixed}


def _time_op(op: Callable[[], object], reps: int) -> float:
    """Median seconds of `op` over `reps` runs (after one warm-up run)."""
    op()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        op()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _co_run(a: Callable[[], object], b: Callable[[], object], reps: int, threads: int) -> float:
    """Median seconds of `a` while another thread runs `b` in a loop."""
    import torch

    stop = threading.Event()
    started = threading.Event()

    def background() -> None:
        torch.set_num_threads(threads)
        b()
        started.set()
        while not stop.is_set():
            b()

    th = threading.Thread(target=background, name="recsched-interference", daemon=True)
    th.start()
    started.wait(10.0)
    try:
        return _time_op(a, reps)
    finally:
        stop.set()
        th.join(10.0)


def co_run_factors(
    ops: Mapping[str, Callable[[], object]],
    pairs: Iterable[tuple[str, str]],
    reps: int = 30,
    threads: int = 1,
    rounds: int = 1,
) -> dict[str, float]:
    """`{"a|b": time(a beside b) / time(a alone)}` for each pair, measured on two threads.

    Each thread uses `threads` intra-op threads, like a CPU lane. Each factor is the smallest
    over `rounds` rounds (a burst of unrelated load inflates one round), clipped below at 1.
    """
    import torch

    assert reps >= 1 and threads >= 1 and rounds >= 1
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    factors: dict[str, float] = {}
    try:
        with torch.inference_mode():
            for _ in range(rounds):
                for a, b in pairs:
                    solo = _time_op(ops[a], reps)  # just before: the machine may drift
                    co = _co_run(ops[a], ops[b], reps, threads)
                    k = _key(a, b)
                    factors[k] = min(factors.get(k, math.inf), round(max(1.0, co / solo), 3))
    finally:
        torch.set_num_threads(saved)
    return factors


def calibrate(
    reps: int = 30, threads: int = 1, scale: float = 1.0, rounds: int = 3
) -> InterferenceModel:
    """Measure CPU factors F[a, b] for every pair of classes with representative operators.

    `scale` shrinks the lookup table (tests use a small one). Run it on an otherwise idle
    machine. The accelerator table is left empty. Takes `9 * 2 * reps * rounds` operator
    runs (a few seconds).
    """
    pairs = [(a, b) for a in CLASSES for b in CLASSES]
    factors = co_run_factors(_ops(scale), pairs, reps, threads, rounds)
    return InterferenceModel(
        factors, {}, f"calibrated (threads={threads}, reps={reps}, rounds={rounds})"
    )


def calibrate_model(
    adapter: Any,
    batches: Iterable[int],
    base: InterferenceModel = DEFAULT,
    reps: int = 10,
    threads: int = 1,
    rounds: int = 3,
) -> InterferenceModel:
    """`base` with F[mixed, mixed] measured on this model: two whole forwards at once.

    The factor is the mean over `batches` (e.g. the median and tail query sizes). It
    captures what the generic operators cannot: the model's own mix of Python dispatch
    (which holds the GIL) and kernels, and the machine's load at the time of measuring.
    """
    fs = []
    fwd = adapter.runner() if hasattr(adapter, "runner") else adapter.module  # as served
    for b in batches:
        x, y = adapter.make_inputs(int(b), 1), adapter.make_inputs(int(b), 2)
        ops = {"a": lambda x=x: fwd(x), "b": lambda y=y: fwd(y)}
        fs.append(co_run_factors(ops, [("a", "b")], reps, threads, rounds)["a|b"])
    assert fs, "at least one batch size"
    cpu = dict(base.cpu)
    cpu[_key(WHOLE, WHOLE)] = round(sum(fs) / len(fs), 3)
    src = f"{base.source}; mixed|mixed measured on {getattr(adapter, 'name', 'the model')}"
    return InterferenceModel(cpu, dict(base.accel), src)


def resolve(spec: InterferenceModel | str | Path | None) -> InterferenceModel:
    """An interference model from a model, a JSON path, "none", or None (the default)."""
    if spec is None:
        return DEFAULT
    if isinstance(spec, InterferenceModel):
        return spec
    if str(spec) == "none":
        return NONE
    if str(spec) == "default":
        return DEFAULT
    return InterferenceModel.load(spec)
