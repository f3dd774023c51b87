"""Property tests: spec strings round-trip, and every generated workload is well formed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsched.types import PriorityClass
from recsched.workload import (
    Bursty,
    Constant,
    Diurnal,
    Fixed,
    LogNormal,
    Normal,
    Percentiles,
    Poisson,
    format_classes,
    generate,
    parse_arrivals,
    parse_classes,
    parse_sizes,
    production,
)

names = st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True)
finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


@st.composite
def class_tuples(draw) -> tuple[PriorityClass, ...]:
    ns = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    w = np.array(draw(st.lists(st.integers(0, 100), min_size=len(ns), max_size=len(ns))), float)
    if w.sum() == 0:
        w[0] = 1.0
    shares = w / w.sum()
    out = []
    for name, share in zip(ns, shares, strict=True):
        sla = draw(st.none() | st.floats(0.01, 1e5, allow_nan=False))
        pct = draw(st.sampled_from([95.0, 99.0, 50.0, 99.9]))
        out.append(PriorityClass(name, float(share), draw(finite), sla, pct if sla else 95.0))
    return tuple(out)


@settings(max_examples=150, deadline=None)
@given(class_tuples())
def test_class_specs_round_trip(classes: tuple[PriorityClass, ...]) -> None:
    back = parse_classes(format_classes(classes))
    assert [c.name for c in back] == [c.name for c in classes]
    for a, b in zip(back, classes, strict=True):
        assert a.share == pytest.approx(b.share, abs=1e-12)
        assert (a.value, a.sla_ms, a.percentile) == (b.value, b.sla_ms, b.percentile)
    assert sum(c.share for c in back) == pytest.approx(1.0, abs=1e-12)


caps = st.integers(1, 5000)
size_dists = st.one_of(
    caps.flatmap(lambda c: st.builds(Fixed, st.integers(1, c), st.just(c))),
    st.builds(Normal, st.floats(-100, 2000), st.floats(0, 500), caps),
    st.builds(LogNormal, st.floats(0.5, 2000), st.floats(0, 3), caps),
    caps.map(production),
)


@settings(max_examples=100, deadline=None)
@given(size_dists)
def test_size_specs_round_trip(d) -> None:
    assert parse_sizes(d.spec, cap=d.cap) == d


arrival_procs = st.one_of(
    st.builds(Poisson, st.floats(0, 2000)),
    st.builds(Constant, st.floats(0, 2000)),
    st.builds(Diurnal, st.floats(0, 2000), st.floats(0.1, 100), st.floats(0, 1)),
    st.tuples(st.floats(0.1, 2000), st.floats(0.01, 5), st.floats(0.01, 5), st.floats(0, 1)).map(
        lambda a: Bursty.from_mean(a[0], 1 + a[3] * a[2] / a[1], a[1], a[2])
    ),
)


@settings(max_examples=100, deadline=None)
@given(arrival_procs)
def test_arrival_specs_round_trip(a) -> None:
    back = parse_arrivals(a.spec, a.rate if isinstance(a, Diurnal) else a.mean_rate(1.0))
    assert type(back) is type(a)
    for f in a.__dataclass_fields__:
        assert getattr(back, f) == pytest.approx(getattr(a, f), rel=1e-9, abs=1e-9)


@st.composite
def percentile_dists(draw) -> Percentiles:
    k = draw(st.integers(0, 6))
    inner = sorted(set(draw(st.lists(st.floats(0.01, 99.99), min_size=k, max_size=k))))
    pct = [0.0, *inner, 100.0]
    sizes = sorted(draw(st.lists(st.integers(1, 3000), min_size=len(pct), max_size=len(pct))))
    return Percentiles(tuple(zip(pct, sizes, strict=True)), cap=draw(caps))


@settings(max_examples=100, deadline=None)
@given(percentile_dists(), st.integers(0, 2**32 - 1))
def test_percentile_samples_stay_in_range(d: Percentiles, seed: int) -> None:
    x = d.sample(500, np.random.default_rng(seed))
    lo, hi = d.points[0][1], d.points[-1][1]
    assert x.dtype == np.int64
    assert np.all(x >= min(lo, d.cap)) and np.all(x <= min(hi, d.cap))
    assert min(lo, d.cap) <= d.median() <= min(hi, d.cap)
    assert min(lo, d.cap) <= d.mean() <= min(hi, d.cap)


@settings(max_examples=60, deadline=None)
@given(
    arrival_procs.filter(lambda a: a.mean_rate(1.0) < 1000),
    size_dists,
    class_tuples(),
    st.floats(0.0, 5.0),
    st.integers(0, 2**63 - 1),
)
def test_generated_workloads_are_well_formed(a, sizes, classes, duration, seed) -> None:
    wl = generate(a, sizes, classes, duration, seed)
    assert np.all(np.diff(wl.t_s) >= 0)
    assert len(wl) == 0 or (wl.t_s[0] >= 0 and wl.t_s[-1] < duration)
    assert np.all((wl.n_items >= 1) & (wl.n_items <= sizes.cap))
    assert np.all((wl.cls >= 0) & (wl.cls < len(classes)))
    positive = [i for i, c in enumerate(classes) if c.share > 0]
    assert set(np.unique(wl.cls)) <= set(positive)
    again = generate(a, sizes, classes, duration, seed)
    assert np.array_equal(again.t_s, wl.t_s) and np.array_equal(again.n_items, wl.n_items)
