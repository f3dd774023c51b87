"""The engine end to end on a tiny model: scores in item order, rejection, failures, drain."""

import threading
import time
from concurrent.futures import wait

import pytest
import torch
from torch import nn

from recsched.clock import ManualClock
from recsched.config import EngineConfig
from recsched.engine import Engine, EngineClosed, QueryFailed, QueueFull
from recsched.models.base import InputSpec, ModelAdapter
from recsched.types import Query


class Tiny(nn.Module):
    """scores[B, 1] = sigmoid(linear(dense[B, 4]) + emb(idx[B]))."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(4, 1)
        self.emb = nn.Embedding(10, 1)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(1, 4, generator=g))
            self.emb.weight.copy_(torch.randn(10, 1, generator=g))

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self.lin(x["dense"]) + self.emb(x["idx"]))


def tiny_adapter() -> ModelAdapter:
    def make(n: int, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {
            "dense": torch.randn(n, 4, generator=g),
            "idx": torch.randint(0, 10, (n,), generator=g),
        }

    specs = (
        InputSpec("dense", (4,), torch.float32),
        InputSpec("idx", (), torch.int64, "index", 0, 10),
    )
    return ModelAdapter("tiny", Tiny().eval(), specs, make, 1)


@pytest.mark.parametrize(
    "cfg",
    [
        EngineConfig(request="whole"),
        EngineConfig(request="split", batch_size=3),
        EngineConfig(request="dynamic", batch_size=8, merge_delay_ms=2.0),
        EngineConfig(request="dynamic", batch_size=5, merge_delay_ms=0.0, lanes=1),
    ],
)
def test_scores_match_eager_in_item_order(cfg):
    ad = tiny_adapter()
    sizes = [1, 7, 13, 2, 30, 5, 1, 9]
    inputs = [ad.make_inputs(n, i) for i, n in enumerate(sizes)]
    with Engine(ad, cfg) as eng:
        futs = [
            eng.submit(Query(i, "tiny", n), x)
            for i, (n, x) in enumerate(zip(sizes, inputs, strict=True))
        ]
        wait(futs, timeout=10)
    with torch.inference_mode():
        for f, x, n in zip(futs, inputs, sizes, strict=True):
            got = f.result()
            assert got.shape == (n, 1)
            torch.testing.assert_close(got, ad.module(x))
    assert eng.completed == len(sizes) and eng.rejected == 0


@pytest.mark.parametrize(
    "cfg", [EngineConfig(request="split", batch_size=3), EngineConfig(request="whole", lanes=1)]
)
def test_in_order_reassembly_on_a_manual_clock(cfg):
    """Pieces of one query finish on two lanes in any order; scores come back in item order,
    and the query's latency runs from its scheduled arrival on the engine's clock."""
    ad = tiny_adapter()
    clock = ManualClock(10.0)
    done = []
    x = ad.make_inputs(11, 3)
    with Engine(ad, cfg, clock=clock, on_complete=done.append) as eng:
        got = eng.submit(Query(0, "tiny", 11, arrival_s=9.5), x).result(timeout=10)
    with torch.inference_mode():
        torch.testing.assert_close(got, ad.module(x))
    assert eng.core.operator.batches_in == (4 if cfg.request == "split" else 1)
    assert [(r.qid, r.arrival_s, r.done_s) for r in done] == [(0, 9.5, 10.0)]


class Gated(nn.Module):
    """Tiny, but each forward waits for a gate: lets a test hold a lane busy. Served eager
    (`compiled=False`): tracing it would wait for the gate."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.gate = threading.Event()

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self.gate.wait(10), "gate never opened"
        return self.inner(x)


@pytest.mark.parametrize("manual", [False, True])
def test_bounded_queue_rejects_at_once(manual):
    ad = tiny_adapter()
    ad.module = Gated(ad.module)
    x = ad.make_inputs(1, 0)
    cfg = EngineConfig(request="whole", lanes=1, queue_capacity=2, compiled=False)
    clock = ManualClock(5.0) if manual else None  # the bound holds whatever the clock says
    with Engine(ad, cfg, clock=clock) as eng:
        held = [eng.submit(Query(i, "tiny", 1), x) for i in (1, 2)]  # one runs, one waits
        extra = eng.submit(Query(3, "tiny", 1), x)
        assert isinstance(extra.exception(timeout=1), QueueFull)
        assert eng.rejected == 1 and not any(f.done() for f in held)
        ad.module.gate.set()
    assert all(f.result(timeout=5).shape == (1, 1) for f in held)


def test_closed_engine_refuses_and_validation_names_input():
    ad = tiny_adapter()
    eng = Engine(ad, EngineConfig())
    with eng:
        bad = {"dense": torch.randn(2, 4), "idx": torch.tensor([1, 99])}
        with pytest.raises(ValueError, match="idx"):
            eng.submit(Query(0, "tiny", 2), bad)
    f = eng.submit(Query(1, "tiny", 1), ad.make_inputs(1, 0))
    assert isinstance(f.exception(timeout=1), EngineClosed)


