"""The online retuner, driven by a manual sequence of times (no engine, no wall clock)."""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable

import numpy as np
import pytest

from recsched.bench.online import live_retuner, request_stepper
from recsched.config import EngineConfig
from recsched.sched.retune import (
    REASONS,
    LocalStepper,
    OnlineRetuner,
    RegimeTable,
    level,
    same_batches,
)
from recsched.sched.tuner import Knob, TuningSpace, default_space

BASE = EngineConfig(request="tuned", batch_size=64, merge_delay_ms=1.0, lanes=1)
A, B, C, D = (BASE.replace(batch_size=b) for b in (64, 256, 512, 1024))
# (load level, size level): load edge at 150 qps, size edge at a median of 100 items
TABLE = RegimeTable((150.0,), (100.0,), {(0, 0): A, (1, 0): B, (0, 1): C, (1, 1): D})
SEEN: set[str] = set()  # every decision branch any scenario took


class Load:
    """Open-loop Poisson queries with lognormal sizes; latency depends on the config in force
    when a query arrives. Completions are fed to the retuner in time order, decisions every
    `tick` seconds."""

    def __init__(
        self,
        rate: Callable[[float], float],
        median: Callable[[float], float],
        latency: Callable[[EngineConfig, np.random.Generator], float],
        seed: int = 0,
    ) -> None:
        self.rate, self.median, self.latency = rate, median, latency
        self.rng = np.random.default_rng(seed)

    def run(self, rt: OnlineRetuner, until: float, tick: float = 0.25) -> list[str]:
        done: list[tuple[float, float, int]] = []
        reasons, t_next, now = [], 0.0, 0.0
        while now < until:
            now += tick
            while t_next < now:  # arrivals in this tick, under the config in force
                self.arrival = t_next  # (for latencies that change with time)
                lat = self.latency(rt.config, self.rng)
                items = max(1, int(self.median(t_next) * math.exp(0.5 * self.rng.normal())))
                heapq.heappush(done, (t_next + lat, lat, items))
                t_next += self.rng.exponential(1.0 / self.rate(t_next))
            while done and done[0][0] <= now:
                t, lat, items = heapq.heappop(done)
                rt.observe(t, lat, items)
            rt.decide(now)
            reasons.append(rt.last_reason)
        SEEN.update(reasons)
        return reasons


def fast(config: EngineConfig, rng: np.random.Generator) -> float:
    return 0.010 * (1 + 0.2 * rng.random())


def switch_times(rt: OnlineRetuner) -> list[tuple[float, int]]:
    return [(t, c.batch_size) for t, _, c in rt.switches]


def test_level_hysteresis() -> None:
    edges = (100.0, 200.0)
    assert [level(v, edges, None, 0.0) for v in (50, 100, 150, 250)] == [0, 1, 1, 2]
    assert level(110, edges, 0, 0.15) == 0  # above the edge, not by the margin
    assert level(116, edges, 0, 0.15) == 1
    assert level(225, edges, 0, 0.15) == 1  # up two edges, only one by the margin
    assert level(90, edges, 1, 0.15) == 1 and level(80, edges, 1, 0.15) == 0
    assert level(10, edges, 2, 0.15) == 0


def test_table_lookup_and_json() -> None:
    sparse = RegimeTable((150.0,), (100.0,), {(0, 0): A, (1, 1): D})
    assert sparse.lookup((0, 0)) == A and sparse.lookup((1, 0)) == D  # tie: the higher load
    assert TABLE.classify(200.0, 20.0) == (1, 0) and TABLE.classify(100.0, 400.0) == (0, 1)
    again = RegimeTable.from_json(TABLE.to_json())
    assert again.configs == TABLE.configs and again.load_edges == TABLE.load_edges


def test_stats_use_a_time_window_not_the_last_queries() -> None:
    rt = OnlineRetuner(A, sla_ms=50.0, table=TABLE, window_s=10.0)
    for i in range(1000):  # 10 s at 100 qps: the first 900 slow, the last 100 fast
        rt.observe(i * 0.01, 0.080 if i < 900 else 0.005, 20 if i % 2 else 40)
    s = rt.stats(9.995)
    assert s.n == 1000 and s.rate_qps == pytest.approx(100, rel=0.01)
    assert s.p_tail_ms == pytest.approx(80.0)  # the last 64 queries alone would say 5 ms
    assert s.median_items == 30 and s.p90_items == 40
    later = rt.stats(15.0)  # the window slid past the first half
    assert later.n == 499 and later.p_tail_ms == pytest.approx(80.0)


