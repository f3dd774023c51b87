"""The `auto` granularity: the batch sizes a request level forms under load, the per-model
choice from a measured profile (dispatch per op against the compiled forward), and where
`auto` is resolved (the pure function, the simulator, an engine given no graph)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsched.config import EngineConfig, preset
from recsched.sched.opstream import choose_granularity, resolve_granularity
from recsched.sched.request import saturated_batches

SIZES = [1, 4, 16, 64, 256, 1024]


def profile(whole, coarse_run, fine_run=None, n_coarse=4, n_fine=12) -> dict:
    """A profile (the `recsched profile` format's fields the choice reads), times in ms."""
    grans = {"coarse": {"run_ms": coarse_run, "n_ops": n_coarse, "ops": {}}}
    if fine_run is not None:
        grans["fine"] = {"run_ms": fine_run, "n_ops": n_fine, "ops": {}}
    return {"model": "m", "batch_sizes": SIZES, "whole_ms": whole, "granularities": grans}


# a model whose op-by-op run pays ~0.3 ms of Python dispatch at any size, but whose ops are
# 40% cheaper than the compiled forward at large batches (as din's eager ops were once here)
DISPATCH_HEAVY = profile(
    whole=[0.1, 0.2, 0.5, 2.0, 8.0, 32.0],
    coarse_run=[0.4, 0.5, 0.8, 1.8, 5.1, 19.5],
    fine_run=[1.0, 1.1, 1.4, 2.6, 6.0, 21.0],
)


def test_saturated_batches_by_request_level():
    sizes = [300, 10, 20, 1000, 5]
    assert saturated_batches(sizes, "whole", 256) == sizes
    assert saturated_batches(sizes, "split", 256) == [256, 44, 10, 20, 256, 256, 256, 232, 5]
    # dynamic without a merge delay: as split (remainders leave at once)
    assert saturated_batches(sizes, "dynamic", 256) == saturated_batches(sizes, "split", 256)
    # with one: full pieces at once, remainders merged in arrival order up to B
    assert saturated_batches(sizes, "dynamic", 256, 0.002) == [256, 256, 256, 256, 74, 237]
    assert saturated_batches(sizes, "tuned", 256, 0.002) == [256, 256, 256, 256, 74, 237]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 3000), min_size=1, max_size=40),
    st.sampled_from(["whole", "split", "dynamic"]),
    st.integers(1, 1024),
    st.sampled_from([0.0, 0.001]),
)
def test_saturated_batches_keep_every_item_within_b(sizes, mode, b, delay):
    out = saturated_batches(sizes, mode, b, delay)
    assert sum(out) == sum(sizes) and min(out) >= 1
    if mode != "whole":
        assert max(out) <= b


def test_small_batches_choose_the_compiled_model_for_its_dispatch():
    small = saturated_batches([8] * 100, "split", 256)
    c = choose_granularity(DISPATCH_HEAVY, small, engine_overhead_s=100e-6)
    assert c.choice == "model"
    work = c.lane_ms_per_kitem
    # per 1,000 items: 125 batches of 8 rows; model 0.3 + 0.1 ms, coarse 0.6 + 4 x 0.1 ms
    assert work["model"] == pytest.approx(125 * (0.3 + 0.1))
    assert work["coarse"] == pytest.approx(125 * (0.6 + 0.4))
    assert work["model"] < work["coarse"] < work["fine"]


def test_large_batches_choose_ops_that_are_cheaper_by_more_than_the_margin():
    large = saturated_batches([1024] * 10, "whole", 1024)
    c = choose_granularity(DISPATCH_HEAVY, large, engine_overhead_s=100e-6)
    assert c.choice == "coarse"  # 19.9 ms against 32.1 ms a batch: 38% cheaper
    # the same gap inside the margin keeps the earlier (fewer-task) candidate
    assert choose_granularity(DISPATCH_HEAVY, large, 100e-6, margin=0.5).choice == "model"
    # an engine that costs more per task makes the many-op granularities dearer
    assert choose_granularity(DISPATCH_HEAVY, large, 5e-3).choice == "model"


def test_a_granularity_the_profile_lacks_is_not_a_candidate():
    no_fine = profile(whole=[10.0] * 6, coarse_run=[1.0] * 6)
    c = choose_granularity(no_fine, [64, 64])
    assert set(c.lane_ms_per_kitem) == {"model", "coarse"} and c.choice == "coarse"
    with pytest.raises(AssertionError):
        choose_granularity(no_fine, [64], candidates=("fine",))


def test_resolve_granularity_only_touches_auto():
    sizes = [8] * 50
    cfg = preset("opstream", request="split", batch_size=256)
    assert cfg.granularity == "auto"
    done, choice = resolve_granularity(cfg, DISPATCH_HEAVY, sizes)
    assert done.granularity == "model" and choice is not None and choice.choice == "model"
    whole = preset("opstream", request="whole")
    assert resolve_granularity(whole, DISPATCH_HEAVY, [1024] * 5)[0].granularity == "coarse"
    fixed = cfg.replace(granularity="fine")
    assert resolve_granularity(fixed, DISPATCH_HEAVY, sizes) == (fixed, None)
    # the sequential level runs no graph: its `auto` becomes the unused default
    seq = EngineConfig(granularity="auto")
    assert resolve_granularity(seq, {}, ())[0].granularity == "coarse"
    with pytest.raises(ValueError, match="granularity"):
        EngineConfig(granularity="medium")


def test_the_simulator_resolves_auto_from_its_profile_and_size_mix():
    from recsched.sim.run import resolve_auto

    cfg = preset("opstream", request="whole")
    assert resolve_auto(cfg, DISPATCH_HEAVY, "fixed:8").granularity == "model"
    assert resolve_auto(cfg, DISPATCH_HEAVY, "fixed:1000").granularity == "coarse"
    # a cost model object has no measurements to choose from: the measured default
    assert resolve_auto(cfg, type("C", (), {"whole_s": None})(), "fixed:8").granularity == "model"
    assert resolve_auto(cfg.replace(granularity="fine"), None, "fixed:8").granularity == "fine"


def test_an_engine_given_auto_and_no_graph_runs_the_model_granularity():
    from recsched.engine import Engine
    from tests.byo_model import make_deepfm

    eng = Engine(make_deepfm(), preset("opstream", request="whole", lanes=1))
    assert eng.graph is not None and eng.graph.info.granularity == "model"
