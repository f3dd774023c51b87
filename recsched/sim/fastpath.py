"""An exact fast path for `whole` + `sequential` servers: a c-lane FIFO recurrence.

Under `whole` + `sequential` with CPU lanes only and a FIFO queue (`order="fifo"`; no merge
delay, no operator-level policy, no offload) a query is one batch, batches wait FIFO, and a
lane that frees takes the head of the FIFO; a task's duration is fixed when it starts
(interference counts the co-runners *at the start*, the idle model the lane's idle gap
before it). So the lane, start and
completion of a query are known the moment it arrives, given each lane's last end time:

- the lane is the one with the smallest `(end, seq)` (`seq`: the order tasks started in):
  the `sequential` policy's deque of free lanes holds idle lanes in the order their
  completions were processed, and the event loop processes completions in `(time, seq)`
  order; lanes that never ran come first, by index;
- it starts at `max(arrival, end)`: completions at the arrival's time run before it
  (priority COMPLETE < ARRIVAL);
- co-runners at the start: all other lanes when it waited (it starts inside the completion
  of the lane that frees first, before the same-time completions of later tasks), else the
  lanes whose last task ends after the arrival; the idle gap is `start - end` (0 when it
  waited);
- it takes `base x f + extra` exactly as `recsched.sim.lanes.NullLane._start` computes it
  (same floating-point operations in the same order), so completion times are identical.

Outstanding queries (for the queue capacity and the `p2c` balancer) follow from the same
state: with queries still waiting at time `a` (start > a) every lane is busy, so there are
`waiting + lanes` of them, else those lanes whose task ends after `a`. The `least` balancer
needs every server's predicted work in event order: a heap of completions replays them.

Exact when every task takes a positive time (checked on the workload's sizes, else the event
loop runs), with no trace and no decision hook (they observe events this path never makes). The
interference model and the idle model are both reproduced exactly (per-query completion
times, statuses, servers, lane busy times and task counts, end time and event count: see
tests/unit/test_sim_fastpath.py). `Cluster.run` takes this path on its own when it applies
(`fast=False` forces the event loop).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from heapq import heapify, heappop, heappush, heapreplace
from typing import TYPE_CHECKING, Any

import numpy as np

from recsched.sim.lanes import WHOLE_CLASS

if TYPE_CHECKING:
    from recsched.sim.cluster import Cluster, ClusterRun
    from recsched.workload import Workload

_NAN = math.nan


def why_not(cluster: Cluster) -> str | None:
    """Why the fast path cannot run this cluster (None: it can)."""
    if cluster.on_decision is not None:
        return "a decision hook observes the policies"
    if cluster.recorders:
        return "lane traces are recorded"
    for sv in cluster.servers:
        cfg = sv.config
        if cfg.request != "whole" or cfg.operator != "sequential":
            return f"server {sv.index} runs {cfg.request}+{cfg.operator}, not whole+sequential"
        if getattr(cfg, "order", "fifo") != "fifo":
            return f"server {sv.index} orders its queue by {cfg.order}, not FIFO"
        if any(k != "cpu" for k in sv.state.kinds):
            return f"server {sv.index} has accelerator lanes"
        if sv.state.models["cpu"].noise is not None:
            return f"server {sv.index} draws service-time noise"
        if sv.stype.host is not None:
            return f"server {sv.index} models the host's CPU beside its lanes"
    return None


class _Type:
    """What servers of one type share on the fast path: durations by size, factors."""

    def __init__(self, server: Any, sizes: list[int]) -> None:
        st = server.state
        dm = st.models["cpu"]
        self.lanes = len(st.kinds)
        self.base = {n: dm.whole(n) for n in sizes}
        self.extra = dm.task_overhead_s
        self.idle = dm.idle
        ex = st.excess["cpu"][WHOLE_CLASS][WHOLE_CLASS]
        # NullLane adds the excess of each busy sibling in turn: the same sums
        fb = [1.0]
        for _ in range(self.lanes - 1):
            fb.append(fb[-1] + ex)
        self.fb = fb
        self.inter = ex != 0.0
        self.work = {n: server.predicted_work(n) for n in sizes} if server.load_slot else None

    def positive(self) -> bool:
        """Every task takes a positive time (the recurrence's tie rules assume it)."""
        if min(self.fb) <= 0.0:
            return False
        return self.extra > 0.0 or min(self.base.values(), default=1.0) > 0.0


def run(
    cluster: Cluster,
    workload: Workload,
    until: float,
    progress: Callable[[float, int], None] | None = None,
) -> ClusterRun | None:
    """Run `workload` on `cluster` by the recurrence; None if some task could take no time
    (then the event loop must run it). Fills the servers' counters and lane stats."""
    from recsched.sim.cluster import _CHUNK, OK, REJECTED, ClusterRun

    servers = cluster.servers
    m = len(servers)
    n_total = len(workload)
    sizes = np.unique(workload.n_items).tolist() if n_total else []
    types: dict[int, _Type] = {}
    for sv in servers:
        if id(sv.state) not in types:
            types[id(sv.state)] = _Type(sv, sizes)
    if not all(t.positive() for t in types.values()):
        return None
    balancer = cluster.balancer
    least = balancer == "least"
    p2c = balancer == "p2c"
    caps = [sv.config.queue_capacity for sv in servers]
    track = p2c or (not least and n_total > min(caps))  # outstanding counts needed

    # per server: what its type fixes (one tuple, unpacked at once), the heap of
    # (end, seq, lane) of each lane's last task, the starts of queries still waiting
    consts = []
    heaps = []
    off = []  # index of the server's first lane in the flat lane lists
    n_lanes = 0
    for sv, cap in zip(servers, caps, strict=True):
        t = types[id(sv.state)]
        consts.append((t.base, t.fb, t.fb[-1], t.extra, t.idle, t.inter, t.lanes, cap))
        h = [(-math.inf, i - t.lanes, i) for i in range(t.lanes)]
        heapify(h)
        heaps.append(h)
        off.append(n_lanes)
        n_lanes += t.lanes
    busy = [0.0] * n_lanes
    ntask = [0] * n_lanes
    starts: list[deque[float]] = [deque() for _ in servers]
    # `least`: predicted work and outstanding count per server, completions to replay
    pwork = [types[id(sv.state)].work for sv in servers] if least else []
    work = [0.0] * m
    count = [0] * m
    comp: list[tuple[float, int, int, float]] = []
    # argmin of `work` (ties: lowest index) from two lazy heaps: `zeros` holds servers with
    # no work (plain ints: cheap), `pos` (work, server) for the others; an entry is stale
    # once the server's work changed
    zeros = list(range(m))
    pos: list[tuple[float, int]] = []

    done = np.full(n_total, _NAN)
    status = np.zeros(n_total, dtype=np.int8)
    server = np.zeros(n_total, dtype=np.int32)
    chooser = cluster._make_chooser(n_total)
    w_t, w_n = workload.t_s, workload.n_items
    seq = 0
    n_done = 0  # completions processed (end <= until)
    seen = 0  # arrivals processed (time <= until)
    late = False  # some accepted query ends after `until`
    for i0 in range(0, n_total, _CHUNK):
        j0 = min(i0 + _CHUNK, n_total)
        tc = w_t[i0:j0].tolist()
        nc = w_n[i0:j0].tolist()
        pick = chooser(i0, j0)
        if p2c:
            pa, pb = cluster._pa, cluster._pb
        if progress is not None and i0:
            progress(tc[0] if tc[0] <= until else until, i0)
        L = j0 - i0
        dch = [_NAN] * L
        sch = [OK] * L
        for k in range(L):
            a = tc[k]
            if a > until:
                L = k
                break
            n = nc[k]
            # -- the balancer ------------------------------------------------------------
            if least:
                while comp and comp[0][0] <= a:
                    _, _, s, w = heappop(comp)
                    count[s] -= 1
                    ws = work[s] - w
                    if not count[s]:
                        ws = 0.0  # as SimServer: no drift from float sums
                    work[s] = ws
                    if ws == 0.0:
                        heappush(zeros, s)
                    else:
                        heappush(pos, (ws, s))
                while zeros and work[zeros[0]] != 0.0:
                    heappop(zeros)
                while pos and work[pos[0][1]] != pos[0][0]:
                    heappop(pos)
                if not zeros or (pos and pos[0][0] < 0.0):
                    s = pos[0][1]
                else:
                    s = zeros[0]
                if len(pos) > 2 * m + 64:  # drop stale entries
                    pos = [(v, x) for x, v in enumerate(work) if v != 0.0]
                    heapify(pos)
                pick[k] = s
            elif p2c:
                x, y = pa[k], pb[k]
                ox = _outstanding(starts[x], heaps[x], a)
                s = x if ox <= _outstanding(starts[y], heaps[y], a) else y
                pick[k] = s
            else:
                s = pick[k]
            base, fb, fwait, extra, idle, inter, c, cap = consts[s]
            h = heaps[s]
            # -- admission (the bounded queue) -------------------------------------------
            if least:
                if count[s] >= cap:
                    sch[k] = REJECTED
                    continue
            elif track:
                dq = starts[s]
                while dq and dq[0] <= a:
                    dq.popleft()
                if len(dq) + c >= cap and _outstanding(dq, h, a) >= cap:
                    sch[k] = REJECTED
                    continue
            # -- the lane, the start and the duration ------------------------------------
            e, _, lane = h[0]
            if e > a:  # waits for the lane that frees first: every other lane is busy
                start = e
                f = fwait
                if track:
                    starts[s].append(e)
            else:
                start = a
                if inter:
                    nb = 0
                    for x in h:
                        if x[0] > a:
                            nb += 1
                    f = fb[nb]
                else:
                    f = 1.0
                if idle is not None:
                    w = idle.weight(a - e)
                    if w:
                        f *= 1.0 + (idle.ratio(n) - 1.0) * w
                        extra += idle.extra_s * w
            end = start + base[n] * f + extra
            heapreplace(h, (end, seq, lane))
            seq += 1
            if least:
                w = pwork[s][n]
                ws = work[s] + w
                work[s] = ws
                count[s] += 1
                if ws == 0.0:
                    heappush(zeros, s)
                else:
                    heappush(pos, (ws, s))
                heappush(comp, (end, seq, s, w))
            if end <= until:
                dch[k] = end
                j = off[s] + lane
                busy[j] += end - start
                ntask[j] += 1
                n_done += 1
            else:
                late = True
        if L:
            done[i0 : i0 + L] = dch[:L]
            status[i0 : i0 + L] = sch[:L]
            server[i0 : i0 + L] = pick[:L]
            seen += L
        if L < j0 - i0:
            break
    # the servers' state, as the event loop would leave it
    got = server[:seen]
    ok = status[:seen] == OK
    acc = np.bincount(got[ok], minlength=m).tolist()
    rej = np.bincount(got[~ok], minlength=m).tolist()
    for s, sv in enumerate(servers):
        sv.submitted, sv.rejected = acc[s], rej[s]
        lanes = sv.lanes
        for i, lane in enumerate(lanes):
            lane.stats.busy_s += busy[off[s] + i]
            lane.stats.tasks += ntask[off[s] + i]
        sv.completed = sum(ntask[off[s] : off[s] + len(lanes)])
    loop = cluster.loop
    last = loop.clock._t  # the time of the last event processed
    if seen:
        last = max(last, float(workload.t_s[seen - 1]))
    if n_done:
        last = max(last, float(np.nanmax(done)))
    loop.clock._t = last
    events = seen + n_done
    loop.processed += events
    return ClusterRun(done, status, server, until if late else last, events, 0.0)


def _outstanding(waiting: deque[float], heap: list[tuple[float, int, int]], a: float) -> int:
    """Queries accepted and not finished at time `a` (completions at `a` have run): with
    queries still waiting (start > a), every lane is busy with a task started by then."""
    while waiting and waiting[0] <= a:
        waiting.popleft()
    if waiting:
        return len(waiting) + len(heap)
    nb = 0
    for x in heap:
        if x[0] > a:
            nb += 1
    return nb