def test_load_change_switches_within_the_window_both_ways() -> None:
    rt = OnlineRetuner(A, sla_ms=50.0, table=TABLE, window_s=10.0)
    rate = lambda t: 200.0 if 60 <= t < 120 else 100.0  # noqa: E731
    reasons = Load(rate, lambda t: 20.0, fast, seed=1).run(rt, until=180.0)
    assert reasons[0] == "warmup" and "regime_same" in reasons  # the start config fits
    (t_up, b_up), (t_down, b_down) = switch_times(rt)
    assert b_up == 256 and 60 < t_up <= 70  # rate doubled: the high-load config in < 10 s
    assert b_down == 64 and 120 < t_down <= 130  # rate halved: back
    assert "regime_pending" in reasons and "dwell" in reasons


def test_size_shift_switches_within_the_window() -> None:
    rt = OnlineRetuner(A, sla_ms=50.0, table=TABLE, window_s=10.0)
    median = lambda t: 400.0 if t >= 60 else 20.0  # noqa: E731
    Load(lambda t: 100.0, median, fast, seed=2).run(rt, until=100.0)
    [(t, b)] = switch_times(rt)
    assert b == 512 and 60 < t <= 70


def test_size_regime_by_p90() -> None:
    # a few large queries move the p90 but not the median: only the p90 retuner switches
    def run(size_stat: str) -> list[tuple[float, int]]:
        rt = OnlineRetuner(A, sla_ms=50.0, table=TABLE, window_s=10.0, size_stat=size_stat)
        rng = np.random.default_rng(5)
        for i in range(4000):  # 40 s at 100 qps; from t=20 s, every 5th query has 400 items
            t = i * 0.01
            rt.observe(t, 0.01, 400 if t >= 20 and i % 5 == 0 else int(rng.integers(5, 30)))
            if i % 25 == 0:
                rt.decide(t)
        return switch_times(rt)

    assert run("median_items") == []
    [(t, b)] = run("p90_items")
    assert b == 512 and 20 < t <= 30


def test_no_flapping_at_a_regime_edge() -> None:
    def run(**options: float) -> int:
        rt = OnlineRetuner(A, sla_ms=50.0, table=TABLE, window_s=10.0, **options)
        Load(lambda t: 150.0, lambda t: 20.0, fast, seed=3).run(rt, until=150.0)
        return len(rt.switches)

    assert run() <= 1  # steady noisy load right on the 150 qps edge
    # the same load without hysteresis, confirmation or dwell flaps: the test can fail
    assert run(hysteresis=0.0, confirm_s=0.0, min_dwell_s=0.0) >= 5


SPACE = TuningSpace((Knob("batch_size", (16, 32, 64, 128, 256)),))


def by_batch(ms: dict[int, float]) -> Callable[[EngineConfig, np.random.Generator], float]:
    def latency(config: EngineConfig, rng: np.random.Generator) -> float:
        return ms[config.batch_size] * 1e-3 * (1 + 0.1 * rng.random())

    return latency


def stepping(ms: dict[int, float], until: float = 60.0) -> tuple[OnlineRetuner, list[str]]:
    rt = OnlineRetuner(A, sla_ms=50.0, stepper=LocalStepper(SPACE), window_s=10.0, min_dwell_s=1.0)
    reasons = Load(lambda t: 30.0, lambda t: 20.0, by_batch(ms), seed=4).run(rt, until)
    return rt, reasons


def test_breach_step_up_is_kept() -> None:
    rt, reasons = stepping({16: 90, 32: 90, 64: 80, 128: 30, 256: 90})
    assert [(r, c.batch_size) for _, r, c in rt.switches] == [("breach_step", 128)]
    assert reasons.index("breach_wait") < reasons.index("breach_step")
    assert {"probe_wait", "probe_keep"} <= set(reasons) and reasons[-1] == "steady"


def test_breach_step_reverts_then_tries_the_other_direction() -> None:
    rt, reasons = stepping({16: 90, 32: 30, 64: 80, 128: 120, 256: 90})
    assert [(r, c.batch_size) for _, r, c in rt.switches] == [
        ("breach_step", 128),
        ("probe_revert", 64),
        ("breach_step", 32),
    ]
    assert "probe_keep" in reasons and reasons[-1] == "steady" and rt.config.batch_size == 32


def test_breach_with_no_step_left() -> None:
    rt, reasons = stepping({b: 80 for b in (16, 32, 64, 128, 256)}, until=90.0)
    assert [c.batch_size for _, _, c in rt.switches] == [128, 64, 32, 64]
    assert reasons[-1] == "breach_exhausted" and rt.config.batch_size == 64


