"""Ray Serve's own cost per hop on this machine: round trips through Serve's HTTP proxy to an
echo deployment (`one`: proxy -> one deployment) and on through a handle call to a second
(`two`: proxy -> deployment -> deployment), one request at a time, two body sizes. No
recsched code on the path: this is the floor any Serve deployment pays here.

    python benchmarks/ray_echo.py --requests 80

Runs itself inside a loopback-only network namespace (.ci/ray_netns.sh), as every Ray start
in this project does. A minute on 2 cores; never run by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=80, help="per path and size")
    ap.add_argument("--port", type=int, default=8012)
    ap.add_argument("--json")
    a = ap.parse_args()
    if os.environ.get("RECSCHED_NETNS") != "1":  # Ray only ever starts on loopback
        env = {**os.environ, "RECSCHED_NETNS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = ["bash", str(ROOT / ".ci" / "ray_netns.sh"), sys.executable, *sys.argv]
        sys.exit(subprocess.run(cmd, env=env).returncode)

    import ray
    import requests
    from ray import serve
    from starlette.requests import Request

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})

    @serve.deployment(ray_actor_options={"num_cpus": 1})
    class Inner:
        async def __call__(self, x):
            return x

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Outer:
        def __init__(self, inner) -> None:
            self.inner = inner

        async def __call__(self, req: Request) -> bytes:
            body = await req.body()
            if req.url.path.endswith("two"):
                await self.inner.remote(np.frombuffer(body, dtype=np.uint8))
            return b"ok"

    serve.run(Outer.bind(Inner.bind()), route_prefix="/")
    out = []
    try:
        s = requests.Session()
        for path in ("one", "two", "one", "two"):  # each twice, interleaved
            for nbytes in (100, 100_000):
                lat = []
                for _ in range(a.requests + 10):
                    t0 = time.perf_counter()
                    s.post(f"http://127.0.0.1:{a.port}/{path}", data=b"x" * nbytes)
                    lat.append((time.perf_counter() - t0) * 1e3)
                    time.sleep(0.02)
                lat = lat[10:]  # the first few warm the connection
                p50, p90 = (float(np.percentile(lat, p)) for p in (50, 90))
                row = {"path": path, "bytes": nbytes, "p50_ms": p50, "p90_ms": p90,
                       "min_ms": float(min(lat))}  # fmt: skip
                out.append(row)
                print(f"{path} {nbytes:7d} B: p50 {row['p50_ms']:.2f}  p90 {row['p90_ms']:.2f}  "
                      f"min {row['min_ms']:.2f} ms", flush=True)  # fmt: skip
    finally:
        serve.shutdown()
        ray.shutdown()
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
