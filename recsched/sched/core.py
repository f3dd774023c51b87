"""The scheduling core shared by the engine and the simulator: tensor-free bookkeeping.

It wires the request policy to the operator policy and tracks which items of which query
are done, so both the threaded engine (`recsched.engine`) and the discrete-event simulator
(`recsched.sim`) run exactly the same decisions. Time is passed in; nothing here blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsched import sched
from recsched.sched.operator import OperatorPolicy
from recsched.sched.request import RequestPolicy
from recsched.types import Batch, LaneResult, Query, Task


@dataclass(slots=True)
class StepOut:
    """What a scheduling step decided: new batches, tasks to issue, when to step again."""

    batches: list[Batch] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    wake_at: float | None = None


@dataclass(slots=True)
class Finished:
    """What a lane result finished: batches (done or failed) and queries (qid, error)."""

    batches: list[Batch] = field(default_factory=list)
    queries: list[tuple[int, str | None]] = field(default_factory=list)


class SchedulerCore:
    """Request policy + operator policy + per-query accounting. Not thread-safe: lock it."""

    def __init__(self, request: RequestPolicy, operator: OperatorPolicy) -> None:
        self.request = request
        self.operator = operator
        self.queries: dict[int, Query] = {}
        self.left: dict[int, int] = {}
        self.batches: dict[int, Batch] = {}
        self.failed: dict[int, str] = {}

    def admit(self, q: Query, now: float) -> None:
        assert q.qid not in self.queries, f"query id {q.qid} is already in flight"
        self.queries[q.qid] = q
        self.left[q.qid] = q.n_items
        self.request.push(q, now)

    def step(self, now: float) -> StepOut:
        op = self.operator
        plan = self.request.schedule(now, op.idle_lanes("cpu"))
        if plan.batches:
            batches, add = self.batches, op.add
            for b in plan.batches:
                batches[b.bid] = b
                add(b, now)
        return StepOut(plan.batches, op.schedule(now), plan.wake_at)

    def complete(self, result: LaneResult, now: float) -> Finished:
        """Account a lane result; a failed task fails every query of its batch."""
        out = Finished([], [])
        queries, left = self.queries, self.left
        for bid in self.operator.update([result], now):
            b = self.batches.pop(bid)
            out.batches.append(b)
            err = result.error if result.bid == bid else None
            for p in b.parts:
                qid = p.qid
                if qid not in queries:
                    continue  # already failed by another batch
                if err is not None:
                    out.queries.append((qid, err))
                    self._forget(qid)
                    continue
                n = left[qid] - (p.stop - p.start)
                assert n >= 0, "an item was scored twice"
                if n == 0:
                    out.queries.append((qid, None))
                    del queries[qid], left[qid]
                else:
                    left[qid] = n
        return out

    def drop(self, qid: int) -> None:
        """Forget a query (aborted or timed out); its batches still finish, unaccounted."""
        self._forget(qid)

    def _forget(self, qid: int) -> None:
        del self.queries[qid]
        del self.left[qid]

    def outstanding(self) -> int:
        return len(self.queries)

    def check_invariants(self) -> None:
        if not sched.CHECKS:
            return
        self.request.check_invariants()
        self.operator.check_invariants()
        assert set(self.queries) == set(self.left)
        assert all(0 < n <= self.queries[q].n_items for q, n in self.left.items())
