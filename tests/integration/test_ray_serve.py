"""recsched on Ray Serve, end to end: a local Ray in a loopback-only network namespace, two
engine replicas behind the KServe v2 front, tritonclient requests, scores vs in-process.

Ray binds the machine's external address by default, so Ray never starts in this process:
the test runs `_scenario` in a child process through `.ci/ray_netns.sh` (a fresh network
namespace with only `lo` up). Skipped, with the reason, where ray (the `ray` extra),
tritonclient or network namespaces are missing. About a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NETNS = ROOT / ".ci" / "ray_netns.sh"
pytestmark = pytest.mark.slow


def _skip_reason() -> str | None:
    try:
        import ray  # noqa: F401
        import ray.serve  # noqa: F401
    except ImportError:
        return "ray[serve] is not installed (pip install 'recsched[ray]')"
    try:
        import tritonclient.http  # noqa: F401
    except ImportError:
        return "tritonclient[http] is not installed"
    check = subprocess.run(["bash", str(NETNS), "--check"], capture_output=True, text=True)
    if check.returncode != 0:
        why = (check.stderr or check.stdout).strip().splitlines()[-1:] or ["?"]
        return f"network namespaces are unavailable here (unshare -n): {why[0]}"
    return None


def _scenario(out: str) -> None:  # runs inside the namespace
    import time

    import numpy as np
    import tritonclient.http as th
    from tritonclient.utils import triton_to_np_dtype as th_dtype

    from recsched.config import preset
    from recsched.engine import Engine
    from recsched.models.registry import load_model
    from recsched.serving.ray_deploy import RayCluster, RaySpec, cost_table
    from recsched.serving.stats import aggregate
    from recsched.types import Query

    ad = load_model("rmc1", scale="small", seed=0)
    cfg = preset("dynamic", lanes=1, batch_size=32)
    spec = RaySpec("rmc1", cfg.to_dict(), replicas=2, replica_cpus=1.0, cost=cost_table(ad),
                   classes="hi:0.3:10,lo:0.7:1")  # fmt: skip
    sizes = [1, 7, 33, 100, 250]
    result: dict = {"close": [], "replicas": 0}
    with Engine(ad, cfg) as eng, RayCluster(spec, port=int(os.environ["PORT"])) as cluster:
        assert cluster.url.startswith("http://127.0.0.1:")
        client = th.InferenceServerClient(cluster.url.removeprefix("http://"))
        result["ready"] = client.is_server_ready() and client.is_model_ready("rmc1")
        wire = {t["name"]: t["datatype"] for t in client.get_model_metadata("rmc1")["inputs"]}
        result["wire"] = wire
        for i, n in enumerate(sizes * 4):
            x = ad.make_inputs(n, seed=i)
            ins = []
            for s in ad.inputs:  # in the dtypes the metadata declares, as clients do
                t = th.InferInput(s.name, list(x[s.name].shape), wire[s.name])
                a = x[s.name].numpy().astype(th_dtype(wire[s.name]))
                t.set_data_from_numpy(a, binary_data=i % 2 == 0)
                ins.append(t)
            r = client.infer("rmc1", ins, priority=1 + i % 2)
            got = r.as_numpy("scores")
            want = eng.submit(Query(i, "rmc1", n), x).result(timeout=60).numpy()
            result["close"].append(
                bool(got.shape == want.shape and np.allclose(got, want, atol=1e-5))
            )
        for _ in range(60):  # reports arrive every stats period (0.5 s)
            reports = cluster.wait_reports(2, timeout_s=30)
            c = aggregate(reports)
            if c.completed >= 20:
                break
            time.sleep(0.25)
        result["replicas"] = c.replicas
        result["per_replica"] = [r.completed for r in reports]
        result["completed"] = c.completed
        result["lanes"] = [r.lanes for r in reports]
        metrics = client.get_inference_statistics("rmc1")
        result["stat_count"] = metrics["model_stats"][0]["inference_count"]
        new = cluster.apply_config(cfg.replace(batch_size=16), timeout_s=90)
        result["applied"] = sorted({r.config["batch_size"] for r in new})
    Path(out).write_text(json.dumps(result))


@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
def test_two_replicas_serve_kserve_v2_like_the_inprocess_engine(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "result.json"
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from tests.integration.test_ray_serve import _scenario; "
        f"_scenario({str(out)!r})"
    )
    env = {**os.environ, "PORT": str(port), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(["bash", str(NETNS), sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=420)  # fmt: skip
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"the Ray scenario failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    r = json.loads(out.read_text())
    assert r["ready"]
    assert r["wire"] == {"dense": "FP32", "sparse": "INT32"}, "ids travel as INT32"
    assert len(r["close"]) == 20 and all(r["close"]), r["close"]
    assert r["replicas"] == 2 and r["lanes"] == [1, 1]
    assert r["completed"] >= 20 and min(r["per_replica"]) > 0, "both replicas served"
    assert r["stat_count"] == sum([1, 7, 33, 100, 250]) * 4, "the front's Triton statistics"
    assert r["applied"] == [16], "the new configuration reached every replica"
