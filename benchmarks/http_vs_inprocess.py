"""Latency-bounded throughput through HTTP vs in-process, same model, preset and load;
and the server under overload (high-value p99, shed counts per class).

In-process: the bench harness (`recsched capacity`): an open-loop driver thread calls
`Engine.submit` at Poisson times. HTTP: `recsched serve`'s server with the same EngineConfig
in a subprocess, and an open-loop load generator in this process sending KServe v2 requests
with binary tensors at the same Poisson times, on 127.0.0.1. Both searches bracket and bisect
the offered rate until the p95 (failures count as never served) meets the same SLA. The
ratio is the server's share of the cost (goal: HTTP >= 0.8).

Every run also reports CPU per query: of this process for in-process runs (engine and
driver); of the server process, of its event-loop thread alone (`server_loop`: the server's
own work plus `Engine.submit`, without the lanes) and of the load generator for HTTP runs
(`cpu_ms`).

The load generator (`--client raw`, the default) is a minimal HTTP/1.1 keep-alive client on
asyncio (uvloop when installed): the request's JSON header and binary tensors are written
from views of the input pool, no body is copied, so it costs the shared cores as little as
possible; `--client aiohttp` uses aiohttp instead.

`--overhead N` measures only the server's own CPU per request: N requests of production
sizes, `--concurrency` at a time, to a server whose engine scores zeros at once; with `--bare`,
to a raw ASGI app on uvicorn that only reads each body (the floor of the stack).

`--overload-x K` then offers K times the HTTP capacity with priority classes (`--classes`;
each class gets an SLA, `--sla-ms`/`--sla-x` unless it names one, judged at p99) and reports
for each class the p99 of the requests served and how many were shed (503). `--light-x L`
first runs the same mix at L times capacity: what the classes get without overload. The
server admits by predicted work (`--admission predicted`, the default here) or by count.

    python benchmarks/http_vs_inprocess.py --model rmc1 --preset dynamic --duration 3
    python benchmarks/http_vs_inprocess.py --overhead 2000
    python benchmarks/http_vs_inprocess.py --skip-inprocess --http-qps 150 --overload-x 2 \\
        --light-x 0.5 --classes high:0.2:10,low:0.8:1 --json out.json

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
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from recsched.bench.capacity import find_capacity
from recsched.bench.setup import Setup
from recsched.config import EngineConfig
from recsched.metrics.latency import LatencyLog
from recsched.metrics.machine import machine_shares, machine_ticks
from recsched.server.admission import priority_order
from recsched.server.codec import kserve_dtype, wire_dtype
from recsched.types import PriorityClass
from recsched.workload.classes import parse_classes


# -- the server, in its own process --------------------------------------------------------
def serve_main(a: argparse.Namespace) -> None:
    from recsched.models.registry import load_model
    from recsched.server.app import RecschedServer, ServerConfig, serve

    cfg = EngineConfig(**json.loads(a.serve_config))
    factory = (lambda ad, c: NullEngine(ad, c)) if a.null_engine else None
    sc = ServerConfig(
        queue_capacity=a.queue_capacity, window=a.window, admission=a.admission,
        reserve=a.reserve, sla_ms=a.sla_ms, engine_factory=factory, wire_ids=a.wire_ids,
        guard=a.guard, keep_int32=not a.widen_ids,
    )  # fmt: skip
    ad = load_model(a.model, scale=a.scale, seed=a.seed)
    server = RecschedServer({a.model: ad}, cfg, sc, parse_classes(a.classes))
    serve(server, "127.0.0.1", a.serve, "warning")


def bare_main(port: int) -> None:
    """The floor under any ASGI server on uvicorn: a raw ASGI app that reads the whole body
    and answers 200 with a small JSON body (about what an infer response of scores costs),
    no parsing, no checks, no engine (`--overhead N --bare`)."""
    import uvicorn

    reply = json.dumps({"model_name": "bare", "outputs": [{"name": "scores", "data": [0.0]}]})
    body_out = reply.encode()
    length = str(len(body_out)).encode()

    async def app(scope, receive, send):  # noqa: ANN001 - the ASGI signature
        if scope["type"] != "http":
            return
        more = True
        while more:
            msg = await receive()
            more = msg.get("more_body", False)
        head = [(b"content-type", b"application/json"), (b"content-length", length)]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": body_out})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                proxy_headers=False)  # fmt: skip


class NullEngine:
    """An engine that scores zeros at once: what is left is the server's own cost."""

    def __init__(self, adapter, config: EngineConfig) -> None:
        from recsched.clock import WallClock

        self.adapter, self.config, self.lanes, self.clock = adapter, config, [], WallClock()

    def start(self) -> NullEngine:
        return self

    def submit(self, query, inputs) -> Future:
        fut: Future = Future()
        fut.set_result(torch.zeros(query.n_items, self.adapter.out_dim))
        return fut

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        pass

    def pending(self) -> int:
        return 0

    def lane_utilization(self, since: float | None = None) -> list[float]:
        return []


