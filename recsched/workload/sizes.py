"""Query sizes: how many items (candidates to rank) each query carries.

Every distribution samples integers in `[1, cap]`. The continuous ones draw a real `x` and
round it half up (`floor(x + 0.5)`), then clip to `[1, cap]`; `median()` and `mean()` are
exact for that rounded, clipped distribution (computed from its CDF on the integers).

DeepRecSys (Gupta et al., ISCA 2020) reports that production query sizes have a heavier tail
than a lognormal and reach about 1000 items; `production()` ships such a shape as percentile
points (see `data/production_sizes.csv` for where its numbers come from, honestly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from statistics import NormalDist
from typing import Protocol, runtime_checkable

import numpy as np

DEFAULT_CAP = 1000
_STD_NORMAL = NormalDist()


class SizeSpecError(ValueError):
    """A size spec or percentile file is malformed; the message names the problem."""


@runtime_checkable
class SizeDist(Protocol):
    cap: int

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` sizes, int64, each in `[1, cap]`."""
        ...

    def median(self) -> float: ...

    def mean(self) -> float: ...

    @property
    def spec(self) -> str:
        """The string that `parse_sizes` maps back to this distribution."""
        ...


def _round_clip(x: np.ndarray, cap: int) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 1, cap).astype(np.int64)


def _pmf_from_cdf(cdf_at, cap: int) -> np.ndarray:
    """P(Y = k) for k = 1..cap where Y = clip(floor(X + .5), 1, cap) and X has CDF `cdf_at`.

    Assumes X has no atoms at half-integers (true for all distributions here).
    """
    edges = np.arange(1, cap, dtype=np.float64) + 0.5  # boundaries between k and k + 1
    f = np.concatenate(([0.0], np.clip(cdf_at(edges), 0.0, 1.0), [1.0]))
    pmf = np.diff(f)
    assert np.all(pmf >= -1e-12), "CDF must be non-decreasing"
    return np.maximum(pmf, 0.0)


def _median_of(pmf: np.ndarray) -> float:
    return float(np.searchsorted(np.cumsum(pmf), 0.5 - 1e-12) + 1)


def _mean_of(pmf: np.ndarray) -> float:
    return float(np.dot(np.arange(1, len(pmf) + 1), pmf) / pmf.sum())


def _check_cap(cap: int) -> None:
    if int(cap) != cap or cap < 1:
        raise SizeSpecError(f"size cap must be an integer >= 1, got {cap}")


