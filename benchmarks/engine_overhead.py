"""Engine overhead per query at batch 1, over the bare model forward.

One query at a time (closed loop, so no queueing) through `Engine.submit`, for a model and
preset; compares with the bare `model(x)` on one intra-op thread. Reports medians and p99 of:
  bare      the forward alone
  internal  submit() called -> the engine's completion hook (QueryResult.done_s)
  roundtrip submit() called -> the caller's `future.result()` returns

    python benchmarks/engine_overhead.py --model rmc1 --n 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from recsched.config import preset
from recsched.engine import Engine
from recsched.models.registry import load_model
from recsched.types import Query


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--preset", default="baseline")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--json")
    a = ap.parse_args()
    ad = load_model(a.model)
    x = ad.make_inputs(1, 0)
    torch.set_num_threads(1)
    with torch.inference_mode():
        for _ in range(50):
            ad.module(x)
        bare = []
        for _ in range(a.n):
            t = time.perf_counter()
            ad.module(x)
            bare.append(time.perf_counter() - t)
    done: dict[int, float] = {}
    cfg = preset(a.preset, lanes=1, threads_per_lane=1, batch_size=64, merge_delay_ms=0.0)
    internal, roundtrip = [], []
    with Engine(
        ad, cfg, validate=False, on_complete=lambda r: done.__setitem__(r.qid, r.done_s)
    ) as eng:
        for i in range(50):
            eng.submit(Query(-1 - i, ad.name, 1), x).result()
        for i in range(a.n):
            t = time.perf_counter()
            eng.submit(Query(i, ad.name, 1, arrival_s=t), x).result()
            t_end = time.perf_counter()
            internal.append(done[i] - t)
            roundtrip.append(t_end - t)

    def stats(v: list[float]) -> dict:
        return {
            "median_us": statistics.median(v) * 1e6,
            "p99_us": float(np.percentile(v, 99)) * 1e6,
        }

    r = {
        "model": a.model,
        "preset": a.preset,
        "bare": stats(bare),
        "internal": stats(internal),
        "roundtrip": stats(roundtrip),
    }
    r["overhead_internal_median_us"] = r["internal"]["median_us"] - r["bare"]["median_us"]
    r["overhead_roundtrip_median_us"] = r["roundtrip"]["median_us"] - r["bare"]["median_us"]
    print(json.dumps(r, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