def overhead(a: argparse.Namespace, setup: Setup, cfg: EngineConfig, out: dict) -> None:
    """Server CPU per request with the null engine: `--overhead N` closed-loop requests of
    production sizes, `--concurrency` at once, after 100 warm-up requests."""
    if a.bare:
        port = free_port()
        proc, url = launch([sys.executable, __file__, "--serve-bare", str(port)], port)
    else:
        proc, url = start_server(a, cfg, None, None, null_engine=True)
    path = f"/v2/models/{a.model}/infer"

    async def closed_loop(n: int) -> float:
        bodies, http = Bodies(setup, a.wire_ids), RawClient(url)
        sizes = setup.load(100.0, 1.0).workload().n_items
        sizes = np.resize(sizes, n)
        nbytes = 0
        sem = asyncio.Semaphore(a.concurrency)

        async def one(k: int) -> None:
            nonlocal nbytes
            async with sem:
                parts, headers = bodies.make(int(sizes[k]), 0)
                nbytes += sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
                assert await http.post(path, parts, headers) == 200

        await asyncio.gather(*(one(k) for k in range(n)))
        await http.close()
        return nbytes / n

    try:
        run_async(closed_loop(100))
        s0, c0, t0 = cpu_s(proc.pid), time.process_time(), time.perf_counter()
        mean_bytes = run_async(closed_loop(a.overhead))
        s1, c1, t1 = cpu_s(proc.pid), time.process_time(), time.perf_counter()
    finally:
        stop_server(proc)
    r = {
        "requests": a.overhead,
        "concurrency": a.concurrency,
        "mean_body_kb": mean_bytes / 1e3,
        "requests_per_s": a.overhead / (t1 - t0),
        "cpu_ms": {"server": (s1 - s0) / a.overhead * 1e3, "client": (c1 - c0) / a.overhead * 1e3},
    }
    r["server"] = "bare uvicorn (reads the body)" if a.bare else "recsched, null engine"
    out["overhead"] = r
    print(f"{r['server']}: {r['requests']} requests of {r['mean_body_kb']:.0f} KB on average, "
          f"{r['requests_per_s']:.0f}/s; CPU ms per request: server {r['cpu_ms']['server']:.3f}, "
          f"load generator {r['cpu_ms']['client']:.3f}")  # fmt: skip


def class_spec(classes: tuple[PriorityClass, ...]) -> str:
    """`--classes` text naming each class's SLA (and percentile)."""
    out = []
    for c in classes:
        sla = f":{c.sla_ms:g}ms@p{c.percentile:g}" if c.sla_ms else ""
        out.append(f"{c.name}:{c.share:g}:{c.value:g}{sla}")
    return ",".join(out)


