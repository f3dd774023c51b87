"""Synthetic inputs: standard-normal dense features and Zipf-distributed embedding ids.

Production embedding accesses are power-law: a few rows take most lookups. Each table draws
row ranks from Zipf(`s`) over its rows (P(rank r) proportional to 1/(r+1)^s, exact CDF), then
maps ranks to rows by a per-table bijection `row = (rank * a + b) mod rows`, so the hot rows
are scattered over the table and differ between tables.

Speed: a query of 10k items of rmc2 needs 38M ids. Drawing each by inverse CDF costs seconds,
so each table keeps a fixed *pool* of `P` i.i.d. Zipf draws (made once, at construction), and a
bag of `L` lookups is `L` consecutive pool entries from a random offset: one gather of
contiguous windows per input. The ids then follow the pool's empirical distribution (close to
Zipf for P >> rows at small scale; at paper scale a table touches at most P = 2^20 rows).
Everything is seeded: the pools by the table's identity, the offsets by `make_inputs`'s seed.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recsched.models.base import Inputs, InputSpec

POOL_MIN = 1 << 12
POOL_MAX = 1 << 20


@dataclass(frozen=True)
class IdSource:
    """An index input holding embedding ids: `tables` tables of `rows` rows, `lookups` each.

    The input's per-item shape holds `len(tables) * lookups` ids, table-major: table `tables[t]`
    reads ids `[t * lookups, (t + 1) * lookups)` of the flattened item.
    """

    input: str
    tables: tuple[str, ...]
    rows: int
    lookups: int

    def __post_init__(self) -> None:
        assert self.tables and self.rows > 0 and self.lookups > 0, self


def pool_size(rows: int) -> int:
    """Pool entries per table: twice the rows, within [2^12, 2^20]."""
    return int(min(POOL_MAX, max(POOL_MIN, 2 * rows)))


@functools.lru_cache(maxsize=2)
def zipf_cdf(rows: int, s: float) -> np.ndarray:
    """CDF of Zipf(s) over ranks `0..rows-1`: float64 `[rows]`, last entry 1.

    Computed once per (rows, s) for the rank pool (which is what stays cached)."""
    assert rows > 0 and s >= 0, (rows, s)
    w = np.arange(1, rows + 1, dtype=np.float64) ** (-float(s))
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


@functools.lru_cache(maxsize=16)
def _rank_pool(rows: int, s: float, size: int) -> np.ndarray:
    """`size` i.i.d. Zipf ranks (int64), fixed for (rows, s, size). Cached, shared by tables."""
    rng = np.random.default_rng([rows, size, int(round(s * 1_000_000))])
    ranks = np.searchsorted(zipf_cdf(rows, s), np.sort(rng.random(size)), side="right")
    return np.minimum(ranks, rows - 1)[rng.permutation(size)]


def _bijection(rows: int, key: str) -> tuple[int, int]:
    """Per-table `(a, b)` with gcd(a, rows) = 1: `rank -> (rank * a + b) % rows` is a bijection."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    if rows == 1:
        return 1, 0
    while True:
        a = int(rng.integers(1, rows))
        if math.gcd(a, rows) == 1:
            return a, int(rng.integers(0, rows))


def table_pool(rows: int, s: float, key: str) -> np.ndarray:
    """The ids pool of one table (int64 `[P]`): Zipf ranks scattered by the table's bijection."""
    a, b = _bijection(rows, key)
    return (_rank_pool(rows, s, pool_size(rows)) * a + b) % rows


class _IdInput:
    """Draws one id input: windows of `lookups` consecutive pool entries, one per table."""

    def __init__(self, src: IdSource, spec: InputSpec, s: float, key: str) -> None:
        assert spec.kind == "index" and spec.dtype == torch.int64, spec
        assert spec.numel == len(src.tables) * src.lookups, (spec, src)
        assert spec.low == 0 and spec.high == src.rows, (spec, src)
        self.shape = spec.shape
        self.tables = len(src.tables)
        self.lookups = L = src.lookups
        self.pool = pool_size(src.rows)
        # Each table's pool, padded with its first L-1 entries so every offset has a window.
        parts = []
        for name in src.tables:
            p = table_pool(src.rows, s, f"{key}/{name}")
            parts.append(np.concatenate([p, p[: L - 1]]))
        self.flat = torch.from_numpy(np.concatenate(parts))
        self.stride = self.pool + L - 1
        self.windows = self.flat.as_strided((self.flat.numel() - L + 1, L), (1, 1))
        self.table_base = torch.arange(self.tables, dtype=torch.int64) * self.stride

    def draw(self, n: int, g: torch.Generator) -> torch.Tensor:
        """`[n, *shape]` int64 ids."""
        starts = torch.randint(0, self.pool, (n, self.tables), generator=g) + self.table_base
        out = self.windows.index_select(0, starts.reshape(-1))
        return out.view(n, *self.shape)


class InputMaker:
    """`make_inputs(n, seed)` for a model: deterministic in `(n, seed)`, vectorised.

    dense inputs: N(0, 1) float32. Id inputs (`sources`): Zipf(`zipf`) as above. Other index
    inputs (sequence lengths): uniform in the spec's `[low, high)`.
    """

    def __init__(
        self,
        specs: Sequence[InputSpec],
        sources: Sequence[IdSource],
        zipf: float = 1.05,
        key: str = "",
    ) -> None:
        if not (zipf >= 0 and math.isfinite(zipf)):
            raise ValueError(f"zipf exponent must be finite and >= 0, got {zipf}")
        self.specs = tuple(specs)
        by_name = {s.name: s for s in self.specs}
        unknown = [src.input for src in sources if src.input not in by_name]
        assert not unknown, f"id sources without an input spec: {unknown}"
        self.zipf = float(zipf)
        self.ids = {src.input: _IdInput(src, by_name[src.input], zipf, key) for src in sources}

    def __call__(self, n: int, seed: int = 0) -> Inputs:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        g = torch.Generator().manual_seed(int(seed))
        out: Inputs = {}
        for spec in self.specs:
            if spec.name in self.ids:
                out[spec.name] = self.ids[spec.name].draw(n, g)
            elif spec.kind == "dense":
                out[spec.name] = torch.randn((n, *spec.shape), generator=g, dtype=spec.dtype)
            else:
                assert spec.high is not None, f"index input {spec.name} needs an upper bound"
                shape = (n, *spec.shape)
                out[spec.name] = torch.randint(spec.low, spec.high, shape, generator=g).to(
                    spec.dtype
                )
        return out
