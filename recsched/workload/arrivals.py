"""Arrival processes: when queries arrive (open loop, in seconds from the start of a run).

Each process is a frozen dataclass with `times(duration_s, rng)`, sorted arrival times in
`[0, duration_s)`, drawn with numpy in bulk (millions of queries in well under a second),
and `mean_rate(duration_s)`, the expected rate over that window.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


class ArrivalSpecError(ValueError):
    """An arrival spec or trace file is malformed; the message names the problem."""


@runtime_checkable
class ArrivalProcess(Protocol):
    def times(self, duration_s: float, rng: np.random.Generator) -> np.ndarray:
        """Sorted float64 arrival times in `[0, duration_s)`."""
        ...

    def mean_rate(self, duration_s: float) -> float:
        """Expected arrivals per second over `[0, duration_s)`."""
        ...

    @property
    def spec(self) -> str:
        """The spec that `parse_arrivals(spec, self.mean_rate(...))` maps back to this."""
        ...


def _check_rate(rate: float, what: str) -> None:
    if not (math.isfinite(rate) and rate >= 0):
        raise ArrivalSpecError(f"{what}: rate must be finite and >= 0, got {rate}")


def _poisson_times(rate: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Homogeneous Poisson process on [0, duration_s): cumulative exponential gaps."""
    assert duration_s >= 0
    if rate == 0 or duration_s == 0:
        return np.empty(0, dtype=np.float64)
    lam = rate * duration_s
    chunks, t0 = [], 0.0
    while True:
        m = int(lam + 8.0 * math.sqrt(lam) + 16)
        t = t0 + np.cumsum(rng.exponential(1.0 / rate, m))
        chunks.append(t)
        if t[-1] >= duration_s:
            break
        t0 = float(t[-1])
    t = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    return t[: np.searchsorted(t, duration_s, side="left")]


@dataclass(frozen=True)
class Poisson:
    """A Poisson process: exponential inter-arrival times with mean `1 / rate`.

    DeepRecSys's load generator instead slept `np.random.poisson(lam=ms)` *integer
    milliseconds* between queries: gaps on a 1 ms grid with variance equal to the mean in ms,
    which is not a Poisson process (its gaps have CV ~ 1/sqrt(mean ms), not 1).
    """

    rate: float

    def __post_init__(self) -> None:
        _check_rate(self.rate, "poisson")

    def times(self, duration_s: float, rng: np.random.Generator) -> np.ndarray:
        return _poisson_times(self.rate, duration_s, rng)

    def mean_rate(self, duration_s: float) -> float:
        return self.rate

    @property
    def spec(self) -> str:
        return "poisson"


@dataclass(frozen=True)
class Constant:
    """Evenly spaced arrivals at `k / rate`, k = 0, 1, ...; uses no randomness."""

    rate: float

    def __post_init__(self) -> None:
        _check_rate(self.rate, "constant")

    def times(self, duration_s: float, rng: np.random.Generator) -> np.ndarray:
        if self.rate == 0:
            return np.empty(0, dtype=np.float64)
        t = np.arange(math.ceil(self.rate * duration_s) + 1, dtype=np.float64) / self.rate
        return t[: np.searchsorted(t, duration_s, side="left")]

    def mean_rate(self, duration_s: float) -> float:
        return self.rate

    @property
    def spec(self) -> str:
        return "constant"


