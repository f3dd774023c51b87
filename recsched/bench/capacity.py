"""Latency-bounded throughput: the highest offered rate whose tail latency meets the SLA.

Search on the offered rate by open-loop runs: bracket (double or halve from a start), then
bisect geometrically until the bracket is within `rel_tol`. The run function is injected, so
the same search drives the real engine, the simulator, or a synthetic surface in a test.
On a noisy machine, `confirm` makes each verdict the majority of repeated runs at one rate,
and `Turns` lets several searches (one per preset) take turns run by run, so that a slow
spell of the machine lands on all of them alike instead of on whichever ran then.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

RunFn = Callable[[float], dict]
T = TypeVar("T")


@dataclass
class CapacitySearch:
    """The outcome: best passing rate, its run, every run in the order made, and each
    distinct rate's verdicts (pass or fail per run, in order)."""

    qps: float
    best: dict | None
    runs: list[dict] = field(default_factory=list)
    verdicts: dict[float, list[bool]] = field(default_factory=dict)


def passes(result: dict) -> bool:
    """A run meets its SLA when every class meets its percentile target."""
    return bool(result.get("sla_met"))


def majority(votes: list[bool]) -> bool:
    """Pass when more than half the runs passed; a tie fails (conservative)."""
    return 2 * sum(votes) > len(votes)


def find_capacity(
    run: RunFn,
    *,
    start_qps: float,
    rel_tol: float = 0.05,
    max_runs: int = 12,
    min_qps: float = 0.1,
    max_qps: float = 1e7,
    on_run: Callable[[dict], None] | None = None,
    step: float = 2.0,
    confirm: int = 0,
    step_down: float | None = None,
) -> CapacitySearch:
    """Bracket (multiply by `step` after a pass, divide by `step` after a failure) then
    bisect the offered rate. Stops after `max_runs` runs at the latest.

    With `step_down`, the k-th failure in a row divides by `step_down`**k instead: a first
    step down stays close to the failed rate (the run below passes and lasts its full length,
    so a far-off pass is expensive), while a first guess far above the capacity (a tight SLA)
    is still left in a few runs.

    With `confirm=k > 0` a verdict that moves the bracket is re-measured at the same rate
    up to k more times and the majority of the 1 + k runs decides, stopping as soon as it is
    decided (k=2: best of 3; a tie fails, so an odd k never overturns a failure). Bisection
    confirms both verdicts, bracketing only failures. `max_runs` bounds all runs, confirming
    ones included: when it runs out mid-confirmation the runs made decide (a tie fails).
    `best` is the first passing run at the final `qps`.

    Returns rate 0 with no best run when even `min_qps` fails.
    """
    assert start_qps > 0 and rel_tol > 0 and max_runs >= 1 and step > 1 and confirm >= 0
    assert step_down is None or step_down > 1
    out = CapacitySearch(0.0, None)

    def measure(q: float) -> dict:
        r = run(q)
        out.runs.append(r)
        out.verdicts.setdefault(q, []).append(passes(r))
        if on_run is not None:
            on_run(r)
        return r

    def verdict(q: float, confirm_pass: bool) -> bool:
        """The decided verdict at `q`; on a pass, `q` becomes the best rate so far."""
        made = [measure(q)]
        n = 1 if passes(made[0]) and not confirm_pass else 1 + confirm
        while len(out.runs) < max_runs:
            n_pass = sum(map(passes, made))
            if n_pass > n // 2 or len(made) - n_pass >= n - n // 2:  # majority decided
                break
            made.append(measure(q))
        ok = majority([passes(r) for r in made])
        if ok and q > out.qps:
            out.qps, out.best = q, next(r for r in made if passes(r))
        return ok

    lo, hi = 0.0, math.inf
    q = min(max(start_qps, min_qps), max_qps)
    fails = 0  # in a row, while bracketing
    while len(out.runs) < max_runs:  # bracket
        if verdict(q, confirm_pass=False):
            lo, fails = q, 0
            if q >= max_qps:
                return out
            q = min(q * step, max_qps)
        else:
            hi, fails = q, fails + 1
            if q <= min_qps:
                return out
            q = max(q / (step if step_down is None else step_down**fails), min_qps)
        if lo > 0 and hi < math.inf:
            break
    while len(out.runs) < max_runs and hi / lo > 1 + rel_tol:  # bisect
        q = math.sqrt(lo * hi)
        if verdict(q, confirm_pass=True):
            lo = q
        else:
            hi = q
    return out


class Turns:
    """Round-robin turns among named searches, each in its own thread: a wrapped run waits
    for its name's turn, runs alone, then passes the turn to the next name still searching.
    `done(name)` takes a finished (or failed) search out of the cycle."""

    def __init__(self, names: Sequence[str]) -> None:
        assert names and len(set(names)) == len(names), "distinct names"
        self.order = list(names)
        self.current: str | None = self.order[0]
        self.log: list[str] = []  # names in the order their runs were made
        self._cv = threading.Condition()

    def wrap(self, name: str, run: RunFn) -> RunFn:
        assert name in self.order, name

        def turn(q: float) -> dict:
            with self._cv:
                self._cv.wait_for(lambda: self.current == name)
                self.log.append(name)
            try:
                return run(q)
            finally:
                with self._cv:
                    self._advance(name)
                    self._cv.notify_all()

        return turn

    def done(self, name: str) -> None:
        with self._cv:
            if name in self.order:
                if self.current == name:
                    self._advance(name)
                self.order.remove(name)
                if not self.order:
                    self.current = None
                self._cv.notify_all()

    def _advance(self, name: str) -> None:
        i = self.order.index(name)
        self.current = self.order[(i + 1) % len(self.order)]


def in_turns(searches: Mapping[str, Callable[[RunFn], T]]) -> dict[str, T]:
    """Run each named search in its own thread, their runs taking turns (`Turns`): a search
    is called with its run function's wrapper and passes every run function through it.
    Returns the results by name, in the given order; the first error is re-raised once every
    search has ended (threads are daemons: Ctrl-C in the main thread ends the command)."""
    names = list(searches)
    turns = Turns(names)
    results: dict[str, T] = {}
    errors: dict[str, BaseException] = {}

    def search(name: str) -> None:
        try:
            results[name] = searches[name](lambda run: turns.wrap(name, run))
        except BaseException as exc:  # re-raised below, after the others finish
            errors[name] = exc
        finally:
            turns.done(name)

    threads = [
        threading.Thread(target=search, args=(n,), name=f"capacity-{n}", daemon=True) for n in names
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise next(iter(errors.values()))
    return {n: results[n] for n in names}


def capacity_result(
    search: CapacitySearch,
    *,
    model: str,
    preset: str,
    sla_ms: float,
    percentile: float,
    peak_items_per_s: float | None,
) -> dict:
    """The `capacity` result of DESIGN.md."""
    best = search.best or {}
    items_per_s = best.get("completed_items_per_s", 0.0)
    eff = items_per_s / peak_items_per_s if peak_items_per_s else None
    return {
        "model": model,
        "preset": preset,
        "sla_ms": sla_ms,
        "sla_percentile": percentile,
        "latency_bounded_qps": search.qps,
        "latency_bounded_items_per_s": items_per_s,
        "peak_items_per_s": peak_items_per_s,
        "efficiency": eff,
        "cost_core_s_per_1k": best.get("cost_core_s_per_1k"),
        "config": best.get("config"),
        "runs": search.runs,
    }
