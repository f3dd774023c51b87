"""Predicted engine work of a query, for admission by predicted wait (`admission.py`).

`QueryCost(n_items)` is the lane-seconds a query of `n_items` adds to the engine: the cost
model's whole-model latency (`CostModel.whole_s`, interpolated in the profile's batch sizes)
under the engine's request policy: `whole` runs a query as one batch (`whole_s(n)`); `split`,
`dynamic` and `tuned` cut it into batches of `batch_size` and merge small ones, so under load
a query costs its share of full batches, `n * whole_s(batch_size) / batch_size`.

The profile measures a model alone on an idle core; serving, lanes share caches and memory
bandwidth. `finished` compares the lanes' measured busy time with the predicted cost of the
work they finished and scales the predictions by the ratio (a moving average, clamped).

Pure: no engine, no clock; the server feeds it numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from recsched.config import EngineConfig
from recsched.graph.cost import interpolate

MIN_SCALE, MAX_SCALE = 0.25, 4.0


def whole_s_from_profile(profile: Mapping[str, Any]) -> Callable[[int], float]:
    """`n -> seconds` of one whole-model forward, from a profile (`recsched profile`).

    The same interpolation as `CostModel.whole_s`, without building the operator graph.
    """
    order = sorted(range(len(profile["batch_sizes"])), key=lambda k: profile["batch_sizes"][k])
    sizes: Sequence[float] = [float(profile["batch_sizes"][k]) for k in order]
    secs: Sequence[float] = [max(float(profile["whole_ms"][k]), 0.0) * 1e-3 for k in order]
    assert sizes, "a profile has at least one batch size"
    return lambda n: interpolate(sizes, secs, float(n))


class QueryCost:
    """Predicted lane-seconds of a query of `n` items under `config`, scaled by `finished`."""

    def __init__(
        self,
        whole_s: Callable[[int], float],
        config: EngineConfig,
        alpha: float = 0.3,
        min_s: float = 0.2,
    ) -> None:
        assert 0.0 < alpha <= 1.0 and min_s > 0
        self.whole_s = whole_s
        self.alpha = alpha
        self.min_s = min_s
        self.scale = 1.0
        self.reconfigure(config)

    def reconfigure(self, config: EngineConfig) -> None:
        """Follow a new engine configuration (request policy, batch size; a new engine)."""
        self._busy0: float | None = None  # lanes' busy seconds when `_predicted` was reset
        self._predicted = 0.0  # unscaled predicted lane-seconds finished since then
        self.whole = config.request == "whole"
        self.batch = max(1, int(config.batch_size))
        self.per_item = self.whole_s(self.batch) / self.batch

    def base(self, n: int) -> float:
        """Unscaled prediction (the profile's figures)."""
        return self.whole_s(n) if self.whole else n * self.per_item

    def __call__(self, n: int) -> float:
        return self.scale * self.base(n)

    def finished(self, n: int, busy_s: Callable[[], float]) -> None:
        """A query of `n` items finished. Once `min_s` of predicted work has finished,
        `busy_s()` (the lanes' cumulative busy seconds) is read and the scale moves toward
        measured / predicted over that stretch."""
        self._predicted += self.base(n)
        if self._predicted < self.min_s:
            return
        busy = busy_s()
        if self._busy0 is not None and busy >= self._busy0:
            ratio = min(MAX_SCALE, max(MIN_SCALE, (busy - self._busy0) / self._predicted))
            self.scale = (1 - self.alpha) * self.scale + self.alpha * ratio
        self._busy0, self._predicted = busy, 0.0
