"""What one query costs the engine outside the model, on this machine.

Two figures: the round trip of a value between two threads through `queue.SimpleQueue` (what
every hand-off to an idle lane or waiter costs: a futex wake-up and a reschedule, expensive on
a VM), and the engine's wall time per query in a closed loop whose forward returns zeros at
once (`--depth` queries in flight; production sizes; `whole` and `dynamic` request levels),
so what is measured is submit, scheduling, lanes' bookkeeping, scatter and futures.

    python benchmarks/engine_per_query.py --json benchmarks/results/engine_per_query.json
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time

import numpy as np
import torch

from recsched.bench.run import InputPool
from recsched.config import EngineConfig
from recsched.engine import SWITCH_INTERVAL_S, Engine
from recsched.models.registry import load_model
from recsched.types import Query
from recsched.workload.sizes import parse_sizes


def ping_pong_us(n: int) -> float:
    """Mean round trip (us) of one value between two threads through two SimpleQueues."""
    a: queue.SimpleQueue = queue.SimpleQueue()
    b: queue.SimpleQueue = queue.SimpleQueue()

    def echo() -> None:
        for _ in range(n):
            b.put(a.get())

    t = threading.Thread(target=echo)
    t.start()
    t0 = time.perf_counter()
    for i in range(n):
        a.put(i)
        b.get()
    dt = time.perf_counter() - t0
    t.join()
    return dt / n * 1e6


def null_forward_us(model: str, request: str, depth: int, n: int, seed: int = 0) -> float:
    """Wall us per query of an engine whose forward returns zeros, `depth` queries in flight."""
    ad = load_model(model)
    cfg = EngineConfig(request=request, batch_size=256, merge_delay_ms=0.5, queue_capacity=n + 1)
    pool = InputPool.make(ad, seed=seed)
    sizes = parse_sizes("production").sample(n, np.random.default_rng(seed))
    offsets = pool.offsets(sizes)
    zeros = torch.zeros(1024, ad.out_dim)
    with Engine(ad, cfg, validate=False) as eng:
        eng.forward = lambda x: zeros[: next(iter(x.values())).shape[0]]
        futs = []
        t0 = time.perf_counter()
        for i in range(n):
            k = int(sizes[i])
            futs.append(eng.submit(Query(i, model, k), pool.take(int(offsets[i]), k)))
            if i >= depth:
                futs[i - depth].result()
        for f in futs:
            f.result()
        return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--queries", type=int, default=6000)
    ap.add_argument("--depths", default="1,50")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # what a started engine sets
    out: dict = {"argv": sys.argv[1:], "ping_pong_us": [], "null_forward_us": {}}
    for _ in range(a.repeats):  # interleaved, so a slow spell hits every figure alike
        out["ping_pong_us"].append(ping_pong_us(20_000))
        for req in ("whole", "dynamic"):
            for d in (int(x) for x in a.depths.split(",")):
                v = null_forward_us(a.model, req, d, a.queries)
                out["null_forward_us"].setdefault(f"{req} depth {d}", []).append(v)
    print(f"thread round trip: {', '.join(f'{v:.0f}' for v in out['ping_pong_us'])} us")
    for k, vs in out["null_forward_us"].items():
        print(f"{a.model} {k}: {', '.join(f'{v:.0f}' for v in vs)} us per query (null forward)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
