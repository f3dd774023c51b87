"""Measuring a model on this machine: per-operator latency profiles and the throughput peak.

`profile_model` times, per batch size, the whole forward and every operator at each
granularity (warm-up, then the median of `repeats`), the op-by-op run, and from those the
per-operator dispatch overhead. Its JSON (`save_profile` / `load_profile`):

    {"model", "scale", "threads", "machine": {...}, "batch_sizes": [...], "whole_ms": [...],
     "granularities": {"coarse": {"ops": {op name: [ms per batch size]}, "dispatch_us": float,
                                  "run_ms": [...], "dispatch_diff_us": float,
                                  "dispatch_us_per_batch": [...], "n_ops": int},
                       "fine": {...}}}

`dispatch_us` is the graph runner's own cost per operator: the median over ops of
`run_ops(env, [op])` minus the bare op call, at the smallest batch (a null op's cost; stable).
`dispatch_diff_us` is `(run_ms - sum of op ms) / n_ops`, the median over batch sizes up to
`SMALL_BATCH` (timed with 4x the repeats): it adds the env and output handling but is noisy, and
at larger batches (`dispatch_us_per_batch`) it is dominated by the cache misses an op meets in a
full run but not when timed alone in a loop. Ops are timed alone, repeatedly: a warm-cache
figure.

`measure_peak` is the offline throughput limit: items/s at the best batch size with every
core busy, trying both one worker with all cores as torch threads and one worker per core with
one torch thread each, each point the best of a few rounds.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from recsched.graph.fx import OpGraph, build_graph
from recsched.models.base import ModelAdapter

DEFAULT_BATCHES = (1, 4, 16, 64, 256, 1024)
PEAK_BATCHES = (16, 64, 256, 1024)
SMALL_BATCH = 4  # dispatch overhead is read at batch sizes up to this (where it matters)


@contextmanager
def torch_threads(n: int | None):
    """Set torch's intra-op thread count for a block (None: leave it)."""
    old = torch.get_num_threads()
    if n is not None:
        assert n >= 1, "at least one thread"
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of `fn()` in ms, after `warmup` untimed calls."""
    assert repeats >= 1 and warmup >= 0
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


COLD_INPUTS = 4  # distinct input batches a timing cycles through


def cycling(forward: Callable, inputs: Sequence[dict]) -> Callable[[], object]:
    """A call of `forward` on the next of `inputs` each time. Served queries look up rows the
    previous batch did not (Zipf, but over 100K+ rows per table): timing one batch again and
    again keeps its embedding rows in cache and flatters the model (up to ~1.7x for rmc1)."""
    state = {"i": 0}

    def call() -> object:
        x = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        return forward(x)

    return call


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _profile_graph(
    graph: OpGraph, inputs_by_batch: Sequence[dict], repeats: int, warmup: int
) -> dict[str, Any]:
    """Per-op and op-by-op timings of one graph at each batch size."""
    n = len(graph)
    ops: dict[str, list[float]] = {op.name: [] for op in graph.info.ops}
    run_ms, per_batch_us = [], []
    null_us: list[float] = []
    for bi, inputs in enumerate(inputs_by_batch):
        small = _rows(inputs) <= SMALL_BATCH
        reps = repeats * 4 if small else repeats  # cheap, and where dispatch matters
        env = graph.new_env(inputs)
        graph.run_ops(env, range(n))
        total = 0.0
        for op in graph.info.ops:
            ms = median_ms(graph.op_callable(env, op.idx), reps, warmup)
            ops[op.name].append(ms)
            total += ms
            if bi == 0:
                full = median_ms(lambda i=op.idx, e=env: graph.run_ops(e, [i]), reps, warmup)
                null_us.append((full - ms) * 1e3)
        run = median_ms(lambda x=inputs: graph.run(x), reps, warmup)
        run_ms.append(run)
        per_batch_us.append((run - total) / n * 1e3)
    rows = [_rows(x) for x in inputs_by_batch]
    small = [us for us, b in zip(per_batch_us, rows, strict=True) if b <= SMALL_BATCH]
    return {
        "n_ops": n,
        "ops": ops,
        "run_ms": run_ms,
        "dispatch_us": max(statistics.median(null_us), 0.0),
        "dispatch_diff_us": statistics.median(small or per_batch_us),
        "dispatch_us_per_batch": per_batch_us,
    }


def _others(adapter: ModelAdapter, rows: int, seed: int) -> list[dict]:
    """`COLD_INPUTS - 1` more input batches of `rows` rows, other seeds."""
    return [adapter.make_inputs(rows, seed + 1 + k) for k in range(COLD_INPUTS - 1)]


def _rows(inputs: dict) -> int:
    return int(next(iter(inputs.values())).shape[0])


def profile_model(
    adapter: ModelAdapter,
    batch_sizes: Sequence[int] = DEFAULT_BATCHES,
    granularities: Sequence[str] = ("coarse", "fine"),
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    scale: str | None = None,
    seed: int = 0,
    compiled: bool = True,
    rounds: int = 1,
) -> dict[str, Any]:
    """Measure whole-model and per-operator latency (ms) at each batch size. See the module
    docstring for the format; `threads` sets torch's intra-op threads while measuring.
    `compiled`: time the whole model with the forward the engine serves (TorchScript).
    `rounds` > 1 measures it all that many times and keeps each figure's smallest
    (`fastest_of`): another process's burst of load only ever makes a measurement slower."""
    if rounds > 1:
        kw = dict(batch_sizes=batch_sizes, granularities=granularities, repeats=repeats,
                  warmup=warmup, threads=threads, scale=scale, seed=seed,
                  compiled=compiled)  # fmt: skip
        return fastest_of([profile_model(adapter, **kw) for _ in range(rounds)])
    sizes = sorted({int(b) for b in batch_sizes})
    assert sizes and sizes[0] >= 1, "batch sizes are positive"
    graphs = {g: build_graph(adapter, g) for g in granularities}
    inputs = [adapter.make_inputs(b, seed) for b in sizes]
    forward = adapter.runner(compiled)
    with torch_threads(threads) as n_threads, torch.inference_mode():
        whole = [
            median_ms(cycling(forward, [x, *_others(adapter, _rows(x), seed)]), repeats, warmup)
            for x in inputs
        ]
        per_gran = {
            g: _profile_graph(graph, inputs, repeats, warmup) for g, graph in graphs.items()
        }
    return {
        "model": adapter.name,
        "scale": scale or str(adapter.info.get("scale", "unknown")),
        "threads": n_threads,
        "repeats": repeats,
        "warmup": warmup,
        "machine": machine(),
        "forward": adapter.compiled().kind if compiled else "eager",
        "batch_sizes": sizes,
        "whole_ms": whole,
        "granularities": per_gran,
    }


