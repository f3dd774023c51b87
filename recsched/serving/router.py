"""The recsched request router: place each request on the replica that will finish it first.

Ray Serve's default router is FIFO with power of two choices on *queue length*. Queue length
is a poor proxy for work when query sizes are heavy-tailed (1 to ~1000 items): one large
query can hold a replica longer than ten small ones. This router instead keeps, per replica,
the *predicted outstanding work* (seconds, from the cost model) of the requests it sent
there, and ranks replicas by predicted drain time `(work + this request's work) / lanes`.
Priority classes enter twice: requests waiting at the router are routed most valuable first
(then oldest), and a freed replica goes to the most valuable waiting request; optionally,
low-value requests are held back while every replica's backlog exceeds a headroom
(`low_value_backlog_s`), keeping short queues for high-value traffic.

The policy is pure (habit 5 of DESIGN.md): `WorkCost`, `WorkLedger` and `RouterPolicy` take
numbers and a clock and are unit-tested without Ray. `recsched.serving.ray_router` adapts
them to Ray Serve's custom request router API (`ray.serve.request_router.RequestRouter`,
alpha in Ray 2.4x+). It is a separate module because Ray pickles a router's module *by
value* into every process that routes: it must hold no locks or registries of its own.

What Ray's API does and does not let us do (Ray 2.60):
- `choose_replicas` returns ranks of candidates; Ray takes the first rank with a replica whose
  queue is not full (`max_ongoing_requests`). We return singletons in our order, so our
  order is followed exactly.
- There is no public hook when a replica is *assigned*: `on_request_routed` only fires with
  strict max-ongoing enforcement. Work is therefore booked in `_fulfill_next_pending_request`
  and the queue order is set in `_get_next_pending_request_to_route` (both underscore
  methods, the ones Ray's own `FIFOMixin` overrides); `on_request_completed` (public) frees
  the work. Should a Ray release rename them, the router still routes by work (choose) but
  loses booking and value order: `check_ray_api()` says so at start.
- Each handle (process) has its own router, so the work ledger is exact for the requests
  this process sent. With several front replicas each sees part of the traffic; the ledger
  then takes `max(local, reported)` with the replica's own predicted work from its routing
  stats (period `request_routing_stats_period_s`, so up to that stale).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from recsched.config import DEFAULT_BATCH_SIZE
from recsched.graph.cost import interpolate

# -- the pure policy --------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkCost:
    """Predicted seconds of lane work of one query of `n` items under a request policy.

    `batch_sizes` / `whole_s`: the cost model's whole-model latency table (seconds; from a
    `recsched profile`, `CostModel.whole_s` at those sizes). `batch_size`: the engine's split
    size for `split`/`dynamic`/`tuned` (None: the query runs whole). `per_query_s`: fixed
    serving cost per query (decode, hand-offs).
    """

    batch_sizes: tuple[int, ...]
    whole_s: tuple[float, ...]
    batch_size: int | None = None
    per_query_s: float = 0.0

    def __post_init__(self) -> None:
        assert self.batch_sizes and len(self.batch_sizes) == len(self.whole_s), "one per size"
        assert list(self.batch_sizes) == sorted(set(self.batch_sizes)), "sorted, distinct"
        assert self.batch_size is None or self.batch_size >= 1
        assert self.per_query_s >= 0

    @classmethod
    def from_table(
        cls, table: Mapping[str, Any], config: Mapping[str, Any] | None = None
    ) -> WorkCost:
        """From `{"batch_sizes": [...], "whole_s": [...]}` and an EngineConfig dict."""
        b = None
        if config is not None and config.get("request", "whole") != "whole":
            b = int(config.get("batch_size", DEFAULT_BATCH_SIZE))
        return cls(
            tuple(int(x) for x in table["batch_sizes"]),
            tuple(float(x) for x in table["whole_s"]),
            b,
            float(table.get("per_query_s", 0.0)),
        )

    def batch_s(self, n: int) -> float:
        return interpolate(self.batch_sizes, self.whole_s, n)

    def __call__(self, n_items: int) -> float:
        """Seconds of work for `n_items` (batches of `batch_size`, the remainder last)."""
        assert n_items >= 1, "a query has at least one item"
        if self.batch_size is None or n_items <= self.batch_size:
            return self.per_query_s + self.batch_s(n_items)
        full, rest = divmod(n_items, self.batch_size)
        s = full * self.batch_s(self.batch_size) + (self.batch_s(rest) if rest else 0.0)
        return self.per_query_s + s


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the router knows of a request: size, class value, predicted work (s)."""

    n_items: int
    value: float = 1.0
    work_s: float = 0.0
    created_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """A replica as the policy sees it: predicted outstanding work (lane-seconds), requests
    in flight, the most it accepts, and its lanes (work drains `lanes` times faster)."""

    rid: Hashable
    work_s: float
    ongoing: int = 0
    max_ongoing: int = 1 << 30
    lanes: int = 1
    last_s: float = 0.0  # when this router last sent it a request (ties: the longest idle)

    def drain_s(self, extra_s: float = 0.0) -> float:
        return (self.work_s + extra_s) / max(1, self.lanes)


