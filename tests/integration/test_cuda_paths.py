"""The CUDA paths on a real device: the offload threshold end to end and the CUDA lane with
torch's own streams and events. Skipped where torch sees no CUDA device, as on every machine
this project has run on so far: these tests have never run (README, "What is untested here").
A session lent a GPU runs them with a CUDA build of torch: `python -m pytest
tests/integration/test_cuda_paths.py -rs`."""

from __future__ import annotations

import threading

import pytest
import torch

from recsched.config import EngineConfig
from recsched.engine import Engine
from recsched.models.registry import load_model
from recsched.types import LaneResult, Query, Task

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (none on these machines)"
)


def test_offloaded_queries_score_on_the_device_as_on_the_cpu():
    """Queries of at least T items run on the device's copy of the model; every score comes
    back to the CPU in item order and equals the eager CPU forward's."""
    ad = load_model("ncf", scale="small", seed=0)
    cfg = EngineConfig(request="whole", offload_threshold=50, lanes=1, accel_lanes=1)
    sizes = [10, 80, 3, 200, 64]
    xs = [ad.make_inputs(n, i) for i, n in enumerate(sizes)]
    with Engine(ad, cfg) as eng:
        assert eng.lanes[1].kind == "accel" and eng.accel_device.type == "cuda"
        pairs = enumerate(zip(sizes, xs, strict=True))
        futs = [eng.submit(Query(i, "ncf", n), x) for i, (n, x) in pairs]
        got = [f.result(timeout=60) for f in futs]
    assert [lane.stats.tasks for lane in eng.lanes] == [2, 3]  # 80, 200 and 64 offloaded
    for g, x in zip(got, xs, strict=True):
        assert g.device.type == "cpu"
        assert torch.allclose(g, ad.forward(x), atol=1e-4, rtol=1e-3)


def test_cuda_lane_reports_kernels_in_order_with_device_times():
    """A CudaLane on torch's streams: launches run on its stream, completions are reported in
    submission order once their end events fire, an error in a launch fails that task only."""
    from recsched.lanes.cuda import CudaLane

    got: list[LaneResult] = []
    done = threading.Event()

    def on_done(r: LaneResult) -> None:
        got.append(r)
        if len(got) == 3:
            done.set()

    lane = CudaLane(0, on_done, priority=-1)
    lane.start()
    x = torch.randn(512, 512, device="cuda")
    out: list[torch.Tensor] = []

    def matmul() -> None:
        out.append(x @ x)

    def boom() -> None:
        raise RuntimeError("launch failed")

    for tid, work in enumerate([matmul, boom, matmul]):
        lane.submit(Task(tid, tid, 0, (0,), None, 0.0), work)
    assert done.wait(60)
    lane.stop(timeout=10)
    assert [r.tid for r in got] == [0, 1, 2]
    assert got[0].error is None and got[2].error is None and "launch failed" in str(got[1].error)
    assert all(r.end_s >= r.start_s for r in got) and lane.stats.tasks == 3
    torch.cuda.synchronize()
    assert torch.allclose(out[0].cpu(), (x @ x).cpu(), atol=1e-3)