def fastest_of(profiles: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One profile from several of the same model, batch sizes and granularities: each
    timing (the whole forward, every operator, the op-by-op run, the dispatch cost) the
    smallest of theirs; "rounds" says how many."""
    assert profiles, "at least one profile"

    def low(key: str, parts: Sequence[dict[str, Any]]) -> list[float]:
        return [min(v) for v in zip(*(p[key] for p in parts), strict=True)]

    out = json.loads(json.dumps(profiles[0]))  # a deep copy
    out["whole_ms"] = low("whole_ms", profiles)
    for g, gran in out["granularities"].items():
        parts = [p["granularities"][g] for p in profiles]
        gran["run_ms"] = low("run_ms", parts)
        gran["dispatch_us"] = min(p["dispatch_us"] for p in parts)
        for name in gran["ops"]:
            gran["ops"][name] = low(name, [p["ops"] for p in parts])
    out["rounds"] = len(profiles)
    return out


def save_profile(profile: dict[str, Any], path: str | Path) -> None:
    """Write a profile as JSON (creating the parent directory)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(profile, indent=1, sort_keys=False) + "\n")


def load_profile(path: str | Path) -> dict[str, Any]:
    """Read a profile written by `save_profile`, checking its shape."""
    prof = json.loads(Path(path).read_text())
    for key in ("model", "threads", "batch_sizes", "whole_ms", "granularities"):
        if key not in prof:
            raise ValueError(f"{path}: not a recsched profile (no {key!r})")
    n = len(prof["batch_sizes"])
    assert len(prof["whole_ms"]) == n, f"{path}: whole_ms has {len(prof['whole_ms'])} values"
    for g, gp in prof["granularities"].items():
        bad = [k for k, v in gp["ops"].items() if len(v) != n]
        assert not bad, f"{path}: {g} ops {bad[:3]} do not have {n} values"
    return prof


