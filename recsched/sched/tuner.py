"""DeepRecSched's tuner, as a pure propose/feedback search over serving configurations.

The objective is latency-bounded throughput: a configuration's `Measurement.qps` counts only
if its tail latency met the SLA (`met`). The search is coordinate-wise hill climbing in
DeepRecSched's order (batch size first, then the offload threshold, then the rest), with the
published defects fixed:

- it never stops at the first worse candidate: along each knob it is a compass (pattern)
  search over the ordered value index, looking at *both* neighbours at a step, keeping the
  step while it moves and halving it when neither neighbour wins, down to step 1;
- noise: a challenger must beat the incumbent by more than `tol` (relative, default 3%) to
  win (smaller gains are ties); a close call either way (within `remeasure_margin`, default
  10%) is re-measured before it is decided (the side with fewer samples, the incumbent
  first, up to `max_samples` each; not an exact tie, nor two misses once something has met
  the SLA), and the samples of a config are averaged;
- random restarts from unmeasured feasible points spend whatever budget is left;
- a cache: a configuration is measured once, unless re-measured on purpose (flagged so).

No clock, no engine, no threads: the caller measures each proposed configuration however it
likes (real engine, simulator, synthetic surface) and hands the result to `feedback`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsched.config import EngineConfig

Key = tuple[Any, ...]  # one value per knob, in the space's knob order
_ENUMERATE_LIMIT = 20_000  # spaces up to this size are enumerated for restarts
_SAMPLE_TRIES = 2_000


@dataclass(frozen=True)
class Knob:
    """One tunable dimension: a config field (or fields joined by '/') and its ordered values.

    A compound knob such as `lanes/threads_per_lane` takes tuple values, one per field, so
    that valid combinations (lanes x threads <= cores) are neighbours of each other.
    Values are ordered: the search moves along their index. `None` (e.g. "never offload")
    sorts as +infinity when snapping a value that is not in the list.
    """

    name: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"knob {self.name!r} has no values")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"knob {self.name!r} has duplicate values")
        if len(self.fields) > 1:
            assert all(isinstance(v, tuple) and len(v) == len(self.fields) for v in self.values)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.name.split("/"))

    def read(self, config: EngineConfig) -> Any:
        """This knob's value in `config`."""
        vals = tuple(getattr(config, f) for f in self.fields)
        return vals if len(vals) > 1 else vals[0]

    def assign(self, value: Any) -> dict[str, Any]:
        """`{field: value}` changes that set this knob to `value`."""
        if len(self.fields) == 1:
            return {self.name: value}
        return dict(zip(self.fields, value, strict=True))

    def index_of(self, value: Any) -> int:
        """Index of `value`, or of the nearest value (numeric distance; log for positives)."""
        if value in self.values:
            return self.values.index(value)

        def dist(v: Any) -> float:
            a, b = _as_vector(v), _as_vector(value)
            return sum(_num_dist(x, y) for x, y in zip(a, b, strict=True))

        return min(range(len(self.values)), key=lambda i: dist(self.values[i]))


def _as_vector(v: Any) -> tuple[Any, ...]:
    return v if isinstance(v, tuple) else (v,)


def _num_dist(x: Any, y: Any) -> float:
    fx = math.inf if x is None else float(x)
    fy = math.inf if y is None else float(y)
    if fx == fy:
        return 0.0
    if math.isinf(fx) or math.isinf(fy):
        return math.inf
    if fx > 0 and fy > 0:
        return abs(math.log(fx) - math.log(fy))
    return abs(fx - fy)


