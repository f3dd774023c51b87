"""Random arrival patterns through the scheduling core: every item scored exactly once."""

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from recsched.sched.core import SchedulerCore
from recsched.sched.operator import Sequential
from recsched.sched.request import RequestPolicy
from recsched.types import LaneResult, Query

arrivals = st.lists(st.tuples(st.floats(0, 0.05), st.integers(1, 300)), min_size=1, max_size=40)
modes = st.sampled_from(["whole", "split", "dynamic", "tuned"])
thresholds = st.one_of(st.none(), st.integers(1, 300))  # offload: queries of n >= T to accel


@settings(max_examples=150, deadline=None)
@given(arrivals, modes, st.integers(1, 128), st.floats(0, 0.01), st.integers(1, 3), thresholds)
def test_every_item_scored_exactly_once(arr, mode, b, delay, lanes, threshold):
    kinds = ["cpu"] * lanes + (["accel"] if threshold is not None else [])
    core = SchedulerCore(RequestPolicy(mode, b, delay, threshold), Sequential(kinds))
    on_accel: dict[int, list[tuple[int, int]]] = {}  # qid -> rows run on the accel lane
    scored: dict[int, list[tuple[int, int]]] = {}
    events: list[tuple[float, int, str, object]] = []  # (time, seq, kind, payload)
    seq = 0
    for qid, (t, n) in enumerate(sorted(arr)):
        events.append((t, seq, "arrive", Query(qid, "m", n, arrival_s=t)))
        seq += 1
    heapq.heapify(events)
    done_queries: set[int] = set()
    wake = None

    def issue(out, now):
        nonlocal seq, wake
        for task in out.tasks:
            b_ = core.batches[task.bid]
            dur = 1e-4 * b_.size + 1e-4
            heapq.heappush(events, (now + dur, seq, "done", (task, now)))
            seq += 1
        if out.wake_at is not None and out.wake_at != wake:
            wake = out.wake_at
            heapq.heappush(events, (out.wake_at, seq, "wake", None))
            seq += 1

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            core.admit(payload, now)
        elif kind == "done":
            task, start = payload
            batch = core.batches[task.bid]
            for p in batch.parts:
                scored.setdefault(p.qid, []).append((p.start, p.stop))
                if kinds[task.lane] == "accel":
                    on_accel.setdefault(p.qid, []).append((p.start, p.stop))
            assert (kinds[task.lane] == "accel") == (batch.lane_kind == "accel")
            fin = core.complete(LaneResult(task.tid, task.bid, task.lane, start, now), now)
            for qid, err in fin.queries:
                assert err is None and qid not in done_queries
                done_queries.add(qid)
        issue(core.step(now), now)
        core.check_invariants()

    assert core.outstanding() == 0
    assert done_queries == set(range(len(arr)))
    for qid, (_, n) in enumerate(sorted(arr)):
        rows = sorted(scored[qid])
        assert rows[0][0] == 0 and rows[-1][1] == n
        assert all(a[1] == b_[0] for a, b_ in zip(rows, rows[1:], strict=False)), "gap or overlap"
        # threshold routing: a query of n >= T runs whole on the accelerator, the rest never
        big = threshold is not None and n >= threshold
        assert on_accel.get(qid, []) == ([(0, n)] if big else [])