def test_local_stepper_moves() -> None:
    space = default_space(cores=2, has_accel=False)
    st = LocalStepper(space, knobs=["batch_size", "merge_delay_ms"])
    c = BASE.replace(batch_size=1024, merge_delay_ms=0.0)
    assert st.propose(c) == c.replace(batch_size=512)  # +1 is blocked at the top: -1
    st.reject()
    assert st.propose(c) == c.replace(merge_delay_ms=0.5)  # next knob, +1
    st.accept()
    assert st.propose(c) == c.replace(merge_delay_ms=0.5)  # accepted: the same way again
    st.reject()
    assert st.propose(c) is None and st.exhausted  # merge -1 is blocked at 0
    st.reset()
    assert st.propose(c) == c.replace(batch_size=512)


class Queue:
    """One FIFO server at a constant arrival rate whose service rate depends on the config in
    force when a query starts: past its capacity a backlog builds, and queries arriving after
    a faster config takes over still wait behind it."""

    def __init__(self, rate: float, capacity: dict[int, float]) -> None:
        self.rate, self.capacity = rate, capacity

    def run(self, rt: OnlineRetuner, until: float, tick: float = 0.25) -> list[str]:
        waiting: deque[float] = deque()  # arrival times
        reasons, now, t_next, free_at = [], 0.0, 0.0, 0.0
        while now < until:
            now += tick
            while True:  # serve and admit in time order up to now
                start = max(free_at, waiting[0]) if waiting else math.inf
                if t_next <= min(start, now):
                    waiting.append(t_next)
                    t_next += 1.0 / self.rate
                elif start <= now:
                    free_at = start + 1.0 / self.capacity[rt.config.batch_size]
                    arrived = waiting.popleft()
                    rt.observe(free_at, free_at - arrived, 20)
                else:
                    break
            rt.decide(now)
            reasons.append(rt.last_reason)
        SEEN.update(reasons)
        return reasons


def backlog_run(rate: float, c64: float, c128: float, **options: float):
    cap = {16: 20.0, 32: 30.0, 64: c64, 128: c128, 256: 60.0}
    rt = OnlineRetuner(A, sla_ms=50.0, stepper=LocalStepper(SPACE), window_s=4.0,
                       min_dwell_s=2.0, breach_sustain_s=1.0, **options)  # fmt: skip
    reasons = Queue(rate, cap).run(rt, until=40.0)
    return [(r, c.batch_size) for _, r, c in rt.switches], reasons


def test_under_a_backlog_a_step_that_drains_it_is_kept() -> None:
    """100 qps into a config that serves 90: a backlog. The step to one that serves 105 drains
    it, but the queries arriving after the step wait behind the backlog, so their tail is no
    better when the step is judged; judged by the tail alone it was reverted."""
    switches, reasons = backlog_run(100.0, 90.0, 105.0)
    assert switches == [("breach_step", 128)] and "probe_drain" in reasons
    assert reasons[-1] == "steady"
    switches, reasons = backlog_run(100.0, 90.0, 105.0, backlog_x=math.inf)  # tail alone
    assert switches[:2] == [("breach_step", 128), ("probe_revert", 64)]
    assert reasons[-1] == "breach_exhausted"


def test_no_further_step_while_a_backlog_drains() -> None:
    """96 qps into 90, the step to 110 kept: while the backlog it left drains, the tail is
    still over the SLA; without the rule a further step is tried meanwhile (and judged while
    the backlog still drains)."""
    switches, reasons = backlog_run(96.0, 90.0, 110.0)
    assert switches == [("breach_step", 128)] and "drain_wait" in reasons
    assert reasons[-1] == "steady"
    switches, reasons = backlog_run(96.0, 90.0, 110.0, backlog_x=math.inf)
    assert switches[:2] == [("breach_step", 128), ("breach_step", 256)]


def test_a_kept_step_is_not_undone_by_the_next() -> None:
    """Accepted moves go on the same way; the opposite move of the same knob would undo one
    that helped (a two-valued knob, split -> dynamic, had the next proposal go back)."""
    space = TuningSpace((Knob("request", ("split", "dynamic")), Knob("batch_size", (64, 128))))
    st = LocalStepper(space)
    c = BASE.replace(request="split", batch_size=64)
    step = st.propose(c)
    assert step is not None and step.request == "dynamic"
    st.accept()
    nxt = st.propose(step)
    assert nxt is not None and nxt.request == "dynamic" and nxt.batch_size == 128


def test_every_branch_is_reachable() -> None:
    rt = OnlineRetuner(A, sla_ms=50.0, table=TABLE, window_s=10.0)
    assert rt.decide(0.0) is None and rt.last_reason == "warmup"
    with pytest.raises(AssertionError):
        OnlineRetuner(A, sla_ms=50.0)  # neither a table nor a stepper
    with pytest.raises(AssertionError):
        rt.observe(1.0, 0.01, 1)
        rt.observe(0.5, 0.01, 1)  # out of time order
    # run after the scenario tests (pytest keeps file order); alone, run them here
    if not SEEN >= set(REASONS):
        test_load_change_switches_within_the_window_both_ways()
        test_breach_step_up_is_kept()
        test_breach_step_reverts_then_tries_the_other_direction()
        test_breach_with_no_step_left()
        test_under_a_backlog_a_step_that_drains_it_is_kept()
        test_no_further_step_while_a_backlog_drains()
    assert set(REASONS) <= SEEN, set(REASONS) - SEEN