def free_port() -> int:
    """A loopback port no one holds now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], port: int, what: str = "the server") -> tuple[subprocess.Popen, str]:
    """Start a server subprocess listening on 127.0.0.1:`port`; return once it is ready."""
    proc = subprocess.Popen(args)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() - t0 > 300:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.2)


def start_server(
    a: argparse.Namespace,
    cfg: EngineConfig,
    classes: str | None,
    sla_ms: float | None,
    null_engine: bool = False,
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [
        sys.executable, __file__, "--serve", str(port), "--serve-config",
        json.dumps(cfg.to_dict()), "--model", a.model, "--scale", a.scale, "--seed",
        str(a.seed), "--queue-capacity", str(a.queue_capacity), "--admission", a.admission,
        "--reserve", str(a.reserve), "--wire-ids", a.wire_ids,
        *(["--guard", str(a.guard)] if a.guard is not None else []),
        *(["--widen-ids"] if a.widen_ids else []),
    ]  # fmt: skip
    if a.window:
        args += ["--window", str(a.window)]
    if classes:
        args += ["--classes", classes]
    if sla_ms:
        args += ["--sla-ms", str(sla_ms)]
    if null_engine:
        args += ["--null-engine"]
    return launch(args, port)


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def server_stats(url: str, model: str) -> dict:
    """The server's statistics extension (Triton's): cumulative count and ns per phase."""
    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=10) as r:
        return json.load(r)["model_stats"][0]["inference_stats"]


PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def phases(s0: dict, s1: dict, keys: tuple[str, ...] | None = PHASES) -> dict[str, float]:
    """Mean ms per request of each phase between two `server_stats` readings (queue =
    admission, compute_input = body read + decode, compute_infer = the engine); `keys=None`:
    every statistic whose count grew."""
    if keys is None:
        keys = tuple(
            k for k, v in s1.items()
            if isinstance(v, dict) and "ns" in v and v["count"] > s0[k]["count"]
        )  # fmt: skip
    out = {}
    for k in keys:
        n = s1[k]["count"] - s0[k]["count"]
        out[k] = (s1[k]["ns"] - s0[k]["ns"]) / max(n, 1) / 1e6
    return out


def metrics_text(url: str, timeout: float = 10.0) -> str:
    """The server's Prometheus exposition (`/metrics`)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as r:
        return r.read().decode()


def model_samples(text: str, family: str, model: str) -> list[tuple[str, dict[str, str], float]]:
    """`(metric name, labels, value)` of each sample of `model` in a /metrics text whose name
    matches `family` (a regular expression)."""
    out = []
    for m in re.finditer(rf"(?P<name>{family}){{(?P<labels>.*?)}} (?P<value>\S+)", text):
        lab = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if lab.get("model") == model:
            out.append((m["name"], lab, float(m["value"])))
    return out


def cost_scale(url: str, model: str) -> float | None:
    """Admission's online cost scale (measured engine time / the cost model's), from /metrics."""
    found = model_samples(metrics_text(url), "recsched_admission_cost_scale", model)
    return round(found[0][2], 3) if found else None


def guard_shares(url: str, model: str) -> dict[str, float]:
    """The tail guard's admitted share per class at this moment, from /metrics ({}: no guard)."""
    found = model_samples(metrics_text(url), "recsched_admission_guard_share", model)
    return {lab["class"]: round(v, 3) for _, lab, v in found}


def lane_seconds(url: str, model: str) -> dict[str, dict[str, float]]:
    """Per lane: seconds it held a task (`busy`) and its thread's CPU meanwhile (`cpu`)."""
    out: dict[str, dict[str, float]] = {}
    family = "recsched_lane_(?:busy|cpu)_seconds_total"
    for name, lab, v in model_samples(metrics_text(url), family, model):
        out.setdefault(lab["lane"], {})[name.split("_")[2]] = v
    return out


def lane_stall(l0: dict, l1: dict) -> dict[str, dict[str, float]]:
    """Between two `lane_seconds` readings, per lane: busy and CPU seconds and the share of
    busy time the lane's thread did not run (waiting for the GIL or a core)."""
    out = {}
    for lane, v1 in l1.items():
        v0 = l0.get(lane, {"busy": 0.0, "cpu": 0.0})
        busy, cpu = v1["busy"] - v0["busy"], v1["cpu"] - v0["cpu"]
        out[lane] = {"busy_s": busy, "cpu_s": cpu, "stall": 1.0 - cpu / busy if busy else 0.0}
    return out


