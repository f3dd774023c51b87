"""Online retuning of a live engine: completions feed an `OnlineRetuner`, its decisions are
applied with `Engine.reconfigure` (request-level knobs: batch size, merge delay).

    with OnlineTuning(engine, retuner) as online:   # attaches to engine.on_complete
        ... serve ...
    online.history   # [{"t_s", "reason", "batch_size", "merge_delay_ms", ...}, ...]

The retuner is pure (recsched.sched.retune); this module only wires it: a lock (lanes report
completions from their threads), the engine's clock for times (so observations arrive in time
order whatever lane reports them), and a thread that asks `decide` every `interval_s`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from recsched.bench.tune import tuning_space
from recsched.config import EngineConfig
from recsched.engine import RETUNABLE, Engine
from recsched.sched.retune import LocalStepper, OnlineRetuner, RegimeTable
from recsched.types import QueryResult
from recsched.workload.sizes import parse_sizes

if TYPE_CHECKING:
    from recsched.bench.setup import Setup


def request_stepper(cores: int, max_batch: int = 1024) -> LocalStepper:
    """Local steps over the knobs that change while serving: batch size, then whether queries
    are merged (`split` or `dynamic`), then the merge delay, which `split` never waits (as in
    `recsched tune`'s space: a step there would change nothing). From `split`, merging is one
    step away: what small queries need (rmc1, 8-item queries: 2.2x the throughput)."""
    space = tuning_space(cores, min_batch=1, max_batch=max_batch)
    return LocalStepper(space, ("batch_size", "request", "merge_delay_ms"))


def live_retuner(
    initial: EngineConfig,
    sla_ms: float,
    cores: int,
    table: RegimeTable | None = None,
    **options: Any,
) -> OnlineRetuner:
    """An `OnlineRetuner` that only proposes request-level moves (what `reconfigure` takes).
    `table` configurations must differ from `initial` in `RETUNABLE` fields only.

    Serving defaults react within seconds: a 4 s window, 2 s dwell after a switch, 1 s of
    sustained breach before a step (override any `OnlineRetuner` option). A `split`
    configuration's merge delay, which it never waits, is read as 0 (the retuner's `config`:
    what to start the engine with)."""
    opts = {"window_s": 4.0, "min_dwell_s": 2.0, "breach_sustain_s": 1.0, **options}
    if initial.request == "split":
        initial = initial.replace(merge_delay_ms=0.0)
    return OnlineRetuner(initial, sla_ms, table=table, stepper=request_stepper(cores), **opts)


def size_regimes(
    setup: Setup,
    initial: EngineConfig,
    size_specs: Sequence[str],
    log: Callable[[str], None] | None = None,
) -> RegimeTable:
    """A regime table with one size level per size spec (`--retune-sizes`): each level's
    configuration is `initial` with the request knobs (`RETUNABLE`) the tuner found for that
    query-size mix at the run's SLA, classes and arrivals (the tuner's cache; tuned now on a
    miss), and the edge between two levels is the geometric mean of their median sizes (the
    retuner classifies the window's median). One load level: the run's rate does not pick.
    A run that replays a trace has its regimes tuned on Poisson arrivals (a trace's own sizes
    would override each regime's)."""
    if len(size_specs) < 2:
        raise ValueError(
            "--retune-sizes needs two or more size specs, e.g. fixed:8,lognormal:400:0.3"
        )
    levels: list[tuple[float, str, EngineConfig]] = []
    for spec in size_specs:
        median = float(parse_sizes(spec).median())
        arrivals = "poisson" if setup.arrivals.startswith("trace:") else setup.arrivals
        s = dataclasses.replace(setup, sizes=spec, arrivals=arrivals)
        if log is not None:
            log(f"[dim]size level {spec} (median {median:g} items):[/dim]")
        tuned = s.resolve(initial.replace(request="tuned"), log)
        levels.append((median, spec, initial.replace(**{k: getattr(tuned, k) for k in RETUNABLE})))
    levels.sort(key=lambda lv: lv[0])
    for (m0, a, _), (m1, b, _) in zip(levels, levels[1:], strict=False):
        if m1 <= m0:
            raise ValueError(f"size specs {a} and {b} have the same median ({m0:g} items)")
    edges = tuple(math.sqrt(a[0] * b[0]) for a, b in zip(levels, levels[1:], strict=False))
    return RegimeTable((), edges, {(0, i): cfg for i, (_, _, cfg) in enumerate(levels)})


class OnlineTuning:
    """Feeds `engine`'s completed queries to `retuner` and applies its switches live."""

    def __init__(self, engine: Engine, retuner: OnlineRetuner, interval_s: float = 0.25) -> None:
        assert interval_s > 0
        self.engine = engine
        self.retuner = retuner
        self.interval_s = interval_s
        self.history: list[dict[str, Any]] = []
        self.t0_s = engine.clock.now()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="recsched-retune", daemon=True)
        self._chained = engine.on_complete

    def __enter__(self) -> OnlineTuning:
        self.engine.on_complete = self._observe
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.engine.on_complete = self._chained

    def _observe(self, r: QueryResult) -> None:
        if self._chained is not None:
            self._chained(r)
        if r.error is not None:
            return
        with self._lock:
            now = self.engine.clock.now()  # not r.done_s: lanes report out of order
            self.retuner.observe(now, max(0.0, now - r.arrival_s), r.n_items)

    def step(self) -> EngineConfig | None:
        """One decision now (the loop calls this; tests may call it directly)."""
        with self._lock:
            now = self.engine.clock.now()
            new = self.retuner.decide(now)
            reason = self.retuner.last_reason
        if new is not None:
            self.engine.reconfigure(new)
            self.history.append(
                {
                    "t_s": now - self.t0_s,
                    "reason": reason,
                    **{k: getattr(new, k) for k in RETUNABLE},
                }
            )
        return new

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.step()
