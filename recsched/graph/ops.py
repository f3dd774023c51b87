"""Tensor-free operator graphs: what the schedulers and the simulator see of a model.

`GraphInfo` is a DAG of `OpInfo`s in a topological order, with the single op that produces the
model's output last on every path. No torch here: these objects are plain, frozen, picklable
and cheap to send between parts.

Classification (`classify`): an operator is memory-bound when its arithmetic intensity
(FLOPs / bytes moved) at the reference batch `CLASSIFY_BATCH` is below `INTENSITY_THRESHOLD`
flops/byte, compute-bound otherwise; embedding lookups are always memory-bound. 10 flops/byte
is close to the balance point of a modern CPU core (tens of GFLOP/s of fp32 FMA against a
few GB/s of DRAM bandwidth per core), and batch 64 is a typical split batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from recsched.types import OpClass

INTENSITY_THRESHOLD = 10.0  # flops per byte
CLASSIFY_BATCH = 64  # items; intensity grows with the batch (weights are read once per call)
MEMORY_KINDS = frozenset({"embedding"})
GRANULARITIES = ("coarse", "fine", "model")


@dataclass(frozen=True)
class OpInfo:
    """One operator of a model's graph, tensor-free.

    `deps` are indices of the producer ops (all smaller than `idx`). Work is linear in the
    batch: `flops(b) = flops_per_item * b + flops_fixed`, `bytes(b) = bytes_per_item * b +
    bytes_fixed` (weights are read once per call, hence the fixed part). `splittable` says the
    op may run on a row range of its batch (`OpGraph.run_ops(..., rows=(a, b))`).
    """

    idx: int
    name: str
    deps: tuple[int, ...]
    cls: OpClass
    flops_per_item: float
    bytes_per_item: float
    bytes_fixed: float
    module: str | None = None
    kind: str = "other"
    flops_fixed: float = 0.0
    splittable: bool = True
    n_nodes: int = 1

    def flops(self, batch: int) -> float:
        return self.flops_per_item * batch + self.flops_fixed

    def bytes(self, batch: int) -> float:
        return self.bytes_per_item * batch + self.bytes_fixed

    def intensity(self, batch: int = CLASSIFY_BATCH) -> float:
        """FLOPs per byte moved at `batch` (inf when the op moves no bytes)."""
        b = self.bytes(batch)
        return self.flops(batch) / b if b > 0 else float("inf")


def classify(
    kind: str,
    flops: float,
    nbytes: float,
    threshold: float = INTENSITY_THRESHOLD,
) -> OpClass:
    """Compute- or memory-bound from the op's kind and its work at the reference batch."""
    if kind in MEMORY_KINDS:
        return "memory"
    if nbytes <= 0:
        return "compute" if flops > 0 else "memory"
    return "compute" if flops / nbytes >= threshold else "memory"


@dataclass(frozen=True)
class GraphInfo:
    """A model's operator DAG at one granularity ("coarse", "fine", or "model": the whole
    model as one operator), tensor-free.

    `ops[i].idx == i`, ops are in a topological order (every dep has a smaller index), and
    every op reaches `output_op`, the op whose result is the model's output.
    """

    model: str
    granularity: str
    ops: tuple[OpInfo, ...]
    output_op: int
    _succ: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.ops)
        assert n > 0, "a graph has at least one op"
        assert self.granularity in GRANULARITIES, self.granularity
        assert 0 <= self.output_op < n, "output_op out of range"
        succ: list[list[int]] = [[] for _ in range(n)]
        for i, op in enumerate(self.ops):
            assert op.idx == i, f"op {op.name!r} has idx {op.idx}, expected {i}"
            for d in op.deps:
                assert 0 <= d < i, f"op {op.name!r} depends on {d}: not topological"
                succ[d].append(i)
        object.__setattr__(self, "_succ", tuple(tuple(s) for s in succ))
        reach = self._ancestors(self.output_op) | {self.output_op}
        dead = [self.ops[i].name for i in range(n) if i not in reach]
        assert not dead, f"ops that do not reach the output: {dead}"
        names = [op.name for op in self.ops]
        assert len(set(names)) == n, "op names are unique"

    def __len__(self) -> int:
        return len(self.ops)

    def _ancestors(self, i: int) -> set[int]:
        seen: set[int] = set()
        stack = list(self.ops[i].deps)
        while stack:
            j = stack.pop()
            if j not in seen:
                seen.add(j)
                stack.extend(self.ops[j].deps)
        return seen

    def topo_order(self) -> list[int]:
        """A topological order of the op indices (the stored one)."""
        return list(range(len(self.ops)))

    def successors(self, i: int) -> tuple[int, ...]:
        """The ops that consume op `i`'s output."""
        return self._succ[i]

    def sources(self) -> list[int]:
        """Ops with no producer ops (they read only the model's inputs)."""
        return [op.idx for op in self.ops if not op.deps]

    def index(self, name: str) -> int:
        for op in self.ops:
            if op.name == name:
                return op.idx
        raise KeyError(name)

    def upward_rank(self, cost: Callable[[int], float]) -> list[float]:
        """Longest predicted path from each op to the output, including the op itself.

        `rank[i] = cost(i) + max(rank[s] for s in successors(i))` (HEFT's upward rank).
        """
        n = len(self.ops)
        rank = [0.0] * n
        for i in reversed(range(n)):
            c = float(cost(i))
            assert c >= 0, f"negative cost {c} for op {i}"
            rank[i] = c + max((rank[s] for s in self._succ[i]), default=0.0)
        return rank

    def critical_path(self, cost: Callable[[int], float]) -> tuple[int, ...]:
        """The ops of the longest path (by `cost`) from a source op to the output.

        Its total cost is `upward_rank(cost)[path[0]]`.
        """
        rank = self.upward_rank(cost)
        i = max(self.sources(), key=lambda s: (rank[s], -s))
        path = [i]
        while self._succ[i]:
            i = max(self._succ[i], key=lambda s: (rank[s], -s))
            path.append(i)
        assert path[-1] == self.output_op
        return tuple(path)

    def total(self, cost: Callable[[int], float], ops: Sequence[int] | None = None) -> float:
        """Sum of `cost` over `ops` (all ops by default)."""
        return float(sum(cost(i) for i in (range(len(self.ops)) if ops is None else ops)))

    def counts(self) -> dict[str, int]:
        """Number of ops per class and kind, e.g. {"ops": 12, "memory": 8, "linear": 3}."""
        out: dict[str, int] = {"ops": len(self.ops), "compute": 0, "memory": 0}
        for op in self.ops:
            out[op.cls] += 1
            out[op.kind] = out.get(op.kind, 0) + 1
        return out