def thread_sched(pid: int) -> dict[int, tuple[float, float]]:
    """Per thread of `pid`: (seconds on a CPU, seconds runnable but waiting for a core),
    from /proc/PID/task/TID/schedstat."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run_ns, wait_ns, _ = f.read().split()
        except (OSError, ValueError):
            continue  # the thread ended
        out[int(tid)] = (int(run_ns) / 1e9, int(wait_ns) / 1e9)
    return out


def thread_waits(t0: dict, t1: dict, min_cpu_s: float = 0.05) -> dict[str, dict[str, float]]:
    """Between two `thread_sched` readings, threads that ran at least `min_cpu_s`."""
    out = {}
    for tid, (run1, wait1) in t1.items():
        run0, wait0 = t0.get(tid, (0.0, 0.0))
        if run1 - run0 >= min_cpu_s:
            out[str(tid)] = {"cpu_s": run1 - run0, "runqueue_wait_s": wait1 - wait0}
    return out


def pending(url: str, model: str) -> float:
    text = metrics_text(url, timeout=5.0)
    found = model_samples(text, "nv_inference_pending_request_count", model)
    return found[0][2] if found else 0.0


def cpu_s(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of process `pid` (all its threads), or of its thread `tid`,
    from /proc."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the load generator ----------------------------------------------------------------------
class Bodies:
    """Binary-tensor requests cut from the input pool at seeded offsets, as buffer views."""

    def __init__(self, setup: Setup, wire_ids: str = "int32") -> None:
        pool = setup.pool()
        self.rows = pool.rows
        self.specs = setup.adapter.inputs
        self.wire = {s.name: wire_dtype(s, wire_ids) for s in self.specs}  # the server's
        self.arrays = {
            k: np.ascontiguousarray(v.to(self.wire[k]).numpy()) for k, v in pool.inputs.items()
        }
        self.rng = np.random.default_rng(setup.seed)

    def make(self, n: int, priority: int) -> tuple[list, dict[str, str]]:
        """`(parts, headers)`: the body is the concatenation of `parts` (JSON, tensors)."""
        off = int(self.rng.integers(0, max(1, self.rows - n + 1)))
        views, inputs = [], []
        for s in self.specs:
            v = memoryview(self.arrays[s.name][off : off + n]).cast("B")
            views.append(v)
            shape = [n, *s.shape]
            dtype = kserve_dtype(self.wire[s.name])
            inputs.append({"name": s.name, "datatype": dtype, "shape": shape,
                           "parameters": {"binary_data_size": v.nbytes}})  # fmt: skip
        params: dict = {"binary_data_output": True}
        if priority:
            params["priority"] = priority
        head = json.dumps({"inputs": inputs, "parameters": params}).encode()
        return [head, *views], {"Inference-Header-Content-Length": str(len(head))}


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False  # by the server (its keep-alive timeout) or an error

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buf[:end]).lower()
        m = re.search(rb"\r\ncontent-length: *(\d+)", head)
        total = end + 4 + (int(m.group(1)) if m else 0)
        if len(self.buf) >= total:
            status = int(head[9:12])
            del self.buf[:total]
            w, self.waiter = self.waiter, None
            w.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))
        self.waiter = None


class RawClient:
    """Minimal HTTP/1.1 POSTs over a pool of keep-alive connections (grows as needed)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.idle: list[_Conn] = []
        self.all: list[_Conn] = []

    async def post(self, path: str, parts: list, headers: dict[str, str]) -> int:
        n = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {n}\r\n"
                f"{extra}\r\n").encode()  # fmt: skip
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                try:
                    return await self._send(conn, [head, *parts])
                except ConnectionError:  # closed as we sent (keep-alive timeout): a new one
                    break
        _, conn = await asyncio.get_running_loop().create_connection(_Conn, self.host, self.port)
        self.all.append(conn)
        return await self._send(conn, [head, *parts])

    async def _send(self, conn: _Conn, data: list) -> int:
        conn.waiter = asyncio.get_running_loop().create_future()
        assert conn.transport is not None
        conn.transport.writelines(data)
        status = await conn.waiter
        self.idle.append(conn)
        return status

    async def close(self) -> None:
        for c in self.all:
            if c.transport is not None:
                c.transport.close()


class AiohttpClient:
    def __init__(self, url: str) -> None:
        import aiohttp

        self.url = url
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def post(self, path: str, parts: list, headers: dict[str, str]) -> int:
        body = b"".join(parts)
        async with self.session.post(self.url + path, data=body, headers=headers) as r:
            await r.read()
            return r.status

    async def close(self) -> None:
        await self.session.close()