@dataclass(frozen=True)
class RouterPolicy:
    """Decision maths: rank replicas for a request, pick the next request to route.

    hold_below_value: requests of value below this are *low value* (None: none are).
    low_value_backlog_s: a low-value request only goes to a replica whose predicted drain
    time with it stays within this; with none such it waits at the router (inf: never).
    """

    hold_below_value: float | None = None
    low_value_backlog_s: float = math.inf

    def __post_init__(self) -> None:
        assert self.low_value_backlog_s > 0, "a positive headroom"

    def is_low(self, req: RouteRequest) -> bool:
        return self.hold_below_value is not None and req.value < self.hold_below_value

    def rank(self, req: RouteRequest, views: Sequence[ReplicaView]) -> list[list[Hashable]]:
        """Ranks of replica ids, best first, one replica per rank; [] means wait.

        Best = least predicted drain time with this request added, then fewer in flight, then
        the longest since last chosen (idle replicas take turns), then id (deterministic).
        Full replicas are left out.
        """
        open_ = [v for v in views if v.ongoing < v.max_ongoing]
        order = sorted(
            open_, key=lambda v: (v.drain_s(req.work_s), v.ongoing, v.last_s, str(v.rid))
        )
        if self.is_low(req):
            order = [v for v in order if v.drain_s(req.work_s) <= self.low_value_backlog_s]
        return [[v.rid] for v in order]

    @staticmethod
    def next_index(waiting: Sequence[RouteRequest]) -> int | None:
        """Which waiting request to route next: the most valuable, then the oldest."""
        if not waiting:
            return None
        return min(range(len(waiting)), key=lambda i: (-waiting[i].value, waiting[i].created_s, i))


@dataclass
class WorkLedger:
    """Predicted outstanding work per replica, booked by this router.

    `routed(key, rid, work)` books a request, `completed(key)` frees it (once; unknown keys
    are ignored, as Ray reports completions of requests it never assigned here).
    `report(rid, work, now)` records a replica's own figure (routing stats); `work(rid, now)`
    is `max(booked, reported)` while the report is younger than `report_ttl_s`.
    """

    report_ttl_s: float = 2.0
    _booked: dict[Hashable, tuple[Hashable, float]] = field(default_factory=dict)
    _work: dict[Hashable, float] = field(default_factory=dict)
    _count: dict[Hashable, int] = field(default_factory=dict)
    _reported: dict[Hashable, tuple[float, float]] = field(default_factory=dict)
    _last: dict[Hashable, float] = field(default_factory=dict)

    def routed(self, key: Hashable, rid: Hashable, work_s: float, now: float = 0.0) -> None:
        assert work_s >= 0, "work is not negative"
        self.completed(key)  # a retry re-books
        self._last[rid] = now
        self._booked[key] = (rid, work_s)
        self._work[rid] = self._work.get(rid, 0.0) + work_s
        self._count[rid] = self._count.get(rid, 0) + 1

    def completed(self, key: Hashable) -> bool:
        got = self._booked.pop(key, None)
        if got is None:
            return False
        rid, w = got
        self._count[rid] -= 1
        left = self._work[rid] - w
        # float drift: an empty replica holds exactly nothing
        self._work[rid] = 0.0 if self._count[rid] == 0 else max(0.0, left)
        return True

    def report(self, rid: Hashable, work_s: float, now: float) -> None:
        self._reported[rid] = (max(0.0, float(work_s)), now)

    def booked(self, rid: Hashable) -> float:
        return self._work.get(rid, 0.0)

    def count(self, rid: Hashable) -> int:
        return self._count.get(rid, 0)

    def last(self, rid: Hashable) -> float:
        """When a request was last booked on `rid` (0: never)."""
        return self._last.get(rid, 0.0)

    def work(self, rid: Hashable, now: float) -> float:
        local = self.booked(rid)
        rep = self._reported.get(rid)
        if rep is None or now - rep[1] > self.report_ttl_s:
            return local
        return max(local, rep[0])

    def retain(self, rids: Iterable[Hashable]) -> None:
        """Forget replicas that left (their booked requests fail over and complete later)."""
        keep = set(rids)
        for rid in [r for r in self._work if r not in keep]:
            del self._work[rid]
            self._count.pop(rid, None)
        for rid in [r for r in self._reported if r not in keep]:
            del self._reported[rid]
        for rid in [r for r in self._last if r not in keep]:
            del self._last[rid]
        for key in [k for k, (r, _) in self._booked.items() if r not in keep]:
            del self._booked[key]

    def check_invariants(self) -> None:
        per: dict[Hashable, list[float]] = {}
        for rid, w in self._booked.values():
            per.setdefault(rid, []).append(w)
        for rid, w in self._work.items():
            assert w >= 0, "no negative work"
            assert self._count.get(rid, 0) == len(per.get(rid, [])), "counts match bookings"
            assert math.isclose(w, sum(per.get(rid, [])), rel_tol=1e-9, abs_tol=1e-9)


def request_of(meta: Mapping[str, Any], cost: Callable[[int], float], now: float) -> RouteRequest:
    """A `RouteRequest` from the metadata dict the front sends with each request."""
    n = int(meta["n_items"])
    return RouteRequest(n, float(meta.get("value", 1.0)), cost(n), now)


# -- process-local registry: the front reads its router's view of the replicas ----------------
_REGISTRY: dict[str, Any] = {}
_REG_LOCK = threading.Lock()


def register_router(deployment: str, router: Any) -> None:
    with _REG_LOCK:
        _REGISTRY[deployment] = router


def router_for(deployment: str) -> Any | None:
    """The request router of `deployment` living in this process (None before first use)."""
    with _REG_LOCK:
        return _REGISTRY.get(deployment)
