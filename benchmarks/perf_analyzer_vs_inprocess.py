"""Triton's perf_analyzer against `recsched serve`, side by side with the in-process engine
at the same rates (issue 7): HTTP's latency-bounded throughput with a C++ load generator.

perf_analyzer sends requests of one batch size (`-b N`) at Poisson times in request-rate
mode, binary tensors over HTTP/1.1. The in-process side runs the same preset, the same
N-item queries at the same Poisson rate (`recsched bench`'s open-loop driver), on the same
inputs: zeros (`--input-data zero`; perf_analyzer's random ids would fail the server's index
checks), so every embedding lookup reads row 0 on both sides and the absolute rates are
higher than with real ids. At each rate of `--rates`, in-process then HTTP (a fresh
perf_analyzer run against one server started once); the capacity of each side is the highest
rate of the ladder whose p95 meets `--sla-ms`, and the report gives the CPU per request of
the server process and of perf_analyzer.

perf_analyzer ships in tritonclient 2.41.1's manylinux wheel (newer wheels do not carry it);
it starts without a GPU once it finds libb64 (Debian's libb64-0d) and libcudart.so.12 (the
nvidia-cuda-runtime-cu12 wheel), so on this machine:

    apt-get install -y libb64-0d
    pip download --no-deps --only-binary=:all: --platform manylinux1_x86_64 -d /tmp/pa \\
        tritonclient==2.41.1
    pip download --no-deps -d /tmp/pa nvidia-cuda-runtime-cu12
    cd /tmp/pa && python -m zipfile -e tritonclient-2.41.1-*.whl tc \\
        && python -m zipfile -e nvidia_cuda_runtime_cu12-*.whl cu && cd -
    PA=/tmp/pa/tc/tritonclient-2.41.1.data/data/bin/perf_analyzer && chmod +x $PA
    python benchmarks/perf_analyzer_vs_inprocess.py --perf-analyzer $PA \\
        --cudart /tmp/pa/cu/nvidia/cuda_runtime/lib --model rmc1 --preset dynamic \\
        --items 108 --sla-ms 25 --rates 200,400,600,800 --json out.json

Minutes on a 2-core machine; never run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_vs_inprocess import cpu_s, free_port, launch, stop_server  # noqa: E402

from recsched.bench.run import InputPool  # noqa: E402
from recsched.bench.setup import Setup  # noqa: E402


def zero_pool(setup: Setup) -> None:
    """The setup's input pool with every tensor zeroed (what perf_analyzer sends)."""
    pool = setup.pool()
    setup._pool = InputPool({k: torch.zeros_like(v) for k, v in pool.inputs.items()}, pool.rows)