async def open_loop(
    url: str,
    model: str,
    setup: Setup,
    qps: float,
    duration_s: float,
    client: str = "raw",
    drain_s: float = 10.0,
    wire_ids: str = "int32",
) -> tuple[LatencyLog, dict]:
    """Send one Poisson workload at its scheduled times; latency from the scheduled time."""
    wl = setup.load(qps, duration_s).workload()
    order = priority_order(setup.classes)
    prio = {c.name: (order.index(c) + 1 if len(order) > 1 else 0) for c in order}
    bodies = Bodies(setup, wire_ids)
    log = LatencyLog()
    counts: dict = {"late": 0, "status": {}, "class_status": {c.name: {} for c in order}}
    path = f"/v2/models/{model}/infer"
    http = RawClient(url) if client == "raw" else AiohttpClient(url)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05

    async def one(parts, headers, sched, cls, n):
        try:
            status = await http.post(path, parts, headers)
        except Exception:
            status = -1
        done = loop.time()
        counts["status"][status] = counts["status"].get(status, 0) + 1
        cs = counts["class_status"][cls]
        cs[status] = cs.get(status, 0) + 1
        log.append(cls, sched, done, n, ok=status == 200)

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
        parts, headers = bodies.make(n, prio[cls.name])
        tasks.append(asyncio.create_task(one(parts, headers, sched, cls.name, n)))
    end = t0 + wl.duration_s + drain_s
    if tasks:
        done, left = await asyncio.wait(tasks, timeout=max(0.0, end - loop.time()))
        for t in left:
            t.cancel()
        await asyncio.gather(*left, return_exceptions=True)
    await http.close()
    counts["issued"] = len(wl)
    counts["wall_s"] = max(loop.time(), t0 + wl.duration_s) - t0
    return log, counts


def run_async(coro):
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def http_result(log: LatencyLog, counts: dict, setup: Setup, qps: float) -> dict:
    s = log.summary(setup.classes, setup.sla_ms, setup.percentile)
    classes = s["classes"]
    for name, st in counts["class_status"].items():
        if name in classes:
            classes[name]["status"] = {str(k): v for k, v in sorted(st.items())}
            classes[name]["shed_503"] = st.get(503, 0)
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
        "classes": classes,
        "timeline": log.timeline(1.0),  # per second of arrivals: [start, queries, p99 ms]
    }


def http_once(url: str, model: str, setup: Setup, qps: float, duration_s: float, client: str,
              server_pid: int | None, wire_ids: str = "int32") -> dict:  # fmt: skip
    """One open-loop HTTP run with CPU per query of the server and of the load generator."""
    s0, c0 = (cpu_s(server_pid) if server_pid else 0.0), time.process_time()
    l0 = cpu_s(server_pid, server_pid) if server_pid else 0.0
    log, counts = run_async(open_loop(url, model, setup, qps, duration_s, client, 10.0, wire_ids))
    s1, c1 = (cpu_s(server_pid) if server_pid else 0.0), time.process_time()
    l1 = cpu_s(server_pid, server_pid) if server_pid else 0.0
    r = http_result(log, counts, setup, qps)
    q = max(1, r["queries"])
    r["cpu_ms"] = {"client": (c1 - c0) / q * 1e3}
    if server_pid:  # None: the server is not one process (Ray replicas)
        r["cpu_ms"]["server"] = (s1 - s0) / q * 1e3
        # its main thread: the event loop (HTTP, decoding, admission, Engine.submit); the
        # rest is the lanes' and the engine's threads, which in-process runs pay as well
        r["cpu_ms"]["server_loop"] = (l1 - l0) / q * 1e3
    t0 = time.monotonic()
    while pending(url, model) > 0 and time.monotonic() - t0 < 30:
        time.sleep(0.1)  # let an overloaded run's backlog drain before the next
    return r


def http_run_fn(
    url: str, model: str, setup: Setup, duration_s: float, client: str = "raw",
    pid: int | None = None, wire_ids: str = "int32",
):  # fmt: skip
    def run(qps: float) -> dict:
        d = min(4 * duration_s, max(duration_s, 300.0 / qps))
        return http_once(url, model, setup, qps, d, client, pid, wire_ids)

    return run


def inprocess_run_fn(setup: Setup, cfg: EngineConfig, preset: str, duration_s: float):
    inner = setup.run_fn(cfg, preset, duration_s)

    def run(qps: float) -> dict:
        c0 = time.process_time()
        r = inner(qps)
        r["cpu_ms"] = {"process": (time.process_time() - c0) / max(1, r["queries"]) * 1e3}
        return r

    return run


def show(tag: str, r: dict, pct: float) -> None:
    lat = r["latency_ms"]
    key = f"p{pct:g}"
    p = lat.get(key, lat.get("p95", math.nan))
    cpu = " ".join(f"{k} {v:.2f}" for k, v in r.get("cpu_ms", {}).items())
    print(f"  {tag}: {r['offered_qps']:8.1f} qps  {key}={p:8.2f} ms  p99={lat['p99']:8.2f} ms  "
          f"{'meets' if r['sla_met'] else 'misses'}  cpu ms/query: {cpu}", flush=True)  # fmt: skip


