"""Operator-level policies: which lane runs which work of which batch.

The seam (habit 1): `policy.add(batch, now)` when the request level emits a batch,
`tasks = policy.schedule(now)` to get work to issue, and `done = policy.update(results, now)`
when lanes report, returning the batches that finished. Pure: no tensors, no threads, no
wall clock; costs come from a `CostModel`-like object (`op_s(op, batch)`, `whole_s(batch)`).

`sequential` is the baseline: a batch runs its whole model on one lane, first come first
served. `roundrobin` and `opstream` (recsched.sched.opstream) schedule operators instead.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from itertools import count
from typing import Protocol

from recsched import sched
from recsched.types import Batch, LaneKind, LaneResult, Task


class Cost(Protocol):
    """What policies need to know of costs (recsched.graph.cost.CostModel provides it)."""

    def op_s(self, op: int, batch: int) -> float: ...

    def whole_s(self, batch: int) -> float: ...


class OperatorPolicy(ABC):
    """Base class: lanes are numbered 0..n-1, each CPU or accelerator."""

    name = "base"

    def __init__(self, lane_kinds: Sequence[LaneKind], cost: Cost | None = None) -> None:
        assert lane_kinds, "at least one lane"
        self.lane_kinds = tuple(lane_kinds)
        self.cost = cost
        self._tids = count()
        self.batches_in = 0
        self.batches_done = 0

    @abstractmethod
    def add(self, batch: Batch, now: float) -> None: ...

    @abstractmethod
    def schedule(self, now: float) -> list[Task]: ...

    @abstractmethod
    def update(self, results: Sequence[LaneResult], now: float) -> list[int]: ...

    @abstractmethod
    def idle_lanes(self, kind: LaneKind = "cpu") -> int:
        """Lanes of this kind with nothing issued and nothing queued for them."""

    @abstractmethod
    def queued(self) -> int:
        """Batches accepted but not finished."""

    def task_ops(self, tid: int) -> tuple[int, ...] | None:
        """The operators a running task covers (None: the whole model). For traces; call
        before `update` reports the task."""
        return None

    def lanes_of(self, kind: LaneKind) -> list[int]:
        return [i for i, k in enumerate(self.lane_kinds) if k == kind]

    def check_invariants(self) -> None:
        assert self.batches_done <= self.batches_in


class Sequential(OperatorPolicy):
    """A batch runs its whole model on one lane; batches wait FIFO per lane kind."""

    name = "sequential"

    def __init__(self, lane_kinds: Sequence[LaneKind], cost: Cost | None = None) -> None:
        super().__init__(lane_kinds, cost)
        self._fifo: dict[str, deque[Batch]] = {"cpu": deque(), "accel": deque()}
        self._free: dict[str, deque[int]] = {
            k: deque(self.lanes_of(k))
            for k in ("cpu", "accel")  # type: ignore[arg-type]
        }
        self._has = {k: bool(self._free[k]) for k in ("cpu", "accel")}
        self._running: dict[int, Task] = {}
        self._sizes: dict[int, int] = {}
        # (fifo, free lanes) of the kinds that have lanes: schedule() looks at no other
        self._pairs = [(self._fifo[k], self._free[k]) for k in ("cpu", "accel") if self._has[k]]

    def add(self, batch: Batch, now: float) -> None:
        kind = batch.lane_kind if self._has[batch.lane_kind] else "cpu"
        self._enqueue(kind, batch)
        parts = batch.parts
        if len(parts) == 1:  # Batch.size without its generator
            p = parts[0]
            self._sizes[batch.bid] = p.stop - p.start
        else:
            self._sizes[batch.bid] = batch.size
        self.batches_in += 1

    def schedule(self, now: float) -> list[Task]:
        tasks: list[Task] = []
        for fifo, free in self._pairs:
            while fifo and free:
                b = self._dequeue(fifo)
                pred = self.cost.whole_s(self._sizes[b.bid]) if self.cost else 0.0
                t = Task(next(self._tids), b.bid, free.popleft(), None, None, pred)
                self._running[t.tid] = t
                tasks.append(t)
        if sched.CHECKS:
            self.check_invariants()
        return tasks

    def update(self, results: Sequence[LaneResult], now: float) -> list[int]:
        done = []
        for r in results:
            t = self._running.pop(r.tid)
            assert t.lane == r.lane and t.bid == r.bid
            self._free[self.lane_kinds[r.lane]].append(r.lane)
            del self._sizes[r.bid]
            done.append(r.bid)
        self.batches_done += len(done)
        if sched.CHECKS:
            self.check_invariants()
        return done

    def idle_lanes(self, kind: LaneKind = "cpu") -> int:
        return max(0, len(self._free[kind]) - len(self._fifo[kind]))

    def _enqueue(self, kind: str, batch: Batch) -> None:
        """Queue a batch for lanes of `kind` (FIFO here; `SizeOrdered` keeps a heap)."""
        self._fifo[kind].append(batch)

    def _dequeue(self, queue) -> Batch:
        """The next batch of a queue `_enqueue` filled."""
        return queue.popleft()

    def queued(self) -> int:
        return len(self._sizes)

    def check_invariants(self) -> None:
        if not sched.CHECKS:
            return
        super().check_invariants()
        busy = {t.lane for t in self._running.values()}
        assert len(busy) == len(self._running), "a lane runs one task at a time"
        for kind in ("cpu", "accel"):
            assert not busy & set(self._free[kind]), "a busy lane is not free"
        assert self.batches_in - self.batches_done == len(self._sizes)


DEFAULT_ITEM_S = 20e-6  # `size` order without a cost model: predicted seconds per item


class SizeOrdered(Sequential):
    """`sequential` with the queue in order of a virtual deadline instead of arrival:
    `created_s + size_weight x (predicted time of the batch's whole query alone)`.

    Small queries overtake the queued pieces of large ones (what a p95 target rewards: the
    largest few percent may be slow, the rest must not wait behind them), while no batch
    waits longer than `size_weight x` its query's own time beyond the FIFO order, so large
    queries cannot starve. `size_weight=0` is FIFO. `by_value` (the `value` order) divides
    the predicted time by the batch's commercial value: queued pieces of low-value queries
    yield to high-value ones, still with a bound on how long they wait.
    """

    name = "sequential"

    def __init__(
        self,
        lane_kinds: Sequence[LaneKind],
        cost: Cost | None = None,
        size_weight: float = 1.0,
        by_value: bool = False,
    ) -> None:
        assert size_weight >= 0
        super().__init__(lane_kinds, cost)
        self.size_weight = size_weight
        self.by_value = by_value
        self._heap: dict[str, list[tuple[float, int, Batch]]] = {"cpu": [], "accel": []}
        self._fifo = self._heap  # type: ignore[assignment]  # idle_lanes counts its length
        self._pairs = [(self._heap[k], self._free[k]) for k in ("cpu", "accel") if self._has[k]]

    def key(self, batch: Batch) -> float:
        n = batch.query_items or batch.size
        alone = self.cost.whole_s(n) if self.cost is not None else DEFAULT_ITEM_S * n
        if self.by_value:  # `value` order: a 10x more valuable query's deadline is 10x nearer
            return batch.created_s + self.size_weight * alone / max(batch.value, 1e-9)
        return batch.created_s + self.size_weight * alone

    def _enqueue(self, kind: str, batch: Batch) -> None:
        heapq.heappush(self._heap[kind], (self.key(batch), batch.bid, batch))

    def _dequeue(self, queue) -> Batch:
        return heapq.heappop(queue)[2]


QUEUE_ORDERS = ("fifo", "size", "value")


def make_operator_policy(
    name: str,
    lane_kinds: Sequence[LaneKind],
    cost: Cost | None = None,
    graph=None,
    order: str = "fifo",
    **options,
) -> OperatorPolicy:
    """Build an operator policy by name (`sequential`, `roundrobin`, `opstream`); `order` is
    the `sequential` queue's order (`fifo`, or `size` / `value`: see `SizeOrdered`)."""
    if order not in QUEUE_ORDERS:
        raise ValueError(f"unknown queue order {order!r}; one of {QUEUE_ORDERS}")
    if name == "sequential":
        if order == "fifo":
            return Sequential(lane_kinds, cost)
        return SizeOrdered(lane_kinds, cost, by_value=order == "value")
    if name in ("roundrobin", "opstream"):
        from recsched.sched import opstream

        return opstream.make(name, lane_kinds, cost, graph, **options)
    raise ValueError(f"unknown operator policy {name!r}")
