"""Ray Serve adapters of the recsched router (`recsched.serving.router` holds the policy).

`RecschedRequestRouter`: routes by predicted outstanding work and priority class.
`StatsPow2Router`: Ray's default router (FIFO, power of two choices on queue length)
unchanged, plus the registry entry the front reads replica reports from, so the cluster's
metrics show whichever router runs.

Ray pickles this module by value into each routing process: it keeps no state of its own
(the registry lives in `recsched.serving.router`, imported by reference).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from recsched.serving.router import (
    ReplicaView,
    RouteRequest,
    RouterPolicy,
    WorkCost,
    WorkLedger,
    register_router,
    request_of,
)

try:  # ray is the optional `ray` extra: the pure policy above works without it
    from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
    from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

    HAVE_RAY = True
except ImportError:  # pragma: no cover - exercised where ray is absent
    HAVE_RAY = False

_INTERNAL_HOOKS = ("_fulfill_next_pending_request", "_get_next_pending_request_to_route")


def check_ray_api() -> list[str]:
    """Names of the Ray router internals we override that this Ray lacks ([] = all there)."""
    if not HAVE_RAY:
        return ["ray is not installed"]
    return [h for h in _INTERNAL_HOOKS if not hasattr(RequestRouter, h)]


def _meta(pr: Any) -> Mapping[str, Any] | None:
    """The front's metadata dict: the first positional argument of `infer(meta, inputs)`."""
    if pr is None:
        return None
    args = getattr(pr, "args", None) or ()
    if args and isinstance(args[0], Mapping) and "n_items" in args[0]:
        return args[0]
    m = (getattr(pr, "kwargs", None) or {}).get("meta")
    return m if isinstance(m, Mapping) else None


if HAVE_RAY:

    class _StatsMixin:
        """Registers the router in this process and exposes the replicas' routing stats."""

        def _register(self, deployment: str | None = None) -> None:
            name = deployment or getattr(self._deployment_id, "name", "engine")
            register_router(name, self)

        def replica_stats(self) -> dict[str, dict[str, Any]]:
            """`{replica id: last routing stats}` of the replicas this router sees."""
            return {
                str(r.replica_id.unique_id): dict(r.routing_stats or {})
                for r in list(self._replicas.values())
            }

    class StatsPow2Router(_StatsMixin, PowerOfTwoChoicesRequestRouter):
        """Ray's default router (FIFO, power of two choices on queue length), unchanged,
        plus the registry entry the front reads replica reports from."""

        def initialize_state(self, **kwargs: Any) -> None:
            super().initialize_state(**kwargs)
            self._register(kwargs.get("deployment"))

    class RecschedRequestRouter(_StatsMixin, RequestRouter):
        """Routes by predicted outstanding work and by priority class (see module doc).

        `request_router_kwargs`: `cost` (`{"batch_sizes", "whole_s", "per_query_s"}`),
        `config` (the EngineConfig dict), `hold_below_value`, `low_value_backlog_s`,
        `deployment` (registry name).
        """

        def initialize_state(self, **kwargs: Any) -> None:
            self.cost = WorkCost.from_table(kwargs["cost"], kwargs.get("config"))
            self.policy = RouterPolicy(
                kwargs.get("hold_below_value"), float(kwargs.get("low_value_backlog_s", math.inf))
            )
            self.ledger = WorkLedger()
            self.clock: Callable[[], float] = time.monotonic
            self._req: dict[str, RouteRequest] = {}  # internal request id -> request
            self.missing = check_ray_api()
            self._register(kwargs.get("deployment"))

        def _request(self, pr: Any) -> RouteRequest:
            rid = pr.metadata.internal_request_id
            req = self._req.get(rid)
            if req is None:
                meta = _meta(pr) or {"n_items": 1}
                req = request_of(meta, self.cost, pr.created_at)
                if len(self._req) > 100_000:  # requests cancelled before routing: forget
                    self._req.clear()
                self._req[rid] = req
            return req

        def _views(self, replicas: Sequence[RunningReplica]) -> list[ReplicaView]:
            now = self.clock()
            out = []
            for r in replicas:
                st = r.routing_stats or {}
                if "work_s" in st:
                    self.ledger.report(r.replica_id, float(st["work_s"]), now)
                cached = self._replica_queue_len_cache.get(r.replica_id)
                ongoing = max(self.ledger.count(r.replica_id), cached or 0)
                lanes = int(st.get("lanes", 1)) or 1
                w = self.ledger.work(r.replica_id, now)
                last = self.ledger.last(r.replica_id)
                out.append(
                    ReplicaView(r.replica_id, w, ongoing, r.max_ongoing_requests, lanes, last)
                )
            return out

        async def choose_replicas(
            self,
            candidate_replicas: list[RunningReplica],
            pending_request: PendingRequest | None = None,
        ) -> list[list[RunningReplica]]:
            if pending_request is not None:
                pending_request.routing_context.should_backoff = True  # else Ray spins
                req = self._request(pending_request)
            else:
                req = RouteRequest(1)
            ranks = self.policy.rank(req, self._views(candidate_replicas))
            by_id = {r.replica_id: r for r in candidate_replicas}
            return [[by_id[rid] for rid in rank] for rank in ranks]

        def _get_next_pending_request_to_route(self) -> PendingRequest | None:
            q = self._pending_requests_to_route
            while q and q[0].future.done():
                q.popleft()
            live = [pr for pr in q if not pr.future.done()]
            i = self.policy.next_index([self._request(pr) for pr in live])
            if i is None:
                q.clear()
                return None
            pr = live[i]
            q.remove(pr)
            return pr

        def _fulfill_next_pending_request(self, replica: RunningReplica, request_metadata=None):
            """Give `replica` to the most valuable waiting request if one is worth more than
            the request that found it (a freed slot serves high value first), else to that
            request; book its predicted work on the replica."""
            mine = self._get_pending_request_matching_internal_request_id(request_metadata)
            best = mine
            for pr in self._pending_requests_to_fulfill:
                if pr.future.done():
                    continue
                if best is None or self._request(pr).value > self._request(best).value:
                    best = pr
            if best is None:
                return
            self._cancel_routing_task_for_pending_request(best)
            self._record_queue_wait_time(best)
            best.future.set_result(replica)
            self._remove_pending_request_from_indices(best)
            with contextlib.suppress(ValueError):  # Ray drops done entries lazily too
                self._pending_requests_to_fulfill.remove(best)
            key = best.metadata.internal_request_id
            work = self._request(best).work_s
            self.ledger.routed(key, replica.replica_id, work, self.clock())

        def on_request_completed(self, replica_id: Any, internal_request_id: str) -> None:
            self.ledger.completed(internal_request_id)
            self._req.pop(internal_request_id, None)

        def update_replicas(self, replicas: list[RunningReplica]) -> None:
            super().update_replicas(replicas)
            self.ledger.retain(r.replica_id for r in replicas)

        def loads(self) -> dict[str, float]:
            """Predicted outstanding work per replica (seconds), for metrics and tests."""
            now = self.clock()
            return {str(r.unique_id): self.ledger.work(r, now) for r in list(self._replicas)}