def ladder(a: argparse.Namespace, setup: Setup, cfg: EngineConfig, out: dict) -> None:
    """Interleaved runs at fixed rates; capacity = the highest rate meeting the SLA."""
    rates = [float(r) for r in a.rates.split(",")]
    inproc = inprocess_run_fn(setup, cfg, a.preset, a.duration)
    proc, url = start_server(a, cfg, None, None)
    runs: dict[str, list[dict]] = {"inprocess": [], "http": []}
    try:
        http = http_run_fn(url, a.model, setup, a.duration, a.client, proc.pid, a.wire_ids)
        http(min(50.0, rates[0]))  # warm-up
        for q in rates:
            for name, fn in (("inprocess", inproc), ("http", http)):
                r = fn(q)
                runs[name].append(r)
                show(f"{name:>10}", r, setup.percentile)
    finally:
        stop_server(proc)
    for name, rs in runs.items():
        ok = [r["offered_qps"] for r in rs if r["sla_met"]]
        out[name] = {"latency_bounded_qps": max(ok, default=0.0), "runs": rs}
    base = out["inprocess"]["latency_bounded_qps"]
    out["ratio_http_over_inprocess"] = out["http"]["latency_bounded_qps"] / base if base else None
    print(
        f"capacity on the ladder: in-process {base:.1f} qps, HTTP "
        f"{out['http']['latency_bounded_qps']:.1f} qps, ratio {out['ratio_http_over_inprocess']}"
    )


def overload_setup(a: argparse.Namespace, setup: Setup) -> Setup:
    """The `--classes` mix, each class with an SLA (the run's unless it names one) at p99."""
    classes = tuple(
        PriorityClass(c.name, c.share, c.value, c.sla_ms or setup.sla_ms,
                      c.percentile if c.sla_ms else 99.0)
        for c in parse_classes(a.classes)
    )  # fmt: skip
    over = Setup(setup.adapter, a.scale, a.seed, classes, setup.sizes, setup.arrivals,
                 setup.sla_ms, 99.0)  # fmt: skip
    over._pool = setup.pool()
    return over


