"""recsched serve against a plain one-worker server: the same model, wire and open-loop load.

The plain server is what one writes without a serving system: a starlette endpoint that reads
the KServe v2 request (the same codec, binary tensors, INT32 ids), runs the model on one worker
thread (`ThreadPoolExecutor(1)`, all cores as its intra-op threads, the eager module unless
`--plain-compiled`), one request at a time in arrival order, and answers. No batching, no
admission, no priority. recsched serve runs `--preset` (default `dynamic`) with its admission
and, with classes, its tail guard. Both run as subprocesses on 127.0.0.1, driven by the load
generator of `http_vs_inprocess.py` (a raw keep-alive HTTP/1.1 client on the same 2 cores).

1. Latency-bounded throughput of each (p95 <= `--sla-ms`), the two searches interleaved run by
   run (`recsched.bench.capacity.Turns`), so the machine's slow spells land on both.
2. With `--classes` and `--overload-x K`: both offered the same K x recsched's capacity with
   that class mix; per class, the p99 of what was served and how many were shed (503) or not
   answered in time.

    python benchmarks/plain_vs_recsched.py --sla-ms 25 \\
        --classes high:0.2:10:50ms@p99,low:0.8:1:100ms@p99 --overload-x 2 --json F

Not a test: minutes of timed runs on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import http_vs_inprocess as hv

from recsched.bench.capacity import find_capacity, in_turns
from recsched.bench.setup import Setup


# -- the plain server ------------------------------------------------------------------------
def plain_main(port: int, model: str, scale: str, seed: int, compiled: bool) -> None:
    """A one-worker KServe v2 endpoint, as written without a serving system."""
    import os

    import torch
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from recsched.models.registry import load_model
    from recsched.server import codec

    adapter = load_model(model, scale=scale, seed=seed)
    forward = adapter.runner(compiled)
    threads = os.cpu_count() or 1

    def init() -> None:
        torch.set_num_threads(threads)

    worker = ThreadPoolExecutor(1, initializer=init)
    limits = codec.Limits()
    pending = [0]

    def run(inputs: dict) -> torch.Tensor:
        with torch.inference_mode():
            return forward(inputs)

    async def infer(request: Request) -> Response:
        body = bytearray(await request.body())
        try:  # a request's priority is accepted and ignored
            req = codec.decode_request(
                body, request.headers.get("inference-header-content-length"), adapter.inputs,
                limits, priority_levels=1000, wire_ids="int32",
            )  # fmt: skip
        except codec.RequestError as e:
            return Response(codec.error_body(str(e)), status_code=e.status)
        pending[0] += 1
        try:
            scores = await asyncio.get_running_loop().run_in_executor(worker, run, req.inputs)
        finally:
            pending[0] -= 1
        out, headers = codec.encode_response(model, "1", req.id, req.outputs, scores.numpy())
        return Response(out, headers=headers)

    async def ready(request: Request) -> Response:
        return Response(status_code=200)

    async def metrics(request: Request) -> Response:  # what the load generator polls
        text = f'nv_inference_pending_request_count{{model="{model}",version="1"}} {pending[0]}\n'
        return PlainTextResponse(text)

    app = Starlette(
        routes=[
            Route("/v2/health/ready", ready),
            Route("/metrics", metrics),
            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_plain(a: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = hv.free_port()
    args = [sys.executable, __file__, "--serve-plain", str(port), "--model", a.model,
            "--scale", a.scale, "--seed", str(a.seed)]  # fmt: skip
    if a.plain_compiled:
        args.append("--plain-compiled")
    return hv.launch(args, port, "the plain server")


# -- the comparison ----------------------------------------------------------------------------
def capacities(a, setup, runs: dict) -> dict[str, dict]:
    """Both searches, interleaved run by run (`in_turns`: one run at a time)."""

    def search(name: str):
        def go(wrap) -> dict:
            s = find_capacity(
                wrap(runs[name]), start_qps=a.start_qps, max_runs=a.max_runs,
                on_run=lambda r: hv.show(f"{name:>8}", r, setup.percentile),
            )  # fmt: skip
            return {"latency_bounded_qps": s.qps, "runs": s.runs}

        return go

    return in_turns({n: search(n) for n in runs})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="dynamic", help="recsched serve's preset")
    ap.add_argument("--sla-ms", type=float, default=25.0)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per run (at least)")
    ap.add_argument("--max-runs", type=int, default=7)
    ap.add_argument("--start-qps", type=float, default=100.0)
    ap.add_argument("--plain-compiled", action="store_true", help="plain: TorchScript forward")
    ap.add_argument("--guard", type=float, default=0.4, help="recsched: tail guard target")
    ap.add_argument("--reserve", type=float, default=0.1, help="recsched: admission reserve")
    ap.add_argument("--classes", help="then the overload mix (each class with an SLA)")
    ap.add_argument("--overload-x", type=float, default=2.0)
    ap.add_argument("--overload-duration", type=float, default=10.0)
    ap.add_argument("--json")
    ap.add_argument("--serve-plain", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_plain:
        return plain_main(a.serve_plain, a.model, a.scale, a.seed, a.plain_compiled)

    setup = Setup.make(a.model, a.scale, a.seed, None, sla_ms=a.sla_ms)
    cfg = setup.config(a.preset)
    over = None
    if a.classes:
        ns = argparse.Namespace(classes=a.classes, scale=a.scale, seed=a.seed)
        over = hv.overload_setup(ns, setup)
    # recsched serve's options, as http_vs_inprocess.py passes them
    sa = argparse.Namespace(
        model=a.model, scale=a.scale, seed=a.seed, queue_capacity=100_000,
        admission="predicted", reserve=a.reserve, wire_ids="int32",
        guard=a.guard if over is not None else None, widen_ids=False, window=None,
    )  # fmt: skip
    kind = "TorchScript" if a.plain_compiled else "eager"
    print(f"{a.model}: recsched serve {a.preset} {cfg.to_dict()} vs plain one-worker server "
          f"({kind}); SLA p95 <= {a.sla_ms} ms")  # fmt: skip
    out: dict = {"model": a.model, "preset": a.preset, "config": cfg.to_dict(),
                 "sla_ms": a.sla_ms, "plain_compiled": a.plain_compiled,
                 "argv": sys.argv[1:]}  # fmt: skip
    spec = hv.class_spec(over.classes) if over is not None else None
    rproc, rurl = hv.start_server(sa, cfg, spec, setup.sla_ms)
    pproc, purl = start_plain(a)
    servers = {"recsched": (rproc, rurl), "plain": (pproc, purl)}
    try:
        runs = {
            n: hv.http_run_fn(url, a.model, setup, a.duration, "raw", proc.pid, "int32")
            for n, (proc, url) in servers.items()
        }
        for run in runs.values():
            run(min(50.0, a.start_qps))  # warm-up
        caps = capacities(a, setup, runs)
        out.update(caps)
        base = caps["plain"]["latency_bounded_qps"]
        ours = caps["recsched"]["latency_bounded_qps"]
        out["ratio_recsched_over_plain"] = ours / base if base else None
        print(f"capacity: recsched {ours:.1f} qps, plain {base:.1f} qps, "
              f"ratio {out['ratio_recsched_over_plain']}")  # fmt: skip
        if over is not None and ours > 0:
            qps = a.overload_x * ours
            out["overload_classes"] = spec
            out["overload_qps"] = qps
            for name, (proc, url) in servers.items():
                r = hv.http_once(url, a.model, over, qps, a.overload_duration, "raw", proc.pid)
                out[f"overload_{name}"] = r
                hv.show_classes(f"{name} at {a.overload_x:g}x recsched's capacity", r)
    finally:
        for proc, _ in servers.values():
            hv.stop_server(proc)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