def test_failure_on_a_lane_fails_the_query_and_engine_keeps_serving():
    ad = tiny_adapter()
    with Engine(ad, EngineConfig(lanes=1), validate=False) as eng:
        bad = {"dense": torch.randn(2, 4), "idx": torch.tensor([1, 99])}  # out of range
        f = eng.submit(Query(0, "tiny", 2), bad)
        assert isinstance(f.exception(timeout=5), QueryFailed)
        g = eng.submit(Query(1, "tiny", 3), ad.make_inputs(3, 1))
        assert g.result(timeout=5).shape == (3, 1)
    assert eng.failed == 1


def test_offload_refused_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(ValueError, match="CUDA"):
        Engine(tiny_adapter(), EngineConfig(offload_threshold=100))


def test_abort_fails_pending_queries():
    ad = tiny_adapter()
    ad.module = Gated(ad.module)
    cfg = EngineConfig(request="dynamic", merge_delay_ms=60_000, lanes=1, compiled=False)
    eng = Engine(ad, cfg).start()
    x = ad.make_inputs(1, 0)
    futs = [eng.submit(Query(i, "tiny", 1), x) for i in range(4)]  # 1 runs, 3 wait to merge
    assert eng.abort("gave up") == 4
    ad.module.gate.set()
    eng.close()
    assert all(isinstance(f.exception(timeout=1), Exception) for f in futs)


def test_merge_deadline_fires_after_the_timer_missed_a_later_deadline():
    """The timer is woken only when its deadline moves earlier. With the lane held busy, a
    merge window closes by a full batch (the deadline goes away without waking the timer),
    then a new small query opens a window: the timer must still cut it at its deadline."""
    ad = tiny_adapter()
    ad.module = Gated(ad.module)
    cfg = EngineConfig(
        request="dynamic", batch_size=10, merge_delay_ms=50.0, lanes=1, compiled=False
    )
    with Engine(ad, cfg) as eng:
        held = eng.submit(Query(0, "tiny", 10), ad.make_inputs(10, 0))  # a full batch: runs
        a = eng.submit(Query(1, "tiny", 2), ad.make_inputs(2, 1))  # waits to merge
        e = eng.submit(Query(2, "tiny", 8), ad.make_inputs(8, 2))  # fills it: cut, no deadline
        t0 = eng.clock.now()
        d = eng.submit(Query(3, "tiny", 1), ad.make_inputs(1, 3))  # a new 50 ms window
        pol = eng.core.request
        while pol.pending_items() and eng.clock.now() - t0 < 5.0:
            time.sleep(0.002)
        waited = eng.clock.now() - t0
        assert pol.pending_items() == 0, "the merge deadline never cut the last window"
        assert waited >= 0.045  # cut by its deadline (the lane was busy), not earlier
        ad.module.gate.set()
        for f, n in ((held, 10), (a, 2), (e, 8), (d, 1)):
            assert f.result(timeout=5).shape == (n, 1)


@pytest.mark.skipif(not hasattr(__import__("os"), "setpriority"), reason="no setpriority")
def test_lane_nice_sets_each_lane_threads_priority_and_is_checked():
    """`lane_nice` (0, 7): the second lane's thread runs at nice 7 (a nice value, not an
    increment), the first at the process's; more values than lanes, or out of range, are
    refused."""
    import os

    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base > 7:
        pytest.skip("the process runs below nice 7: raising a thread to it needs privilege")
    with Engine(tiny_adapter(), EngineConfig(lanes=2, lane_nice=[0, 7]), validate=False) as eng:
        for lane in eng.lanes:
            assert lane.ready.wait(5.0)
        got = [os.getpriority(os.PRIO_PROCESS, lane.native_id) for lane in eng.lanes]
    assert got == [base, 7]
    assert EngineConfig(lanes=2, lane_nice=[3]).lane_nice == (3,)
    for bad in ([0, 1, 2], [20]):
        with pytest.raises(ValueError, match="lane_nice"):
            EngineConfig(lanes=2, lane_nice=bad)


def test_cpu_lane_counts_its_threads_cpu_apart_from_time_it_waits():
    """`cpu_s` is the lane thread's CPU while it held tasks: a task that sleeps holds the lane
    (busy) without running; one that spins runs all along."""
    from recsched.lanes.cpu import CpuLane
    from recsched.types import Task

    done = threading.Event()
    lane = CpuLane(0, 1, lambda r: r.tid == 1 and done.set())
    lane.start()

    def spin() -> None:
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.03:
            pass

    lane.submit(Task(0, 0, 0, None, None, 0.0), lambda: time.sleep(0.05))
    lane.submit(Task(1, 1, 0, None, None, 0.0), spin)
    assert done.wait(5.0)
    lane.stop(1.0)
    s = lane.stats
    assert s.tasks == 2 and s.busy_s >= 0.08
    assert 0.03 <= s.cpu_s < s.busy_s - 0.04, (s.cpu_s, s.busy_s)
