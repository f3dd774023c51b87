"""Online retuning: watch the served traffic and switch configuration when the load changes.

Pure, with times passed in: the engine (or simulator, or a test) calls
`observe(now, latency_s, n_items)` per completed query and `decide(now)` now and then, and
applies the configuration `decide` returns (None: keep the current one).

What it watches, over a sliding *time* window (DeepRecSys took p95 over the last 64 queries,
which is noise at high load and stale at low load):
- the arrival rate (completions per second in the window: under overload this lags the
  offered rate, but then the tail breaks the SLA too) and the query-size mix (median and p90
  items): together the *regime*, classified against a `RegimeTable` of configurations tuned
  offline per (load level, size level);
- the tail latency of the window's queries that arrived after the last switch (a config is
  judged on its own queries only): a tail above the SLA by `breach_margin` for
  `breach_sustain_s` triggers a local hill-climb step (`LocalStepper`), kept if the tail
  improved (or met the SLA) and reverted otherwise; the next step then goes the other way
  (both directions), then to the next knob. Under a backlog (a tail over `backlog_x` x the
  SLA) the queries judged after a step still wait behind the work queued before it, so the
  latency trend of the completions under the config in force decides instead: falling, the
  step is kept, and no further step is taken while the backlog drains.

Against flapping: hysteresis on the regime edges, a regime must hold for `confirm_s` before
it counts, and a minimum dwell time after every switch. Every branch of `decide` has a name
(`REASONS`, the latest in `last_reason`) and each is reached by tests/unit/test_retune.py
(DeepRecSys' rate controller tested `latency > target` and then `latency >= target`, so its
second branch fired only on exact equality).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsched.config import EngineConfig
from recsched.sched.request import serving_form
from recsched.sched.tuner import TuningSpace

REASONS = (
    "warmup",  # too few queries in the window to judge
    "dwell",  # switched too recently
    "regime_pending",  # a new regime is seen but has not held for confirm_s yet
    "regime",  # a new regime held: switch to its tuned configuration
    "regime_same",  # a new regime held, but its configuration is the current one
    "probe_wait",  # a local step is on trial: too few queries since the switch
    "probe_keep",  # the local step improved the tail (or met the SLA): keep it
    "probe_drain",  # under a backlog, the tail lags but the backlog drains: keep the step
    "probe_revert",  # the local step did not help: go back
    "breach_wait",  # tail over the SLA, not for long enough yet
    "drain_wait",  # tail over the SLA from a backlog that is draining: no step meanwhile
    "breach_step",  # tail over the SLA for breach_sustain_s: take a local step
    "breach_exhausted",  # tail over the SLA, but no local step is left to try
    "steady",  # nothing to do
)
SWITCHES = ("regime", "probe_revert", "breach_step")


@dataclass(frozen=True)
class WindowStats:
    """What the retuner sees at one time: rate, sizes over the window; tail since the switch."""

    n: int
    rate_qps: float
    median_items: float
    p90_items: float
    n_since_switch: int  # queries in the window that arrived after the last switch
    p_tail_ms: float  # their tail latency (nan if none)
    # how the latency of the queries completed since the last switch moves with time (s per
    # s, least squares): below 0 a backlog drains; nan with fewer than four of them, or when
    # no backlog is in sight (a tail, or a step's, over `backlog_x` x the SLA)
    trend: float = math.nan
    trend_se: float = math.nan  # its standard error
    trend_span_s: float = 0.0  # the time those completions span
    max_items: float = math.nan  # the largest query in the window


def level(value: float, edges: Sequence[float], current: int | None, hysteresis: float) -> int:
    """The level (0..len(edges)) of `value` against ascending `edges`, with hysteresis.

    Moving up from `current` needs value >= edge * (1 + h); moving down needs
    value * (1 + h) < edge. Without a current level it is the plain bisection.
    """
    raw = bisect.bisect_right(edges, value)
    if current is None or raw == current:
        return raw
    if raw > current:
        return max(current, bisect.bisect_right(edges, value / (1 + hysteresis)))
    return min(current, bisect.bisect_right(edges, value * (1 + hysteresis)))


@dataclass(frozen=True)
class RegimeTable:
    """Configurations tuned offline, keyed by (load level, size level).

    load_edges: ascending arrival rates (qps) between load levels. size_edges: ascending
    query sizes (items; the retuner's `size_stat`, median by default) between size levels.
    A missing key falls back to the nearest filled one (ties: the higher load level, the
    safer side).
    """

    load_edges: tuple[float, ...]
    size_edges: tuple[float, ...]
    configs: Mapping[tuple[int, int], EngineConfig]

    def __post_init__(self) -> None:
        assert list(self.load_edges) == sorted(self.load_edges)
        assert list(self.size_edges) == sorted(self.size_edges)
        assert self.configs, "an empty regime table"

    def classify(
        self,
        rate_qps: float,
        median_items: float,
        current: tuple[int, int] | None = None,
        hysteresis: float = 0.0,
    ) -> tuple[int, int]:
        cl, cs = current if current is not None else (None, None)
        return (
            level(rate_qps, self.load_edges, cl, hysteresis),
            level(median_items, self.size_edges, cs, hysteresis),
        )

    def lookup(self, regime: tuple[int, int]) -> EngineConfig:
        if regime in self.configs:
            return self.configs[regime]
        key = min(
            self.configs,
            key=lambda k: (abs(k[0] - regime[0]) + abs(k[1] - regime[1]), -k[0], k[1]),
        )
        return self.configs[key]

    def to_json(self) -> dict[str, Any]:
        return {
            "load_edges": list(self.load_edges),
            "size_edges": list(self.size_edges),
            "configs": [
                {"load": k[0], "size": k[1], "config": c.to_dict()} for k, c in self.configs.items()
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RegimeTable:
        return cls(
            tuple(data["load_edges"]),
            tuple(data["size_edges"]),
            {(e["load"], e["size"]): EngineConfig(**e["config"]) for e in data["configs"]},
        )


def same_batches(old: EngineConfig, new: EngineConfig, max_items: float) -> bool:
    """Whether `new` cuts and merges queries of at most `max_items` items exactly as `old`
    does, so a step between them changes nothing for them (`request.serving_form`: `whole`
    reads neither knob; `split` never waits on its merge delay and cuts no query within the
    smaller batch size; `dynamic` merges up to B with its delay, so any change counts)."""
    return serving_form(old, max_items) == serving_form(new, max_items)


class LocalStepper:
    """Online hill climbing, one neighbour at a time, over a space's knobs.

    `propose(config)` gives the neighbour one index away along the current knob in the current
    direction (+1 first; -1 after a rejection); `reject()` turns to the other direction, then
    to the next knob; `accept()` keeps going the same way; `reset()` starts over. A `skip`
    predicate passes over moves that would change nothing now without spending them.
    """

    def __init__(self, space: TuningSpace, knobs: Sequence[str] | None = None) -> None:
        names = [k.name for k in space.knobs]
        self.space = space
        self.order = [names.index(n) for n in (knobs if knobs is not None else names)]
        self.reset()

    def reset(self) -> None:
        self._spent: set[int] = set()  # moves rejected or blocked since the reset
        self._kept: set[tuple[int, int]] = set()  # moves accepted since the reset
        self._offer: int | None = None  # the move last proposed

    def _moves(self) -> list[tuple[int, int]]:
        return [(ki, d) for ki in self.order for d in (+1, -1)]

    def propose(
        self,
        config: EngineConfig,
        skip: Callable[[EngineConfig, EngineConfig], bool] | None = None,
    ) -> EngineConfig | None:
        """The next neighbour to try, or None when every move has been tried, is blocked or
        (by `skip(config, neighbour)`) would change nothing now."""
        key = self.space.key(config)
        for m, (ki, d) in enumerate(self._moves()):
            if m in self._spent:
                continue
            if (ki, -d) in self._kept:  # it would undo a step that helped
                self._spent.add(m)
                continue
            knob = self.space.knobs[ki]
            i = knob.index_of(key[ki]) + d
            if 0 <= i < len(knob.values):
                cand = key[:ki] + (knob.values[i],) + key[ki + 1 :]
                if self.space.feasible(config, cand):
                    step = self.space.apply(config, cand)
                    if skip is not None and skip(config, step):
                        continue  # a no-op for now, not spent: it may matter later
                    self._offer = m
                    return step
            self._spent.add(m)  # blocked: this move is spent
        self._offer = None
        return None

    def accept(self) -> None:
        """The last step helped: the next one goes the same way (never back)."""
        if self._offer is not None:
            self._kept.add(self._moves()[self._offer])

    def reject(self) -> None:
        """The last step did not help: next time, the next move (other direction/next knob)."""
        if self._offer is not None:
            self._spent.add(self._offer)
            self._offer = None

    @property
    def exhausted(self) -> bool:
        return len(self._spent) >= len(self._moves())


@dataclass
class _Probe:
    previous: EngineConfig
    before_ms: float
    before_trend: float = math.nan  # the latency trend under the previous config


@dataclass
class _Obs:
    t: deque[float] = field(default_factory=deque)
    lat: deque[float] = field(default_factory=deque)
    items: deque[int] = field(default_factory=deque)


class OnlineRetuner:
    """Decides, from completed queries, when to switch configuration and to which.

    `warmup_s` / `min_dwell_s` default to half the window: the first decision waits for that
    much traffic, and after a switch the next one waits that long. `size_stat` picks the size
    statistic the table's size edges are in: `median_items` (default) or `p90_items`.

    Needs a `table` (regime switching), a `stepper` (local steps on SLA breaches), or both.
    Times are seconds on the caller's clock; latencies are seconds; sla_ms is milliseconds.
    """

    def __init__(
        self,
        initial: EngineConfig,
        sla_ms: float,
        *,
        table: RegimeTable | None = None,
        stepper: LocalStepper | None = None,
        window_s: float = 10.0,
        percentile: float = 95.0,
        min_samples: int = 50,
        min_dwell_s: float | None = None,
        warmup_s: float | None = None,
        confirm_s: float = 1.0,
        hysteresis: float = 0.15,
        breach_margin: float = 0.10,
        breach_sustain_s: float = 2.0,
        probe_tol: float = 0.05,
        size_stat: str = "median_items",
        backlog_x: float = 2.0,
        drain_frac: float = 0.25,
        drain_rate: float = 0.01,
    ) -> None:
        assert table is not None or stepper is not None, "give a regime table or a stepper"
        assert size_stat in ("median_items", "p90_items")
        assert window_s > 0 and sla_ms > 0 and 0 < percentile < 100 and min_samples >= 1
        self.config = initial
        self.sla_ms = sla_ms
        self.table = table
        self.stepper = stepper
        self.window_s = window_s
        self.percentile = percentile
        self.min_samples = min_samples
        self.min_dwell_s = window_s / 2 if min_dwell_s is None else min_dwell_s
        self.warmup_s = window_s / 2 if warmup_s is None else warmup_s
        self.confirm_s = confirm_s
        self.hysteresis = hysteresis
        self.breach_margin = breach_margin
        self.breach_sustain_s = breach_sustain_s
        self.probe_tol = probe_tol
        self.backlog_x = backlog_x
        self.drain_frac = drain_frac
        self.drain_rate = drain_rate
        self.size_stat = size_stat
        self.regime: tuple[int, int] | None = None
        self.last_reason: str | None = None
        self.switches: list[tuple[float, str, EngineConfig]] = []
        self._obs = _Obs()
        self._first_t: float | None = None
        self._last_t = -math.inf
        self._switch_t: float | None = None
        self._pending: tuple[tuple[int, int], float] | None = None
        self._breach_since: float | None = None
        self._probe: _Probe | None = None

    # -- inputs ---------------------------------------------------------------------------

    def observe(self, now: float, latency_s: float, n_items: int) -> None:
        """One completed query at time `now` (completions arrive in time order)."""
        assert now >= self._last_t, "observations must come in time order"
        assert latency_s >= 0 and n_items >= 1
        self._last_t = now
        if self._first_t is None:
            self._first_t = now
        self._obs.t.append(now)
        self._obs.lat.append(latency_s)
        self._obs.items.append(n_items)

    def stats(self, now: float) -> WindowStats:
        """Window statistics at `now` (drops observations older than the window)."""
        o = self._obs
        while o.t and o.t[0] <= now - self.window_s:
            o.t.popleft()
            o.lat.popleft()
            o.items.popleft()
        n = len(o.t)
        if n == 0:
            return WindowStats(0, 0.0, math.nan, math.nan, 0, math.nan)
        span = min(self.window_s, now - (self._first_t if self._first_t is not None else now))
        items = np.fromiter(o.items, dtype=float, count=n)
        lat = np.fromiter(o.lat, dtype=float, count=n)
        t = np.fromiter(o.t, dtype=float, count=n)  # completion times, in order
        mine = lat  # judge a config on queries that arrived under it
        if self._switch_t is not None:
            mine = lat[t - lat >= self._switch_t]
        tail = float(np.percentile(mine, self.percentile)) * 1e3 if mine.size else math.nan
        trend, trend_se, trend_span = math.nan, math.nan, 0.0
        backlog = self.backlog_x * self.sla_ms  # the trend is read only around a backlog
        if tail > backlog or (self._probe is not None and self._probe.before_ms > backlog):
            since = (
                0 if self._switch_t is None else int(np.searchsorted(t, self._switch_t, "right"))
            )
            if n - since >= 4 and t[-1] > t[since]:  # completed under the config in force
                coef, cov = np.polyfit(t[since:] - t[since], lat[since:], 1, cov=True)
                trend, trend_se = float(coef[0]), float(math.sqrt(max(cov[0, 0], 0.0)))
                trend_span = float(t[-1] - t[since])
        return WindowStats(
            n=n,
            rate_qps=n / span if span > 0 else 0.0,
            median_items=float(np.median(items)),
            p90_items=float(np.percentile(items, 90)),
            max_items=float(items.max()),
            n_since_switch=int(mine.size),
            p_tail_ms=tail,
            trend=trend,
            trend_se=trend_se,
            trend_span_s=trend_span,
        )

    # -- decision -------------------------------------------------------------------------

    def decide(self, now: float) -> EngineConfig | None:
        """A configuration to switch to now, or None. The branch taken is `last_reason`."""
        reason, new = self._decide(now, self.stats(now))
        assert reason in REASONS
        self.last_reason = reason
        if new is not None:
            assert reason in SWITCHES and new != self.config
            self.config = new
            self._switch_t = now
            self._breach_since = None
            self.switches.append((now, reason, new))
        return new

    def _decide(self, now: float, s: WindowStats) -> tuple[str, EngineConfig | None]:
        seen_s = now - (self._first_t if self._first_t is not None else now)
        if s.n < self.min_samples or seen_s < self.warmup_s:
            return "warmup", None
        if self._switch_t is not None and now - self._switch_t < self.min_dwell_s:
            return "dwell", None
        if self.table is not None:
            out = self._regime(now, s)
            if out is not None:
                return out
        if self._probe is not None:
            return self._judge_probe(s)
        return self._breach(now, s)

    def _regime(self, now: float, s: WindowStats) -> tuple[str, EngineConfig | None] | None:
        assert self.table is not None
        size = getattr(s, self.size_stat)
        seen = self.table.classify(s.rate_qps, size, self.regime, self.hysteresis)
        if seen == self.regime:
            self._pending = None
            return None
        if self._pending is None or self._pending[0] != seen:
            self._pending = (seen, now)
        if self.regime is not None and now - self._pending[1] < self.confirm_s:
            return "regime_pending", None
        self.regime, self._pending, self._probe = seen, None, None
        if self.stepper is not None:
            self.stepper.reset()
        target = self.table.lookup(seen)
        if target == self.config:
            return "regime_same", None
        return "regime", target

    def _judge_probe(self, s: WindowStats) -> tuple[str, EngineConfig | None]:
        probe, stepper = self._probe, self.stepper
        assert probe is not None and stepper is not None
        if s.n_since_switch < self.min_samples:
            return "probe_wait", None
        self._probe = None
        if s.p_tail_ms <= probe.before_ms * (1 - self.probe_tol) or s.p_tail_ms <= self.sla_ms:
            stepper.accept()
            return "probe_keep", None
        backlog = probe.before_ms > self.backlog_x * self.sla_ms
        drop_ms = self.drain_frac * probe.before_ms
        if backlog and (self._draining(s, drop_ms) or self._slower_growth(s, probe)):
            stepper.accept()
            return "probe_drain", None
        stepper.reject()
        return "probe_revert", probe.previous

    def _largest_since(self, t0: float, default: float) -> float:
        """The largest query completed since `t0` (the breach's start: the queries a step is
        for, not those of a size mix the window still holds from before), else `default`."""
        largest = 0
        for t, n in zip(reversed(self._obs.t), reversed(self._obs.items), strict=True):
            if t < t0:
                break
            largest = max(largest, n)
        return float(largest) if largest else default

    def _draining(self, s: WindowStats, drop_ms: float = 0.0) -> bool:
        """Whether the completions under the config in force show a backlog going down: their
        latency falls beyond its noise (3 standard errors of the slope), by at least
        `drain_rate` (seconds of latency per second: a backlog worth the name; warming caches or
        a drifting machine move latencies far slower) and by `drop_ms` over the time they
        span. The queries judged after a step wait behind the work queued before it, so under
        a backlog their tail lags what the step did; this is what the config does now."""
        if math.isnan(s.trend) or s.trend > -max(3.0 * s.trend_se, self.drain_rate):
            return False
        return -s.trend * s.trend_span_s * 1e3 >= drop_ms

    def _slower_growth(self, s: WindowStats, probe: _Probe) -> bool:
        """Whether a backlog that grew under the previous config grows markedly slower under
        this one (by `drain_frac` of its growth, at least `drain_rate`, beyond 3 standard
        errors): it serves faster, though not yet faster than the queries arrive."""
        before, after = probe.before_trend, s.trend
        if math.isnan(before) or math.isnan(after) or before <= 0:
            return False
        cut = before - after
        return cut >= max(self.drain_frac * before, self.drain_rate, 3.0 * s.trend_se)

    def _breach(self, now: float, s: WindowStats) -> tuple[str, EngineConfig | None]:
        over = s.n_since_switch >= self.min_samples and s.p_tail_ms > self.sla_ms * (
            1 + self.breach_margin
        )
        if not over:
            self._breach_since = None
            return "steady", None
        if s.p_tail_ms > self.backlog_x * self.sla_ms and self._draining(s):
            self._breach_since = None
            return "drain_wait", None
        if self._breach_since is None:
            self._breach_since = now
        if now - self._breach_since < self.breach_sustain_s:
            return "breach_wait", None
        step = None
        if self.stepper is not None:  # steps that change nothing for the breaching queries wait
            largest = self._largest_since(self._breach_since, s.max_items)
            step = self.stepper.propose(self.config, skip=lambda a, b: same_batches(a, b, largest))
        if step is None:
            return "breach_exhausted", None
        self._probe = _Probe(self.config, s.p_tail_ms, s.trend)
        return "breach_step", step
