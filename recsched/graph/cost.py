"""Cost model: predicted seconds of an operator, or of the whole model, at a batch size.

Two sources. `from_profile` reads a profile (`recsched.graph.profile`) and interpolates
linearly in the batch size between measured sizes; past the largest it extends the line
through the last two points (its slope floored at 0, so noise cannot make larger batches
cheaper); below the smallest it extends the line through the first two points. Predictions are
never negative. `analytic` needs no measurement: a roofline per op, `max(flops / flops_per_s,
bytes / bytes_per_s) + op_fixed_s`, used by tests and by the simulator.

Pure Python (no torch), frozen and picklable: the schedulers and the simulator hold one.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recsched.graph.ops import GraphInfo


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear `y(x)` through the points `(xs, ys)` (xs strictly increasing).

    Beyond the last point: the line through the last two, with a slope of at least 0. Before
    the first: the line through the first two. One point: a constant. Never below 0.
    """
    n = len(xs)
    assert n == len(ys) and n > 0, "as many ys as xs, at least one"
    if n == 1:
        return max(float(ys[0]), 0.0)
    if x >= xs[-1]:
        slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0)
        return max(ys[-1] + slope * (x - xs[-1]), 0.0)
    j = max(bisect.bisect_right(xs, x), 1)  # xs[j-1] <= x < xs[j], or j == 1 before xs[0]
    x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
    return max(y0 + (y1 - y0) * (x - x0) / (x1 - x0), 0.0)


@dataclass(frozen=True)
class CostModel:
    """Predicted op and whole-model latencies of one model at one granularity (seconds).

    `dispatch_s` (an attribute) is the extra time per operator when the model runs op by op
    as separate tasks (Python dispatch, argument lookup): what a schedule that issues ops one at
    a time pays on top of `op_s`.
    """

    graph: GraphInfo
    dispatch_s: float
    batch_sizes: tuple[int, ...] = ()
    op_table: tuple[tuple[float, ...], ...] = ()  # seconds, [op][batch size]
    whole_table: tuple[float, ...] = ()  # seconds, [batch size]
    flops_per_s: float = 0.0  # analytic only
    bytes_per_s: float = 0.0
    op_fixed_s: float = 0.0
    source: str = "profile"

    def __post_init__(self) -> None:
        assert self.dispatch_s >= 0, "dispatch time is not negative"
        assert self.source in ("profile", "analytic"), self.source
        if self.source == "profile":
            assert self.batch_sizes, "a profile has at least one batch size"
            assert list(self.batch_sizes) == sorted(set(self.batch_sizes)), "sorted, distinct"
            assert len(self.op_table) == len(self.graph.ops), "one row per op"
            rows = [*self.op_table, self.whole_table]
            assert all(len(r) == len(self.batch_sizes) for r in rows), "one value per size"
        else:
            assert self.flops_per_s > 0 and self.bytes_per_s > 0, "positive machine rates"

    @classmethod
    def from_profile(
        cls, profile: Mapping[str, Any], granularity: str, graph: GraphInfo
    ) -> CostModel:
        """Read a profile dict (`profile_model` / `load_profile`) for `graph`'s ops. The
        `model` granularity's one op costs the whole forward (`whole_ms`), with no dispatch."""
        if granularity == "auto":
            raise ValueError(
                "granularity `auto` is chosen before a cost model is built "
                "(recsched.sched.opstream.resolve_granularity)"
            )
        if granularity == "model" and "model" not in profile["granularities"]:
            one = {"ops": {op.name: profile["whole_ms"] for op in graph.ops}, "dispatch_us": 0.0}
            profile = {**profile, "granularities": {**profile["granularities"], "model": one}}
        if granularity not in profile["granularities"]:
            raise KeyError(f"the profile of {profile.get('model')} has no {granularity!r} ops")
        if graph.granularity != granularity:
            raise ValueError(f"graph is {graph.granularity}, profile asked for {granularity}")
        g = profile["granularities"][granularity]
        order = sorted(range(len(profile["batch_sizes"])), key=lambda k: profile["batch_sizes"][k])
        sizes = tuple(int(profile["batch_sizes"][k]) for k in order)
        missing = [op.name for op in graph.ops if op.name not in g["ops"]]
        if missing:
            raise KeyError(
                f"profile of {profile.get('model')} lacks ops {missing[:5]} (made for another "
                "version of the model? profile it again)"
            )

        def secs(ms: Sequence[float]) -> tuple[float, ...]:
            assert len(ms) == len(sizes), "one value per batch size"
            return tuple(max(float(ms[k]), 0.0) * 1e-3 for k in order)

        return cls(
            graph=graph,
            dispatch_s=max(float(g.get("dispatch_us", 0.0)), 0.0) * 1e-6,
            batch_sizes=sizes,
            op_table=tuple(secs(g["ops"][op.name]) for op in graph.ops),
            whole_table=secs(profile["whole_ms"]),
            source="profile",
        )

    @classmethod
    def analytic(
        cls,
        graph: GraphInfo,
        flops_per_s: float = 20e9,
        bytes_per_s: float = 5e9,
        dispatch_s: float = 20e-6,
        op_fixed_s: float = 5e-6,
    ) -> CostModel:
        """A roofline cost from the graph's FLOPs and bytes (defaults: one CPU core)."""
        return cls(
            graph=graph,
            dispatch_s=dispatch_s,
            flops_per_s=flops_per_s,
            bytes_per_s=bytes_per_s,
            op_fixed_s=op_fixed_s,
            source="analytic",
        )

    def op_s(self, op_idx: int, batch: int) -> float:
        """Predicted seconds of op `op_idx` run alone on `batch` items."""
        if self.source == "analytic":
            op = self.graph.ops[op_idx]
            return self.op_fixed_s + max(
                op.flops(batch) / self.flops_per_s, op.bytes(batch) / self.bytes_per_s
            )
        return interpolate(self.batch_sizes, self.op_table[op_idx], batch)

    def ops_s(self, ops: Sequence[int], batch: int) -> float:
        """Sum of `op_s` over `ops` (no dispatch)."""
        return sum(self.op_s(i, batch) for i in ops)

    def whole_s(self, batch: int) -> float:
        """Predicted seconds of one whole-model forward on `batch` items."""
        if self.source == "analytic":
            return self.ops_s(range(len(self.graph.ops)), batch)
        return interpolate(self.batch_sizes, self.whole_table, batch)

    def upward_rank(self, batch: int) -> list[float]:
        """HEFT upward rank of every op at `batch`, in seconds, dispatch included."""
        return self.graph.upward_rank(lambda i: self.op_s(i, batch) + self.dispatch_s)