@dataclass(frozen=True)
class TuningSpace:
    """The declared search space: knobs in search order, and a feasibility constraint."""

    knobs: tuple[Knob, ...]
    constraint: Callable[[EngineConfig], bool] | None = None

    def __post_init__(self) -> None:
        names = [f for k in self.knobs for f in k.fields]
        if len(set(names)) != len(names):
            raise ValueError("a config field is set by two knobs")

    @property
    def size(self) -> int:
        """Number of knob-value combinations (before the constraint)."""
        return math.prod(len(k.values) for k in self.knobs)

    def key(self, config: EngineConfig) -> Key:
        return tuple(k.read(config) for k in self.knobs)

    def apply(self, base: EngineConfig, key: Key) -> EngineConfig:
        """`base` with every knob set as `key` says."""
        changes: dict[str, Any] = {}
        for knob, value in zip(self.knobs, key, strict=True):
            changes.update(knob.assign(value))
        return base.replace(**changes)

    def feasible(self, base: EngineConfig, key: Key) -> bool:
        try:
            config = self.apply(base, key)
        except ValueError:
            return False
        return self.constraint is None or bool(self.constraint(config))

    def snap(self, config: EngineConfig) -> EngineConfig:
        """`config` with each knob moved to the nearest declared value."""
        key = tuple(k.values[k.index_of(k.read(config))] for k in self.knobs)
        return self.apply(config, key)

    def knob_values(self, key: Key) -> dict[str, Any]:
        """Flat `{field: value}` of a key, for trajectories and JSON."""
        out: dict[str, Any] = {}
        for knob, value in zip(self.knobs, key, strict=True):
            out.update(knob.assign(value))
        return out


def lane_combos(cores: int, oversubscribe: bool = False) -> tuple[tuple[int, int], ...]:
    """(lanes, threads_per_lane) pairs using at most `cores` threads (2x when oversubscribing),
    ordered by threads used, then lanes: for 2 cores ((1, 1), (1, 2), (2, 1))."""
    limit = cores * (2 if oversubscribe else 1)
    pairs = [(n, t) for n in range(1, limit + 1) for t in range(1, limit + 1) if n * t <= limit]
    return tuple(sorted(pairs, key=lambda p: (p[0] * p[1], p[0])))


def default_space(
    cores: int, has_accel: bool, max_batch: int = 1024, oversubscribe: bool = False
) -> TuningSpace:
    """DeepRecSched's space: batch size, offload threshold (with accelerator lanes only),
    queue order (recsched's addition: fifo or size), merge delay, then lanes x threads per
    lane (no oversubscription unless asked)."""
    assert cores >= 1 and max_batch >= 1
    batches = tuple(2**i for i in range(int(math.log2(max_batch)) + 1))
    knobs = [Knob("batch_size", batches)]
    if has_accel:
        knobs.append(Knob("offload_threshold", (*(b for b in batches if b >= 8), None)))
    knobs.append(Knob("order", ("fifo", "size")))
    knobs.append(Knob("merge_delay_ms", (0.0, 0.5, 1.0, 2.0, 4.0)))
    knobs.append(Knob("lanes/threads_per_lane", lane_combos(cores, oversubscribe)))
    limit = cores * (2 if oversubscribe else 1)

    def fits(c: EngineConfig) -> bool:
        return c.lanes * c.threads_per_lane <= limit

    return TuningSpace(tuple(knobs), fits)


@dataclass(frozen=True)
class Measurement:
    """One measured configuration: latency-bounded throughput and its tail latency.

    qps: the throughput measured (counts only if `met`). p_tail_ms: the tail percentile at that
    throughput. ci_ms: a confidence interval of p_tail_ms when the measurer has one.
    screened_qps: set when the measurer only checked whether the configuration beats the best
    so far, by one run just above the best's rate, and it missed there (unmet: it may meet the
    SLA at lower rates, but it cannot win).
    """

    qps: float
    p_tail_ms: float
    sla_ms: float
    met: bool
    queries: int = 0
    ci_ms: tuple[float, float] | None = None
    screened_qps: float | None = None

    def __post_init__(self) -> None:
        assert self.qps >= 0 and self.sla_ms > 0 and self.queries >= 0
        assert self.screened_qps is None or not self.met, "a screened-out measurement missed"

    @property
    def objective(self) -> float:
        """Latency-bounded throughput: qps if the SLA was met, else 0."""
        return self.qps if self.met else 0.0


