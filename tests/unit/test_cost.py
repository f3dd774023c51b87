"""Cost model: exact interpolation/extrapolation on a hand-made profile, the analytic roofline,
and a profile JSON round trip (and the throughput peak) on a tiny model."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from recsched.graph.cost import CostModel, interpolate
from recsched.graph.ops import GraphInfo, OpInfo
from recsched.models.base import InputSpec, ModelAdapter


def chain() -> GraphInfo:
    """emb (memory) -> mlp (compute) -> out."""
    ops = (
        OpInfo(0, "emb", (), "memory", 10.0, 1000.0, 0.0, "emb", "embedding"),
        OpInfo(1, "mlp", (0,), "compute", 1e6, 100.0, 4e5, "mlp", "mlp"),
        OpInfo(2, "out", (1,), "memory", 1.0, 8.0, 0.0, "out", "elementwise"),
    )
    return GraphInfo("toy", "coarse", ops, 2)


def profile_dict() -> dict:
    return {
        "model": "toy",
        "scale": "small",
        "threads": 1,
        "machine": {},
        "batch_sizes": [16, 1, 4],  # unsorted on purpose
        "whole_ms": [6.0, 1.0, 2.0],
        "granularities": {
            "coarse": {
                "ops": {"emb": [4.0, 1.0, 2.0], "mlp": [1.0, 3.0, 2.0], "out": [0.0, 0.0, 0.0]},
                "dispatch_us": 12.5,
                "run_ms": [7.0, 1.5, 2.5],
            }
        },
    }


def test_interpolate_exact() -> None:
    xs, ys = [1, 4, 16], [1.0, 2.0, 4.0]
    assert interpolate(xs, ys, 4) == 2.0
    assert interpolate(xs, ys, 2) == pytest.approx(1.0 + 1 / 3)
    assert interpolate(xs, ys, 10) == pytest.approx(3.0)
    assert interpolate(xs, ys, 64) == pytest.approx(4.0 + 48 * (2.0 / 12))  # last two points
    assert interpolate(xs, [3.0, 2.0, 1.0], 100) == 1.0  # falling tail: flat, not negative
    assert interpolate(xs, [3.0, 2.0, 1.0], 0) == pytest.approx(3.0 + 1 / 3)  # first two points
    assert interpolate(xs, [0.0, 3.0, 6.0], 0) == 0.0  # never negative
    assert interpolate([8], [2.5], 1000) == 2.5


def test_cost_model_from_profile() -> None:
    cost = CostModel.from_profile(profile_dict(), "coarse", chain())
    assert cost.batch_sizes == (1, 4, 16)
    assert cost.op_s(0, 1) == pytest.approx(1e-3)
    assert cost.op_s(0, 10) == pytest.approx(3e-3)
    assert cost.op_s(0, 32) == pytest.approx(4e-3 + 16 * 2e-3 / 12)
    assert cost.op_s(1, 1000) == 0.0 + 1e-3  # decreasing measurements: flat beyond the last
    assert cost.op_s(2, 64) == 0.0
    assert cost.whole_s(8) == pytest.approx(2e-3 + 4 * 4e-3 / 12)
    assert cost.dispatch_s == pytest.approx(12.5e-6)
    assert cost.ops_s([0, 1], 4) == pytest.approx(4e-3)
    rank = cost.upward_rank(4)
    assert rank[0] == pytest.approx(4e-3 + 3 * 12.5e-6)
    again = pickle.loads(pickle.dumps(cost))
    assert again == cost and again.op_s(0, 10) == cost.op_s(0, 10)


def test_cost_model_rejects_mismatches() -> None:
    prof = profile_dict()
    del prof["granularities"]["coarse"]["ops"]["mlp"]
    with pytest.raises(KeyError, match="lacks ops"):
        CostModel.from_profile(prof, "coarse", chain())
    with pytest.raises(KeyError, match="fine"):
        CostModel.from_profile(profile_dict(), "fine", chain())


def test_analytic_roofline() -> None:
    g = chain()
    cost = CostModel.analytic(g, flops_per_s=1e9, bytes_per_s=1e8, dispatch_s=1e-5, op_fixed_s=0)
    assert cost.op_s(0, 10) == pytest.approx(10 * 1000 / 1e8)  # memory-bound
    assert cost.op_s(1, 10) == pytest.approx(10 * 1e6 / 1e9)  # compute-bound
    assert cost.op_s(1, 1) == pytest.approx(max(1e6 / 1e9, (100 + 4e5) / 1e8))  # weights
    assert cost.whole_s(10) == pytest.approx(sum(cost.op_s(i, 10) for i in range(3)))
    assert cost.dispatch_s == 1e-5
    assert pickle.loads(pickle.dumps(cost)) == cost


# ---------------------------------------------------------------- measuring a tiny model


class Tiny(nn.Module):
    coarse_stages = ("emb", "mlp")

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(100, 8, mode="sum")
        self.mlp = nn.Sequential(nn.Linear(8 + 3, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(torch.cat([self.emb(x["ids"]), x["dense"]], dim=1))


def tiny() -> ModelAdapter:
    torch.manual_seed(0)

    def make(n: int, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {"ids": torch.randint(0, 100, (n, 4), generator=g), "dense": torch.randn(n, 3)}

    specs = (
        InputSpec("ids", (4,), torch.int64, "index", 0, 100),
        InputSpec("dense", (3,), torch.float32),
    )
    return ModelAdapter("tiny", Tiny().eval(), specs, make, info={"scale": "small"})


def test_profile_round_trip(tmp_path) -> None:
    from recsched.graph.fx import build_graph
    from recsched.graph.profile import load_profile, profile_model, save_profile

    adapter = tiny()
    prof = profile_model(adapter, batch_sizes=(4, 1), repeats=1, warmup=0, threads=1)
    assert prof["batch_sizes"] == [1, 4] and prof["threads"] == 1 and prof["scale"] == "small"
    assert set(prof["granularities"]) == {"coarse", "fine"}
    for g in ("coarse", "fine"):
        gp = prof["granularities"][g]
        info = build_graph(adapter, g).info
        assert set(gp["ops"]) == {op.name for op in info.ops}
        assert all(len(v) == 2 and min(v) >= 0 for v in gp["ops"].values())
        assert gp["dispatch_us"] >= 0 and len(gp["run_ms"]) == 2
    path = tmp_path / "p" / "tiny.json"
    save_profile(prof, path)
    back = load_profile(path)
    assert back == prof
    info = build_graph(adapter, "fine").info
    cost = CostModel.from_profile(back, "fine", info)
    mlp0 = info.index("mlp.0")
    assert cost.op_s(mlp0, 4) == pytest.approx(
        back["granularities"]["fine"]["ops"]["mlp.0"][1] / 1e3
    )
    (tmp_path / "bad.json").write_text('{"model": "x"}')
    with pytest.raises(ValueError, match="not a recsched profile"):
        load_profile(tmp_path / "bad.json")


def test_fastest_of_keeps_each_timings_smallest() -> None:
    from recsched.graph.profile import fastest_of, profile_model

    def prof(whole, op, run, disp):
        gran = {"ops": {"a": op}, "run_ms": run, "dispatch_us": disp, "n_ops": 1}
        return {"model": "m", "batch_sizes": [1, 4], "whole_ms": whole,
                "granularities": {"coarse": gran}}  # fmt: skip

    slow_first = prof([2.0, 3.0], [1.0, 5.0], [4.0, 4.0], 9.0)
    out = fastest_of([slow_first, prof([1.0, 6.0], [2.0, 2.0], [3.0, 8.0], 7.0)])
    assert out["whole_ms"] == [1.0, 3.0] and out["rounds"] == 2
    g = out["granularities"]["coarse"]
    assert g["ops"]["a"] == [1.0, 2.0] and g["run_ms"] == [3.0, 4.0] and g["dispatch_us"] == 7.0
    assert slow_first["whole_ms"] == [2.0, 3.0]  # the inputs are not changed
    two = profile_model(tiny(), batch_sizes=(1, 4), repeats=1, warmup=0, threads=1, rounds=2)
    assert two["rounds"] == 2 and len(two["whole_ms"]) == 2


def test_measure_peak_shape() -> None:
    from recsched.graph.profile import measure_peak

    threads = torch.get_num_threads()
    peak = measure_peak(tiny(), batch_sizes=(8, 32), duration_s=0.05, workers=2)
    assert torch.get_num_threads() == threads  # restored
    assert set(peak["per_config"]) == {"1x2", "2x1"}
    assert peak["best_batch"] in (8, 32) and peak["best_config"] in ("1x2", "2x1")
    assert peak["peak_items_per_s"] == max(peak["per_batch"].values()) > 0
    assert peak["rounds"] == 3


def test_measure_peak_keeps_the_best_round(monkeypatch) -> None:
    """Rounds go over every point in turn; each point keeps its best measurement."""
    from recsched.graph import profile as prof

    calls: list[int] = []
    by_round = {0: 10.0, 1: 30.0, 2: 20.0}  # the second round is the fast one

    def fake(forward, inputs, workers, duration_s):
        calls.append(len(calls))
        return by_round[(len(calls) - 1) // 4] * workers  # 2 batch sizes x 2 configs a round

    monkeypatch.setattr(prof, "_throughput", fake)
    peak = prof.measure_peak(tiny(), batch_sizes=(8, 32), duration_s=0.01, workers=2, rounds=3)
    assert len(calls) == 12
    assert peak["per_config"]["2x1"] == {"8": 60.0, "32": 60.0}
    assert peak["per_config"]["1x2"] == {"8": 30.0, "32": 30.0}
    assert peak["peak_items_per_s"] == 60.0 and peak["best_config"] == "2x1"