def show_classes(tag: str, r: dict) -> None:
    print(f"{tag}: {r['offered_qps']:.1f} qps, status {r['status']}, "
          f"cpu ms/query {r['cpu_ms']}")  # fmt: skip
    for name, c in r["classes"].items():
        lat = c["latency_ms"]
        verdict = "meets" if c["sla_met"] else "misses"
        print(f"  {name:>8} (value {c['value']:g}): {c['queries']} queries, "
              f"{c['shed_503']} shed (503), {c['errors']} errors in all, p99 of served "
              f"{lat['p99']:.2f} ms (SLA {c['sla_ms']:.2f} ms: {verdict})", flush=True)  # fmt: skip
        per_s = r.get("timeline", {}).get(name, [])
        print("           p99 ms per second: " + " ".join(f"{p:.0f}" for _, _, p in per_s))


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
    ap.add_argument("--admission", default="predicted", choices=["count", "predicted"])
    ap.add_argument("--reserve", type=float, default=0.25, help="server: admission reserve")
    ap.add_argument("--guard", type=float, help="server: tail guard target (default: none)")
    ap.add_argument(
        "--widen-ids", action="store_true", help="server: widen INT32 ids even if the model may"
    )
    ap.add_argument("--client", default="raw", choices=["raw", "aiohttp"])
    ap.add_argument(
        "--wire-ids", default="int32", choices=["int32", "model"], help="index inputs' dtype"
    )
    ap.add_argument("--order", choices=["fifo", "size", "value"], help="the engine's queue order")
    ap.add_argument("--opstream-options", help='JSON, e.g. \'{"gate_on": "waiting"}\'')
    ap.add_argument("--classes", help="priority classes for --overload-x")
    ap.add_argument("--overload-x", type=float, help="then offer K x the HTTP capacity")
    ap.add_argument("--light-x", type=float, help="and first L x capacity, the same mix")
    ap.add_argument("--overload-duration", type=float, default=10.0)
    ap.add_argument("--skip-inprocess", action="store_true")
    ap.add_argument("--http-qps", type=float, help="skip the HTTP search: capacity given")
    ap.add_argument(
        "--rates",
        help="instead of two searches: a ladder of rates, each run "
        "in-process then over HTTP back to back (fairer on a busy machine)",
    )
    ap.add_argument("--json")
    ap.add_argument("--overhead", type=int, help="only: N requests to a null-engine server")
    ap.add_argument("--concurrency", type=int, default=4, help="--overhead: requests at once")
    ap.add_argument(
        "--bare", action="store_true",
        help="--overhead against a raw ASGI app on uvicorn that only reads the body: the floor",
    )  # fmt: skip
    ap.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--serve-config", help=argparse.SUPPRESS)
    ap.add_argument("--null-engine", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        return serve_main(a)
    if a.serve_bare:
        return bare_main(a.serve_bare)

    setup = Setup.make(a.model, a.scale, a.seed, None, sla_ms=a.sla_ms, sla_x=a.sla_x)
    cfg = setup.config(a.preset, lanes=a.lanes, **({"order": a.order} if a.order else {}))
    if a.opstream_options:
        cfg = cfg.replace(opstream={**cfg.opstream, **json.loads(a.opstream_options)})
    print(f"{a.model} {a.scale}, {a.preset}: {cfg.to_dict()}; SLA p95 <= {setup.sla_ms:.2f} ms")
    out: dict = {"model": a.model, "preset": a.preset, "config": cfg.to_dict(),
                 "sla_ms": setup.sla_ms, "cores": os.cpu_count(), "client": a.client,
                 "admission": a.admission, "argv": sys.argv[1:]}  # fmt: skip
    if a.overhead:
        a.admission = "count"
        overhead(a, setup, cfg, out)
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1, default=float))
        return
    if a.rates:
        ladder(a, setup, cfg, out)
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1, default=float))
        return
    if not a.skip_inprocess:
        print("in-process:")
        run = inprocess_run_fn(setup, cfg, a.preset, a.duration)
        search = find_capacity(
            run, start_qps=setup.start_qps(cfg), max_runs=a.max_runs,
            on_run=lambda r: show("in-process", r, setup.percentile),
        )  # fmt: skip
        out["inprocess"] = {"latency_bounded_qps": search.qps, "runs": search.runs}
        print(f"in-process capacity: {search.qps:.1f} qps")
    over = overload_setup(a, setup) if a.classes else None
    proc, url = start_server(a, cfg, class_spec(over.classes) if over else None, setup.sla_ms)
    try:
        run = http_run_fn(url, a.model, setup, a.duration, a.client, proc.pid, a.wire_ids)
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
        if over is not None and (a.overload_x or a.light_x):
            out["overload_classes"] = class_spec(over.classes)
            for key, x in (("light", a.light_x), ("overload", a.overload_x)):
                if x:
                    s0 = server_stats(url, a.model)
                    l0, t0 = lane_seconds(url, a.model), thread_sched(proc.pid)
                    m0 = machine_ticks()
                    r = http_once(url, a.model, over, x * http_qps, a.overload_duration,
                                  a.client, proc.pid, a.wire_ids)  # fmt: skip
                    r["x_capacity"] = x
                    r["server_phases"] = phases(s0, server_stats(url, a.model))
                    r["cost_scale"] = cost_scale(url, a.model)
                    r["guard_share"] = guard_shares(url, a.model)
                    r["lanes"] = lane_stall(l0, lane_seconds(url, a.model))
                    r["threads"] = thread_waits(t0, thread_sched(proc.pid))
                    r["threads"]["loop"] = r["threads"].pop(str(proc.pid), {})
                    r["machine_cpu"] = machine_shares(m0, machine_ticks())
                    out[key] = r
                    show_classes(f"{key} {x:g}x capacity", r)
                    print("      server phases, mean ms per request: " + ", ".join(
                        f"{k} {v:.2f}" for k, v in r["server_phases"].items()
                    ) + f"; admission cost scale {r['cost_scale']}" + (
                        f"; guard share at the end {r['guard_share']}" if r["guard_share"] else ""
                    ))  # fmt: skip
                    print("      lanes, share of busy time not running: " + ", ".join(
                        f"{k} {v['stall']:.2f} of {v['busy_s']:.1f} s"
                        for k, v in r["lanes"].items()
                    ) + "; threads' CPU / runqueue wait s: " + ", ".join(
                        f"{k} {v['cpu_s']:.1f}/{v['runqueue_wait_s']:.1f}"
                        for k, v in r["threads"].items() if v
                    ) + "; machine CPU " + ", ".join(
                        f"{k} {v:.0%}" for k, v in (r["machine_cpu"] or {}).items()
                    ))  # fmt: skip
    finally:
        stop_server(proc)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