def combine(samples: Sequence[Measurement]) -> Measurement:
    """The average of repeated measurements of one config (met: a strict majority met)."""
    assert samples, "nothing to combine"
    if len(samples) == 1:
        return samples[0]
    cis = [s.ci_ms for s in samples]
    ci = None if any(c is None for c in cis) else (min(c[0] for c in cis), max(c[1] for c in cis))
    return Measurement(
        qps=float(np.mean([s.qps for s in samples])),
        p_tail_ms=float(np.mean([s.p_tail_ms for s in samples])),
        sla_ms=samples[-1].sla_ms,
        met=2 * sum(s.met for s in samples) > len(samples),
        queries=sum(s.queries for s in samples),
        ci_ms=ci,
    )


def advantage(a: Measurement, b: Measurement) -> float:
    """Relative advantage of `a` over `b` (> 0: a is better).

    Met beats unmet (+-inf). Both met: relative qps gain. Both unmet: relative reduction of
    the tail/SLA ratio, so a search that starts infeasible climbs towards feasibility.
    """
    if a.met != b.met:
        return math.inf if a.met else -math.inf
    if a.met:
        if b.qps <= 0:
            return math.inf if a.qps > 0 else 0.0
        return (a.qps - b.qps) / b.qps
    ra, rb = a.p_tail_ms / a.sla_ms, b.p_tail_ms / b.sla_ms
    if math.isinf(rb):
        return 0.0 if math.isinf(ra) else math.inf
    return (rb - ra) / rb if rb > 0 else 0.0


def _rank(m: Measurement) -> tuple[int, float]:
    """Total order consistent with `advantage` (higher is better)."""
    return (1, m.qps) if m.met else (0, -m.p_tail_ms / m.sla_ms)


class _Stop(Exception):
    """Raised inside the search when it must end (budget spent)."""


@dataclass
class _Run:
    key: Key
    phase: str
    remeasure: bool


@dataclass
class _State:
    samples: dict[Key, list[Measurement]] = field(default_factory=dict)
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    last_step: dict[Key, int] = field(default_factory=dict)  # key -> its latest trajectory index


Search = Generator[_Run, Measurement | None, Any]  # yields runs, is sent their results