def test_the_rate_is_the_windows_right_after_a_switch() -> None:
    """The rate the regimes are classified by is the window's (queries / its span), also just
    after a switch, when few queries have completed under the new configuration."""
    rt = OnlineRetuner(A, sla_ms=50.0, stepper=LocalStepper(SPACE), window_s=4.0,
                       min_dwell_s=1.0, breach_sustain_s=1.0)  # fmt: skip
    now = 0.0
    while not rt.switches:  # 50 qps of 90 ms queries: a breach, then a step
        now += 0.02
        rt.observe(now, 0.09, 20)
        if round(now / 0.02) % 10 == 0:
            rt.decide(now)
        assert now < 30.0, "no step taken"
    assert rt.stats(now).rate_qps == pytest.approx(50.0, rel=0.05)


def test_same_batches_knows_which_steps_change_nothing() -> None:
    split = EngineConfig(request="split", batch_size=64, merge_delay_ms=0.0)
    assert same_batches(split, split.replace(batch_size=128), 8)  # no query is cut either way
    assert same_batches(split, split.replace(batch_size=32), 32)
    assert not same_batches(split, split.replace(batch_size=32), 33)  # now cut in two
    assert not same_batches(split, split.replace(batch_size=128), 100)  # was cut at 64
    whole = EngineConfig(request="whole")
    assert same_batches(whole, whole.replace(batch_size=512, merge_delay_ms=5.0), 1000)
    dyn = split.replace(request="dynamic", merge_delay_ms=1.0)
    assert not same_batches(dyn, dyn.replace(batch_size=128), 8)  # the merge cap moved
    assert not same_batches(dyn, dyn.replace(merge_delay_ms=2.0), 8)
    assert not same_batches(split, dyn, 8)  # merging
    assert not same_batches(split, split.replace(lanes=1, batch_size=128), 8)
    assert not same_batches(split, split.replace(batch_size=128), math.nan)


def test_a_step_skipped_as_a_no_op_is_not_spent() -> None:
    st = request_stepper(cores=2)
    c = EngineConfig(request="split", batch_size=64, merge_delay_ms=0.0, lanes=2)
    step = st.propose(c, skip=lambda a, b: same_batches(a, b, 20))
    assert step == c.replace(request="dynamic")  # both batch-size steps wait
    st.reject()
    # larger queries later: the batch-size steps are still there to try
    assert st.propose(c, skip=lambda a, b: same_batches(a, b, 1000)) == c.replace(batch_size=128)


def test_small_queries_under_split_step_to_merging_first() -> None:
    """8-item queries under `split`: the retuner's first step merges them (the batch-size
    steps would change nothing), and it is kept."""
    start = EngineConfig(request="split", batch_size=64, merge_delay_ms=0.0, lanes=2)
    rt = live_retuner(start, sla_ms=20.0, cores=2)

    def latency(config: EngineConfig, rng: np.random.Generator) -> float:
        return (0.050 if config.request == "split" else 0.008) * (1 + 0.1 * rng.random())

    reasons = Load(lambda t: 200.0, lambda t: 4.0, latency, seed=2).run(rt, 20.0)
    assert [(r, c.request, c.batch_size) for _, r, c in rt.switches] == [
        ("breach_step", "dynamic", 64)
    ]
    assert "probe_keep" in reasons and reasons[-1] == "steady"


def test_after_a_size_shift_the_step_is_for_the_queries_that_breach() -> None:
    """Large queries, then 4-item ones that `split` cannot serve in time: the window still
    holds large queries when the breach starts, but the steps are weighed for the queries
    completed since, so merging comes first."""
    start = EngineConfig(request="split", batch_size=64, merge_delay_ms=0.0, lanes=2)
    rt = live_retuner(start, sla_ms=20.0, cores=2)
    load: Load

    def latency(config: EngineConfig, rng: np.random.Generator) -> float:
        slow = load.arrival >= 10.0 and config.request == "split"
        return (0.050 if slow else 0.008) * (1 + 0.1 * rng.random())

    load = Load(lambda t: 200.0, lambda t: 400.0 if t < 10.0 else 4.0, latency, seed=3)
    reasons = load.run(rt, 25.0)
    assert [(r, c.request, c.batch_size) for _, r, c in rt.switches] == [
        ("breach_step", "dynamic", 64)
    ]
    assert rt.switches[0][0] < 13.0 and reasons[-1] == "steady"
