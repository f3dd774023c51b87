"""Eager vs TorchScript forwards on thread lanes: items/s with one lane and with two.

Why the engine serves compiled forwards: an eager forward is a Python call per operator, and
thread lanes share one GIL, so two lanes running small batches take turns; a traced, frozen
TorchScript module runs its whole graph in C++ with the GIL released. Each lane cycles
through distinct input batches (cache-cold embedding rows, as served queries are).

    python benchmarks/compiled_forward.py --models rmc1,ncf,dien \
        --json benchmarks/results/compiled_forward.json

Not a test: timings depend on the machine; run it on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from recsched.graph.profile import COLD_INPUTS, cycling
from recsched.models.registry import load_model

console = Console()


def items_per_s(forward, inputs: list[dict], lanes: int, seconds: float) -> float:
    """Items/s of `lanes` threads (one intra-op thread each) running `forward` back to back."""
    rows = int(next(iter(inputs[0].values())).shape[0])
    done = [0] * lanes
    start = time.perf_counter()
    deadline = start + seconds

    def work(w: int) -> None:
        torch.set_num_threads(1)
        call = cycling(forward, inputs[w:] + inputs[:w])
        with torch.inference_mode():
            call()  # warm-up
            while time.perf_counter() < deadline:
                call()
                done[w] += 1

    threads = [threading.Thread(target=work, args=(w,)) for w in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) * rows / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="rmc1,ncf,dien")
    ap.add_argument("--batches", default="1,16,64,256,1024")
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    for name in a.models.split(","):
        ad = load_model(name, scale="small")
        compiled = ad.compiled()
        for b in (int(x) for x in a.batches.split(",")):
            inputs = [ad.make_inputs(b, k) for k in range(COLD_INPUTS)]
            row = {"model": name, "batch": b, "compiled_kind": compiled.kind}
            for label, fwd in (("eager", ad.module), ("compiled", compiled.forward)):
                for lanes in (1, 2):
                    row[f"{label}_{lanes}"] = items_per_s(fwd, inputs, lanes, a.seconds)
            rows.append(row)
            console.print(row)
    t = Table(title="items/s on thread lanes (1 intra-op thread each)")
    for col in ("model", "batch", "eager 1 lane", "eager 2 lanes", "compiled 1", "compiled 2",
                "2 lanes: compiled / eager"):  # fmt: skip
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            r["model"], str(r["batch"]),
            *(f"{r[k]:,.0f}" for k in ("eager_1", "eager_2", "compiled_1", "compiled_2")),
            f"{r['compiled_2'] / r['eager_2']:.2f}x",
        )  # fmt: skip
    console.print(t)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "seconds": a.seconds}, indent=1))


if __name__ == "__main__":
    main()
