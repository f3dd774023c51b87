"""Request-level policies: how queries are cut into batches, and which lanes they go to.

Pure state machines with time passed in (habit 1 and 6 of DESIGN.md):
`policy.push(query, now)`, then `plan = policy.schedule(now, idle_lanes)`. The policy never
sees a tensor; a batch is a list of row ranges of queries (`Part`).

- `whole`: one batch per query.
- `split`: fixed batch size B; a query of n items becomes ceil(n / B) batches.
- `dynamic` (and `tuned`, whose knobs come from the tuner): queries larger than B are cut into
  full batches of B at once; the remainders and small queries wait in a merge buffer and leave
  as one batch when it holds B items, when its oldest item has waited `merge_delay_s`, or at
  once when a lane is idle (work-conserving, like Triton's dynamic batcher with an idle
  instance).
- Offload: with a threshold T, a query of n >= T items goes whole to the accelerator lanes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count

from recsched import sched
from recsched.config import DEFAULT_BATCH_SIZE, EngineConfig
from recsched.types import Batch, Part, Query


@dataclass(slots=True)
class RequestPlan:
    """Batches to hand to the operator level now, and when to be asked again."""

    batches: list[Batch] = field(default_factory=list)
    wake_at: float | None = None


@dataclass(slots=True)
class _Waiting:
    query: Query
    start: int
    since: float


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """Row ranges `[a, b)` cutting n rows into pieces of at most `size`."""
    assert n >= 1 and size >= 1
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def saturated_batches(
    sizes: Sequence[int], mode: str, batch_size: int, merge_delay_s: float = 0.0
) -> list[int]:
    """The batch sizes `mode` cuts queries of `sizes` (in arrival order) into when its queue
    never empties, the load that sets a capacity: `whole` keeps each query; `split` cuts
    pieces of at most B; `dynamic`/`tuned` cut full pieces of B and, with a merge delay,
    merge the remainders in arrival order up to B (without one they leave as they are)."""
    assert mode in ("whole", "split", "dynamic", "tuned"), mode
    assert batch_size >= 1 and merge_delay_s >= 0
    out: list[int] = []
    merging = 0
    for n in sizes:
        assert n >= 1, "a query has at least one item"
        if mode == "whole":
            out.append(int(n))
            continue
        pieces = [b - a for a, b in chunks(int(n), batch_size)]
        if mode == "split" or merge_delay_s == 0 or pieces[-1] == batch_size:
            out += pieces
            continue
        out += pieces[:-1]
        if merging + pieces[-1] > batch_size:
            out.append(merging)
            merging = 0
        merging += pieces[-1]
    if merging:
        out.append(merging)
    assert sum(out) == sum(int(n) for n in sizes), "every item in exactly one batch"
    return out


def serving_form(cfg: EngineConfig, max_items: float) -> EngineConfig:
    """`cfg` with the knobs that cannot change how queries of at most `max_items` items are
    served set to fixed values, so that two configurations that serve alike compare equal:
    `split` with B >= `max_items` is `whole`; `whole` reads neither B nor the merge delay;
    `split` never waits on its delay; the `sequential` operator level runs no graph. (A NaN
    `max_items`, nothing known of the sizes, cuts nothing to `whole`.)"""
    if cfg.request == "split" and cfg.batch_size >= max_items:
        cfg = cfg.replace(request="whole")
    if cfg.request == "whole":
        cfg = cfg.replace(batch_size=DEFAULT_BATCH_SIZE, merge_delay_ms=0.0)
    elif cfg.request == "split":
        cfg = cfg.replace(merge_delay_ms=0.0)
    if cfg.operator == "sequential":
        cfg = cfg.replace(granularity="coarse", opstream={})
    return cfg


class RequestPolicy:
    """One request policy; `mode` is whole | split | dynamic | tuned."""

    def __init__(
        self,
        mode: str = "whole",
        batch_size: int = DEFAULT_BATCH_SIZE,
        merge_delay_s: float = 0.001,
        offload_threshold: int | None = None,
    ) -> None:
        assert mode in ("whole", "split", "dynamic", "tuned"), mode
        assert batch_size >= 1 and merge_delay_s >= 0
        self.mode = "dynamic" if mode == "tuned" else mode
        self.batch_size = batch_size
        self.merge_delay_s = merge_delay_s
        self.offload_threshold = offload_threshold
        self._ready: list[Batch] = []
        self._buffer: deque[_Waiting] = deque()
        self._buffered_items = 0
        self._ids = count()
        self.items_in = 0
        self.items_out = 0

    # -- state -------------------------------------------------------------------------
    def push(self, q: Query, now: float) -> None:
        """Accept a query. Whole/split/offloaded work is cut at once; the rest may wait."""
        n = q.n_items
        assert n >= 1
        self.items_in += n
        if self.offload_threshold is not None and n >= self.offload_threshold:
            self._emit_one(q, 0, n, now, "accel")
        elif self.mode == "whole":
            self._emit_one(q, 0, n, now)
        elif self.mode == "split":
            for a, b in chunks(n, self.batch_size):
                self._emit_one(q, a, b, now)
        else:
            bs = self.batch_size
            full = (n // bs) * bs
            for a in range(0, full, bs):  # chunks(full, bs): full batches only
                self._emit_one(q, a, a + bs, now)
            if full < n:
                self._buffer.append(_Waiting(q, full, now))
                self._buffered_items += n - full

    def schedule(self, now: float, idle_lanes: int = 0) -> RequestPlan:
        """Batches ready now. `idle_lanes`: CPU lanes with nothing to do (flush the buffer)."""
        buf = self._buffer
        if buf:
            expired = now >= buf[0].since + self.merge_delay_s  # same sum as wake_at
            while self._buffered_items >= self.batch_size:
                self._flush(now, self.batch_size)
            if buf and (expired or idle_lanes > 0):
                self._flush(now, self._buffered_items)
        ready = self._ready
        if ready:
            self._ready = []
        else:
            ready = []  # a fresh list: the caller owns the plan
        plan = RequestPlan(ready, buf[0].since + self.merge_delay_s if buf else None)
        if sched.CHECKS:
            self.check_invariants()
        return plan

    def pending_items(self) -> int:
        """Items accepted but not yet in a batch."""
        return self._buffered_items + sum(b.size for b in self._ready)

    # -- internals ---------------------------------------------------------------------
    def _flush(self, now: float, items: int) -> None:
        """Take `items` rows off the front of the merge buffer into one batch."""
        parts: list[Part] = []
        queries: list[Query] = []
        buf = self._buffer
        want = left = min(items, self.batch_size)
        while left > 0 and buf:
            w = buf[0]
            q = w.query
            start = w.start
            take = min(left, q.n_items - start)
            parts.append(Part(q.qid, start, start + take))
            queries.append(q)
            left -= take
            if start + take == q.n_items:
                buf.popleft()
            else:
                w.start = start + take
        self._buffered_items -= want - left
        self._emit(parts, now, queries, taken=want - left)

    def _emit(
        self,
        parts: list[Part],
        now: float,
        queries: Sequence[Query],
        kind: str = "cpu",
        taken: int | None = None,
    ) -> None:
        b = Batch(
            bid=next(self._ids),
            parts=tuple(parts),
            lane_kind=kind,  # type: ignore[arg-type]
            created_s=now,
            value=max([q.value for q in queries]),
            deadline_s=min([q.deadline_s for q in queries]),
            query_items=max([q.n_items for q in queries]),
        )
        self.items_out += b.size if taken is None else taken
        self._ready.append(b)

    def _emit_one(self, q: Query, a: int, b: int, now: float, kind: str = "cpu") -> None:
        """`_emit` of rows `[a, b)` of one query (the common case, without generators)."""
        self._ready.append(
            Batch(
                next(self._ids), (Part(q.qid, a, b),), kind, now, q.value, q.deadline_s, q.n_items
            )  # type: ignore[arg-type]
        )
        self.items_out += b - a

    def check_invariants(self) -> None:
        if not sched.CHECKS:
            return
        assert self._buffered_items == sum(w.query.n_items - w.start for w in self._buffer)
        assert self.items_in == self.items_out + self._buffered_items
        for b in self._ready:
            assert b.size >= 1
            assert self.mode != "split" or b.lane_kind == "accel" or b.size <= self.batch_size