@dataclass(frozen=True)
class Bursty:
    """A two-state Markov-modulated Poisson process (on/off MMPP).

    The source alternates between an *on* state (Poisson at `rate_on`) and an *off* state
    (Poisson at `rate_off`); the time spent in each is exponential with mean `mean_on_s` /
    `mean_off_s`. The first state is drawn from the stationary odds, so the mean rate is
    `(rate_on * mean_on_s + rate_off * mean_off_s) / (mean_on_s + mean_off_s)` at any window.
    Its inter-arrival times have a coefficient of variation above 1 (burstier than Poisson).
    """

    rate_on: float
    rate_off: float
    mean_on_s: float
    mean_off_s: float

    def __post_init__(self) -> None:
        _check_rate(self.rate_on, "bursty on")
        _check_rate(self.rate_off, "bursty off")
        if not (self.mean_on_s > 0 and self.mean_off_s > 0):
            raise ArrivalSpecError(
                f"bursty: mean on/off times must be > 0, got {self.mean_on_s}, {self.mean_off_s}"
            )

    def _periods(self, duration_s: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """(start, length, is_on) of the state periods covering [0, duration_s)."""
        cycle = self.mean_on_s + self.mean_off_s
        first_on = rng.random() < self.mean_on_s / cycle
        means = np.array(
            [self.mean_on_s, self.mean_off_s] if first_on else [self.mean_off_s, self.mean_on_s]
        )
        lengths, total = [], 0.0
        while total < duration_s:
            k = 2 * (int(duration_s / cycle) + 8)
            chunk = rng.exponential(np.tile(means, k // 2))
            lengths.append(chunk)
            total += float(chunk.sum())
        length = np.concatenate(lengths)
        start = np.concatenate(([0.0], np.cumsum(length)[:-1]))
        keep = start < duration_s
        start, length = start[keep], length[keep]
        length = np.minimum(length, duration_s - start)
        is_on = (np.arange(len(start)) % 2 == 0) == first_on
        return start, length, is_on

    def times(self, duration_s: float, rng: np.random.Generator) -> np.ndarray:
        if duration_s <= 0:
            return np.empty(0, dtype=np.float64)
        start, length, is_on = self._periods(duration_s, rng)
        counts = rng.poisson(np.where(is_on, self.rate_on, self.rate_off) * length)
        base = np.repeat(start, counts)
        t = np.sort(base + np.repeat(length, counts) * rng.random(int(counts.sum())))
        return t[t < duration_s]

    def mean_rate(self, duration_s: float) -> float:
        return (self.rate_on * self.mean_on_s + self.rate_off * self.mean_off_s) / (
            self.mean_on_s + self.mean_off_s
        )

    @property
    def on_factor(self) -> float:
        """`rate_on / mean rate`, the burst's height relative to the average."""
        return self.rate_on / self.mean_rate(1.0) if self.mean_rate(1.0) > 0 else 1.0

    @property
    def spec(self) -> str:
        return f"bursty:{self.on_factor!r}:{self.mean_on_s!r}:{self.mean_off_s!r}"

    @classmethod
    def from_mean(cls, qps: float, on_factor: float, mean_on_s: float, mean_off_s: float) -> Bursty:
        """The MMPP with mean rate `qps` whose on rate is `on_factor * qps`.

        The off rate takes the rest: `qps * (1 + (1 - on_factor) * mean_on_s / mean_off_s)`,
        which must not be negative, so `on_factor <= 1 + mean_off_s / mean_on_s`.
        """
        if not (mean_on_s > 0 and mean_off_s > 0):
            raise ArrivalSpecError(
                f"bursty: mean on/off times must be > 0, got {mean_on_s}, {mean_off_s}"
            )
        limit = 1.0 + mean_off_s / mean_on_s
        if not 1.0 - 1e-9 <= on_factor <= limit * (1 + 1e-9):
            raise ArrivalSpecError(
                f"bursty: on_factor must be in [1, {limit:g}] (1 + mean_off_s / mean_on_s), "
                f"else the off state would need a negative rate; got {on_factor:g}"
            )
        rate_on = min(max(on_factor, 1.0), limit) * qps
        rate_off = max(0.0, qps * (1.0 + (1.0 - on_factor) * mean_on_s / mean_off_s))
        return cls(rate_on, rate_off, mean_on_s, mean_off_s)


@dataclass(frozen=True)
class Diurnal:
    """A Poisson process whose rate follows a daily curve compressed into `period_s`.

    `rate(t) = mean_rate * (1 + amplitude * sin(2 pi t / period_s + phase))`, drawn by
    thinning a Poisson process at the peak rate. `mean_rate` is the mean over a whole
    period; `mean_rate(duration_s)` is the exact mean over `[0, duration_s)`.
    """

    rate: float
    period_s: float = 60.0
    amplitude: float = 0.5
    phase: float = 0.0

    def __post_init__(self) -> None:
        _check_rate(self.rate, "diurnal")
        if not (self.period_s > 0 and 0.0 <= self.amplitude <= 1.0):
            raise ArrivalSpecError(
                f"diurnal: period_s must be > 0 and amplitude in [0, 1], "
                f"got {self.period_s}, {self.amplitude}"
            )

    def rate_at(self, t: np.ndarray | float) -> np.ndarray:
        """Instantaneous rate (arrivals per second) at time(s) `t`."""
        w = 2.0 * math.pi / self.period_s
        return self.rate * (1.0 + self.amplitude * np.sin(w * np.asarray(t) + self.phase))

    def times(self, duration_s: float, rng: np.random.Generator) -> np.ndarray:
        peak = self.rate * (1.0 + self.amplitude)
        t = _poisson_times(peak, duration_s, rng)
        if peak == 0:
            return t
        return t[rng.random(len(t)) * peak < self.rate_at(t)]

    def mean_rate(self, duration_s: float) -> float:
        if duration_s <= 0:
            return self.rate
        w = 2.0 * math.pi / self.period_s
        integral = (math.cos(self.phase) - math.cos(w * duration_s + self.phase)) / w
        return self.rate * (1.0 + self.amplitude * integral / duration_s)

    @property
    def spec(self) -> str:
        return f"diurnal:{self.period_s!r}:{self.amplitude!r}"


@dataclass(frozen=True)
class TraceData:
    """A loaded trace: sorted times, sizes, class codes into `names`, and its duration."""

    t_s: np.ndarray
    n_items: np.ndarray
    cls: np.ndarray
    names: tuple[str, ...]
    duration_s: float


_TIME_COLS = ("time_s", "t_s", "time")
_SIZE_COLS = ("size", "n_items")
_CLASS_COLS = ("class", "cls")


def _col(header: list[str], names: tuple[str, ...], path: str, required: bool) -> int | None:
    for n in names:
        if n in header:
            return header.index(n)
    if required:
        raise ArrivalSpecError(f"trace '{path}': header needs one of {', '.join(names)}")
    return None


def read_trace(path: str | Path) -> TraceData:
    """Read a trace CSV: header `time_s,size,class` (class optional), `#` comment lines.

    A comment `# duration_s=X` (written by `write_trace_csv`) gives the trace's length;
    otherwise it is estimated as `t_last * n / (n - 1)`. Rows are sorted by time (stable).
    """
    st = os.stat(path)
    return _read_trace_cached(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=8)
def _read_trace_cached(path: str, _mtime_ns: int, _size: int) -> TraceData:
    duration = None
    with open(path, newline="") as f:
        lines = []
        for line in f:
            if line.startswith("#"):
                key, _, val = line[1:].strip().partition("=")
                if key.strip() == "duration_s":
                    duration = float(val)
                continue
            if line.strip():
                lines.append(line)
    rows = list(csv.reader(lines))
    if not rows:
        raise ArrivalSpecError(f"trace '{path}': empty")
    header = [h.strip().lower() for h in rows[0]]
    it = _col(header, _TIME_COLS, path, True)
    iz = _col(header, _SIZE_COLS, path, True)
    ic = _col(header, _CLASS_COLS, path, False)
    body = rows[1:]
    try:
        t = np.array([float(r[it]) for r in body], dtype=np.float64)
        size_f = np.array([float(r[iz]) for r in body], dtype=np.float64)
    except (ValueError, IndexError) as e:
        raise ArrivalSpecError(f"trace '{path}': bad row ({e})") from None
    if len(t) and (not np.all(np.isfinite(t)) or t.min() < 0):
        raise ArrivalSpecError(f"trace '{path}': times must be finite and >= 0")
    if np.any(size_f < 1) or np.any(size_f != np.round(size_f)):
        raise ArrivalSpecError(f"trace '{path}': sizes must be integers >= 1")
    labels = [r[ic].strip() if ic is not None else "default" for r in body]
    names = tuple(dict.fromkeys(labels))
    code = {n: i for i, n in enumerate(names)}
    cls = np.array([code[x] for x in labels], dtype=np.int64)
    order = np.argsort(t, kind="stable")
    n = len(t)
    if duration is None:
        t_last = float(t.max()) if n else 0.0
        duration = t_last * n / (n - 1) if n > 1 else t_last
    return TraceData(t[order], size_f[order].astype(np.int64), cls[order], names, duration)


@dataclass(frozen=True)
class TraceReplay:
    """Replay the arrivals of a CSV trace `(time_s, size, class)`.

    Its sizes and classes override the workload's size distribution and class mix.
    With `rate`, times are scaled so the trace's mean rate over its own length becomes
    `rate` (so a capacity search can replay one trace at many loads); without it they are
    replayed as recorded. Only arrivals before `duration_s` are used.
    """

    path: str
    rate: float | None = None

    def load(self) -> TraceData:
        """The trace with times scaled to `rate` (if given)."""
        d = read_trace(self.path)
        if self.rate is None:
            return d
        _check_rate(self.rate, "trace")
        if len(d.t_s) == 0 or d.duration_s <= 0 or self.rate == 0:
            raise ArrivalSpecError(f"trace '{self.path}': cannot scale an empty or instant trace")
        k = (len(d.t_s) / d.duration_s) / self.rate
        return TraceData(d.t_s * k, d.n_items, d.cls, d.names, d.duration_s * k)

    def times(self, duration_s: float, rng: np.random.Generator) -> np.ndarray:
        t = self.load().t_s
        return t[: np.searchsorted(t, duration_s, side="left")]

    def mean_rate(self, duration_s: float) -> float:
        if duration_s <= 0:
            return 0.0
        return len(self.times(duration_s, np.random.default_rng(0))) / duration_s

    @property
    def spec(self) -> str:
        return f"trace:{self.path}"


def parse_arrivals(spec: str | None, qps: float | None) -> ArrivalProcess:
    """Build an arrival process whose mean rate is `qps` from a spec.

    `poisson` (default), `constant`, `bursty[:ON_FACTOR:MEAN_ON_S:MEAN_OFF_S]` (defaults
    3 : 0.5 : 2.0, so the off rate is half the mean), `diurnal[:PERIOD_S:AMPLITUDE]`
    (defaults 60 : 0.5), `trace:PATH` (scaled to `qps`; `qps=None` replays as recorded).
    """
    spec = (spec or "poisson").strip()
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    if kind == "trace":
        if not rest:
            raise ArrivalSpecError("arrival spec 'trace:PATH' needs a path")
        if not Path(rest).is_file():
            raise ArrivalSpecError(f"arrival spec '{spec}': no file '{rest}'")
        return TraceReplay(rest, qps)
    if qps is None:
        raise ArrivalSpecError(f"arrival spec '{spec}' needs a rate (qps)")
    _check_rate(qps, f"arrival spec '{spec}'")
    try:
        args = [float(a) for a in rest.split(":")] if rest else []
    except ValueError:
        raise ArrivalSpecError(f"arrival spec '{spec}': arguments must be numbers") from None
    nargs = {"poisson": (0,), "constant": (0,), "bursty": (0, 3), "diurnal": (0, 2)}
    if kind not in nargs:
        raise ArrivalSpecError(
            f"arrival spec '{spec}': unknown kind '{kind}' (poisson, constant, "
            "bursty[:ON_FACTOR:MEAN_ON_S:MEAN_OFF_S], diurnal[:PERIOD_S:AMPLITUDE], trace:PATH)"
        )
    if len(args) not in nargs[kind]:
        raise ArrivalSpecError(
            f"arrival spec '{spec}': '{kind}' takes {' or '.join(map(str, nargs[kind]))} numbers"
        )
    if kind == "poisson":
        return Poisson(qps)
    if kind == "constant":
        return Constant(qps)
    if kind == "bursty":
        return Bursty.from_mean(qps, *(args or [3.0, 0.5, 2.0]))
    return Diurnal(qps, *(args or [60.0, 0.5]))
