"""Online retuning wired to a live engine: live reconfiguration, and the retuner's switches
applied from completions on a manual clock."""

import pytest
import torch

from recsched.bench.online import OnlineTuning, live_retuner
from recsched.clock import ManualClock
from recsched.config import EngineConfig
from recsched.engine import Engine
from recsched.types import Query, QueryResult
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