@dataclass(frozen=True)
class Fixed:
    """Every query has exactly `n` items."""

    n: int
    cap: int = DEFAULT_CAP

    def __post_init__(self) -> None:
        _check_cap(self.cap)
        if int(self.n) != self.n or not 1 <= self.n <= self.cap:
            raise SizeSpecError(f"fixed size must be an integer in [1, {self.cap}], got {self.n}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, self.n, dtype=np.int64)

    def median(self) -> float:
        return float(self.n)

    def mean(self) -> float:
        return float(self.n)

    @property
    def spec(self) -> str:
        return f"fixed:{self.n}"


@dataclass(frozen=True)
class Normal:
    """Normal(mean, std), rounded and clipped to `[1, cap]` (DeepRecSys's default shape)."""

    mu: float
    std: float
    cap: int = DEFAULT_CAP

    def __post_init__(self) -> None:
        _check_cap(self.cap)
        if not (math.isfinite(self.mu) and math.isfinite(self.std) and self.std >= 0):
            raise SizeSpecError(
                f"normal needs a finite mean and std >= 0, got {self.mu}, {self.std}"
            )

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _round_clip(rng.normal(self.mu, self.std, n), self.cap)

    def _pmf(self) -> np.ndarray:
        if self.std == 0:
            return _pmf_from_cdf(lambda x: (x >= self.mu).astype(float), self.cap)
        cdf = np.vectorize(NormalDist(self.mu, self.std).cdf, otypes=[float])
        return _pmf_from_cdf(cdf, self.cap)

    def median(self) -> float:
        return _median_of(self._pmf())

    def mean(self) -> float:
        return _mean_of(self._pmf())

    @property
    def spec(self) -> str:
        return f"normal:{self.mu!r}:{self.std!r}"


@dataclass(frozen=True)
class LogNormal:
    """`median * exp(sigma * Z)`, rounded and clipped to `[1, cap]`.

    Parameterised by the median (items) rather than the log-mean; DeepRecSys's
    `np.random.lognormal(avg, var)` took log-space parameters under item-space names.
    """

    med: float
    sigma: float
    cap: int = DEFAULT_CAP

    def __post_init__(self) -> None:
        _check_cap(self.cap)
        if not (self.med > 0 and math.isfinite(self.med) and 0 <= self.sigma < 50):
            raise SizeSpecError(
                f"lognormal needs median > 0 and 0 <= sigma < 50, got {self.med}, {self.sigma}"
            )

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _round_clip(self.med * np.exp(self.sigma * rng.standard_normal(n)), self.cap)

    def _pmf(self) -> np.ndarray:
        if self.sigma == 0:
            return _pmf_from_cdf(lambda x: (x >= self.med).astype(float), self.cap)
        z = np.vectorize(_STD_NORMAL.cdf, otypes=[float])
        return _pmf_from_cdf(lambda x: z(np.log(x / self.med) / self.sigma), self.cap)

    def median(self) -> float:
        return _median_of(self._pmf())

    def mean(self) -> float:
        return _mean_of(self._pmf())

    def quantile(self, q: float) -> float:
        """The (unrounded, uncapped) q-quantile, q in (0, 1)."""
        return self.med * math.exp(self.sigma * _STD_NORMAL.inv_cdf(q))

    @property
    def spec(self) -> str:
        return f"lognormal:{self.med!r}:{self.sigma!r}"


@dataclass(frozen=True)
class Percentiles:
    """A piecewise-linear inverse CDF through `(percentile, size)` points.

    Percentiles must rise strictly from 0 to 100; sizes must be integers >= 1 that never
    fall. Repeated sizes make an atom (a share of queries of exactly that size).
    `source` records where the points came from (for `spec`); it is not compared.
    """

    points: tuple[tuple[float, int], ...]
    cap: int = DEFAULT_CAP
    source: str = ""

    def __post_init__(self) -> None:
        _check_cap(self.cap)
        _validate_points(self.points)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Percentiles):
            return NotImplemented
        return self.points == other.points and self.cap == other.cap

    def __hash__(self) -> int:
        return hash((self.points, self.cap))

    @property
    def _p(self) -> np.ndarray:
        return np.array([p for p, _ in self.points], dtype=np.float64)

    @property
    def _s(self) -> np.ndarray:
        return np.array([s for _, s in self.points], dtype=np.float64)

    def ppf(self, q: np.ndarray | float) -> np.ndarray:
        """Continuous size at quantile(s) `q` in [0, 1] (before rounding and capping)."""
        return np.interp(np.asarray(q, dtype=np.float64) * 100.0, self._p, self._s)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _round_clip(self.ppf(rng.random(n)), self.cap)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """P(X <= x) of the continuous (unrounded) size, right-continuous at atoms."""
        p, s = self._p, self._s
        x = np.asarray(x, dtype=np.float64)
        i = np.searchsorted(s, x, side="right") - 1  # last point with s_i <= x
        out = np.empty_like(x)
        below, above = i < 0, i >= len(s) - 1
        mid = ~(below | above)
        j = i[mid]
        frac = (x[mid] - s[j]) / (s[j + 1] - s[j])
        out[mid] = p[j] + frac * (p[j + 1] - p[j])
        out[below], out[above] = 0.0, 100.0
        return out / 100.0

    def _pmf(self) -> np.ndarray:
        return _pmf_from_cdf(self.cdf, self.cap)

    def median(self) -> float:
        return _median_of(self._pmf())

    def mean(self) -> float:
        return _mean_of(self._pmf())

    @property
    def spec(self) -> str:
        return self.source or "production"


def _validate_points(points: tuple[tuple[float, int], ...]) -> None:
    if len(points) < 2:
        raise SizeSpecError(f"percentile points: need at least 2, got {len(points)}")
    p = [pt[0] for pt in points]
    s = [pt[1] for pt in points]
    if p[0] != 0 or p[-1] != 100:
        raise SizeSpecError(
            f"percentile points must start at percentile 0 and end at 100 "
            f"(got {p[0]:g}..{p[-1]:g}): give the smallest and the largest size explicitly"
        )
    for a, b in zip(points, points[1:], strict=False):
        if not b[0] > a[0]:
            raise SizeSpecError(f"percentiles must rise strictly: {a[0]:g} then {b[0]:g}")
        if b[1] < a[1]:
            raise SizeSpecError(f"sizes must not fall: {a[1]} at p{a[0]:g}, {b[1]} at p{b[0]:g}")
    for x in s:
        if int(x) != x or x < 1:
            raise SizeSpecError(f"sizes must be integers >= 1, got {x}")


