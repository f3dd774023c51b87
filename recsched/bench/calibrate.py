"""Machine-specific figures, measured once and cached: a query's latency alone (for
`--sla-x`), the peak throughput, operator profiles and tuned configurations.

The cache lives in `$RECSCHED_CACHE` (default `~/.cache/recsched`), one JSON file per figure,
keyed by a fingerprint of the machine (cores, CPU model, torch version) so a file measured
elsewhere is never reused by mistake.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recsched.metrics.report import write_json
from recsched.models.base import ModelAdapter


def cache_dir() -> Path:
    d = Path(os.environ.get("RECSCHED_CACHE", Path.home() / ".cache" / "recsched"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def machine_fingerprint() -> str:
    """Short hash of what makes timings comparable: cores, CPU model, torch version."""
    from recsched.bench.tuning import machine_fingerprint as facts

    key = json.dumps(facts(), sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def cached(name: str, compute: Callable[[], Any], refresh: bool = False) -> Any:
    """Return the cached JSON figure `name` for this machine, computing it when missing."""
    path = cache_dir() / f"{name}.{machine_fingerprint()}.json"
    value = None if refresh else peek(name)
    if value is not None:
        return value
    value = compute()
    write_json(value, path)
    return value


def peek(name: str) -> Any | None:
    """The cached JSON figure `name` for this machine, or None (missing or torn); never
    measures."""
    path = cache_dir() / f"{name}.{machine_fingerprint()}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def model_key(adapter: ModelAdapter) -> str:
    """Model, scale and the forward served (`ts`: TorchScript, `eager`: its fallback); `c`:
    timed on cycling (cache-cold) inputs."""
    scale = adapter.info.get("scale", "custom")
    forward = "ts" if adapter.compiled().kind == "torchscript" else "eager"
    return f"{adapter.name}-{scale}-{forward}c"


@torch.inference_mode()
def alone_ms(adapter: ModelAdapter, n_items: int, threads: int = 1, repeats: int = 15) -> float:
    """Median latency (ms) of one served (compiled) forward of `n_items` rows with `threads`
    intra-op threads."""
    from recsched.graph.profile import COLD_INPUTS, cycling

    xs = [adapter.make_inputs(n_items, 123 + k) for k in range(COLD_INPUTS)]
    call = cycling(adapter.runner(), xs)  # other rows each time, as served queries
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(3):
            call()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return statistics.median(times) * 1e3


def sla_from_x(adapter: ModelAdapter, k: float, median_items: int, threads: int = 1) -> float:
    """`--sla-x K`: K times the latency of a median-size query run alone on one lane (ms)."""
    key = f"alone-{model_key(adapter)}-n{median_items}-t{threads}"
    ms = cached(key, lambda: {"ms": alone_ms(adapter, median_items, threads)})["ms"]
    return k * ms


PROFILE_ROUNDS = 3  # measurements behind a cached profile, each figure the smallest


def profile_key(adapter: ModelAdapter, threads: int = 1) -> str:
    """The cache name of `profile`'s entry (the simulator's serving-corrected one extends it)."""
    return f"profile-{model_key(adapter)}-t{threads}-r{PROFILE_ROUNDS}"


def peak(adapter: ModelAdapter, refresh: bool = False) -> dict:
    """`recsched peak`: the offline throughput limit (cached)."""
    from recsched.graph.profile import measure_peak

    return cached(peak_key(adapter), lambda: measure_peak(adapter), refresh)


def peak_key(adapter: ModelAdapter) -> str:
    """The cache name of `peak`'s entry ("-r3": best of three rounds per point; single-round
    peaks cached before read low)."""
    return f"peak-{model_key(adapter)}-r3"


def profile(adapter: ModelAdapter, threads: int = 1, refresh: bool = False, **kw: Any) -> dict:
    """`recsched profile` at the default batch sizes, with a lane's intra-op thread count
    (one by default, as the default lanes run), each figure the smallest of `PROFILE_ROUNDS`
    measurements (a slow spell of the machine would otherwise stay in the cache), cached. A
    model torch.fx cannot trace is profiled whole only (no operators: the `model`
    granularity)."""
    from recsched.graph.fx import traceable
    from recsched.graph.profile import profile_model

    def measure() -> dict:
        if "granularities" not in kw and not traceable(adapter):
            kw["granularities"] = ()
        kw.setdefault("rounds", PROFILE_ROUNDS)
        return profile_model(adapter, threads=threads, **kw)

    return cached(profile_key(adapter, threads), measure, refresh)
