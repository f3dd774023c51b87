"""Latency statistics: exact percentiles from raw values, order-statistic confidence
intervals, a thread-safe per-class log with SLA verdicts, and a streaming histogram.

Percentiles use numpy's default `linear` method (Hyndman & Fan type 7: interpolate between
the two nearest order statistics), computed from every raw latency, so they are exact.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Iterable
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from recsched.types import DEFAULT_CLASS, PriorityClass, QueryResult

SUMMARY_PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0}
_FAILED_S = 1e9  # stands for "never served" when a failed query enters an SLA verdict


def _as_array(latencies_s: Iterable[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(latencies_s, dtype=np.float64).ravel()
    assert not np.any(np.isnan(a)), "latencies must not be NaN"
    return a


def percentile_ms(latencies_s: np.ndarray, p: float) -> float:
    """The exact `p`-th percentile (0..100, linear method) in ms; NaN when empty."""
    assert 0.0 <= p <= 100.0
    a = _as_array(latencies_s)
    return float(np.percentile(a, p)) * 1000.0 if len(a) else math.nan


def summarize_ms(latencies_s: np.ndarray) -> dict[str, float]:
    """`{"p50", "p95", "p99", "max"}` in ms (exact, linear method) plus `"count"`.

    Empty input gives NaNs and count 0.
    """
    a = _as_array(latencies_s)
    if len(a) == 0:
        out = {k: math.nan for k in (*SUMMARY_PERCENTILES, "max")}
    else:
        qs = np.percentile(a, list(SUMMARY_PERCENTILES.values())) * 1000.0
        out = {k: float(v) for k, v in zip(SUMMARY_PERCENTILES, qs, strict=True)}
        out["max"] = float(a.max()) * 1000.0
    out["count"] = len(a)
    return out


def _binom_cdf(n: int, q: float) -> tuple[int, np.ndarray]:
    """`(k0, cdf)` with `cdf[i] = P(K <= k0 + i)`, K ~ Binomial(n, q), computed in log space.

    Over a window around n q, 40 standard deviations (and at least 50) either side, outside
    which the mass is far below float precision: the same values to rounding as the whole
    range 0..n, but O(sqrt n) instead of O(n) (a simulated day of 10^8 queries needed GBs).
    """
    half = int(40.0 * math.sqrt(n * q * (1.0 - q))) + 50
    k0, k1 = max(0, int(n * q) - half), min(n, int(n * q) + half)
    k = np.arange(k0, k1, dtype=np.float64)  # each step k -> k + 1 within the window
    log0 = (
        math.lgamma(n + 1) - math.lgamma(k0 + 1) - math.lgamma(n - k0 + 1)
        + k0 * math.log(q) + (n - k0) * math.log1p(-q)
    )  # fmt: skip
    steps = np.log((n - k) / (k + 1)) + math.log(q) - math.log1p(-q)
    logpmf = log0 + np.concatenate(([0.0], np.cumsum(steps)))
    pmf = np.exp(logpmf - logpmf.max())
    return k0, np.cumsum(pmf) / pmf.sum()


def percentile_confidence(
    latencies_s: np.ndarray, p: float, conf: float = 0.95
) -> tuple[float, float]:
    """A distribution-free confidence interval (ms) for the true `p`-th percentile.

    With n samples, the count K below the true q-quantile is Binomial(n, q); the interval
    `[x_(l), x_(u)]` between order statistics has coverage `P(l <= K < u) >= conf`
    (equal tails). An end that n samples cannot bound is infinite: then the run was too
    short to speak of that percentile (see `min_queries_for`). The two order statistics are
    selected, not sorted for.
    """
    assert 0.0 < p < 100.0 and 0.0 < conf < 1.0
    a = _as_array(latencies_s)
    n = len(a)
    if n == 0:
        return (-math.inf, math.inf)
    alpha = (1.0 - conf) / 2.0
    k0, cdf = _binom_cdf(n, p / 100.0)
    # lower: l = 1 + largest k with F(k) <= alpha (1-based order statistic); none -> unbounded
    # (below the window F is ~0, so with none inside it, k0 - 1 is that k)
    below = np.flatnonzero(cdf <= alpha)
    k_lo = k0 + int(below[-1]) if len(below) else k0 - 1  # a[l - 1] with l = k + 1
    # upper: u = 1 + smallest k with F(k) >= 1 - alpha; u > n -> unbounded
    k_hi = k0 + int(np.searchsorted(cdf, 1.0 - alpha, side="left"))
    picks = [k for k in (k_lo, k_hi) if 0 <= k < n]
    part = np.partition(a, picks) if picks else a
    lo = part[k_lo] * 1000.0 if k_lo >= 0 else -math.inf
    hi = part[k_hi] * 1000.0 if k_hi < n else math.inf
    return (float(lo), float(hi))


def min_queries_for(p: float, conf: float = 0.95) -> int:
    """Fewest samples whose `percentile_confidence` upper end is finite: q^n <= (1-conf)/2."""
    assert 0.0 < p < 100.0 and 0.0 < conf < 1.0
    return math.ceil(math.log((1.0 - conf) / 2.0) / math.log(p / 100.0))


class LatencyLog:
    """Per-query outcomes appended from many threads (one lock; well under 1 us an append).

    Latency runs from the *scheduled* arrival to completion (open loop). Rows are kept as
    columns (class code, arrival, done, items, ok) so summaries of 1e6 queries stay fast.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def append(
        self, cls: str, arrival_s: float, done_s: float, n_items: int, ok: bool = True
    ) -> None:
        with self._lock:
            code = self._codes.get(cls)
            if code is None:
                code = self._codes[cls] = len(self._codes)
            self._cls.append(code)
            self._arr.append(arrival_s)
            self._done.append(done_s)
            self._n.append(n_items)
            self._ok.append(ok)

    def add(self, result: QueryResult) -> None:
        """Append a finished query (ok when it carries no error)."""
        self.append(
            result.cls, result.arrival_s, result.done_s, result.n_items, result.error is None
        )

    def __len__(self) -> int:
        return len(self._ok)

    def clear(self) -> None:
        with self._lock:
            self._codes: dict[str, int] = {}
            self._cls = array("q")
            self._arr = array("d")
            self._done = array("d")
            self._n = array("q")
            self._ok = array("b")

    def items(self) -> int:
        """Total items of successful queries."""
        with self._lock:
            # no named views of the arrays may outlive the lock (they would block appends)
            ok = np.frombuffer(self._ok, dtype=np.int8).astype(bool)
            total = int(np.frombuffer(self._n, dtype=np.int64)[ok].sum())
        return total

    def _snapshot(
        self,
    ) -> tuple[dict[str, int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`(class codes, class code [n], arrival_s [n], latency_s [n], ok [n])` of every
        logged query, copied under the lock."""
        with self._lock:  # copies only: a live view of an array.array would block appends
            codes = dict(self._codes)
            cls = np.frombuffer(self._cls, dtype=np.int64).copy()
            arr = np.frombuffer(self._arr, dtype=np.float64).copy()
            lat = np.frombuffer(self._done, dtype=np.float64) - arr
            ok = np.frombuffer(self._ok, dtype=np.int8).astype(bool)
        return codes, cls, arr, lat, ok

    def _columns(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """class -> (latency_s [n], ok [n]) over every logged query of that class."""
        codes, cls, _, lat, ok = self._snapshot()
        return {name: (lat[cls == c], ok[cls == c]) for name, c in codes.items()}

    def timeline(self, window_s: float = 1.0, q: float = 99.0) -> dict[str, list[list[float]]]:
        """class -> `[start_s, queries, q-th percentile ms of the successful]` per window of
        scheduled arrival time, from the first arrival: how a tail moved during a run
        (a load step, a controller settling). Empty windows give `[start, 0, nan]`."""
        assert window_s > 0
        codes, cls, arr, lat, ok = self._snapshot()
        if not len(arr):
            return {}
        k = ((arr - arr.min()) // window_s).astype(np.int64)
        windows = int(k.max()) + 1
        out: dict[str, list[list[float]]] = {}
        for name, c in codes.items():
            mine = cls == c
            order = np.argsort(k[mine], kind="stable")
            kc, lc, okc = k[mine][order], lat[mine][order], ok[mine][order]
            bounds = np.searchsorted(kc, np.arange(windows + 1))
            rows = []
            for w in range(windows):
                a, b = bounds[w], bounds[w + 1]
                good = lc[a:b][okc[a:b]]
                p = float(np.percentile(good, q)) * 1e3 if len(good) else math.nan
                rows.append([w * window_s, int(b - a), p])
            out[name] = rows
        return out

    def by_class(self) -> dict[str, np.ndarray]:
        """class -> latencies (s) of its successful queries."""
        return {c: lat[ok] for c, (lat, ok) in self._columns().items()}

    def latencies(self) -> np.ndarray:
        """Latencies (s) of every successful query."""
        parts = list(self.by_class().values())
        return np.concatenate(parts) if parts else np.empty(0)

    def summary(
        self,
        classes: tuple[PriorityClass, ...] = (DEFAULT_CLASS,),
        sla_ms: float | None = None,
        percentile: float = 95.0,
    ) -> dict:
        """The `latency_ms`, `sla_*` and `classes` parts of a bench result (DESIGN.md).

        Latency percentiles are over successful queries. A class meets its SLA when the
        class percentile, counting failed queries as never served, is <= its SLA: its own
        `sla_ms` at its own percentile, else the run's `sla_ms` at the run's `percentile`.
        `sla_met` is None for a class with no SLA or no queries. The run's `sla_met` is True
        when every class that has a verdict meets it (None when none has one).
        `within_sla` counts successful queries that finished within their class's SLA (for
        cost); with no SLA every success counts.
        """
        cols = self._columns()
        spec = {c.name: c for c in classes}
        names = list(spec) + sorted(set(cols) - set(spec))
        per_class, verdicts, within = {}, [], 0
        for name in names:
            c = spec.get(name, PriorityClass(name, 0.0, 1.0, None, percentile))
            lat, ok = cols.get(name, (np.empty(0), np.empty(0, dtype=bool)))
            sla, pct = class_sla(c, sla_ms, percentile)
            met = _sla_met(lat, ok, sla, pct)
            if met is not None:
                verdicts.append(met)
            within += int(np.sum(ok & (lat * 1000.0 <= sla))) if sla is not None else int(ok.sum())
            served = lat[ok]
            s = summarize_ms(served)
            del s["count"]
            _add_ci(s, served, pct)
            per_class[name] = {
                "queries": len(lat),
                "errors": int((~ok).sum()),
                "value": c.value,
                "sla_ms": sla,
                "sla_percentile": pct,
                "latency_ms": s,
                "sla_met": met,
            }
        done = self.latencies()
        overall = summarize_ms(done)
        del overall["count"]
        _add_ci(overall, done, percentile)
        return {
            "queries": len(self),
            "errors": sum(v["errors"] for v in per_class.values()),
            "latency_ms": overall,
            "sla_ms": sla_ms,
            "sla_percentile": percentile,
            "sla_met": all(verdicts) if verdicts else None,
            "within_sla": within,
            "classes": per_class,
        }


def _add_ci(summary: dict[str, Any], latencies_s: np.ndarray, p: float) -> None:
    """Add `"p<p>"` (the verdict percentile, when not among the summary's) and `"p<p>_ci"`, its
    95% confidence interval, an end the samples cannot bound as None (JSON has no infinity)."""
    key = f"p{p:g}"
    if key not in summary:
        summary[key] = percentile_ms(latencies_s, p)
    summary[f"{key}_ci"] = ci_json(percentile_confidence(latencies_s, p))


def ci_json(ci: Iterable[float]) -> list[float | None]:
    """A confidence interval for JSON: an end that could not be bounded (+-inf) as None."""
    return [v if math.isfinite(v) else None for v in ci]


def class_sla(
    c: PriorityClass, sla_ms: float | None, percentile: float
) -> tuple[float | None, float]:
    """`(SLA ms, percentile)` a class is judged by: its own SLA at its own percentile, else the
    run's `sla_ms` at the run's `percentile` (SLA None: no verdict)."""
    return (c.sla_ms, c.percentile) if c.sla_ms is not None else (sla_ms, percentile)


def _sla_met(lat: np.ndarray, ok: np.ndarray, sla_ms: float | None, p: float) -> bool | None:
    if sla_ms is None or len(lat) == 0:
        return None
    counted = np.where(ok, lat, _FAILED_S)
    return bool(np.percentile(counted, p) * 1000.0 <= sla_ms)


def misses_to_fail(n: int, p: float) -> int:
    """How many of `n` latencies over an SLA put their `p`-th percentile (linear method) over
    it for certain: the percentile interpolates upward from order statistic
    `floor(p/100 x (n - 1))`, which is over the SLA once `n - floor(...)` values are."""
    assert n >= 1 and 0.0 <= p <= 100.0
    return n - math.floor(p / 100.0 * (n - 1))


class SlaWatch:
    """Decides a run's SLA verdict early, when it can only be a miss.

    `counts`: queries per class the run will issue; `slas`: `(sla_ms, percentile)` per class
    (`class_sla`; None, or an SLA of None: no verdict). Each finished query that missed its
    class's SLA, or failed (the verdict counts failures as never served), is counted; once a
    class has `misses_to_fail` of its whole run, that class's percentile, hence the run's verdict
    (`LatencyLog.summary`), is over the SLA whatever the rest of the run does. A capacity
    search can stop such a run there instead of serving a backlog to the end: runs past
    capacity are half of a bisection's and the slowest. `add` may be called from several
    threads: a lost count only delays the decision, never makes it wrong.
    """

    def __init__(
        self, counts: dict[str, int], slas: dict[str, tuple[float | None, float] | None]
    ) -> None:
        self._sla_ms: dict[str, float] = {}
        self._fail_at: dict[str, int] = {}
        for c, v in slas.items():
            if v is not None and v[0] is not None and counts.get(c, 0) > 0:
                self._sla_ms[c] = v[0]
                self._fail_at[c] = misses_to_fail(counts[c], v[1])
        self.misses = dict.fromkeys(self._sla_ms, 0)
        self.missed: str | None = None  # the first class whose verdict is decided: missed

    def add(self, r: QueryResult) -> None:
        sla = self._sla_ms.get(r.cls)
        if sla is None or (r.error is None and (r.done_s - r.arrival_s) * 1000.0 <= sla):
            return  # (compared as the verdict compares: in ms)
        self.misses[r.cls] += 1
        if self.misses[r.cls] >= self._fail_at[r.cls] and self.missed is None:
            self.missed = r.cls


class StreamingLatency:
    """A thread-safe HDR histogram of latencies (1 us .. 60 s, 3 significant digits).

    For long-running servers where keeping every value is too much: memory is constant,
    but percentiles are approximate (within 0.1% relative), unlike `summarize_ms`, which is
    exact. Values outside the range are clamped to it.
    """

    LOW_US, HIGH_US, DIGITS = 1, 60_000_000, 3

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._h = HdrHistogram(self.LOW_US, self.HIGH_US, self.DIGITS)

    def record(self, seconds: float) -> None:
        us = min(max(int(round(seconds * 1e6)), self.LOW_US), self.HIGH_US)
        with self._lock:
            self._h.record_value(us)

    @property
    def count(self) -> int:
        with self._lock:
            return int(self._h.get_total_count())

    def percentile_ms(self, p: float) -> float:
        """Approximate `p`-th percentile in ms; NaN when nothing was recorded."""
        with self._lock:
            if self._h.get_total_count() == 0:
                return math.nan
            return self._h.get_value_at_percentile(p) / 1000.0

    def summary_ms(self) -> dict[str, float]:
        """Approximate `{"p50", "p95", "p99", "max", "count"}` in ms."""
        with self._lock:
            n = int(self._h.get_total_count())
            if n == 0:
                out = {k: math.nan for k in (*SUMMARY_PERCENTILES, "max")}
            else:
                h = self._h
                out = {
                    k: h.get_value_at_percentile(v) / 1000.0 for k, v in SUMMARY_PERCENTILES.items()
                }
                out["max"] = self._h.get_max_value() / 1000.0
        out["count"] = n
        return out

    def reset(self) -> None:
        with self._lock:
            self._h.reset()
