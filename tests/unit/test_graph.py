"""Operator graphs: replay equality (any topological order, any row split, threads), work
counting and classification, and the tensor-free GraphInfo maths.

DeepFM, DCN and a GRU model are built here: models the library has never seen.
"""

from __future__ import annotations

import pickle
import random
import threading

import pytest
import torch
from torch import nn

from recsched.graph.fx import OpGraph, build_graph
from recsched.graph.ops import GraphInfo, OpInfo
from recsched.models.base import InputSpec, ModelAdapter

# ---------------------------------------------------------------- models never seen


class FM(nn.Module):
    """Factorization machine second-order term: `[B, F, D] -> [B, 1]`."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        s = v.sum(1)
        return 0.5 * (s * s - (v * v).sum(1)).sum(1, keepdim=True)


class DeepFM(nn.Module):
    """DeepFM (Guo et al. 2017): first-order weights + FM + deep MLP on shared embeddings."""

    coarse_stages = ("embeddings", "first_order", "dense_proj", "fm", "deep", "head")

    def __init__(self, fields: int = 6, rows: int = 50, dim: int = 8, dense: int = 5) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(rows, dim) for _ in range(fields))
        self.first_order = nn.ModuleList(nn.Embedding(rows, 1) for _ in range(fields))
        self.dense_proj = nn.Linear(dense, dim)
        self.fm = FM()
        self.deep = nn.Sequential(
            nn.Linear((fields + 1) * dim, 32), nn.ReLU(inplace=True), nn.Linear(32, 16), nn.ReLU()
        )
        self.head = nn.Linear(16, 1)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        embs = [e(x[f"cat_{i}"]) for i, e in enumerate(self.embeddings)]
        stack = torch.stack([*embs, self.dense_proj(x["dense"])], dim=1)  # [B, F+1, D]
        first = sum(w(x[f"cat_{i}"]) for i, w in enumerate(self.first_order))  # [B, 1]
        deep = self.head(self.deep(stack.flatten(1)))
        return torch.sigmoid(first + self.fm(stack) + deep)


class BagEmbeddings(nn.Module):
    """Sum-pooled tables over flattened ids with offsets: `ids [B, T, L] -> [B, T*D]`."""

    def __init__(self, tables: int, rows: int, dim: int) -> None:
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum") for _ in range(tables))

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = x["ids"]
        b, length = ids.shape[0], ids.shape[2]
        offsets = torch.arange(0, b * length, length)
        return torch.cat([bag(ids[:, t].flatten(), offsets) for t, bag in enumerate(self.bags)], 1)


class Cross(nn.Module):
    """DCN cross network: `x_{l+1} = x0 * (W_l x_l + b_l) + x_l`, `[B, d] -> [B, d]`."""

    def __init__(self, d: int, layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for lin in self.layers:
            x = x0 * lin(x) + x
        return x


class DCN(nn.Module):
    """Deep & Cross Network (Wang et al. 2017): cross and deep towers on the same features."""

    coarse_stages = ("embeddings", "cross", "deep", "head")

    def __init__(self, tables: int = 4, rows: int = 40, dim: int = 4, dense: int = 6) -> None:
        super().__init__()
        d = tables * dim + dense
        self.embeddings = BagEmbeddings(tables, rows, dim)
        self.cross = Cross(d)
        self.deep = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.head = nn.Linear(d + 16, 1)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = torch.cat([x["dense"], self.embeddings(x)], dim=1)
        return self.head(torch.cat([self.cross(feats), self.deep(feats)], dim=1))


class SeqGRU(nn.Module):
    """A GRU over a time-major sequence: outputs `[T, B, H]` and `h [1, B, H]` (not batch-first)."""

    coarse_stages = ("emb", "gru", "head")

    def __init__(self, rows: int = 30, dim: int = 8, hidden: int = 12) -> None:
        super().__init__()
        self.emb = nn.Embedding(rows, dim)
        self.gru = nn.GRU(dim, hidden)
        self.head = nn.Linear(2 * hidden, 2)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        seq = self.emb(x["seq"]).transpose(0, 1)  # [T, B, D]
        out, h = self.gru(seq)
        return torch.softmax(self.head(torch.cat([out.mean(0), h[0]], dim=1)), dim=1)


class BigMLP(nn.Module):
    coarse_stages = ("emb", "mlp")

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(1000, 512, mode="sum")
        self.mlp = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1))

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.emb(x["ids"]))


class Odd(nn.Module):
    """An intermediate `[2B + 3]` that does not scale cleanly with the batch: not splittable."""

    coarse_stages = ("lin",)

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("pad", torch.zeros(3))

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.lin(x["dense"])  # [B, 2]
        flat = torch.cat([h.flatten(), self.pad])  # [2B + 3]
        b = h.shape[0]
        return torch.sigmoid(flat[: 2 * b].view(b, 2))


def _adapter(name: str, module: nn.Module, specs: tuple[InputSpec, ...]) -> ModelAdapter:
    def make(n: int, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        out = {}
        for s in specs:
            if s.kind == "index":
                out[s.name] = torch.randint(s.low, s.high, (n, *s.shape), generator=g)
            else:
                out[s.name] = torch.randn(n, *s.shape, generator=g)
        return out

    return ModelAdapter(name, module.eval(), specs, make)


def deepfm() -> ModelAdapter:
    torch.manual_seed(0)
    cats = tuple(InputSpec(f"cat_{i}", (), torch.int64, "index", 0, 50) for i in range(6))
    return _adapter("deepfm", DeepFM(), (*cats, InputSpec("dense", (5,), torch.float32)))


def dcn() -> ModelAdapter:
    torch.manual_seed(1)
    specs = (
        InputSpec("dense", (6,), torch.float32),
        InputSpec("ids", (4, 3), torch.int64, "index", 0, 40),
    )
    return _adapter("dcn", DCN(), specs)


def seq_gru() -> ModelAdapter:
    torch.manual_seed(2)
    return _adapter("seqgru", SeqGRU(), (InputSpec("seq", (5,), torch.int64, "index", 0, 30),))


def big_mlp() -> ModelAdapter:
    torch.manual_seed(3)
    return _adapter("bigmlp", BigMLP(), (InputSpec("ids", (4,), torch.int64, "index", 0, 1000),))


def odd() -> ModelAdapter:
    torch.manual_seed(4)
    return _adapter("odd", Odd(), (InputSpec("dense", (3,), torch.float32),))


LOCAL = {"deepfm": deepfm, "dcn": dcn, "seqgru": seq_gru, "odd": odd}

# ---------------------------------------------------------------- replay helpers


def random_topo(info: GraphInfo, rng: random.Random) -> list[int]:
    """A uniformly shuffled Kahn order: a random valid topological order."""
    indeg = [len(op.deps) for op in info.ops]
    ready = [i for i, d in enumerate(indeg) if d == 0]
    order = []
    while ready:
        i = ready.pop(rng.randrange(len(ready)))
        order.append(i)
        for s in info.successors(i):
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.append(s)
    assert len(order) == len(info.ops)
    return order


def run_random(graph: OpGraph, x: dict, rng: random.Random, split: bool) -> torch.Tensor:
    """Run `graph` op by op in a random topological order; with `split`, each splittable op
    runs as 1-3 row ranges issued in a random order."""
    env = graph.new_env(x)
    batch = env["batch"]
    for i in random_topo(graph.info, rng):
        if not (split and graph.info.ops[i].splittable and batch > 1):
            graph.run_ops(env, [i])
            continue
        cuts = sorted(rng.sample(range(1, batch), min(batch - 1, rng.randint(0, 2))))
        ranges = list(zip([0, *cuts], [*cuts, batch], strict=True))
        rng.shuffle(ranges)
        for r in ranges:
            graph.run_ops(env, [i], rows=r)
        assert i in env["out"] and i not in env["parts"]
    return graph.output(env)


def check_replay(
    adapter: ModelAdapter,
    granularity: str,
    batch: int = 7,
    splits: tuple[bool, ...] = (False, True, True),
) -> OpGraph:
    graph = build_graph(adapter, granularity)
    x = adapter.make_inputs(batch, 11)
    ref = adapter.forward(x)
    assert graph.run(x).shape == ref.shape
    torch.testing.assert_close(graph.run(x), ref, rtol=1e-5, atol=1e-6)
    rng = random.Random(f"{adapter.name}-{granularity}")
    for split in splits:
        torch.testing.assert_close(run_random(graph, x, rng, split), ref, rtol=1e-5, atol=1e-6)
    one = adapter.make_inputs(1, 3)  # batch 1: probes were at 2 and 4
    torch.testing.assert_close(graph.run(one), adapter.forward(one), rtol=1e-5, atol=1e-6)
    return graph


# ---------------------------------------------------------------- replay: local models


@pytest.mark.parametrize("name", sorted(LOCAL))
@pytest.mark.parametrize("granularity", ["coarse", "fine"])
def test_replay_unseen_models(name: str, granularity: str) -> None:
    check_replay(LOCAL[name](), granularity)


def test_coarse_ops_are_the_stages() -> None:
    info = build_graph(deepfm(), "coarse").info
    assert {op.name for op in info.ops} == set(DeepFM.coarse_stages)
    assert all(op.module == op.name for op in info.ops)
    # the final adds and sigmoid fold into the producer called last in forward
    assert info.ops[info.output_op].name == "fm"
    emb = info.ops[info.index("embeddings")]
    assert emb.kind == "embedding" and emb.cls == "memory" and emb.deps == ()
    assert info.ops[info.index("deep")].kind == "mlp"


def test_fine_ops_belong_to_stages() -> None:
    fine = build_graph(dcn(), "fine").info
    coarse = build_graph(dcn(), "coarse").info
    assert len(fine) > len(coarse)
    stages = {op.name for op in coarse.ops}
    assert {op.module for op in fine.ops} - {None} <= stages
    cross = [op for op in fine.ops if op.module == "cross"]
    assert sum(op.kind == "linear" for op in cross) == 3
    bags = [op for op in fine.ops if op.kind == "embedding"]
    assert len(bags) == 4 and all(op.module == "embeddings" for op in bags)


def test_tuple_outputs_and_time_major_values_split() -> None:
    graph = check_replay(seq_gru(), "fine")
    gru = graph.info.ops[graph.info.index("gru")]
    assert gru.kind == "rnn" and gru.splittable
    assert gru.flops_per_item > 0


@pytest.mark.parametrize("granularity", ["coarse", "fine"])
def test_whole_model_on_row_ranges(granularity: str) -> None:
    """One run_ops call per row range runs the whole chain, reading its own slices."""
    adapter = deepfm()
    graph = build_graph(adapter, granularity)
    x = adapter.make_inputs(9, 4)
    env = graph.new_env(x)
    ops = graph.info.topo_order()
    for rows in ((5, 9), (0, 2), (2, 5)):
        graph.run_ops(env, ops, rows=rows)
    torch.testing.assert_close(graph.output(env), adapter.forward(x), rtol=1e-5, atol=1e-6)


def test_concurrent_row_ranges_of_one_op() -> None:
    adapter = dcn()
    graph = build_graph(adapter, "fine")
    x = adapter.make_inputs(64, 5)
    ref = adapter.forward(x)
    env = graph.new_env(x)
    errors: list[BaseException] = []

    def lane(rows: tuple[int, int], ops: list[int], barrier: threading.Barrier) -> None:
        try:
            for i in ops:
                barrier.wait()
                graph.run_ops(env, [i], rows=rows)
                barrier.wait()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    ops = graph.info.topo_order()
    barrier = threading.Barrier(2)
    lanes = [threading.Thread(target=lane, args=(r, ops, barrier)) for r in ((0, 30), (30, 64))]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    assert not errors, errors
    torch.testing.assert_close(graph.output(env), ref, rtol=1e-5, atol=1e-6)


def test_unsplittable_ops_refuse_row_ranges() -> None:
    adapter = odd()
    graph = build_graph(adapter, "fine")
    split = {op.name: op.splittable for op in graph.info.ops}
    assert split == {"lin": True, "cat": False, "sigmoid": False}
    env = graph.new_env(adapter.make_inputs(4, 0))
    graph.run_ops(env, [0], rows=(0, 2))
    graph.run_ops(env, [0], rows=(2, 4))
    with pytest.raises(ValueError, match="cannot run on a row range"):
        graph.run_ops(env, [1], rows=(0, 2))


def test_errors_are_clear() -> None:
    adapter = deepfm()
    graph = build_graph(adapter, "fine")
    env = graph.new_env(adapter.make_inputs(4, 0))
    consumer = next(op.idx for op in graph.info.ops if op.deps)
    with pytest.raises(RuntimeError, match="has not finished"):
        graph.run_ops(env, [consumer])
    first = graph.info.topo_order()[0]
    graph.run_ops(env, [first], rows=(0, 2))
    with pytest.raises(AssertionError, match="overlap"):
        graph.run_ops(env, [first], rows=(1, 3))
    with pytest.raises(ValueError, match="granularity"):
        build_graph(adapter, "medium")


# ---------------------------------------------------------------- work and classes


def test_linear_flops_and_classes() -> None:
    info = build_graph(big_mlp(), "fine").info
    lin = info.ops[info.index("mlp.0")]
    assert lin.kind == "linear"
    assert lin.flops_per_item == pytest.approx(2 * 512 * 1024, rel=0.01)
    assert lin.bytes_fixed >= 512 * 1024 * 4  # the weight, read once per call
    assert lin.cls == "compute"
    emb = info.ops[info.index("emb")]
    assert emb.kind == "embedding" and emb.cls == "memory"
    # 4 lookups of 512 floats per item are read, not the 2 MB table
    assert 4 * 512 * 4 <= emb.bytes_per_item < 4 * 512 * 4 * 2
    assert emb.bytes_fixed < 1000
    coarse = build_graph(big_mlp(), "coarse").info
    assert [op.cls for op in coarse.ops] == ["memory", "compute"]


def test_info_is_tensor_free_and_picklable() -> None:
    info = build_graph(dcn(), "fine").info
    again = pickle.loads(pickle.dumps(info))
    assert again == info and again.successors(0) == info.successors(0)


# ---------------------------------------------------------------- GraphInfo maths


def _op(i: int, deps: tuple[int, ...], name: str | None = None) -> OpInfo:
    return OpInfo(i, name or f"op{i}", deps, "compute", 1.0, 1.0, 0.0, None, "linear")


def diamond() -> GraphInfo:
    """0 -> 1 -> 3, 0 -> 2 -> 3, 4 -> 3 (4 is a second source)."""
    ops = (_op(0, ()), _op(1, (0,)), _op(2, (0,)), _op(3, (1, 2, 4)) if False else None)
    ops = (_op(0, ()), _op(1, (0,)), _op(2, (0,)), _op(3, ()), _op(4, (1, 2, 3)))
    return GraphInfo("toy", "coarse", ops, 4)


def test_upward_rank_and_critical_path() -> None:
    g = diamond()
    cost = {0: 1.0, 1: 5.0, 2: 2.0, 3: 7.0, 4: 0.5}.__getitem__
    assert g.successors(0) == (1, 2) and g.sources() == [0, 3]
    assert g.upward_rank(cost) == [6.5, 5.5, 2.5, 7.5, 0.5]
    assert g.critical_path(cost) == (3, 4)
    assert g.critical_path({0: 3.0, 1: 5.0, 2: 2.0, 3: 7.0, 4: 0.5}.__getitem__) == (0, 1, 4)
    assert g.total(cost) == 15.5 and g.total(cost, [1, 2]) == 7.0
    assert g.counts()["ops"] == 5


def test_graph_info_invariants() -> None:
    with pytest.raises(AssertionError, match="topological"):
        GraphInfo("bad", "fine", (_op(0, (1,)), _op(1, ())), 1)
    with pytest.raises(AssertionError, match="reach the output"):
        GraphInfo("bad", "fine", (_op(0, ()), _op(1, ())), 1)
    with pytest.raises(AssertionError, match="unique"):
        GraphInfo("bad", "fine", (_op(0, (), "a"), _op(1, (0,), "a")), 1)


# ---------------------------------------------------------------- the eight models


def _registry():
    try:
        from recsched.models.registry import list_models, load_model
    except ImportError:
        return None
    return list_models, load_model


REGISTRY = _registry()
MODELS = sorted(REGISTRY[0]()) if REGISTRY else []


@pytest.mark.skipif(REGISTRY is None, reason="recsched.models.registry is not there yet")
def test_registry_has_models() -> None:
    assert len(MODELS) >= 8, MODELS


@pytest.mark.slow
@pytest.mark.skipif(REGISTRY is None, reason="recsched.models.registry is not there yet")
@pytest.mark.parametrize("name", MODELS)
def test_replay_registered_models(name: str) -> None:
    adapter = REGISTRY[1](name, scale="small", seed=0)
    coarse = check_replay(adapter, "coarse", splits=(True,)).info
    fine = check_replay(adapter, "fine", splits=(True,)).info
    assert len(fine) >= len(coarse) >= 2
    stages = set(getattr(adapter.module, "coarse_stages", ()))
    assert {op.module for op in coarse.ops} - {None} <= stages
    assert all(op.cls == "memory" for op in fine.ops if op.kind == "embedding")
    assert any(op.kind == "embedding" for op in coarse.ops)
