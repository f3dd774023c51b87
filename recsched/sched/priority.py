"""Priority maths for operator scheduling: commercial value, slack and aging, in seconds.

Pure functions of numbers (habit 5 of DESIGN.md); `recsched.sched.opstream` holds the state.

A batch's priority at time `now` is measured in seconds of urgency:

    priority = credit(value) - w_slack * slack + w_age * (now - created)
    slack    = deadline - now - remaining critical path
    credit   = w_value * ln(value) * horizon          (clamped to +-max_credit_s)

so it grows with the value, grows as the slack shrinks, and grows with the time waited.
`horizon` is the batch's own deadline window (`deadline - created`, or `default_window_s`
when the batch has no deadline): a value of 10 is worth ln(10) = 2.3 deadline windows of
head start over a value of 1. An operator's priority is its batch's plus `w_rank` times its
upward rank (the longest predicted path from it to the output).

Every batch's priority rises with `now` at the same rate `w_slack + w_age`, so the *order*
of batches only changes when a batch's remaining critical path changes: `static_key` is the
priority minus that common term, and a heap keyed on it stays valid between events.

Aging bounds starvation: since credits are bounded by C, windows by W and remaining paths by
R, a batch created at t outranks every batch created after t + `starvation_bound_s(...)`,
so it waits at most for the work that arrived within that bound after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Weights:
    """Weights of the priority terms; all are seconds or seconds per second."""

    value: float = 1.0
    slack: float = 1.0
    age: float = 0.25
    rank: float = 1.0
    default_window_s: float = 0.05
    max_credit_s: float = 1.0

    def __post_init__(self) -> None:
        assert self.value >= 0 and self.slack >= 0 and self.age >= 0 and self.rank >= 0
        assert self.slack + self.age > 0, "priority must rise with time, or work can starve"
        assert self.default_window_s > 0 and self.max_credit_s >= 0

    @property
    def rate(self) -> float:
        """How fast every batch's priority rises with time (1/s)."""
        return self.slack + self.age


def window(created_s: float, deadline_s: float, w: Weights) -> float:
    """The batch's deadline window in seconds (the default when it has no deadline)."""
    if math.isfinite(deadline_s) and deadline_s > created_s:
        return deadline_s - created_s
    return w.default_window_s


def effective_deadline(created_s: float, deadline_s: float, w: Weights) -> float:
    """The deadline (at least `created`), or `created + default_window_s` without one.

    Clamping at `created` keeps windows in `[0, W]`, which the starvation bound needs; a
    batch made after its deadline is as urgent as one due at its creation.
    """
    if not math.isfinite(deadline_s):
        return created_s + w.default_window_s
    return max(deadline_s, created_s)


def credit(value: float, horizon_s: float, w: Weights) -> float:
    """Head start (seconds) that a batch's commercial value buys; 0 for value 1."""
    c = w.value * math.log(max(value, 1e-9)) * horizon_s
    return max(-w.max_credit_s, min(w.max_credit_s, c))


def slack(deadline_s: float, now: float, remaining_s: float) -> float:
    """Seconds to spare if the remaining critical path started now (negative: late)."""
    return deadline_s - now - remaining_s


def batch_priority(
    value: float,
    created_s: float,
    deadline_s: float,
    remaining_s: float,
    now: float,
    w: Weights,
) -> float:
    """A batch's priority at `now` (seconds of urgency; larger runs first)."""
    dl = effective_deadline(created_s, deadline_s, w)
    c = credit(value, window(created_s, deadline_s, w), w)
    return c - w.slack * slack(dl, now, remaining_s) + w.age * (now - created_s)


def static_key(
    value: float, created_s: float, deadline_s: float, remaining_s: float, w: Weights
) -> float:
    """`batch_priority(...) - w.rate * now`: the time-invariant part that orders batches."""
    dl = effective_deadline(created_s, deadline_s, w)
    c = credit(value, window(created_s, deadline_s, w), w)
    return c - w.slack * (dl - remaining_s) - w.age * created_s


def op_priority(batch_key: float, rank_s: float, w: Weights) -> float:
    """An operator's priority: its batch's, plus its upward rank."""
    return batch_key + w.rank * rank_s


def starvation_bound_s(max_window_s: float, max_remaining_s: float, w: Weights) -> float:
    """A batch outranks every batch created more than this many seconds after it.

    From `static_key`: the difference of two batches' keys is at least
    `rate * (t_b - t_a) - 2 C - w_slack * (W + R)`; it is positive past this bound.
    """
    c = w.max_credit_s if w.value > 0 else 0.0
    win = max(max_window_s, w.default_window_s)
    return (2 * c + w.slack * (win + max_remaining_s)) / w.rate