def perf_analyzer(a: argparse.Namespace, url: str, rate: float) -> dict:
    """One perf_analyzer run at `rate` requests/s; its p95, throughput, delayed share and CPU."""
    env = {**os.environ, "LD_LIBRARY_PATH": a.cudart}
    cmd = [
        a.perf_analyzer, "-m", a.model, "-u", url.removeprefix("http://"), "-i", "http",
        "--request-rate-range", f"{rate:g}", "--request-distribution", "poisson",
        "-b", str(a.items), "--input-data", "zero", "--percentile", "95",
        "--measurement-interval", str(int(a.window_s * 1000)), "--max-threads", str(a.threads),
        "--stability-percentage", "50", "--max-trials", "4",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = out.stdout + out.stderr

    def num(pattern: str) -> float | None:
        found = re.findall(pattern, text)
        return float(found[-1]) if found else None

    count = num(r"Request count: (\d+)")
    return {
        "returncode": out.returncode,
        "p95_ms": (num(r"p95 latency: (\d+) usec") or float("nan")) / 1e3,
        "requests_per_s": (num(r"Throughput: ([\d.]+) infer/sec") or 0.0) / a.items,
        "send_rate": num(r"Avg send request rate: ([\d.]+)"),
        "delayed_pct": num(r"([\d.]+)% of the requests were delayed") or 0.0,
        "last_window_requests": count,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "tail": text[-600:] if out.returncode else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--perf-analyzer", required=True, help="path to the perf_analyzer binary")
    ap.add_argument("--cudart", required=True, help="directory holding libcudart.so.12")
    ap.add_argument("--model", default="rmc1")
    ap.add_argument("--preset", default="dynamic")
    ap.add_argument("--items", type=int, default=108, help="items per query (-b)")
    ap.add_argument("--sla-ms", type=float, default=25.0)
    ap.add_argument("--rates", default="200,400,600,800")
    ap.add_argument("--duration", type=float, default=5.0, help="in-process seconds per rate")
    ap.add_argument("--window-s", type=float, default=3.0, help="perf_analyzer window")
    ap.add_argument("--threads", type=int, default=16, help="perf_analyzer --max-threads")
    ap.add_argument("--json")
    a = ap.parse_args()

    setup = Setup.make(a.model, sizes=f"fixed:{a.items}", sla_ms=a.sla_ms)
    cfg = setup.config(a.preset)
    zero_pool(setup)
    run = setup.run_fn(cfg, a.preset, a.duration)
    port = free_port()
    serve = ["recsched", "serve", a.model, "--preset", a.preset, "--port", str(port),
             "--sla-ms", f"{a.sla_ms:g}"]  # fmt: skip
    proc, url = launch(serve, port)
    rows = []
    try:
        for rate in (float(r) for r in a.rates.split(",")):
            r = run(rate)
            ip = {"p95_ms": r["latency_ms"]["p95"], "completed_qps": r["completed_qps"],
                  "late_issues": r["late_issues"]}  # fmt: skip
            s0, t0 = cpu_s(proc.pid), time.perf_counter()
            pa = perf_analyzer(a, url, rate)
            server_cpu = cpu_s(proc.pid) - s0
            wall = time.perf_counter() - t0
            pa["server_cpu_ms_per_request"] = server_cpu / max(1.0, rate * wall) * 1e3
            pa["pa_cpu_ms_per_request"] = pa["cpu_s"] / max(1.0, rate * wall) * 1e3
            rows.append({"rate": rate, "inprocess": ip, "http": pa})
            print(
                f"{rate:7.1f} req/s  in-process p95 {ip['p95_ms']:7.2f} ms  |  HTTP p95 "
                f"{pa['p95_ms']:7.2f} ms, {pa['requests_per_s']:7.1f} req/s served, "
                f"{pa['delayed_pct']:.1f}% sent late; CPU ms/request: server "
                f"{pa['server_cpu_ms_per_request']:.2f}, perf_analyzer "
                f"{pa['pa_cpu_ms_per_request']:.2f}",
                flush=True,
            )
            if pa["returncode"]:
                print(pa["tail"], file=sys.stderr)
    finally:
        stop_server(proc)

    def bracket(side: str) -> tuple[float, float]:
        """(highest rate that met the SLA, lowest rate above it that missed: inf if none);
        a perf_analyzer run that never settled (p95 nan) decides nothing."""
        p95 = {row["rate"]: row[side]["p95_ms"] for row in rows}
        met = max([r for r, v in p95.items() if v <= a.sla_ms], default=0.0)
        above = [r for r, v in p95.items() if r > met and v > a.sla_ms]
        return met, min(above, default=float("inf"))

    caps = {side: bracket(side) for side in ("inprocess", "http")}
    (ip_met, ip_miss), (h_met, h_miss) = caps["inprocess"], caps["http"]
    print(
        f"capacity on the ladder (p95 <= {a.sla_ms:g} ms), met / first missed above: "
        f"in-process {ip_met:g} / {ip_miss:g} req/s, HTTP with perf_analyzer {h_met:g} / "
        f"{h_miss:g} req/s; HTTP / in-process between {h_met / ip_miss:.2f} and "
        f"{h_miss / ip_met if ip_met else float('nan'):.2f}"
    )
    if a.json:
        out = {"argv": sys.argv[1:], "config": cfg.to_dict(), "rows": rows,
               "capacity": {k: {"met": v[0], "missed": v[1]} for k, v in caps.items()}}  # fmt: skip
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
