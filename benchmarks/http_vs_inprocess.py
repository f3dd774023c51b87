"""Latency-bounded throughput through HTTP vs in-process, same model, preset and load.

In-process: the bench harness (`recsched capacity`): an open-loop driver thread calls
`Engine.submit` at Poisson times. HTTP: `recsched serve` with the same EngineConfig in a
subprocess, and an open-loop load generator (aiohttp, else httpx) sending KServe v2 requests
with binary tensors at the same Poisson times from this process, all on 127.0.0.1. Both
searches bracket and bisect the offered rate until the p95 (failures count as never served)
meets the same SLA. The ratio is the server's share of the cost (goal: HTTP >= 0.8).

`--overload-x K` then offers K times the HTTP capacity with priority classes and reports each
class's p99 and how many requests were shed (503): admission control serves the high-value
class first and sheds the lowest value.

    python benchmarks/http_vs_inprocess.py --model rmc1 --preset dynamic --duration 3
    python benchmarks/http_vs_inprocess.py --skip-inprocess --overload-x 2 --json out.json

Runs for a few minutes on a 2-core machine; it is never run by the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from recsched.bench.capacity import find_capacity
from recsched.bench.setup import Setup
from recsched.config import EngineConfig
from recsched.metrics.latency import LatencyLog
from recsched.server.admission import priority_order
from recsched.server.codec import kserve_dtype
from recsched.workload.classes import parse_classes


# -- the server, in its own process --------------------------------------------------------
def serve_main(a: argparse.Namespace) -> None:
    from recsched.models.registry import load_model
    from recsched.server.app import RecschedServer, ServerConfig, serve

    cfg = EngineConfig(**json.loads(a.serve_config))
    sc = ServerConfig(queue_capacity=a.queue_capacity, window=a.window)
    ad = load_model(a.model, scale=a.scale, seed=a.seed)
    server = RecschedServer({a.model: ad}, cfg, sc, parse_classes(a.classes))
    serve(server, "127.0.0.1", a.serve, "warning")


def start_server(a: argparse.Namespace, cfg: EngineConfig) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        sys.executable, __file__, "--serve", str(port), "--serve-config",
        json.dumps(cfg.to_dict()), "--model", a.model, "--scale", a.scale, "--seed",
        str(a.seed), "--queue-capacity", str(a.queue_capacity),
    ]  # fmt: skip
    if a.window:
        args += ["--window", str(a.window)]
    if a.classes:
        args += ["--classes", a.classes]
    proc = subprocess.Popen(args)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.2)


def pending(url: str, model: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    m = re.search(rf'nv_inference_pending_request_count{{model="{model}".*?}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


# -- the load generator ----------------------------------------------------------------------
class Bodies:
    """Binary-tensor request bodies cut from the input pool at seeded offsets."""

    def __init__(self, setup: Setup) -> None:
        pool = setup.pool()
        self.rows = pool.rows
        self.arrays = {k: np.ascontiguousarray(v.numpy()) for k, v in pool.inputs.items()}
        self.specs = setup.adapter.inputs
        self.rng = np.random.default_rng(setup.seed)

    def make(self, n: int, priority: int) -> tuple[bytes, dict[str, str]]:
        off = int(self.rng.integers(0, max(1, self.rows - n + 1)))
        blobs, inputs = [], []
        for s in self.specs:
            raw = self.arrays[s.name][off : off + n].tobytes()
            blobs.append(raw)
            shape = [n, *s.shape]
            inputs.append({"name": s.name, "datatype": kserve_dtype(s.dtype), "shape": shape,
                           "parameters": {"binary_data_size": len(raw)}})  # fmt: skip
        params: dict = {"binary_data_output": True}
        if priority:
            params["priority"] = priority
        head = json.dumps({"inputs": inputs, "parameters": params}).encode()
        return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


async def open_loop(url: str, model: str, setup: Setup, qps: float, duration_s: float,
                    drain_s: float = 10.0) -> tuple[LatencyLog, dict]:  # fmt: skip
    """Send one Poisson workload at its scheduled times; latency from the scheduled time."""
    wl = setup.load(qps, duration_s).workload()
    order = priority_order(setup.classes)
    prio = {c.name: (order.index(c) + 1 if len(order) > 1 else 0) for c in order}
    bodies = Bodies(setup)
    log, counts = LatencyLog(), {"late": 0, "status": {}}
    path = f"{url}/v2/models/{model}/infer"
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05

    async def one_aiohttp(session, body, headers, sched, cls, n):
        try:
            async with session.post(path, data=body, headers=headers) as r:
                await r.read()
                status = r.status
        except Exception:
            status = -1
        done = loop.time()
        counts["status"][status] = counts["status"].get(status, 0) + 1
        log.append(cls, sched, done, n, ok=status == 200)

    try:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    except ImportError:  # httpx fallback
        import httpx

        session = httpx.AsyncClient(limits=httpx.Limits(max_connections=None), timeout=None)
    tasks = []
    for i in range(len(wl)):
        sched = t0 + float(wl.t_s[i])
        delay = sched - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif -delay > 1e-3:
            counts["late"] += 1
        cls = wl.classes[int(wl.cls[i])]
        n = int(wl.n_items[i])
        body, headers = bodies.make(n, prio[cls.name])
        if hasattr(session, "closed"):
            coro = one_aiohttp(session, body, headers, sched, cls.name, n)
        else:
            coro = one_httpx(session, path, body, headers, sched, cls.name, n, log, counts, loop)
        tasks.append(asyncio.create_task(coro))
    end = t0 + wl.duration_s + drain_s
    done, left = await asyncio.wait(tasks, timeout=max(0.0, end - loop.time()))
    for t in left:
        t.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    await (session.close() if hasattr(session, "closed") else session.aclose())
    counts["issued"] = len(wl)
    counts["wall_s"] = max(loop.time(), t0 + wl.duration_s) - t0
    return log, counts


async def one_httpx(client, path, body, headers, sched, cls, n, log, counts, loop):
    try:
        r = await client.post(path, content=body, headers=headers)
        status = r.status_code
    except Exception:
        status = -1
    counts["status"][status] = counts["status"].get(status, 0) + 1
    log.append(cls, sched, loop.time(), n, ok=status == 200)


def http_result(log: LatencyLog, counts: dict, setup: Setup, qps: float) -> dict:
    s = log.summary(setup.classes, setup.sla_ms, setup.percentile)
    return {
        "offered_qps": qps,
        "completed_qps": (s["queries"] - s["errors"]) / max(counts["wall_s"], 1e-9),
        "completed_items_per_s": log.items() / max(counts["wall_s"], 1e-9),
        "queries": counts["issued"],
        "status": {str(k): v for k, v in sorted(counts["status"].items())},
        "late_issues": counts["late"],
        "latency_ms": s["latency_ms"],
        "sla_ms": setup.sla_ms,
        "sla_met": bool(s["sla_met"]),
        "classes": s["classes"],
    }


def http_run_fn(url: str, model: str, setup: Setup, duration_s: float):
    def run(qps: float) -> dict:
        d = min(4 * duration_s, max(duration_s, 300.0 / qps))
        log, counts = asyncio.run(open_loop(url, model, setup, qps, d))
        t0 = time.monotonic()
        while pending(url, model) > 0 and time.monotonic() - t0 < 30:
            time.sleep(0.1)  # let an overloaded run's backlog drain before the next
        return http_result(log, counts, setup, qps)

    return run


def show(tag: str, r: dict, pct: float) -> None:
    lat = r["latency_ms"]
    key = f"p{pct:g}"
    p = lat.get(key, lat.get("p95", math.nan))
    print(f"  {tag}: {r['offered_qps']:8.1f} qps  {key}={p:8.2f} ms  p99={lat['p99']:8.2f} ms  "
          f"{'meets' if r['sla_met'] else 'misses'}", flush=True)  # fmt: skip


def ladder(a: argparse.Namespace, setup: Setup, cfg: EngineConfig, out: dict) -> None:
    """Interleaved runs at fixed rates; capacity = the highest rate meeting the SLA."""
    rates = [float(r) for r in a.rates.split(",")]
    inproc = setup.run_fn(cfg, a.preset, a.duration)
    proc, url = start_server(a, cfg)
    runs: dict[str, list[dict]] = {"inprocess": [], "http": []}
    try:
        http = http_run_fn(url, a.model, setup, a.duration)
        http(min(50.0, rates[0]))  # warm-up
        for q in rates:
            for name, fn in (("inprocess", inproc), ("http", http)):
                r = fn(q)
                runs[name].append(r)
                show(f"{name:>10}", r, setup.percentile)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    for name, rs in runs.items():
        ok = [r["offered_qps"] for r in rs if r["sla_met"]]
        out[name] = {"latency_bounded_qps": max(ok, default=0.0), "runs": rs}
    base = out["inprocess"]["latency_bounded_qps"]
    out["ratio_http_over_inprocess"] = out["http"]["latency_bounded_qps"] / base if base else None
    print(
        f"capacity on the ladder: in-process {base:.1f} qps, HTTP "
        f"{out['http']['latency_bounded_qps']:.1f} qps, ratio {out['ratio_http_over_inprocess']}"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--preset", default="dynamic")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lanes", type=int)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per run (at least)")
    ap.add_argument("--sla-x", type=float, default=10.0)
    ap.add_argument("--sla-ms", type=float)
    ap.add_argument("--max-runs", type=int, default=7)
    ap.add_argument("--window", type=int, help="server: requests inside the engine at once")
    ap.add_argument("--queue-capacity", type=int, default=100_000)
    ap.add_argument("--classes", help="priority classes for --overload-x")
    ap.add_argument("--overload-x", type=float, help="then offer K x the HTTP capacity")
    ap.add_argument("--skip-inprocess", action="store_true")
    ap.add_argument("--http-qps", type=float, help="skip the HTTP search: capacity given")
    ap.add_argument(
        "--rates",
        help="instead of two searches: a ladder of rates, each run "
        "in-process then over HTTP back to back (fairer on a busy machine)",
    )
    ap.add_argument("--json")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--serve-config", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        return serve_main(a)

    setup = Setup.make(a.model, a.scale, a.seed, None, sla_ms=a.sla_ms, sla_x=a.sla_x)
    cfg = setup.config(a.preset, lanes=a.lanes)
    print(f"{a.model} {a.scale}, {a.preset}: {cfg.to_dict()}; SLA p95 <= {setup.sla_ms:.2f} ms")
    out: dict = {"model": a.model, "preset": a.preset, "config": cfg.to_dict(),
                 "sla_ms": setup.sla_ms, "cores": os.cpu_count()}  # fmt: skip
    if a.rates:
        return ladder(a, setup, cfg, out)
    if not a.skip_inprocess:
        print("in-process:")
        res = setup.capacity(a.preset, a.duration, log=None, lanes=a.lanes)
        for r in res["runs"]:
            show("in-process", r, setup.percentile)
        out["inprocess"] = {k: res[k] for k in ("latency_bounded_qps", "runs")}
        print(f"in-process capacity: {res['latency_bounded_qps']:.1f} qps")
    proc, url = start_server(a, cfg)
    try:
        run = http_run_fn(url, a.model, setup, a.duration)
        run(min(50.0, setup.start_qps(cfg)))  # warm-up
        if a.http_qps:
            http_qps = a.http_qps
        else:
            print("HTTP:")
            search = find_capacity(run, start_qps=setup.start_qps(cfg), max_runs=a.max_runs,
                                   on_run=lambda r: show("http", r, setup.percentile))  # fmt: skip
            http_qps = search.qps
            out["http"] = {"latency_bounded_qps": search.qps, "runs": search.runs}
            print(f"HTTP capacity: {http_qps:.1f} qps")
        if "inprocess" in out and "http" in out:
            base = out["inprocess"]["latency_bounded_qps"]
            out["ratio_http_over_inprocess"] = http_qps / base if base else None
            print(f"HTTP / in-process = {out['ratio_http_over_inprocess']:.2f}")
        if a.overload_x and a.classes:
            classes = tuple(
                type(c)(c.name, c.share, c.value, c.sla_ms or setup.sla_ms, 99.0)
                for c in parse_classes(a.classes)
            )
            over = Setup(setup.adapter, a.scale, a.seed, classes, setup.sizes, setup.arrivals,
                         setup.sla_ms, 99.0)  # fmt: skip
            over._pool = setup.pool()
            qps = a.overload_x * http_qps
            log, counts = asyncio.run(open_loop(url, a.model, over, qps, max(a.duration, 5.0)))
            r = http_result(log, counts, over, qps)
            out["overload"] = r
            print(f"overload {a.overload_x:g}x = {qps:.1f} qps: status {r['status']}")
            for name, c in r["classes"].items():
                lat = c["latency_ms"]
                verdict = "meets" if c["sla_met"] else "misses"
                print(f"  {name:>8} (value {c['value']:g}): {c['queries']} queries, "
                      f"{c['errors']} errors/shed, p99 {lat['p99']:.2f} ms "
                      f"(SLA {c['sla_ms']:.2f} ms: {verdict})")  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
