"""Priority maths: value credit, slack, aging, the time-invariant key, the starvation bound."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsched.sched import priority as prio

W = prio.Weights()


def test_credit_is_zero_at_value_one_grows_with_value_and_is_capped():
    assert prio.credit(1.0, 0.05, W) == 0.0
    assert prio.credit(10.0, 0.05, W) == pytest.approx(math.log(10) * 0.05)
    assert prio.credit(10.0, 0.05, W) > prio.credit(2.0, 0.05, W) > 0 > prio.credit(0.5, 0.05, W)
    assert prio.credit(1e300, 10.0, W) == W.max_credit_s
    assert prio.credit(0.0, 10.0, W) == -W.max_credit_s


def test_priority_grows_as_slack_shrinks_and_with_value():
    base = prio.batch_priority(1.0, 0.0, 0.05, 0.001, 0.0, W)
    tighter = prio.batch_priority(1.0, 0.0, 0.02, 0.001, 0.0, W)
    longer_path = prio.batch_priority(1.0, 0.0, 0.05, 0.010, 0.0, W)
    valuable = prio.batch_priority(10.0, 0.0, 0.05, 0.001, 0.0, W)
    assert tighter > base and longer_path > base and valuable > base
    assert prio.slack(0.05, 0.01, 0.001) == pytest.approx(0.039)


def test_aging_raises_priority_with_time_waited():
    no_age = prio.Weights(age=0.0)
    a = prio.batch_priority(1.0, 0.0, 0.05, 0.0, 0.1, W)
    b = prio.batch_priority(1.0, 0.0, 0.05, 0.0, 0.1, no_age)
    assert a - b == pytest.approx(W.age * 0.1)


def test_no_deadline_uses_the_default_window_and_late_batches_clamp():
    assert prio.effective_deadline(1.0, math.inf, W) == 1.0 + W.default_window_s
    assert prio.window(1.0, math.inf, W) == W.default_window_s
    assert prio.effective_deadline(1.0, 0.5, W) == 1.0  # made after its deadline
    assert prio.window(1.0, 0.5, W) == W.default_window_s


def test_rank_adds_to_the_operator_priority():
    assert prio.op_priority(1.0, 0.5, prio.Weights(rank=2.0)) == 2.0


def test_weights_must_let_priority_rise_with_time():
    with pytest.raises(AssertionError):
        prio.Weights(slack=0.0, age=0.0)
    with pytest.raises(AssertionError):
        prio.Weights(value=-1.0)


times = st.floats(0.0, 10.0)
values = st.floats(0.01, 100.0)
windows = st.one_of(st.floats(0.0, 0.5), st.just(math.inf))
rems = st.floats(0.0, 0.05)
weights = st.builds(
    prio.Weights,
    value=st.floats(0.0, 3.0),
    slack=st.floats(0.0, 2.0),
    age=st.floats(0.01, 2.0),
    max_credit_s=st.floats(0.0, 2.0),
)


@settings(max_examples=200, deadline=None)
@given(values, times, windows, rems, times, weights)
def test_static_key_orders_like_the_priority_at_any_time(v, t0, win, rem, dt, w):
    """priority(now) == static_key + rate * now: the order of batches never changes with now."""
    p = prio.batch_priority(v, t0, t0 + win, rem, t0 + dt, w)
    k = prio.static_key(v, t0, t0 + win, rem, w)
    assert p == pytest.approx(k + w.rate * (t0 + dt), abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(values, values, times, st.floats(0.0, 5.0), windows, windows, rems, rems, weights)
def test_starvation_bound(va, vb, ta, gap, wa, wb, ra, rb, w):
    """Whatever the values, a batch outranks every batch created past the bound after it."""
    wins = [x for x in (wa, wb) if math.isfinite(x)]
    bound = prio.starvation_bound_s(max(wins, default=0.0), 0.05, w)
    tb = ta + bound + 1e-6 + gap
    ka = prio.static_key(va, ta, ta + wa, ra, w)
    kb = prio.static_key(vb, tb, tb + wb, rb, w)
    assert ka > kb - 1e-9
