"""Capacity search against a synthetic response: a known capacity it must bracket."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsched.bench.capacity import capacity_result, find_capacity


def surface(capacity: float):
    calls = []

    def run(q: float) -> dict:
        calls.append(q)
        return {"offered_qps": q, "sla_met": q <= capacity, "completed_items_per_s": q * 10}

    return run, calls


@pytest.mark.parametrize("cap,start", [(100.0, 10.0), (100.0, 1000.0), (7.3, 7.3), (1e4, 1.0)])
def test_finds_capacity_within_tolerance(cap, start):
    run, calls = surface(cap)
    s = find_capacity(run, start_qps=start, rel_tol=0.05, max_runs=40)
    assert cap / 1.05 <= s.qps <= cap
    assert s.best["offered_qps"] == s.qps
    assert len(s.runs) == len(calls)


def test_a_shorter_step_down_lands_closer_below_a_failure():
    """After a failure the next rate is `step_down` below (default `step`): a start 1.3x over
    the capacity (din's start while tuning) then needs one passing run fewer, and passing runs
    are the ones that last their full length."""
    run, calls = surface(38.7)
    halved = find_capacity(run, start_qps=50.2, rel_tol=0.1)
    assert calls[:2] == [50.2, 25.1]
    run, calls = surface(38.7)
    s = find_capacity(run, start_qps=50.2, rel_tol=0.1, step_down=2**0.5)
    assert calls[1] == pytest.approx(50.2 / 2**0.5)
    assert 38.7 / 1.1 <= s.qps <= 38.7 and s.qps == pytest.approx(halved.qps, rel=0.1)
    passing = [q for q in calls if q <= 38.7]
    assert len(passing) < sum(r["sla_met"] for r in halved.runs)
    run, calls = surface(100.0)  # and up by `step` after a pass, as before
    find_capacity(run, start_qps=30.0, rel_tol=0.1, step_down=2**0.5)
    assert calls[:3] == [30.0, 60.0, 120.0]
    run, calls = surface(3.6)  # a guess 28x over (wnd at a tight SLA): galloping down
    s = find_capacity(run, start_qps=100.0, rel_tol=0.1, max_runs=8, step_down=2**0.5)
    assert calls[:5] == pytest.approx([100.0, 100 / 2**0.5, 100 / 2**1.5, 100 / 2**3, 100 / 2**5])
    run, _ = surface(3.6)
    halving = find_capacity(run, start_qps=100.0, rel_tol=0.1, max_runs=8)
    assert s.qps == pytest.approx(halving.qps) and 0 < s.qps <= 3.6  # as good as halving


@settings(max_examples=200, deadline=None)
@given(
    cap=st.floats(1.0, 1e4),
    start=st.floats(0.5, 1e5),
    step=st.floats(1.5, 4.0),
    down=st.floats(1.05, 4.0),
)
def test_any_step_up_and_down_lands_within_tolerance(cap, start, step, down):
    """Whatever the steps up and down, the search ends within its tolerance below the
    capacity and never above it (on a noiseless surface); a start 1e5 x over the capacity with
    small steps down is still left within the budget (the k-th failure in a row divides by
    step_down**k)."""
    run, calls = surface(cap)
    s = find_capacity(run, start_qps=start, rel_tol=0.1, max_runs=80, step=step, step_down=down)
    assert cap / 1.1 <= s.qps <= cap and len(calls) <= 80


def test_budget_is_respected_and_zero_when_nothing_passes():
    run, calls = surface(0.0)
    s = find_capacity(run, start_qps=10.0, max_runs=5, min_qps=1.0)
    assert s.qps == 0.0 and s.best is None and len(calls) <= 5


def test_capacity_result_efficiency():
    run, _ = surface(50.0)
    s = find_capacity(run, start_qps=40.0, rel_tol=0.01, max_runs=30)
    r = capacity_result(s, model="m", preset="p", sla_ms=10, percentile=95, peak_items_per_s=1000)
    assert r["latency_bounded_qps"] == s.qps
    assert r["efficiency"] == pytest.approx(s.qps * 10 / 1000)


# -- confirm: majority verdicts on a noisy machine ------------------------------------------


def _old_find_capacity(run, *, start_qps, rel_tol=0.05, max_runs=12, min_qps=0.1,
                       max_qps=1e7, step=2.0):  # fmt: skip
    """The search before `confirm` existed, verbatim but for `on_run`: the reference."""
    qps, best, runs = 0.0, None, []

    def measure(q):
        nonlocal qps, best
        r = run(q)
        runs.append(r)
        if r["sla_met"] and q > qps:
            qps, best = q, r
        return r["sla_met"]

    lo, hi = 0.0, math.inf
    q = min(max(start_qps, min_qps), max_qps)
    while len(runs) < max_runs:
        if measure(q):
            lo = q
            if q >= max_qps:
                return qps, best
            q = min(q * step, max_qps)
        else:
            hi = q
            if q <= min_qps:
                return qps, best
            q = max(q / step, min_qps)
        if lo > 0 and hi < math.inf:
            break
    while len(runs) < max_runs and hi / lo > 1 + rel_tol:
        q = math.sqrt(lo * hi)
        if measure(q):
            lo = q
        else:
            hi = q
    return qps, best


def scripted(capacity: float, flip: set[int] = frozenset(), p_fail: float = 0.0, seed: int = 0):
    """Passes at or below `capacity`; the calls numbered in `flip` have their verdict
    inverted, and a passing run fails with probability `p_fail` (seeded, rate-blind)."""
    rng = random.Random(seed)
    calls: list[float] = []

    def run(q: float) -> dict:
        ok = q <= capacity and rng.random() >= p_fail
        ok = ok != (len(calls) in flip)
        calls.append(q)
        return {"offered_qps": q, "sla_met": ok, "n": len(calls) - 1}

    return run, calls


@pytest.mark.parametrize(
    "cap,start,kw",
    [
        (100.0, 10.0, {}),
        (100.0, 1000.0, {"rel_tol": 0.01, "max_runs": 30}),
        (7.3, 7.3, {"step": 3.0}),
        (1e4, 1.0, {"max_runs": 6}),
        (0.0, 10.0, {"min_qps": 1.0}),
        (1e9, 10.0, {"max_qps": 500.0}),
        (33.0, 40.0, {"rel_tol": 0.2, "max_runs": 3}),
    ],
)
def test_confirm_zero_reproduces_the_old_sequence(cap, start, kw):
    run, calls = scripted(cap)
    s = find_capacity(run, start_qps=start, **kw)
    old_run, old_calls = scripted(cap)
    qps, best = _old_find_capacity(old_run, start_qps=start, **kw)
    assert calls == old_calls and s.qps == qps and s.best == best
    assert s.verdicts == {q: [q <= cap] for q in calls}


def test_confirm_lands_within_tolerance_despite_seeded_failures():
    """A run fails with probability 0.05 whatever its rate: best-of-3 verdicts find the
    capacity in nearly every seed, single runs in markedly fewer."""

    def hits(confirm: int) -> int:
        n = 0
        for seed in range(20):
            run, _ = scripted(100.0, p_fail=0.05, seed=seed)
            s = find_capacity(run, start_qps=10.0, rel_tol=0.05, max_runs=40, confirm=confirm)
            n += 100.0 / 1.05 <= s.qps <= 100.0
        return n

    robust, plain = hits(2), hits(0)
    assert robust >= 18
    assert robust >= plain + 3


@pytest.mark.parametrize("confirm", [1, 2, 3, 5])
def test_confirm_respects_the_budget(confirm):
    for max_runs in range(1, 16):
        for seed in range(5):
            run, calls = scripted(100.0, p_fail=0.3, seed=seed)
            s = find_capacity(run, start_qps=10.0, max_runs=max_runs, confirm=confirm)
            assert len(s.runs) == len(calls) <= max_runs
            assert sum(map(len, s.verdicts.values())) == len(s.runs)


def test_a_lone_failure_at_the_start_rate_is_outvoted():
    run, calls = scripted(100.0, flip={0})
    s = find_capacity(run, start_qps=50.0, max_runs=40, confirm=2)
    assert calls[:4] == [50.0, 50.0, 50.0, 100.0]
    assert s.verdicts[50.0] == [False, True, True]
    assert 100.0 / 1.05 <= s.qps <= 100.0
    run, calls = scripted(100.0, flip={0})
    find_capacity(run, start_qps=50.0, max_runs=40)  # without confirm: down by `step`
    assert calls[1] == 25.0


def test_confirm_on_a_deterministic_surface_visits_the_same_rates():
    run, calls = scripted(100.0)
    plain = find_capacity(run, start_qps=10.0, max_runs=40)
    run, calls = scripted(100.0)
    s = find_capacity(run, start_qps=10.0, max_runs=60, confirm=2)
    assert list(s.verdicts) == list(plain.verdicts) and s.qps == plain.qps
    assert all(len(v) in (1, 2) for v in s.verdicts.values())  # unanimous: decided after 2


def test_ties_fail():
    # 100 passes, 200 fails, bisection at 141.4 passes then (flipped) fails: 1-1 fails
    run, calls = scripted(150.0, flip={3})
    s = find_capacity(run, start_qps=100.0, max_runs=40, confirm=1)
    q = math.sqrt(100.0 * 200.0)
    assert calls[:4] == [100.0, 200.0, q, q] and s.verdicts[q] == [True, False]
    assert 100.0 <= s.qps < q
    # 200 fails twice; the budget runs out mid-confirmation on a 1-1 tie: fail, capacity 100
    run, calls = scripted(150.0, flip={4})
    s = find_capacity(run, start_qps=100.0, max_runs=5, confirm=2)
    assert calls == [100.0, 200.0, 200.0, q, q] and s.verdicts[q] == [True, False]
    assert s.qps == 100.0 and s.best["offered_qps"] == 100.0


def test_best_is_a_passing_run_at_the_final_rate():
    for seed in range(10):
        run, _ = scripted(100.0, p_fail=0.2, seed=seed)
        s = find_capacity(run, start_qps=10.0, max_runs=40, confirm=2)
        if s.best is None:
            assert s.qps == 0.0
            continue
        assert s.best["sla_met"] and s.best["offered_qps"] == s.qps
        assert s.best is next(r for r in s.runs if r["offered_qps"] == s.qps and r["sla_met"])
        assert 2 * sum(s.verdicts[s.qps]) > len(s.verdicts[s.qps])


def test_turns_interleave_searches_run_by_run_with_the_results_of_running_them_alone():
    """Three searches in threads: runs alternate a, b, c, a, b, c, ... while all search, never
    two at once; each search ends where it would alone; a failing search leaves the cycle."""
    import threading

    from recsched.bench.capacity import Turns

    caps = {"a": 100.0, "b": 30.0, "c": 7.0}
    alone = {
        n: find_capacity(surface(c)[0], start_qps=10.0, max_runs=12).qps for n, c in caps.items()
    }
    turns = Turns(list(caps))
    running = []
    got: dict[str, float] = {}

    def search(name: str) -> None:
        run, _ = surface(caps[name])

        def tracked(q: float) -> dict:
            running.append(name)
            assert len(running) == 1, "two runs at once"
            try:
                return run(q)
            finally:
                running.pop()

        try:
            got[name] = find_capacity(turns.wrap(name, tracked), start_qps=10.0, max_runs=12).qps
        finally:
            turns.done(name)

    threads = [threading.Thread(target=search, args=(n,)) for n in caps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert got == alone
    log = turns.log
    assert log[:6] == ["a", "b", "c", "a", "b", "c"]
    for i in range(1, len(log)):  # no name twice in a row while another still searches
        if log[i] == log[i - 1]:
            assert all(n == log[i] for n in log[i:]), log
    assert turns.current is None and turns.order == []

    t2 = Turns(["x", "y"])
    t2.done("x")  # a search that failed before its first run
    assert t2.wrap("y", lambda q: {"q": q})(1.0) == {"q": 1.0} and t2.current == "y"


def test_setup_capacities_interleaves_presets_and_reraises_a_failure(monkeypatch):
    """`Setup.capacities` on stand-in run functions (no engine): each preset's result is its
    own search's, the runs alternate between presets, and a preset whose run raises fails
    the call only after the others have finished."""
    from recsched.bench import setup as setup_mod
    from recsched.bench.setup import Setup
    from recsched.config import preset

    s = Setup.make("ncf", sla_ms=10.0)
    caps = {"baseline": 100.0, "dynamic": 30.0}
    order: list[str] = []

    def run_fn(cfg, name, duration_s, trace=False, stop_on_miss=False):
        assert stop_on_miss, "a search needs only the verdict: its runs stop once decided"

        def run(q: float) -> dict:
            order.append(name)
            if name == "broken":
                raise RuntimeError("lane on fire")
            return {"offered_qps": q, "sla_met": q <= caps[name], "latency_ms": {"p99": 1.0}}

        return run

    monkeypatch.setattr(s, "config", lambda name, log=None, **kw: preset("baseline"))
    monkeypatch.setattr(s, "run_fn", run_fn)
    monkeypatch.setattr(s, "start_qps", lambda cfg: 10.0)
    peaks: list[int] = []  # runs done when the peak was read: 0, before any search began

    def peak(ad) -> dict:
        peaks.append(len(order))
        return {"peak_items_per_s": 1e3}

    monkeypatch.setattr(setup_mod.calibrate, "peak", peak)
    out = s.capacities(list(caps), 1.0)
    for name, cap in caps.items():
        assert cap / 1.05 <= out[name]["latency_bounded_qps"] <= cap
        assert out[name]["peak_items_per_s"] == 1e3
    assert peaks and set(peaks) == {0}, "the peak is settled before the interleaved searches"
    assert order[:4] == ["baseline", "dynamic", "baseline", "dynamic"]
    order.clear()
    with pytest.raises(RuntimeError, match="lane on fire"):
        s.capacities(["baseline", "broken"], 1.0)
    assert order.count("broken") == 1 and order.count("baseline") > 3  # baseline finished


def test_peak_cost_is_a_lanes_share_of_the_measured_rate():
    """A lane of a peak measured with 2 lanes at 1,600 items/s for 16-row batches runs 16 rows
    in 2 x 16 / 1600 = 20 ms; linear between sizes and down to 0 rows; other lane shapes
    were not measured."""
    from recsched.sim.run import PeakCost

    cost = PeakCost({"per_config": {"2x1": {"16": 1600.0, "64": 3200.0}}}, 2, 1)
    assert cost.whole_s(16) == pytest.approx(0.02)
    assert cost.whole_s(64) == pytest.approx(0.04)
    assert cost.whole_s(8) == pytest.approx(0.01)
    assert cost.whole_s(40) == pytest.approx(0.03)
    with pytest.raises(ValueError, match="1 lanes x 2 threads"):
        PeakCost({"per_config": {"2x1": {"16": 1600.0}}}, 1, 2)


def test_the_first_guess_comes_from_the_cached_peak(monkeypatch, tmp_path):
    """With a peak cached, `start_qps` is GUESS_FRACTION of the simulated capacity on lanes
    that cost what the peak measured: 100-item queries at 20 ms per lane, arriving evenly,
    saturate two lanes at 100 qps, and a 60 ms SLA holds almost up to there. Without a peak
    (or one measured on other lanes) nothing is simulated."""
    from recsched.bench import calibrate
    from recsched.bench import setup as setup_mod
    from recsched.bench.setup import Setup
    from recsched.config import EngineConfig

    monkeypatch.setenv("RECSCHED_CACHE", str(tmp_path))
    s = Setup.make("ncf", sla_ms=60.0, sizes="fixed:100", arrivals="constant")
    cfg = EngineConfig(request="whole", lanes=2, threads_per_lane=1)
    assert s.simulated_start_qps(cfg) is None, "no peak cached: no simulation"
    rates = {"2x1": {"16": 2 * 16 / 0.005, "100": 2 * 100 / 0.02, "1024": 2 * 1024 / 0.2}}
    peak = {"peak_items_per_s": 10240.0, "per_config": rates}
    calibrate.write_json(peak, calibrate.cache_dir() / f"{calibrate.peak_key(s.adapter)}."
                         f"{calibrate.machine_fingerprint()}.json")  # fmt: skip
    guess = s.simulated_start_qps(cfg)
    assert guess is not None
    f = setup_mod.GUESS_FRACTION
    assert 0.85 * 100 * f <= guess <= 100 * f
    assert s.start_qps(cfg) == guess
    assert s.simulated_start_qps(cfg.replace(lanes=1, threads_per_lane=2)) is None
    # the request level is simulated as configured: 100 items in batches of 16 cost 31 ms
    split = s.simulated_start_qps(cfg.replace(request="split", batch_size=16))
    assert split is not None and split < guess
