"""Generate a seeded workload: arrival times, sizes and classes as numpy columns.

Three independent random streams (spawned from one `np.random.SeedSequence(seed)`) feed the
arrivals, the sizes and the classes, so changing the size distribution or the class mix
never moves an arrival time, and the same seed always gives the same queries.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsched.types import DEFAULT_CLASS, PriorityClass, Query
from recsched.workload.arrivals import ArrivalProcess, ArrivalSpecError, TraceReplay
from recsched.workload.classes import assign_classes
from recsched.workload.sizes import SizeDist


@dataclass(frozen=True, slots=True)
class Arrival:
    """One scheduled query: arrival time (s), items to rank, class index."""

    t_s: float
    n_items: int
    cls: int


@dataclass(frozen=True, eq=False)
class Workload:
    """A struct of arrays: column `i` of `t_s`, `n_items`, `cls` is query `i`, sorted by time.

    `cls` indexes `classes`. Iterating yields `Arrival`s (convenient, slow); use the columns
    for bulk work.
    """

    t_s: np.ndarray  # float64 [N], sorted, in [0, duration_s)
    n_items: np.ndarray  # int64 [N], >= 1
    cls: np.ndarray  # int64 [N], in [0, len(classes))
    classes: tuple[PriorityClass, ...] = (DEFAULT_CLASS,)
    duration_s: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        n = len(self.t_s)
        assert len(self.n_items) == n and len(self.cls) == n, "columns must have equal length"
        assert n == 0 or bool(np.all(np.diff(self.t_s) >= 0)), "arrival times must be sorted"
        assert n == 0 or int(self.n_items.min()) >= 1, "every query has at least one item"
        assert n == 0 or 0 <= int(self.cls.min()) and int(self.cls.max()) < len(self.classes)

    def __len__(self) -> int:
        return len(self.t_s)

    def __getitem__(self, i: int) -> Arrival:
        return Arrival(float(self.t_s[i]), int(self.n_items[i]), int(self.cls[i]))

    def __iter__(self) -> Iterator[Arrival]:
        cols = (self.t_s.tolist(), self.n_items.tolist(), self.cls.tolist())
        for t, n, c in zip(*cols, strict=True):
            yield Arrival(t, n, c)

    @property
    def offered_qps(self) -> float:
        return len(self) / self.duration_s if self.duration_s > 0 else math.nan

    def class_names(self) -> np.ndarray:
        """The class name of every query (object array [N])."""
        return np.array([c.name for c in self.classes], dtype=object)[self.cls]

    def query(self, i: int, model: str, sla_ms: float | None = None, t0_s: float = 0.0) -> Query:
        """Query `i` as a `recsched.types.Query` (qid = i), scheduled at `t0_s + t_s[i]`.

        The deadline uses the class's own SLA, else `sla_ms`, else none (inf).
        """
        c = self.classes[int(self.cls[i])]
        arrival = t0_s + float(self.t_s[i])
        sla = c.sla_ms if c.sla_ms is not None else sla_ms
        deadline = arrival + sla / 1000.0 if sla is not None else math.inf
        return Query(i, model, int(self.n_items[i]), c.name, c.value, arrival, deadline)


def _trace_classes(
    names: tuple[str, ...], codes: np.ndarray, classes: tuple[PriorityClass, ...]
) -> tuple[tuple[PriorityClass, ...], np.ndarray]:
    """Map a trace's class names onto `classes`; with the default class, adopt the trace's."""
    known = {c.name: i for i, c in enumerate(classes)}
    if all(n in known for n in names):
        remap = np.array([known[n] for n in names], dtype=np.int64)
        return classes, remap[codes] if len(names) else codes
    if classes == (DEFAULT_CLASS,):
        counts = np.bincount(codes, minlength=len(names)) / max(len(codes), 1)
        adopted = tuple(PriorityClass(n, float(s)) for n, s in zip(names, counts, strict=True))
        return adopted, codes
    missing = sorted(set(names) - set(known))
    raise ArrivalSpecError(f"trace classes {', '.join(missing)} are not in the --classes spec")


def generate(
    arrivals: ArrivalProcess,
    sizes: SizeDist,
    classes: tuple[PriorityClass, ...] = (DEFAULT_CLASS,),
    duration_s: float = 10.0,
    seed: int = 0,
) -> Workload:
    """Draw a workload of `duration_s` seconds. Same arguments, same workload.

    With a `TraceReplay`, the trace's sizes and classes are used instead of `sizes` and the
    shares of `classes` (its class names must be in `classes`, or `classes` is the default
    and the trace's own names are adopted with their observed shares).
    """
    assert duration_s >= 0 and len(classes) >= 1
    rng_t, rng_n, rng_c = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    if isinstance(arrivals, TraceReplay):
        d = arrivals.load()
        k = int(np.searchsorted(d.t_s, duration_s, side="left"))
        classes, cls = _trace_classes(d.names, d.cls[:k], classes)
        return Workload(d.t_s[:k], d.n_items[:k], cls, classes, duration_s, seed)
    t = arrivals.times(duration_s, rng_t)
    n = sizes.sample(len(t), rng_n)
    c = assign_classes(len(t), classes, rng_c)
    return Workload(t, n, c, classes, duration_s, seed)


def write_trace_csv(workload: Workload, path: str | Path) -> None:
    """Write `time_s,size,class` rows (class by name) readable by `TraceReplay`.

    Times are written with 17 significant digits, so a round trip is exact.
    """
    names = [c.name for c in workload.classes]
    lines = [f"# duration_s={workload.duration_s!r}", "time_s,size,class"]
    lines += [
        f"{t!r},{n},{names[c]}"
        for t, n, c in zip(
            workload.t_s.tolist(), workload.n_items.tolist(), workload.cls.tolist(), strict=True
        )
    ]
    Path(path).write_text("\n".join(lines) + "\n")
