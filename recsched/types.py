"""Plain, tensor-free messages shared by every part of recsched.

Times are seconds on the injected clock (see `recsched.clock`). Sizes are item counts: a
query asks for `n_items` candidates to be scored, each item one row of the model's input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

LaneKind = Literal["cpu", "accel"]
OpClass = Literal["compute", "memory"]


@dataclass(frozen=True, slots=True)
class PriorityClass:
    """A traffic class: its share of queries, its commercial value weight and its SLA.

    `sla_ms=None` means the run's `--sla-ms`/`--sla-x` applies to this class.
    """

    name: str
    share: float = 1.0
    value: float = 1.0
    sla_ms: float | None = None
    percentile: float = 95.0


DEFAULT_CLASS = PriorityClass("default", 1.0, 1.0, None)


@dataclass(frozen=True, slots=True)
class Query:
    """One user request: `n_items` candidates of one model to score.

    `arrival_s` is the *scheduled* arrival (open loop): latency runs from it.
    `deadline_s` is `arrival_s + SLA` (inf when the query has no SLA).
    """

    qid: int
    model: str
    n_items: int
    cls: str = "default"
    value: float = 1.0
    arrival_s: float = 0.0
    deadline_s: float = float("inf")


@dataclass(frozen=True, slots=True)
class Part:
    """Rows `[start, stop)` of query `qid` carried by a batch."""

    qid: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, slots=True)
class Batch:
    """What the request policy cuts queries into: parts of one or more queries, run together.

    `lane_kind` says whether it goes to CPU lanes or to accelerator lanes (offload).
    `value` and `deadline_s` are those of its most valuable / most urgent part.
    `query_items`: items of the largest query with a part in it (0: unknown); what the
    `size` queue order ranks by, so pieces of a large query wait behind small queries.
    """

    bid: int
    parts: tuple[Part, ...]
    lane_kind: LaneKind = "cpu"
    created_s: float = 0.0
    value: float = 1.0
    deadline_s: float = float("inf")
    query_items: int = 0

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)


@dataclass(frozen=True, slots=True)
class Task:
    """A unit of work given to one lane: some operators of one batch, on some of its rows.

    `ops=None` means the whole model (the `sequential` policy). `rows=None` means all rows of
    the batch; otherwise `(start, stop)` within the batch (a split along the batch dimension).
    """

    tid: int
    bid: int
    lane: int
    ops: tuple[int, ...] | None = None
    rows: tuple[int, int] | None = None
    predicted_s: float = 0.0


@dataclass(frozen=True, slots=True)
class LaneResult:
    """A lane's report that a task finished (or failed), with measured times on the clock."""

    tid: int
    bid: int
    lane: int
    start_s: float
    end_s: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class QueryResult:
    """A finished query, tensor-free: the scores travel separately (the engine's Future)."""

    qid: int
    cls: str
    n_items: int
    arrival_s: float
    done_s: float
    error: str | None = None

    @property
    def latency_s(self) -> float:
        return self.done_s - self.arrival_s


@dataclass(slots=True)
class LaneStats:
    """Busy time accounting of one lane, for utilization and cost.

    `cpu_s`: CPU time of the lane's own thread while it held a task (CPU lanes; with one
    intra-op thread, the task's compute). `busy_s - cpu_s` is time a task held the lane
    without running: waiting for the GIL or for a core.
    """

    lane: int
    kind: LaneKind = "cpu"
    busy_s: float = 0.0
    tasks: int = 0
    cpu_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
