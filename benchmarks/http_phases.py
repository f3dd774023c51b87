"""Where HTTP's latency goes: (1) one query at a time of several sizes, through `recsched
serve` and in-process, medians side by side; (2) the server's own phase statistics (Triton's
statistics extension: compute_input = body read + decode, queue = admission, compute_infer =
the engine, compute_output = encode), means per query, at a few open-loop rates.

    python benchmarks/http_phases.py --sizes 1,100,500,1000 --rates 60,150,200

rmc1 small, `dynamic`, INT32 ids on the wire, the load generator of http_vs_inprocess.py.
Minutes on 2 cores; never run by tests.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import time
from pathlib import Path

import numpy as np

from recsched.bench.setup import Setup
from recsched.engine import Engine
from recsched.types import Query

ROOT = Path(__file__).resolve().parents[1]


def _http_bench():
    spec = importlib.util.spec_from_file_location(
        "hvi", ROOT / "benchmarks" / "http_vs_inprocess.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--preset", default="dynamic")
    ap.add_argument("--sizes", default="1,100,500,1000")
    ap.add_argument("--rates", default="60,150,200")
    ap.add_argument("--requests", type=int, default=30, help="per size, one at a time")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per rate")
    ap.add_argument("--json")
    a = ap.parse_args()
    hb = _http_bench()
    sizes = [int(x) for x in a.sizes.split(",")]
    setup = Setup.make(a.model, "small", 0, sla_ms=25.0)
    cfg = setup.config(a.preset)
    ns = argparse.Namespace(model=a.model, scale="small", seed=0, queue_capacity=100_000,
                            admission="predicted", reserve=0.25, window=None,
                            wire_ids="int32")  # fmt: skip
    out: dict = {"model": a.model, "config": cfg.to_dict()}

    proc, url = hb.start_server(ns, cfg, None, 25.0)
    try:

        async def one_at_a_time() -> dict[int, float]:
            bodies, http = hb.Bodies(setup, "int32"), hb.RawClient(url)
            med = {}
            for n in sizes:
                lat = []
                for _ in range(a.requests + 5):
                    parts, headers = bodies.make(n, 0)
                    t0 = time.perf_counter()
                    status = await http.post(f"/v2/models/{a.model}/infer", parts, headers)
                    lat.append((time.perf_counter() - t0) * 1e3)
                    assert status == 200, status
                    await asyncio.sleep(0.02)
                med[n] = float(np.median(lat[5:]))
            await http.close()
            return med

        out["http_alone_ms"] = hb.run_async(one_at_a_time())
        phases = []
        for q in (float(x) for x in a.rates.split(",")):
            s0 = hb.server_stats(url, a.model)
            r = hb.http_once(url, a.model, setup, q, a.duration, "raw", proc.pid)
            ph = hb.phases(s0, hb.server_stats(url, a.model), keys=None)
            lat = r["latency_ms"]
            phases.append({"qps": q, "client_p50_ms": lat["p50"], "client_p95_ms": lat["p95"],
                           "server_mean_ms": ph})  # fmt: skip
            print(f"{q:6.1f} qps: client p50 {r['latency_ms']['p50']:.1f} / p95 "
                  f"{r['latency_ms']['p95']:.1f} ms; server means "
                  + ", ".join(f"{k} {v:.2f}" for k, v in ph.items()), flush=True)  # fmt: skip
        out["phases"] = phases
    finally:
        hb.stop_server(proc)
    pool = setup.pool()
    with Engine(setup.adapter, cfg) as eng:
        med = {}
        for n in sizes:
            lat = []
            for i in range(a.requests + 5):
                x = {k: v[:n] for k, v in pool.inputs.items()}
                t0 = time.perf_counter()
                eng.submit(Query(i, a.model, n), x).result()
                lat.append((time.perf_counter() - t0) * 1e3)
                time.sleep(0.02)
            med[n] = float(np.median(lat[5:]))
    out["inprocess_alone_ms"] = med
    for n in sizes:
        print(f"{n:5d} items alone: HTTP {out['http_alone_ms'][n]:.2f} ms, in-process "
              f"{med[n]:.2f} ms", flush=True)  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