# ---------------------------------------------------------------- peak


def _throughput(
    forward: Callable, inputs: Sequence[dict], workers: int, duration_s: float
) -> float:
    """Items/s of `workers` threads each running `forward` for `duration_s`, cycling
    through `inputs` (distinct batches of equal size, see `cycling`)."""
    rows = _rows(inputs[0])
    with torch.inference_mode():
        forward(inputs[0])  # warm-up
    done = [0] * workers
    ends = [0.0] * workers
    start = time.perf_counter()
    deadline = start + duration_s

    def work(w: int) -> None:
        call = cycling(forward, inputs[w % len(inputs) :] + inputs[: w % len(inputs)])
        with torch.inference_mode():
            while True:
                call()
                done[w] += 1
                ends[w] = time.perf_counter()
                if ends[w] >= deadline:
                    return

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) * rows / (max(ends) - start)


def measure_peak(
    adapter: ModelAdapter,
    batch_sizes: Sequence[int] = PEAK_BATCHES,
    duration_s: float = 1.0,
    workers: int | None = None,
    seed: int = 0,
    compiled: bool = True,
    rounds: int = 3,
) -> dict[str, Any]:
    """The offline throughput limit: best items/s over batch sizes and over two ways of using
    `workers` cores (1 worker x N torch threads, N workers x 1 thread), with the forward the
    engine serves (TorchScript unless `compiled=False`).

    Each point is the best of `rounds` measurements, the rounds going over every point in
    turn: a limit is what the machine can do, and on a shared machine a single measurement
    was often a slow spell's (a served engine then ran above its "peak")."""
    assert rounds >= 1
    forward = adapter.runner(compiled)
    n = workers or os.cpu_count() or 1
    configs = {f"1x{n}": (1, n)} if n == 1 else {f"1x{n}": (1, n), f"{n}x1": (n, 1)}
    per_config: dict[str, dict[str, float]] = {name: {} for name in configs}
    inputs = {
        b: [adapter.make_inputs(int(b), seed + k) for k in range(COLD_INPUTS)]
        for b in sorted(set(batch_sizes))
    }
    for _ in range(rounds):
        for b, xs in inputs.items():
            for name, (w, t) in configs.items():
                with torch_threads(t):
                    v = _throughput(forward, xs, w, duration_s)
                per_config[name][str(b)] = max(v, per_config[name].get(str(b), 0.0))
    per_batch = {b: max(c[b] for c in per_config.values()) for b in per_config[f"1x{n}"]}
    best_batch = max(per_batch, key=per_batch.get)
    best_config = max(configs, key=lambda c: per_config[c][best_batch])
    return {
        "model": adapter.name,
        "peak_items_per_s": per_batch[best_batch],
        "best_batch": int(best_batch),
        "best_config": best_config,
        "forward": adapter.compiled().kind if compiled else "eager",
        "cores": n,
        "duration_s": duration_s,
        "rounds": rounds,
        "per_batch": per_batch,
        "per_config": per_config,
        "machine": machine(),
    }
