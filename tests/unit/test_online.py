"""Online retuning wired to a live engine: live reconfiguration, and the retuner's switches
applied from completions on a manual clock."""

import pytest
import torch

from recsched.bench.online import OnlineTuning, live_retuner
from recsched.clock import ManualClock
from recsched.config import EngineConfig
from recsched.engine import Engine
from recsched.types import Query, QueryResult
from tests.tuned import cache_tuned
from tests.unit.test_engine import tiny_adapter


def test_reconfigure_changes_the_batch_size_of_later_queries():
    ad = tiny_adapter()
    x = ad.make_inputs(7, 1)
    with Engine(ad, EngineConfig(request="split", batch_size=8, lanes=1)) as eng:
        eng.submit(Query(0, "tiny", 7), x).result(timeout=10)
        assert eng.core.operator.batches_in == 1
        eng.reconfigure(eng.config.replace(batch_size=3, merge_delay_ms=0.5))
        assert eng.core.request.batch_size == 3 and eng.core.request.merge_delay_s == 5e-4
        got = eng.submit(Query(1, "tiny", 7), x).result(timeout=10)
        assert eng.core.operator.batches_in == 1 + 3  # 7 items in batches of 3
    assert torch.allclose(got, ad.forward(x))


def test_reconfigure_refuses_what_needs_a_restart():
    with Engine(tiny_adapter(), EngineConfig(lanes=1)) as eng:
        with pytest.raises(ValueError, match="lanes"):
            eng.reconfigure(eng.config.replace(lanes=2))


def test_breach_moves_the_live_engine_and_is_recorded():
    clock = ManualClock(100.0)
    cfg = EngineConfig(request="dynamic", batch_size=64, merge_delay_ms=1.0, lanes=1)
    with Engine(tiny_adapter(), cfg, clock=clock) as eng:
        retuner = live_retuner(
            cfg, sla_ms=10.0, cores=2, window_s=4.0, min_samples=20, breach_sustain_s=1.0
        )
        online = OnlineTuning(eng, retuner, interval_s=3600)  # steps driven by the test
        with online:
            assert eng.on_complete == online._observe
            for i in range(400):  # 100 qps of 50 ms latencies: five times the SLA
                clock.advance(0.01)
                online._observe(QueryResult(i, "default", 30, clock.now() - 0.05, clock.now()))
                if i % 25 == 0:
                    online.step()
        assert eng.on_complete is None  # detached
    moved = [h for h in online.history if h["reason"] == "breach_step"]
    assert moved, retuner.last_reason
    assert moved[0]["batch_size"] != 64 or moved[0]["merge_delay_ms"] != 1.0
    assert eng.config.batch_size == retuner.config.batch_size  # the engine follows


def test_size_regimes_hold_the_knobs_tuned_for_each_size_mix(tmp_path, monkeypatch):
    import dataclasses

    from recsched.bench.online import size_regimes
    from recsched.bench.setup import Setup

    monkeypatch.setenv("RECSCHED_CACHE", str(tmp_path))
    ad = tiny_adapter()
    s = Setup.make(ad.name, sla_ms=10.0, adapter=ad)
    small = {"request": "dynamic", "batch_size": 256, "merge_delay_ms": 1.0, "lanes": 1}
    large = {"request": "split", "batch_size": 128, "merge_delay_ms": 0.0}
    cache_tuned(dataclasses.replace(s, sizes="fixed:8"), small)
    cache_tuned(dataclasses.replace(s, sizes="lognormal:400:0.3"), large)
    cfg = EngineConfig(request="dynamic", batch_size=64, lanes=2)
    table = size_regimes(s, cfg, ["lognormal:400:0.3", "fixed:8"])  # sorted by median
    assert table.load_edges == () and table.size_edges == pytest.approx((400**0.5 * 8**0.5,))
    lo, hi = table.configs[(0, 0)], table.configs[(0, 1)]
    assert (lo.request, lo.batch_size, lo.merge_delay_ms) == ("dynamic", 256, 1.0)
    assert (hi.request, hi.batch_size, hi.merge_delay_ms) == ("split", 128, 0.0)
    assert lo.lanes == hi.lanes == 2  # only what changes while serving (the tuned lanes: 1)
    with pytest.raises(ValueError, match="two or more"):
        size_regimes(s, cfg, ["fixed:8"])
    with pytest.raises(ValueError, match="same median"):
        size_regimes(s, cfg, ["fixed:8", "normal:8:1"])


def test_a_size_shift_switches_the_live_engine_to_its_regime():
    from recsched.sched.retune import RegimeTable

    clock = ManualClock(100.0)
    cfg = EngineConfig(request="dynamic", batch_size=256, merge_delay_ms=1.0, lanes=1)
    big = cfg.replace(request="split", batch_size=128, merge_delay_ms=0.0)
    table = RegimeTable((), (50.0,), {(0, 0): cfg, (0, 1): big})
    with Engine(tiny_adapter(), cfg, clock=clock) as eng:
        retuner = live_retuner(cfg, sla_ms=10.0, cores=2, table=table, window_s=2.0,
                               min_samples=20, confirm_s=0.5)  # fmt: skip
        online = OnlineTuning(eng, retuner, interval_s=3600)  # steps driven by the test
        with online:
            for i in range(600):  # 3 s of 8-item queries, then 3 s of 400-item ones, at 100 qps
                clock.advance(0.01)
                n = 8 if i < 300 else 400
                online._observe(QueryResult(i, "default", n, clock.now() - 0.002, clock.now()))
                if i % 10 == 0:
                    online.step()
                if i == 299:
                    assert eng.config == cfg, online.history  # small queries: stays
    reasons = [h["reason"] for h in online.history]
    assert reasons == ["regime"], online.history
    assert 3.0 < online.history[0]["t_s"] < 5.0  # after the shift, once the median moved
    assert eng.config == big


def test_live_steps_reach_merging_from_split_and_never_wait_on_split():
    from recsched.bench.online import request_stepper

    stepper = request_stepper(cores=2)
    cfg = EngineConfig(request="split", batch_size=1024, merge_delay_ms=0.0, lanes=2)
    seen = []
    while (step := stepper.propose(cfg)) is not None:  # every move rejected in turn
        seen.append((step.request, step.batch_size, step.merge_delay_ms))
        stepper.reject()
    assert seen == [("split", 512, 0.0), ("dynamic", 1024, 0.0)]  # no merge delay on split
    stepper.reset()
    dyn = cfg.replace(request="dynamic")
    moves = []
    while (step := stepper.propose(dyn)) is not None:
        moves.append((step.request, step.batch_size, step.merge_delay_ms))
        stepper.reject()
    assert ("dynamic", 1024, 0.5) in moves and ("split", 1024, 0.0) in moves
    # a split configuration's unused merge delay is read as 0, so its steps are not blocked
    retuner = live_retuner(cfg.replace(merge_delay_ms=1.0), sla_ms=10.0, cores=2)
    assert retuner.config.merge_delay_ms == 0.0
