"""The `size` queue order: small queries overtake queued pieces of large ones, boundedly."""

from recsched.sched.core import SchedulerCore
from recsched.sched.operator import SizeOrdered, make_operator_policy
from recsched.sched.request import RequestPolicy
from recsched.types import Batch, LaneResult, Part, Query


class PerItem:
    """1 ms + 10 us per item, whatever the batch."""

    def whole_s(self, batch: int) -> float:
        return 1e-3 + 1e-5 * batch

    def op_s(self, op: int, batch: int) -> float:
        return 0.0


def run_one_lane(order: str, queries: list[tuple[float, int]], policy=None) -> list[int]:
    """Split B=100 on one lane, each task taking its predicted time; qids in finish order."""
    cost = PerItem()
    policy = policy or make_operator_policy("sequential", ["cpu"], cost, order=order)
    core = SchedulerCore(RequestPolicy("split", 100), policy)
    now, done, pending = 0.0, [], sorted(queries)
    running = None
    qid_of = {}
    while pending or running or core.outstanding():
        if pending and (running is None or pending[0][0] <= running[1]):
            t, n = pending.pop(0)
            now = max(now, t)
            qid = len(qid_of)
            qid_of[qid] = n
            core.admit(Query(qid, "m", n, arrival_s=t), now)
        elif running is not None:
            task, end = running
            now = end
            fin = core.complete(LaneResult(task.tid, task.bid, 0, end - task.predicted_s, end), now)
            done += [q for q, err in fin.queries]
            running = None
        if running is None:
            tasks = core.step(now).tasks
            if tasks:
                (task,) = tasks
                running = (task, now + task.predicted_s)
    return done


def test_fifo_runs_pieces_of_a_large_query_first_and_size_lets_small_ones_pass():
    arrivals = [(0.0, 1000), (0.0005, 10), (0.0006, 20)]  # 10 pieces of 100, then two small
    fifo = run_one_lane("fifo", arrivals)
    size = run_one_lane("size", arrivals)
    assert fifo == [0, 1, 2]
    assert size == [1, 2, 0]


def test_large_queries_are_not_starved():
    """A stream of small queries for 1 s: the large one still finishes, within its own time
    (weight 1) of where FIFO would have run it."""
    arrivals = [(0.0, 1000)] + [(0.0001 + 0.0025 * i, 10) for i in range(400)]
    done = run_one_lane("size", arrivals)
    assert sorted(done) == list(range(401))
    assert done.index(0) < 20  # its last piece runs within ~20 ms, not after the stream


def test_weight_zero_is_fifo_and_key_uses_query_items():
    arrivals = [(0.0, 1000), (0.0005, 10), (0.0006, 20)]
    zero = SizeOrdered(["cpu"], PerItem(), size_weight=0.0)
    assert run_one_lane("", arrivals, zero) == run_one_lane("fifo", arrivals) == [0, 1, 2]
    big_piece = Batch(0, (Part(0, 0, 100),), created_s=0.0, query_items=1000)
    assert SizeOrdered(["cpu"], PerItem()).key(big_piece) == 1e-3 + 1e-5 * 1000  # its query's


def test_value_order_lets_high_value_pieces_pass_low_value_ones():
    pol = make_operator_policy("sequential", ["cpu"], PerItem(), order="value")
    low = Batch(0, (Part(0, 0, 100),), created_s=0.0, value=1.0, query_items=100)
    high = Batch(1, (Part(1, 0, 100),), created_s=0.001, value=10.0, query_items=100)
    pol.add(low, 0.0)
    pol.add(high, 0.001)
    assert pol.schedule(0.001)[0].bid == 1  # later, but ten times the value
    assert make_operator_policy("sequential", ["cpu"], PerItem(), order="size").key(high) > 0.002
