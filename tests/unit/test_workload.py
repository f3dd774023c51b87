"""Workload: arrival processes, size distributions, class specs, seeded generation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsched.types import DEFAULT_CLASS, PriorityClass
from recsched.workload import (
    ArrivalSpecError,
    Bursty,
    ClassSpecError,
    Constant,
    Diurnal,
    Fixed,
    LogNormal,
    Normal,
    Percentiles,
    Poisson,
    SizeSpecError,
    TraceReplay,
    Workload,
    assign_classes,
    format_classes,
    generate,
    load_percentiles,
    parse_arrivals,
    parse_classes,
    parse_sizes,
    production,
    read_percentiles,
    write_trace_csv,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def cv(t: np.ndarray) -> float:
    g = np.diff(t)
    return float(g.std() / g.mean())


# ---------------------------------------------------------------- arrivals


def test_poisson_rate_and_exponential_gaps() -> None:
    t = Poisson(1000.0).times(100.0, rng())
    assert np.all(np.diff(t) >= 0) and t[0] >= 0 and t[-1] < 100.0
    assert len(t) / 100.0 == pytest.approx(1000.0, rel=0.01)  # sd 0.3%
    assert cv(t) == pytest.approx(1.0, abs=0.02)
    gaps = np.diff(t)
    # memoryless: P(gap > mean) = 1/e for exponential gaps
    assert np.mean(gaps > 1e-3) == pytest.approx(math.exp(-1), abs=0.01)


def test_poisson_long_window_needs_more_than_one_chunk_still_sorted() -> None:
    t = Poisson(5.0).times(10_000.0, rng(3))
    assert np.all(np.diff(t) > 0) and t[-1] < 10_000.0
    assert len(t) / 10_000.0 == pytest.approx(5.0, rel=0.03)


def test_poisson_zero_rate_and_zero_duration_are_empty() -> None:
    assert len(Poisson(0.0).times(10.0, rng())) == 0
    assert len(Poisson(10.0).times(0.0, rng())) == 0


def test_constant_is_exact() -> None:
    t = Constant(250.0).times(2.0, rng())
    np.testing.assert_allclose(t, np.arange(500) / 250.0)
    assert Constant(3.0).times(1.0, rng()).tolist() == [0.0, 1 / 3, 2 / 3]


def test_bursty_rate_converges_and_is_burstier_than_poisson() -> None:
    b = parse_arrivals("bursty", 100.0)
    assert isinstance(b, Bursty)
    assert b.mean_rate(1.0) == pytest.approx(100.0)
    assert b.rate_on == pytest.approx(300.0) and b.rate_off == pytest.approx(50.0)
    t = b.times(2000.0, rng(1))
    assert np.all(np.diff(t) >= 0) and t[-1] < 2000.0
    assert len(t) / 2000.0 == pytest.approx(100.0, rel=0.05)
    assert cv(t) > 1.2


def test_bursty_explicit_parameters_and_bad_on_factor() -> None:
    b = parse_arrivals("bursty:2:1:1", 50.0)
    assert (b.rate_on, b.rate_off) == pytest.approx((100.0, 0.0))
    with pytest.raises(ArrivalSpecError, match="on_factor must be in"):
        parse_arrivals("bursty:5:1:1", 50.0)
    with pytest.raises(ArrivalSpecError, match="mean on/off"):
        parse_arrivals("bursty:2:0:1", 50.0)


def test_diurnal_follows_its_curve() -> None:
    d = parse_arrivals("diurnal:60:0.5", 100.0)
    assert isinstance(d, Diurnal)
    t = d.times(600.0, rng(2))
    counts, edges = np.histogram(t, bins=120, range=(0.0, 600.0))
    mid = (edges[:-1] + edges[1:]) / 2
    assert np.corrcoef(counts, d.rate_at(mid))[0, 1] > 0.9
    assert len(t) / 600.0 == pytest.approx(100.0, rel=0.02)
    assert d.mean_rate(600.0) == pytest.approx(100.0)  # whole periods
    # a quarter period from phase 0 runs above the mean: exact integral
    assert d.mean_rate(15.0) == pytest.approx(100.0 * (1 + 0.5 * 2 / math.pi))


def test_parse_arrivals_errors_name_the_problem() -> None:
    with pytest.raises(ArrivalSpecError, match="unknown kind 'zipf'"):
        parse_arrivals("zipf", 1.0)
    with pytest.raises(ArrivalSpecError, match="takes 0 or 2"):
        parse_arrivals("diurnal:60", 1.0)
    with pytest.raises(ArrivalSpecError, match="must be numbers"):
        parse_arrivals("bursty:a:b:c", 1.0)
    with pytest.raises(ArrivalSpecError, match="no file"):
        parse_arrivals("trace:/nonexistent/x.csv", 1.0)
    with pytest.raises(ArrivalSpecError, match="rate must be"):
        parse_arrivals("poisson", -1.0)
    assert parse_arrivals(None, 7.0) == Poisson(7.0)
    assert parse_arrivals("constant", 7.0) == Constant(7.0)


# ---------------------------------------------------------------- traces


CLASSES = parse_classes("high:0.2:10:20ms,low:0.8:1:100ms")


def test_trace_round_trip_is_exact(tmp_path) -> None:
    wl = generate(Poisson(300.0), production(), CLASSES, 5.0, seed=4)
    path = tmp_path / "trace.csv"
    write_trace_csv(wl, path)
    back = generate(TraceReplay(str(path)), Fixed(1), CLASSES, 5.0, seed=99)
    assert back.classes == CLASSES
    np.testing.assert_array_equal(back.t_s, wl.t_s)
    np.testing.assert_array_equal(back.n_items, wl.n_items)
    np.testing.assert_array_equal(back.cls, wl.cls)


def test_trace_scaled_to_a_rate_and_cut_at_duration(tmp_path) -> None:
    wl = generate(Poisson(100.0), Fixed(3), (DEFAULT_CLASS,), 20.0, seed=5)
    path = tmp_path / "t.csv"
    write_trace_csv(wl, path)
    fast = parse_arrivals(f"trace:{path}", 200.0)
    assert isinstance(fast, TraceReplay)
    t = fast.times(10.0, rng())
    assert len(t) == len(wl)  # the whole trace, twice as fast, fits in 10 s
    np.testing.assert_allclose(t, wl.t_s * len(wl) / 20.0 / 200.0)
    assert TraceReplay(str(path)).mean_rate(10.0) == pytest.approx(np.sum(wl.t_s < 10.0) / 10.0)


def test_trace_classes_adopted_or_rejected(tmp_path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("time_s,size,class\n0.5,3,gold\n0.1,2,bronze\n0.2,4,gold\n")
    wl = generate(TraceReplay(str(path)), Fixed(1), (DEFAULT_CLASS,), 1.0)
    assert [c.name for c in wl.classes] == ["gold", "bronze"]
    assert wl.t_s.tolist() == [0.1, 0.2, 0.5]  # sorted, sizes and classes follow
    assert wl.n_items.tolist() == [2, 4, 3]
    assert wl.class_names().tolist() == ["bronze", "gold", "gold"]
    with pytest.raises(ArrivalSpecError, match="gold"):
        generate(TraceReplay(str(path)), Fixed(1), parse_classes("bronze:1"), 1.0)


def test_trace_bad_files(tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("when,size\n1,2\n")
    with pytest.raises(ArrivalSpecError, match="time_s"):
        TraceReplay(str(bad)).times(1.0, rng())
    bad.write_text("time_s,size\n0.1,0\n")
    with pytest.raises(ArrivalSpecError, match="sizes must be integers >= 1"):
        TraceReplay(str(bad)).times(1.0, rng())


# ---------------------------------------------------------------- sizes


def test_fixed_and_bad_fixed() -> None:
    assert Fixed(7).sample(5, rng()).tolist() == [7] * 5
    assert Fixed(7).median() == Fixed(7).mean() == 7.0
    with pytest.raises(SizeSpecError, match=r"\[1, 1000\]"):
        parse_sizes("fixed:2000")
    assert parse_sizes("fixed:2000", cap=4096) == Fixed(2000, 4096)


def test_normal_clipped_and_exact_moments() -> None:
    d = Normal(100.0, 10.0)
    x = d.sample(200_000, rng())
    assert x.dtype == np.int64 and x.min() >= 1 and x.max() <= 1000
    assert d.median() == 100.0 and d.mean() == pytest.approx(100.0, abs=1e-6)
    assert x.mean() == pytest.approx(d.mean(), abs=0.1)
    low = Normal(0.0, 5.0)
    y = low.sample(100_000, rng())
    assert y.min() == 1  # clipped up
    assert np.mean(y == 1) == pytest.approx(0.6179, abs=0.01)  # P(X < 1.5) = Phi(0.3)
    assert low.mean() == pytest.approx(y.mean(), abs=0.05)


def test_lognormal_median_and_cap() -> None:
    d = parse_sizes("lognormal:50:1.5", cap=300)
    assert d == LogNormal(50.0, 1.5, 300)
    x = d.sample(100_000, rng())
    assert x.max() == 300 and x.min() >= 1
    assert np.median(x) == d.median() == 50.0
    assert x.mean() == pytest.approx(d.mean(), rel=0.01)


def test_production_shape() -> None:
    d = production()
    x = d.sample(500_000, rng())
    assert x.min() >= 1 and x.max() <= 1000 and x.max() >= 950
    assert 10 <= d.median() <= 100 and np.median(x) == d.median()
    assert x.mean() == pytest.approx(d.mean(), rel=0.01)
    p25, p50, p75, p99 = np.percentile(x, [25, 50, 75, 99])
    # the lognormal with the same median and quartiles has a lighter tail
    sigma = math.log(p75 / p25) / (2 * 0.6744897501960817)
    ln = LogNormal(float(p50), sigma)
    assert p99 / p50 > 1.2 * ln.quantile(0.99) / ln.median()
    assert parse_sizes("") == parse_sizes("production") == d


def test_production_cap_clips() -> None:
    x = parse_sizes("production", cap=200).sample(100_000, rng())
    assert x.max() == 200


def test_percentile_file_parsing(tmp_path) -> None:
    f = tmp_path / "p.csv"
    f.write_text("# my sizes\npercentile,size\n0,1\n50,10 # median\n100,40\n")
    d = load_percentiles(f)
    assert d.points == ((0.0, 1), (50.0, 10), (100.0, 40))
    assert d.median() == 10.0 and d.spec == f"file:{f}"
    assert parse_sizes(f"file:{f}") == d
    x = d.sample(100_000, rng())
    assert x.min() == 1 and x.max() == 40
    assert np.mean(x <= 10) == pytest.approx(0.5 + 0.5 * 0.5 / 30, abs=0.01)
    # one column: a sample, DeepRecSys's --batch_dist_file format
    assert read_percentiles("5\n1\n9\n") == ((0.0, 1), (50.0, 5), (100.0, 9))


@pytest.mark.parametrize(
    "text, message",
    [
        ("10,1\n100,5\n", "start at percentile 0"),
        ("0,1\n90,5\n", "end at 100"),
        ("0,5\n50,3\n100,9\n", "sizes must not fall"),
        ("0,1\n50,1\n50,3\n100,9\n", "rise strictly"),
        ("0,1\n50,2.5\n100,9\n", "not an integer"),
        ("0,0\n100,9\n", "integers >= 1"),
        ("0,1\n50,x\n100,9\n", ":2: not numbers"),
        ("0,1,2\n100,9,3\n", "2 columns"),
        ("# nothing\n", "no data rows"),
    ],
)
def test_percentile_parsing_errors(text: str, message: str) -> None:
    with pytest.raises(SizeSpecError, match=message):
        read_percentiles(text, "f.csv")


def test_parse_sizes_errors() -> None:
    with pytest.raises(SizeSpecError, match="unknown kind 'pareto'"):
        parse_sizes("pareto:1")
    with pytest.raises(SizeSpecError, match="takes 2"):
        parse_sizes("normal:10")
    with pytest.raises(SizeSpecError, match="no such file|No such file"):
        parse_sizes("file:/nonexistent/sizes.csv")
    with pytest.raises(SizeSpecError, match="must be numbers"):
        parse_sizes("fixed:ten")
    assert parse_sizes("normal:100:10") == Normal(100.0, 10.0)


def test_percentiles_atoms() -> None:
    d = Percentiles(((0.0, 8), (40.0, 8), (100.0, 20)))
    x = d.sample(100_000, rng())
    assert np.mean(x == 8) == pytest.approx(0.4 + 0.6 * 0.5 / 12, abs=0.01)
    assert d.median() == 10.0 and np.median(x) == 10.0  # 8 + (50 - 40) / 60 * 12


# ---------------------------------------------------------------- classes


def test_parse_classes_good() -> None:
    hi, lo = parse_classes("high:0.2:10:20ms,low:0.8:1:0.1s@p99")
    assert hi == PriorityClass("high", 0.2, 10.0, 20.0, 95.0)
    assert lo == PriorityClass("low", 0.8, 1.0, 100.0, 99.0)
    assert parse_classes(None) == parse_classes("") == (DEFAULT_CLASS,)
    a, b = parse_classes("a:0.3,b:0.695")  # within 1%: normalised exactly
    assert a.sla_ms is None and a.value == 1.0
    assert a.share + b.share == pytest.approx(1.0, abs=1e-15)
    assert parse_classes(format_classes((hi, lo))) == (hi, lo)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("high:0.2:10:20ms,low:0.7:1", "shares sum to 0.9"),
        ("high:-0.2,low:1.2", "class 'high:-0.2': share must be finite and >= 0"),
        ("high:x:1", "share 'x' is not a number"),
        ("high:1:ten", "value 'ten' is not a number"),
        ("high:1:1:20", "SLA '20'"),
        ("high:1:1:20min", "SLA '20min'"),
        ("high:1:1:20ms@p100", "percentile must be in"),
        ("high:1:1:20ms@pxx", "percentile 'xx'"),
        ("high", "expected NAME:SHARE"),
        ("high:0.5:1:2ms:9,low:0.5", "got 5 fields"),
        ("a b:1", "name 'a b'"),
        ("a:0.5,a:0.5", "duplicate name"),
    ],
)
def test_parse_classes_bad(spec: str, message: str) -> None:
    with pytest.raises(ClassSpecError, match=message.replace("(", r"\(")):
        parse_classes(spec)


def test_assign_classes_follows_shares() -> None:
    cls3 = parse_classes("a:0.1,b:0,c:0.9")
    idx = assign_classes(100_000, cls3, rng())
    assert idx.dtype == np.int64 and set(np.unique(idx)) == {0, 2}
    assert np.mean(idx == 0) == pytest.approx(0.1, abs=0.005)
    assert assign_classes(5, (DEFAULT_CLASS,), rng()).tolist() == [0] * 5


# ---------------------------------------------------------------- generation


def test_generation_is_deterministic_with_independent_streams() -> None:
    a = generate(Poisson(500.0), production(), CLASSES, 4.0, seed=11)
    b = generate(Poisson(500.0), production(), CLASSES, 4.0, seed=11)
    for col in ("t_s", "n_items", "cls"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    other_sizes = generate(Poisson(500.0), Normal(50.0, 5.0), CLASSES, 4.0, seed=11)
    np.testing.assert_array_equal(other_sizes.t_s, a.t_s)
    np.testing.assert_array_equal(other_sizes.cls, a.cls)
    other_classes = generate(Poisson(500.0), production(), parse_classes("x:0.5,y:0.5"), 4.0, 11)
    np.testing.assert_array_equal(other_classes.n_items, a.n_items)
    c = generate(Poisson(500.0), production(), CLASSES, 4.0, seed=12)
    assert len(c) != len(a) or not np.array_equal(c.t_s, a.t_s)


def test_workload_views_and_queries() -> None:
    wl = generate(Constant(10.0), Fixed(5), CLASSES, 1.0, seed=0)
    assert len(wl) == 10 and wl.offered_qps == 10.0
    arrivals = list(wl)
    assert arrivals[3] == wl[3] and arrivals[3].t_s == pytest.approx(0.3)
    q = wl.query(3, "rmc1", sla_ms=50.0, t0_s=100.0)
    c = CLASSES[int(wl.cls[3])]
    assert q.qid == 3 and q.model == "rmc1" and q.n_items == 5 and q.cls == c.name
    assert q.arrival_s == pytest.approx(100.3)
    assert q.deadline_s == pytest.approx(100.3 + c.sla_ms / 1000.0)
    plain = generate(Constant(10.0), Fixed(5), (DEFAULT_CLASS,), 1.0)
    assert plain.query(0, "m", sla_ms=None).deadline_s == math.inf
    assert plain.query(0, "m", sla_ms=50.0).deadline_s == pytest.approx(0.05)


def test_workload_checks_its_invariants() -> None:
    with pytest.raises(AssertionError, match="sorted"):
        Workload(np.array([1.0, 0.5]), np.array([1, 1]), np.array([0, 0]))
    with pytest.raises(AssertionError, match="at least one item"):
        Workload(np.array([0.0]), np.array([0]), np.array([0]))
