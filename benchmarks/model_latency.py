"""Per-model latency at batch 1/64/256/1024 (one intra-op thread, median of repeats) and the
peak items/s (every core busy), at a given scale. Feeds BENCHMARKS.md.

    python benchmarks/model_latency.py --scale small --json model_latency_small.json
    python benchmarks/model_latency.py --scale paper --json model_latency_paper.json
"""

from __future__ import annotations

import argparse
import gc
import json
import time

from recsched.bench.calibrate import alone_ms
from recsched.graph.profile import measure_peak
from recsched.models.registry import ModelTooLarge, list_models, load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="small")
    ap.add_argument("--models", default=",".join(list_models()))
    ap.add_argument("--batches", default="1,64,256,1024")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    for name in a.models.split(","):
        t = time.perf_counter()
        try:
            ad = load_model(name, scale=a.scale)
        except ModelTooLarge as exc:
            rows.append({"model": name, "scale": a.scale, "refused": str(exc)})
            print(json.dumps(rows[-1]), flush=True)
            continue
        row = {"model": name, "scale": a.scale, "build_s": time.perf_counter() - t}
        row["bytes"] = ad.info.get("bytes")
        for b in (int(x) for x in a.batches.split(",")):
            row[f"b{b}_ms"] = alone_ms(ad, b, threads=1, repeats=a.repeats)
        peak = measure_peak(ad)
        row["peak_items_per_s"] = peak["peak_items_per_s"]
        row["peak_best_batch"] = peak["best_batch"]
        row["peak_config"] = peak.get("best_config")
        rows.append(row)
        print(json.dumps(row), flush=True)
        del ad
        gc.collect()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