class Tuner:
    """Propose/feedback hill climbing for latency-bounded throughput.

    Budget: `budget` measurement runs (proposals answered by `feedback`), re-measurements
    included; never exceeded. Stopping rule: the search ends (`propose()` returns None) at the
    first of (1) `budget` runs done, (2) every feasible configuration of the space measured,
    (3) `max_restarts` random restarts done (None: unlimited). Each climb ends when one full
    sweep over the knobs moves nowhere (every knob at step 1 has no neighbour better by more
    than `tol`); then a random restart begins from an unmeasured feasible point. A climb over
    `default_space(2, False)` from B=1 costs about 20-30 runs on smooth surfaces, so a budget
    of 30-60 leaves room for a restart or two and the re-measurements.

    Protocol: `cfg = propose()` (the same config until answered), measure it,
    `feedback(cfg, measurement)`. `best()` and `trajectory()` can be read at any time.
    """

    def __init__(
        self,
        space: TuningSpace,
        start: EngineConfig,
        budget: int,
        seed: int = 0,
        *,
        tol: float = 0.03,
        remeasure_margin: float = 0.10,
        max_samples: int = 2,
        max_restarts: int | None = None,
    ) -> None:
        assert budget >= 0 and 0 <= tol <= remeasure_margin and max_samples >= 1
        self.space = space
        self.base = space.snap(start)
        self.budget = budget
        self.tol = tol
        self.remeasure_margin = remeasure_margin
        self.max_samples = max_samples
        self.max_restarts = max_restarts
        self._start = space.key(self.base)
        if not space.feasible(self.base, self._start):
            raise ValueError(f"start configuration is outside the space's constraint: {start}")
        self._rng = np.random.default_rng(seed)
        self._st = _State()
        self._gen: Search = self._search()
        self._pending: _Run | None = None
        self._done = False
        self._best: Key | None = None  # best climb end so far
        self._incumbent: Key | None = None  # incumbent of the running climb
        self.restarts = 0
        self.stop_reason: str | None = None

    # -- protocol -------------------------------------------------------------------------

    @property
    def runs(self) -> int:
        return len(self._st.trajectory)

    @property
    def done(self) -> bool:
        return self._done

    def propose(self) -> EngineConfig | None:
        """The next configuration to measure, or None when the search has ended."""
        if self._pending is None and not self._done and self.runs == 0:
            self._advance(None)
        if self._pending is None:
            return None
        return self.space.apply(self.base, self._pending.key)

    def feedback(self, config: EngineConfig, result: Measurement) -> None:
        """Record the measurement of the configuration `propose()` returned, and decide on it
        at once (so `trajectory()` and `best()` are current when this returns)."""
        run = self._pending
        assert run is not None, "feedback without a pending proposal"
        assert self.space.key(config) == run.key, "feedback for a config that was not proposed"
        st = self._st
        st.samples.setdefault(run.key, []).append(result)
        st.last_step[run.key] = len(st.trajectory)
        st.trajectory.append(
            {
                "step": len(st.trajectory) + 1,
                "phase": run.phase,
                "remeasure": run.remeasure,
                "config": self.space.knob_values(run.key),
                "qps": result.qps,
                "p_tail_ms": result.p_tail_ms,
                "met": result.met,
                "queries": result.queries,
                "ci_ms": list(result.ci_ms) if result.ci_ms else None,
                "screened_qps": result.screened_qps,
                "accepted": False,
            }
        )
        self._pending = None
        assert self.runs <= self.budget
        self._advance(result)

    def _advance(self, result: Measurement | None) -> None:
        """Run the search until it asks for the next measurement (or ends)."""
        try:
            run = self._gen.send(result)
        except StopIteration:
            self._done = True
            return
        assert isinstance(run, _Run) and self.runs < self.budget
        self._pending = run

    def best(self) -> tuple[EngineConfig, Measurement]:
        """The best configuration found so far and its (averaged) measurement."""
        cands = [k for k in (self._best, self._incumbent) if k is not None]
        if not cands:
            raise RuntimeError("nothing measured yet")
        key = cands[0]
        for k in cands[1:]:
            if advantage(self._agg(k), self._agg(key)) > self.tol:
                key = k
        return self.space.apply(self.base, key), self._agg(key)

    def trajectory(self) -> list[dict[str, Any]]:
        """One dict per run: step, phase, remeasure, config knobs, qps, p_tail_ms, met,
        queries, ci_ms, screened_qps, accepted (the run's config became the climb's
        incumbent)."""
        return [dict(t, config=dict(t["config"])) for t in self._st.trajectory]

    # -- search ---------------------------------------------------------------------------

    def _agg(self, key: Key) -> Measurement:
        return combine(self._st.samples[key])

    def _rank_of(self, key: Key) -> tuple[int, float]:
        return _rank(self._agg(key))

    def _any_met(self) -> bool:
        return any(combine(s).met for s in self._st.samples.values())

    def _n(self, key: Key) -> int:
        return len(self._st.samples.get(key, ()))

    def _accept(self, key: Key) -> None:
        self._incumbent = key
        self._st.trajectory[self._st.last_step[key]]["accepted"] = True

    def _measure(self, key: Key, phase: str, remeasure: bool = False) -> Search:
        """Measure `key` (cached unless `remeasure`); returns its averaged measurement."""
        if key in self._st.samples and not remeasure:
            return self._agg(key)
        if self.runs >= self.budget:
            raise _Stop("budget")
        got = yield _Run(key, phase, remeasure)
        assert got is not None
        return self._agg(key)

    def _beats(self, challenger: Key, incumbent: Key) -> Search:
        """True if `challenger` beats `incumbent` by more than tol.

        A close call either way (|advantage| <= remeasure_margin) is re-measured first: the
        side with fewer samples (the incumbent on a tie), until both have `max_samples`; a
        one-sided rule would guard against lucky challengers but never revisit unlucky ones.
        Not between two configurations that both missed the SLA once some configuration has
        met it: the best is met, so neither can become it by this call, and a re-measurement
        spends a run (a full capacity search on the real engine) to order two losers. Nor on
        an exact tie: a capacity search warm-started at the best rate reads exactly that rate
        for every configuration that meets the SLA there and misses a step above, and its
        re-measurement searches the same rates again, so what it adds is the machine's drift
        (dien spent half its budget on such re-measurements and crowned one by it).
        """
        while True:
            a, b = self._agg(challenger), self._agg(incumbent)
            adv = advantage(a, b)
            losers = not a.met and not b.met and self._any_met()
            settled = losers or adv == 0.0
            if abs(adv) > self.remeasure_margin or self.runs >= self.budget or settled:
                return adv > self.tol
            side = incumbent if self._n(incumbent) <= self._n(challenger) else challenger
            if self._n(side) >= self.max_samples:
                return adv > self.tol
            yield from self._measure(side, "remeasure", remeasure=True)

    def _neighbour(self, key: Key, ki: int, idx: int) -> Key | None:
        knob = self.space.knobs[ki]
        if not 0 <= idx < len(knob.values):
            return None
        cand = key[:ki] + (knob.values[idx],) + key[ki + 1 :]
        return cand if self.space.feasible(self.base, cand) else None

    def _climb_knob(self, inc: Key, ki: int) -> Search:
        """Compass search along knob `ki` from `inc`; returns the new incumbent."""
        knob = self.space.knobs[ki]
        n = len(knob.values)
        step = 1 << max(0, int(math.log2(max(1, (n - 1) // 4))))
        while step >= 1:
            i = knob.values.index(inc[ki])
            cands = [
                c
                for c in (self._neighbour(inc, ki, i - step), self._neighbour(inc, ki, i + step))
                if c
            ]
            try:
                for c in cands:
                    yield from self._measure(c, knob.name)
            except _Stop:  # budget spent: still judge what was measured, then stop
                done = [c for c in cands if c in self._st.samples]
                if done and (yield from self._beats(max(done, key=self._rank_of), inc)):
                    self._accept(max(done, key=self._rank_of))
                raise
            if cands:
                best = max(cands, key=self._rank_of)
                if (yield from self._beats(best, inc)):
                    inc = best
                    self._accept(inc)
                    continue
            step //= 2
        return inc

    def _climb(self, start: Key, phase: str) -> Search:
        """Coordinate sweeps from `start` until a full sweep moves nowhere."""
        yield from self._measure(start, phase)
        self._accept(start)
        inc = start
        for _ in range(max(1, self.space.size)):
            before = inc
            for ki in range(len(self.space.knobs)):
                inc = yield from self._climb_knob(inc, ki)
            if inc == before:
                return inc
        raise AssertionError("climb did not converge")  # every move is a strict improvement

    def _search(self) -> Search:
        try:
            self._best = yield from self._climb(self._start, "start")
            while self.max_restarts is None or self.restarts < self.max_restarts:
                key = self._unmeasured_point()
                if key is None:
                    self.stop_reason = "space exhausted"
                    return
                self.restarts += 1
                local = yield from self._climb(key, "restart")
                if local != self._best and (yield from self._beats(local, self._best)):
                    self._best = local
                self._incumbent = None
            self.stop_reason = "max restarts"
        except _Stop:
            self.stop_reason = "budget"

    def _unmeasured_point(self) -> Key | None:
        """A random feasible configuration not measured yet (None if there is none)."""
        knobs = self.space.knobs
        if self.space.size <= _ENUMERATE_LIMIT:
            free = [
                k
                for k in itertools.product(*(kn.values for kn in knobs))
                if k not in self._st.samples and self.space.feasible(self.base, k)
            ]
            return free[int(self._rng.integers(len(free)))] if free else None
        for _ in range(_SAMPLE_TRIES):
            k = tuple(kn.values[int(self._rng.integers(len(kn.values)))] for kn in knobs)
            if k not in self._st.samples and self.space.feasible(self.base, k):
                return k
        return None
