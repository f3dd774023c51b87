"""Request policies pinned with explicit times (no wall clock)."""

import pytest

from recsched.sched.request import RequestPolicy, chunks
from recsched.types import Part, Query


def q(qid: int, n: int, t: float = 0.0, value: float = 1.0) -> Query:
    return Query(qid, "m", n, value=value, arrival_s=t, deadline_s=t + 1.0)


def parts(plan):
    return [b.parts for b in plan.batches]


def test_chunks_cover_rows_once():
    assert chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunks(4, 4) == [(0, 4)]
    assert chunks(1, 64) == [(0, 1)]


def test_whole_is_one_batch_per_query():
    p = RequestPolicy("whole")
    p.push(q(1, 300), 0.0)
    p.push(q(2, 5), 0.0)
    plan = p.schedule(0.0)
    assert parts(plan) == [(Part(1, 0, 300),), (Part(2, 0, 5),)]
    assert plan.wake_at is None


def test_split_cuts_fixed_batches():
    p = RequestPolicy("split", batch_size=64)
    p.push(q(7, 150), 0.0)
    plan = p.schedule(0.0)
    assert parts(plan) == [(Part(7, 0, 64),), (Part(7, 64, 128),), (Part(7, 128, 150),)]
    assert all(b.size <= 64 for b in plan.batches)


def test_dynamic_merges_small_queries_within_delay():
    p = RequestPolicy("dynamic", batch_size=10, merge_delay_s=0.002)
    p.push(q(1, 3), 0.000)
    p.push(q(2, 4), 0.001)
    plan = p.schedule(0.001, idle_lanes=0)
    assert plan.batches == []  # lanes busy, buffer below B, delay not expired
    assert plan.wake_at == pytest.approx(0.002)  # oldest arrival + delay
    plan = p.schedule(0.002, idle_lanes=0)
    assert parts(plan) == [(Part(1, 0, 3), Part(2, 0, 4))]
    assert p.pending_items() == 0


def test_dynamic_fills_exactly_b_and_carries_remainder():
    p = RequestPolicy("dynamic", batch_size=10, merge_delay_s=1.0)
    p.push(q(1, 6), 0.0)
    p.push(q(2, 7), 0.0)
    plan = p.schedule(0.0)
    assert parts(plan) == [(Part(1, 0, 6), Part(2, 0, 4))]
    assert p.pending_items() == 3
    plan = p.schedule(1.0)  # delay expired: the remainder leaves alone
    assert parts(plan) == [(Part(2, 4, 7),)]


def test_dynamic_splits_large_at_once_and_buffers_remainder():
    p = RequestPolicy("dynamic", batch_size=8, merge_delay_s=1.0)
    p.push(q(1, 19), 0.0)
    plan = p.schedule(0.0)
    assert parts(plan) == [(Part(1, 0, 8),), (Part(1, 8, 16),)]
    assert p.pending_items() == 3


def test_dynamic_flushes_when_a_lane_is_idle():
    p = RequestPolicy("dynamic", batch_size=64, merge_delay_s=1.0)
    p.push(q(1, 5), 0.0)
    assert parts(p.schedule(0.0, idle_lanes=1)) == [(Part(1, 0, 5),)]


def test_offload_threshold_routes_large_queries_whole_to_accel():
    p = RequestPolicy("split", batch_size=16, offload_threshold=100)
    p.push(q(1, 150), 0.0)
    p.push(q(2, 99), 0.0)
    plan = p.schedule(0.0)
    kinds = [(b.lane_kind, b.size) for b in plan.batches]
    assert kinds[0] == ("accel", 150)
    assert all(k == "cpu" and s <= 16 for k, s in kinds[1:])
    assert sum(s for _, s in kinds[1:]) == 99


def test_batch_carries_highest_value_and_earliest_deadline():
    p = RequestPolicy("dynamic", batch_size=10, merge_delay_s=0.0)
    p.push(q(1, 2, t=0.0, value=1.0), 0.0)
    p.push(q(2, 2, t=0.5, value=10.0), 0.0)
    (b,) = p.schedule(0.0).batches
    assert b.value == 10.0 and b.deadline_s == 1.0


def test_tuned_is_dynamic():
    assert RequestPolicy("tuned").mode == "dynamic"


def test_expiry_uses_the_same_sum_as_the_wake_time():
    # 0.1 + 0.001 - 0.1 < 0.001 in floating point: waking at wake_at must flush
    p = RequestPolicy("dynamic", batch_size=64, merge_delay_s=0.001)
    p.push(q(1, 3), 0.1)
    wake = p.schedule(0.1).wake_at
    assert parts(p.schedule(wake)) == [(Part(1, 0, 3),)]


def test_default_b_is_shared_by_the_policy_and_the_config():
    """One default B (256) for `RequestPolicy`, `EngineConfig` and the presets: a 600-item
    query under the `dynamic` preset leaves as two full batches and a buffered remainder."""
    from recsched.config import DEFAULT_BATCH_SIZE, EngineConfig, preset

    assert DEFAULT_BATCH_SIZE == 256
    assert EngineConfig().batch_size == preset("dynamic").batch_size == DEFAULT_BATCH_SIZE
    cfg = preset("dynamic")
    p = RequestPolicy(cfg.request, cfg.batch_size, cfg.merge_delay_ms / 1e3)
    assert p.batch_size == RequestPolicy("dynamic").batch_size
    p.push(q(1, 600), 0.0)
    assert parts(p.schedule(0.0)) == [(Part(1, 0, 256),), (Part(1, 256, 512),)]
    assert p.pending_items() == 88


def test_serving_form_equates_configurations_that_serve_alike():
    from recsched.config import EngineConfig
    from recsched.sched.request import serving_form

    whole = EngineConfig(request="whole")
    big_split = EngineConfig(request="split", batch_size=1024, merge_delay_ms=2.0)
    assert serving_form(big_split, 1000) == serving_form(whole, 1000)  # no query is cut
    assert serving_form(big_split, 1025) != serving_form(whole, 1025)  # one can be
    split = EngineConfig(request="split", batch_size=256)
    assert serving_form(split, 1000) == serving_form(split.replace(merge_delay_ms=3.0), 1000)
    dyn = EngineConfig(request="dynamic", batch_size=1024)
    assert serving_form(dyn, 1000) != serving_form(whole, 1000)  # it merges
    assert serving_form(dyn, 1000) != serving_form(dyn.replace(merge_delay_ms=2.0), 1000)
    # the sequential level runs no graph; operator-level ones do
    assert serving_form(whole.replace(granularity="model"), 1000) == serving_form(whole, 1000)
    ops = whole.replace(operator="opstream")
    assert serving_form(ops.replace(granularity="model"), 1000) != serving_form(ops, 1000)
    assert serving_form(ops, 1000) != serving_form(whole, 1000)