def read_percentiles(text: str, where: str = "<text>") -> tuple[tuple[float, int], ...]:
    """Parse percentile points from CSV text.

    Two columns `percentile,size` (a header line and `#` comments allowed), or one column of
    sizes, read as a sample: its linear-interpolated empirical quantiles become the points
    (DeepRecSys's `--batch_dist_file` format).
    """
    rows: list[list[str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        cells = [c.strip() for c in line.split(",")]
        try:
            [float(c) for c in cells]
        except ValueError:
            if not rows and all(c.replace("_", "").isalpha() for c in cells):
                continue  # a header line
            raise SizeSpecError(f"{where}:{lineno}: not numbers: '{raw.strip()}'") from None
        rows.append(cells)
    if not rows:
        raise SizeSpecError(f"{where}: no data rows")
    widths = {len(r) for r in rows}
    if widths == {1}:
        vals = np.sort(np.array([float(r[0]) for r in rows]))
        if len(vals) < 2:
            raise SizeSpecError(f"{where}: a one-column file needs at least 2 sizes")
        if np.any(vals < 1) or np.any(vals != np.round(vals)):
            raise SizeSpecError(f"{where}: sizes must be integers >= 1")
        pct = np.linspace(0.0, 100.0, len(vals))
        return tuple((float(p), int(v)) for p, v in zip(pct, vals, strict=True))
    if widths != {2}:
        raise SizeSpecError(f"{where}: expected 2 columns (percentile,size) on every row")
    out = []
    for r in rows:
        size = float(r[1])
        if size != round(size):
            raise SizeSpecError(f"{where}: size {r[1]} at p{r[0]} is not an integer")
        out.append((float(r[0]), int(size)))
    pts = tuple(out)
    try:
        _validate_points(pts)
    except SizeSpecError as e:
        raise SizeSpecError(f"{where}: {e}") from None
    return pts


def load_percentiles(path: str | Path, cap: int = DEFAULT_CAP) -> Percentiles:
    """A `Percentiles` distribution from a CSV file (see `read_percentiles`)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SizeSpecError(f"size file '{path}': {e.strerror or e}") from None
    return Percentiles(read_percentiles(text, str(path)), cap=cap, source=f"file:{path}")


def production(cap: int = DEFAULT_CAP) -> Percentiles:
    """The default production-like, heavy-tailed size distribution (max 1000 items)."""
    text = resources.files("recsched.workload").joinpath("data/production_sizes.csv").read_text()
    return Percentiles(read_percentiles(text, "production_sizes.csv"), cap=cap, source="production")


def parse_sizes(spec: str = "production", cap: int = DEFAULT_CAP) -> SizeDist:
    """`production` (default), `fixed:N`, `normal:MEAN:STD`, `lognormal:MEDIAN:SIGMA`,
    `file:PATH`; every distribution is capped at `cap` items."""
    spec = (spec or "production").strip()
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    if kind == "file":
        if not rest:
            raise SizeSpecError("size spec 'file:PATH' needs a path")
        return load_percentiles(rest, cap)
    args = rest.split(":") if rest else []
    want = {"production": 0, "fixed": 1, "normal": 2, "lognormal": 2}
    if kind not in want:
        raise SizeSpecError(
            f"size spec '{spec}': unknown kind '{kind}' "
            "(production, fixed:N, normal:MEAN:STD, lognormal:MEDIAN:SIGMA, file:PATH)"
        )
    if len(args) != want[kind]:
        raise SizeSpecError(f"size spec '{spec}': '{kind}' takes {want[kind]} number(s)")
    try:
        nums = [float(a) for a in args]
    except ValueError:
        raise SizeSpecError(f"size spec '{spec}': arguments must be numbers") from None
    if kind == "production":
        return production(cap)
    if kind == "fixed":
        if nums[0] != int(nums[0]):
            raise SizeSpecError(f"size spec '{spec}': fixed size must be an integer")
        return Fixed(int(nums[0]), cap)
    if kind == "normal":
        return Normal(nums[0], nums[1], cap)
    return LogNormal(nums[0], nums[1], cap)
