"""TorchScript forwards: equal to eager for every zoo model, eager fallback when unsafe."""

import pytest
import torch
from torch import nn

from recsched.config import EngineConfig
from recsched.engine import Engine
from recsched.models.base import InputSpec, ModelAdapter, concat_rows
from recsched.models.compiled import compile_forward
from recsched.models.registry import list_models, load_model
from recsched.types import Query


@pytest.mark.parametrize("name", list_models())
def test_zoo_models_compile_and_match_eager(name):
    ad = load_model(name, scale="small", seed=0)
    c = ad.compiled()
    assert c.kind == "torchscript", c.reason
    assert c.forward is not ad.module
    for n in (2, 33):  # neither the traced batch nor a checked one
        x = ad.make_inputs(n, 99)
        with torch.inference_mode():
            assert torch.allclose(c.forward(x), ad.module(x), atol=1e-5, rtol=1e-4)
    assert ad.compiled() is c, "compiled once, then cached"
    # a merged batch: concatenation and forward fused into one compiled call
    assert c.parts_kind == "torchscript"
    parts = [ad.make_inputs(n, 50 + n) for n in (3, 1, 40)]
    with torch.inference_mode():
        want = ad.module(concat_rows(parts))
        assert torch.allclose(c.parts(parts), want, atol=1e-5, rtol=1e-4)
        assert torch.allclose(c.parts(parts[:1]), ad.module(parts[0]), atol=1e-5, rtol=1e-4)


def _make(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 4, generator=g)}


class BakesBatch(nn.Module):
    """Uses the batch size as a Python int: a trace freezes it to the traced batch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = inputs["x"]
        n = int(x.shape[0])
        return self.lin(x) + torch.arange(16, dtype=x.dtype).reshape(16, 1)[:n] * 0 + n


class Untraceable(nn.Module):
    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = inputs["x"]
        if float(x.sum()) > 0:  # data-dependent control flow
            return x[:, :1]
        return -x[:, :1]


@pytest.mark.parametrize("module", [BakesBatch(), Untraceable()])
def test_unsafe_models_fall_back_to_eager_with_a_reason(module):
    c = compile_forward(module, _make)
    assert c.kind == "eager"
    assert c.forward is module
    assert c.reason


def test_parts_fall_back_to_python_concatenation_when_the_wrapper_fails(monkeypatch):
    def refuse(*a, **k):
        raise RuntimeError("no scripting today")

    monkeypatch.setattr(torch.jit, "script", refuse)
    c = compile_forward(_Lin(), _make)
    assert c.kind == "torchscript" and c.parts_kind == "python"
    parts = [_make(n, n) for n in (2, 7)]
    with torch.inference_mode():
        assert torch.equal(c.parts(parts), c.forward(concat_rows(parts)))


def test_engine_serves_the_compiled_forward_and_eager_on_request():
    ad = load_model("ncf", scale="small", seed=0)
    x = ad.make_inputs(21, 5)
    want = ad.forward(x)
    for compiled in (True, False):
        with Engine(ad, EngineConfig(request="split", batch_size=8, compiled=compiled)) as eng:
            assert (eng.forward is ad.module) is (not compiled)
            assert (eng.forward_parts is ad.compiled().parts) is compiled
            got = eng.submit(Query(0, "ncf", 21), x).result(timeout=30)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_byo_adapter_compiles():
    spec = (InputSpec("x", (4,), torch.float32),)
    ad = ModelAdapter("lin", nn.Sequential(), spec, _make)
    ad.module = _Lin()
    assert ad.compiled().kind == "torchscript"


class _Lin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.lin(inputs["x"])


def test_offloaded_queries_run_on_the_accelerator_copy_and_come_back(monkeypatch):
    """The accelerator path's wiring, with the CPU standing in for the device (CUDA itself is
    untested here): queries >= T run on the device copy of the model, scores come back."""
    import recsched.engine as engine_mod
    from recsched.lanes.cpu import CpuLane

    class StandInAccelLane(CpuLane):
        kind = "accel"

    def make_lane(self, index, kind):
        cls = CpuLane if kind == "cpu" else StandInAccelLane
        return cls(index, 1, self._on_lane_done, self.clock)

    monkeypatch.setattr(engine_mod, "cuda_available", lambda: True)
    monkeypatch.setattr(Engine, "_accel_device", lambda self: torch.device("cpu"))
    monkeypatch.setattr(Engine, "_make_lane", make_lane)
    ad = load_model("ncf", scale="small", seed=0)
    cfg = EngineConfig(request="whole", offload_threshold=50, lanes=1, accel_lanes=1)
    sizes = [10, 80, 3, 200]
    xs = [ad.make_inputs(n, i) for i, n in enumerate(sizes)]
    with Engine(ad, cfg) as eng:
        assert eng.accel_device == torch.device("cpu") and eng.lanes[1].kind == "accel"
        pairs = enumerate(zip(sizes, xs, strict=True))
        futs = [eng.submit(Query(i, "ncf", n), x) for i, (n, x) in pairs]
        got = [f.result(timeout=30) for f in futs]
    assert [lane.stats.tasks for lane in eng.lanes] == [2, 2]  # 80 and 200 went to the device
    for g, x in zip(got, xs, strict=True):
        assert torch.allclose(g, ad.forward(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="whole-model tasks only"):
        Engine(ad, cfg.replace(operator="opstream"))
