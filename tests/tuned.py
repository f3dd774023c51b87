"""Test helper: a configuration stored as what `recsched tune` cached for a setup."""

from __future__ import annotations

from typing import Any

from recsched.bench import calibrate
from recsched.bench.tune import cache_key_sizes
from recsched.bench.tuning import TuneCache, TuneResult
from recsched.config import EngineConfig, preset
from recsched.sched.tuner import Measurement


def cache_tuned(setup: Any, best: EngineConfig | dict[str, Any], qps: float = 123.0) -> None:
    """Store `best` (a configuration, or knobs over the `deeprecsched` preset) as the tuned
    configuration for `setup`'s model, scale, SLA and workload, in the current cache
    (`RECSCHED_CACHE`)."""
    start = preset("deeprecsched")
    if isinstance(best, dict):
        best = EngineConfig(**{**start.to_dict(), **best})
    result = TuneResult(best, Measurement(qps, 5.0, setup.sla_ms, True), [], 3, 8, 0.0)
    key = cache_key_sizes(setup, start)
    TuneCache(calibrate.cache_dir() / "tuned").put(
        setup.adapter.name, setup.scale, setup.sla_ms, key, result
    )
