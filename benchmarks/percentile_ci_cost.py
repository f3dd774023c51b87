"""Time and peak memory of `percentile_confidence` on N latencies (every bench and simulate
result computes it once per class: a simulated day holds 10^8 queries)."""

import argparse
import time
import tracemalloc

import numpy as np

from recsched.metrics.latency import percentile_confidence

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--p", type=float, default=95.0)
    a = ap.parse_args()
    x = np.random.default_rng(0).exponential(size=a.n)
    tracemalloc.start()
    t0 = time.perf_counter()
    ci = percentile_confidence(x, a.p)
    s = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    print(f"n={a.n} p{a.p:g}: CI {ci[0]:.1f}..{ci[1]:.1f} ms, {s:.2f} s, peak {peak:.0f} MB")
