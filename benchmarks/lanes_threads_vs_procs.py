"""CPU lanes: worker threads vs worker processes, measured before choosing.

For a model and batch sizes, feeds a closed stream of batches to N lanes and reports items/s
and the per-batch round trip at batch 1, for:
  threads  N worker threads, torch.set_num_threads(1) in each (what recsched uses)
  procs    N worker processes (fork), 1 intra-op thread each, tensors through torch.multiprocessing
  one      1 worker thread with N intra-op threads

    python benchmarks/lanes_threads_vs_procs.py --model rmc1 --batches 1,16,64,256 --seconds 3
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import threading
import time

import torch
import torch.multiprocessing as mp

from recsched.models.registry import load_model


def _thread_lanes(model, x, lanes: int, threads: int, seconds: float) -> tuple[float, float]:
    """(batches/s, median round trip in us) with `lanes` worker threads."""
    q_in: queue.SimpleQueue = queue.SimpleQueue()
    q_out: queue.SimpleQueue = queue.SimpleQueue()

    def worker() -> None:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            while (item := q_in.get()) is not None:
                model(x)
                q_out.put(item)

    ws = [threading.Thread(target=worker, daemon=True) for _ in range(lanes)]
    for w in ws:
        w.start()
    rtt = _drive(q_in, q_out, lanes, seconds)
    for _ in ws:
        q_in.put(None)
    for w in ws:
        w.join()
    return rtt


def _proc_worker(model, q_in, q_out) -> None:
    torch.set_num_threads(1)
    with torch.inference_mode():
        while (item := q_in.get()) is not None:
            t_sent, x = item
            model(x)
            q_out.put(t_sent)


def _proc_lanes(model, x, lanes: int, seconds: float) -> tuple[float, float]:
    ctx = mp.get_context("fork")
    q_in, q_out = ctx.Queue(), ctx.Queue()
    ps = [ctx.Process(target=_proc_worker, args=(model, q_in, q_out), daemon=True)
          for _ in range(lanes)]  # fmt: skip
    for p in ps:
        p.start()
    rtt = _drive(q_in, q_out, lanes, seconds, payload=x)
    for _ in ps:
        q_in.put(None)
    for p in ps:
        p.join()
    return rtt


def _drive(q_in, q_out, lanes: int, seconds: float, payload=None) -> tuple[float, float]:
    """Keep `lanes` batches in flight; count completions; time round trips."""

    def send() -> None:
        t = time.perf_counter()
        q_in.put(t if payload is None else (t, payload))

    for _ in range(lanes):
        send()
    done, rtts = 0, []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t_sent = q_out.get()
        rtts.append(time.perf_counter() - t_sent)
        done += 1
        send()
    elapsed = time.perf_counter() - t0
    for _ in range(lanes):
        q_out.get()
    return done / elapsed, statistics.median(rtts) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json")
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    ad = load_model(a.model)
    model = ad.module
    rows = []
    for b in (int(s) for s in a.batches.split(",")):
        x = ad.make_inputs(b, 0)
        with torch.inference_mode():
            bare = []
            torch.set_num_threads(1)
            for _ in range(20):
                t = time.perf_counter()
                model(x)
                bare.append(time.perf_counter() - t)
        row = {
            "model": a.model,
            "batch": b,
            "bare_forward_us_1thread": statistics.median(bare) * 1e6,
        }
        for name, fn in (
            ("threads", lambda x=x: _thread_lanes(model, x, cores, 1, a.seconds)),
            ("procs", lambda x=x: _proc_lanes(model, x, cores, a.seconds)),
            ("one", lambda x=x: _thread_lanes(model, x, 1, cores, a.seconds)),
        ):
            bps, rtt = fn()
            row[f"{name}_items_per_s"] = bps * b
            row[f"{name}_rtt_us"] = rtt
        rows.append(row)
        print(json.dumps(row))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
