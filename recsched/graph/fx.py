"""Model -> operator graph with torch.fx, and operator-by-operator execution.

`build_graph(adapter, granularity)` traces the model and cuts it into operators:

- `coarse`: the model's `coarse_stages` sub-modules are leaves, one operator each (the
  sub-modules of a stage that has no forward of its own, e.g. a ModuleList of tables, are
  merged into one operator when that makes no cycle). The glue between stages (a concat, a
  final sigmoid) is folded into its single consumer, else into the last-called producer it can
  join without a cycle, else into the first such consumer; it stays an operator of its own (named
  after its node) only when no neighbour can take it.
- `fine`: every fx node that does real work is an operator (default fx leaves: nn.Linear,
  nn.EmbeddingBag, nn.GRU, ...).

In both, *trivial* nodes (placeholders' dict lookups, getattr/getitem, views such as
reshape/view/flatten/squeeze/unsqueeze/transpose, size(), parameters, constants made from
shapes) are not operators: each operator recomputes the trivial nodes it needs from its inputs.
That is free (views) and keeps row splits right (a `size(0)` seen by a slice is the slice's).

Execution state lives in an *env*, one per batch (see `OpGraph.new_env`):
`{"inputs": {name: Tensor}, "batch": B, "out": {op: tuple of exported values},
"parts": {op: [(a, b, values), ...]}, "lock": Lock}`. An op run on all rows writes
`env["out"][op]` directly. An op run on rows `[a, b)` appends its slice to
`env["parts"][op]`; the run that completes the coverage of `[0, B)` concatenates the slices
(in row order, along each output's batch dimension) into `env["out"][op]`. So two lanes may
run disjoint row ranges of the same op concurrently; consumers run once `env["out"]` has
every dependency, which the scheduler guarantees and `run_ops` asserts. One `run_ops` call on
rows `[a, b)` may also run a chain of ops (or the whole model): later ops read the slices that
earlier ops of the same call produced.

An output's batch dimension, and its rows per item (`[B*F, D]` has F), come from the values at
the two probe batch sizes; an op whose inputs or outputs do not scale cleanly with the batch
is marked `splittable=False` and refuses row ranges.
"""

from __future__ import annotations

import heapq
import operator
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.flop_counter import flop_registry

from recsched.graph.ops import CLASSIFY_BATCH, GraphInfo, OpInfo, classify
from recsched.models.base import ModelAdapter

PROBE_BATCHES = (2, 4)
ROOT = "m"  # the model's name under the tracing root
Env = dict[str, Any]
Key = tuple[str, str] | tuple[int, int]  # ("in", input name) or (producer op, export position)
LeafSpec = tuple[int, int]  # (batch dim, rows per item); dim -1: does not depend on the batch


# ---------------------------------------------------------------- tracing


def _make_root(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """A module whose forward takes one tensor per input and calls `model({name: tensor})`.

    Tracing it gives one placeholder per input, and the model may use its dict freely
    (items(), len(), ...), which a Proxy for the dict itself would not allow.
    """
    params = [f"in_{i}" for i in range(len(names))]
    body = "{" + ", ".join(f"{n!r}: {p}" for n, p in zip(names, params, strict=True)) + "}"
    src = f"def forward(self, {', '.join(params)}):\n    return self.{ROOT}({body})\n"
    ns: dict[str, Any] = {}
    exec(src, ns)  # noqa: S102 - generated from input names, quoted with repr
    root = type("DictInputRoot", (nn.Module,), {"forward": ns["forward"]})()
    root.add_module(ROOT, model)
    return root


class _Tracer(fx.Tracer):
    """fx tracer that keeps the named stage modules as leaves (coarse granularity)."""

    def __init__(self, leaves: frozenset[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if _strip(module_qualified_name) in self.leaves:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _strip(qualname: str) -> str:
    return qualname[len(ROOT) + 1 :] if qualname.startswith(ROOT + ".") else qualname


def coarse_stages(model: nn.Module) -> tuple[str, ...]:
    """The model's `coarse_stages`, or its top-level children for a model without them."""
    stages = getattr(model, "coarse_stages", None)
    if stages is None:
        stages = tuple(name for name, _ in model.named_children())
    names = dict(model.named_modules())
    missing = [s for s in stages if s not in names]
    if missing:
        raise ValueError(f"coarse_stages name no sub-module of the model: {missing}")
    return tuple(stages)


def traceable(adapter: ModelAdapter) -> bool:
    """Whether torch.fx can trace the model into operators (`coarse`/`fine`); a model that
    cannot (data-dependent control flow) is still served whole, at the `model` granularity."""
    try:
        trace(adapter, "coarse")
    except Exception:  # noqa: BLE001 - fx raises TraceError, TypeError, ... on what it cannot
        return False
    return True


def trace(adapter: ModelAdapter, granularity: str) -> tuple[fx.GraphModule, frozenset[str]]:
    """Trace the adapter's model; returns the graph module and the coarse stage names."""
    if granularity not in ("coarse", "fine"):
        raise ValueError(f"granularity must be 'coarse' or 'fine', not {granularity!r}")
    model = adapter.module
    stages = frozenset(coarse_stages(model))
    root = _make_root(model, [s.name for s in adapter.inputs])
    tracer = _Tracer(stages if granularity == "coarse" else frozenset())
    graph = tracer.trace(root)
    gm = fx.GraphModule(tracer.root, graph)
    _functionalize(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm, stages


_INPLACE_OPERATORS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}


def _functionalize(gm: fx.GraphModule) -> None:
    """Rewrite in-place nodes (x.relu_(), F.relu(x, inplace=True), nn.ReLU(inplace=True))
    into their out-of-place forms, so that no operator mutates another operator's output."""
    for n in gm.graph.nodes:
        if n.op == "call_method" and n.target.endswith("_") and not n.target.startswith("_"):
            if hasattr(torch.Tensor, n.target[:-1]):
                n.target = n.target[:-1]
        elif n.op == "call_function":
            if n.target in _INPLACE_OPERATORS:
                n.target = _INPLACE_OPERATORS[n.target]
            if n.kwargs.get("inplace"):
                n.kwargs = {**n.kwargs, "inplace": False}
        elif n.op == "call_module":
            mod = gm.get_submodule(n.target)
            if getattr(mod, "inplace", False) is True:
                copy = type(mod).__new__(type(mod))
                copy.__dict__ = dict(mod.__dict__)
                copy.inplace = False
                name = "_functional_" + n.target.replace(".", "_")
                gm.add_submodule(name, copy)
                n.target = name


# ---------------------------------------------------------------- counting work


@dataclass(frozen=True)
class Work:
    """FLOPs and bytes moved by some aten ops (embedding gathers counted apart too)."""

    flops: float = 0.0
    bytes: float = 0.0
    embedding_bytes: float = 0.0

    def __add__(self, o: Work) -> Work:
        return Work(
            self.flops + o.flops, self.bytes + o.bytes, self.embedding_bytes + o.embedding_bytes
        )


_aten = torch.ops.aten
_EMBEDDING = {
    _aten.embedding,
    _aten._embedding_bag,
    _aten._embedding_bag_forward_only,
    _aten.embedding_bag,
}
_GATHER = {_aten.index_select, _aten.index, _aten.gather}
_FREE = {_aten.detach, _aten.alias, _aten.lift_fresh, _aten.empty, _aten.empty_like}


_ROLE: dict[Any, str] = {}


def _role(func: Any) -> str:
    """How WorkCounter treats an aten op: free, view (free unless it copies), composite (count
    its parts), counted."""
    packet = func._overloadpacket
    if packet in _FREE:
        return "free"
    if getattr(func, "is_view", False):
        return "view"  # may alias (free) or copy (aten.to, reshape): checked per call
    if packet not in flop_registry and packet not in _EMBEDDING and packet not in _GATHER:
        return "composite"
    return "counted"


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


class WorkCounter(TorchDispatchMode):
    """Counts the FLOPs and bytes of every aten op run under it.

    FLOPs: torch's flop formulas (mm, addmm, bmm, conv, attention), else one per output
    element. Bytes: inputs read plus outputs written; views are free; an embedding lookup
    reads only the rows it gathers (indices x dim), not its whole table.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # nothing is compiled under it; skips importing torch._dynamo (~2 s)

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0.0
        self.bytes = 0.0
        self.embedding_bytes = 0.0

    def work(self) -> Work:
        return Work(self.flops, self.bytes, self.embedding_bytes)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        role = _ROLE.get(func)
        if role is None:
            role = _ROLE[func] = _role(func)
        if role == "free":
            return func(*args, **kwargs)
        if role == "view":
            out = func(*args, **kwargs)
            self._count_plain(args, kwargs, _tensors(out), flops=False)
            return out
        if role == "composite":
            before = self.bytes
            with self:  # composite ops (linear, gru under inference mode): count their parts
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                if self.bytes == before:  # parts ran below the mode (aten.to): count as one
                    self._count_plain(args, kwargs, _tensors(r))
                return r
            _ROLE[func] = "counted"
        out = func(*args, **kwargs)
        outs = _tensors(out)
        if packet in _EMBEDDING:
            weight, idx = args[0], args[1]
            rows = idx.numel() * weight.shape[-1]
            nbytes = rows * weight.element_size() + sum(_nbytes(a) for a in args[1:3])
            nbytes += _nbytes(outs[0])
            self.bytes += nbytes
            self.embedding_bytes += nbytes
            self.flops += rows if packet is not _aten.embedding else 0
            return out
        if packet in _GATHER:
            self.bytes += 2 * sum(_nbytes(t) for t in outs) + sum(
                _nbytes(t) for t in _tensors((args[1:], kwargs)) if not t.is_floating_point()
            )
            return out
        if packet in flop_registry:
            self.flops += float(flop_registry[packet](*args, **kwargs, out_val=out))
            self._count_plain(args, kwargs, outs, flops=False)
        else:
            self._count_plain(args, kwargs, outs)
        return out

    def _count_plain(self, args: Any, kwargs: Any, outs: list, flops: bool = True) -> None:
        """Inputs read and outputs written; one FLOP per output element if `flops`."""
        ins = _tensors((args, kwargs))
        in_storages = {t.untyped_storage().data_ptr() for t in ins}
        new = [t for t in outs if t.untyped_storage().data_ptr() not in in_storages]
        if not new:
            return  # a view or an alias: no work
        if flops:
            self.flops += sum(t.numel() for t in new if t.is_floating_point())
        seen: set[int] = set()
        for t in ins:
            if id(t) not in seen:
                seen.add(id(t))
                self.bytes += _nbytes(t)
        self.bytes += sum(_nbytes(t) for t in new)


# ---------------------------------------------------------------- probing


@dataclass
class _Probe:
    """Values and work of every node at one probe batch size."""

    values: dict[fx.Node, Any] = field(default_factory=dict)
    work: dict[fx.Node, Work] = field(default_factory=dict)


class _ProbeInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, probe: _Probe) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.probe = probe

    def run_node(self, n: fx.Node) -> Any:
        if n.op in ("call_function", "call_method", "call_module"):
            with WorkCounter() as counter:
                out = super().run_node(n)
            self.probe.work[n] = counter.work()
        else:
            out = super().run_node(n)
        self.probe.values[n] = out
        return out


def _probe(gm: fx.GraphModule, adapter: ModelAdapter, batch: int) -> _Probe:
    inputs = adapter.make_inputs(batch, 0)
    probe = _Probe()
    with torch.inference_mode():
        _ProbeInterpreter(gm, probe).run(*[inputs[s.name] for s in adapter.inputs])
    return probe


def _tensors(value: Any, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors in a value (nested tuples, lists, dicts), in order."""
    out = [] if out is None else out
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, list | tuple):
        for v in value:
            _tensors(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _tensors(v, out)
    return out


def _is_trivial(n: fx.Node, values: Mapping[fx.Node, Any]) -> bool:
    """True for nodes that do no real work: they are recomputed by each consumer op."""
    if n.op in ("get_attr",):
        return True
    if n.op not in ("call_function", "call_method", "call_module"):
        return False
    outs = _tensors(values[n])
    if not outs:
        return True  # sizes, shapes, dtypes, None
    ins = [t for a in n.all_input_nodes for t in _tensors(values[a])]
    if not ins:
        return True  # constants built from shapes: arange(L), zeros(B, H)
    storages = {t.untyped_storage().data_ptr() for t in ins}
    return all(t.numel() == 0 or t.untyped_storage().data_ptr() in storages for t in outs)


def _leaf_spec(v2: Any, v4: Any, b2: int, b4: int) -> LeafSpec | None:
    """Which dim of a value scales with the batch, and by how many rows per item.

    Returns (-1, 0) for values that do not depend on the batch, None when the dependence is
    not a clean `k * batch` along one dim (the op can then not be split by rows).
    """
    if not isinstance(v2, torch.Tensor):
        return (-1, 0)
    s2, s4 = tuple(v2.shape), tuple(v4.shape)
    if len(s2) != len(s4):
        return None
    diff = [d for d in range(len(s2)) if s2[d] != s4[d]]
    if not diff:
        return (-1, 0)
    if len(diff) > 1:
        return None
    d = diff[0]
    k, rem = divmod(s2[d], b2)
    if rem or k == 0 or s4[d] != k * b4:
        return None
    return (d, k)


@dataclass(frozen=True)
class _ValueSpec:
    """How to slice and concatenate one exported value (a tensor or a tuple of tensors)."""

    treespec: Any
    leaves: tuple[LeafSpec | None, ...]

    @property
    def splittable(self) -> bool:
        return all(leaf is not None for leaf in self.leaves)


def _value_spec(v2: Any, v4: Any) -> _ValueSpec:
    l2, spec = tree_flatten(v2)
    l4, _ = tree_flatten(v4)
    b2, b4 = PROBE_BATCHES
    leaves = tuple(_leaf_spec(a, b, b2, b4) for a, b in zip(l2, l4, strict=True))
    return _ValueSpec(spec, leaves)


# ---------------------------------------------------------------- grouping


@dataclass
class _Group:
    """A set of real fx nodes run together as one operator."""

    nodes: list[fx.Node]
    stage: str | None = None  # coarse: the stage the nodes belong to (None: glue)
    glue: bool = False


class _Grouper:
    """Cuts the probed fx graph into operators and computes what each one reads."""

    def __init__(self, gm: fx.GraphModule, p2: _Probe, stages: frozenset[str], coarse: bool):
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self.output = next(n for n in self.nodes if n.op == "output")
        self.trivial = {n for n in self.nodes if _is_trivial(n, p2.values)}
        self.real = [
            n
            for n in self.nodes
            if n.op in ("call_function", "call_method", "call_module") and n not in self.trivial
        ]
        self._force_output_real()
        self.groups: list[_Group] = []
        for n in self.real:
            stage = _fine_module(n, stages) if coarse else None
            self.groups.append(_Group([n], stage, glue=coarse and stage is None))
        if coarse:
            self._merge_stages()
            self._fold_glue()

    # Each node's group, and each group's external inputs, are recomputed after a merge.
    def group_of(self) -> dict[fx.Node, int]:
        return {n: gi for gi, g in enumerate(self.groups) for n in g.nodes}

    def closure(self, starts: Sequence[fx.Node], inside: set[fx.Node]) -> tuple[list, list]:
        """External inputs (real nodes outside `inside`, placeholders) and trivial nodes needed
        to compute `starts`' arguments, both in graph order."""
        ext: set[fx.Node] = set()
        triv: set[fx.Node] = set()
        stack = [a for s in starts for a in s.all_input_nodes]
        while stack:
            a = stack.pop()
            if a in inside or a in ext or a in triv:
                continue
            if a in self.trivial:
                triv.add(a)
                stack.extend(a.all_input_nodes)
            else:
                ext.add(a)
        return sorted(ext, key=self.pos.get), sorted(triv, key=self.pos.get)

    def edges(self) -> tuple[list[set[int]], list[set[int | None]]]:
        """Producer groups and consumer groups (None: the model output) of each group."""
        owner = self.group_of()
        producers: list[set[int]] = []
        users: list[set[int | None]] = [set() for _ in self.groups]
        for gi, g in enumerate(self.groups):
            ext, _ = self.closure(g.nodes, set(g.nodes))
            producers.append({owner[e] for e in ext if e in owner})
            for p in producers[gi]:
                users[p].add(gi)
        ext, _ = self.closure([self.output], set())
        for e in ext:
            if e in owner:
                users[owner[e]].add(None)
        return producers, users

    def _merge_stages(self) -> None:
        """Merge the nodes of one stage (e.g. the tables of a ModuleList called one by one)
        into one group, as long as no path leaves the stage and comes back (no cycle)."""
        stages = dict.fromkeys(g.stage for g in self.groups if g.stage is not None)
        for stage in stages:
            while True:
                members = [gi for gi, g in enumerate(self.groups) if g.stage == stage]
                _, users = self.edges()
                pair = next(
                    ((members[0], m) for m in members[1:] if self._mergeable(members[0], m, users)),
                    None,
                )
                if pair is None:
                    break
                self._merge(pair[1], pair[0])

    def _mergeable(self, a: int, b: int, users: Sequence[set[int | None]]) -> bool:
        """True when no path of two or more edges joins groups `a` and `b` (either way)."""
        for x, y in ((a, b), (b, a)):
            stack = [u for u in users[x] if u is not None and u != y]
            seen: set[int] = set()
            while stack:
                u = stack.pop()
                if u == y:
                    return False
                if u not in seen:
                    seen.add(u)
                    stack.extend(v for v in users[u] if v is not None)
        return True

    def _merge(self, src: int, dst: int) -> None:
        merged = self.groups[dst]
        merged.nodes = sorted(merged.nodes + self.groups[src].nodes, key=self.pos.get)
        del self.groups[src]

    def _force_output_real(self) -> None:
        """The output must come from exactly one operator: if it is a trivial function of
        several operators (or of none), its last node becomes an operator itself."""
        (ret,) = self.output.all_input_nodes
        ext, _ = self.closure([self.output], set())
        producers = [e for e in ext if e.op != "placeholder"]
        if ret in self.trivial and len(producers) != 1:
            self.trivial.discard(ret)
            self.real.append(ret)
            self.real.sort(key=self.pos.get)

    def _fold_glue(self) -> None:
        """Fold each glue group into a neighbour: its single consumer, else the latest of its
        producers that it can join without a cycle, else the earliest such consumer.

        A lone consumer or producer never makes a cycle; other neighbours are checked."""
        while True:
            producers, users = self.edges()
            first = [self.pos[g.nodes[0]] for g in self.groups]
            target = None
            for gi in sorted(range(len(self.groups)), key=lambda i: -first[i]):
                if not self.groups[gi].glue:
                    continue
                consumers = sorted((u for u in users[gi] if u is not None), key=first.__getitem__)
                if len(users[gi]) == 1 and consumers:
                    target = (gi, consumers[0])
                    break
                cands = sorted(producers[gi], key=lambda p: -first[p]) + consumers
                ok = [c for c in cands if self._mergeable(gi, c, users)]
                if ok:
                    target = (gi, ok[0])
                    break
            if target is None:
                return
            self._merge(*target)

    def topo_groups(self) -> list[_Group]:
        """The groups in a topological order (ties broken by graph position)."""
        owner = self.group_of()
        deps: list[set[int]] = []
        for g in self.groups:
            ext, _ = self.closure(g.nodes, set(g.nodes))
            deps.append({owner[e] for e in ext if e in owner})
        n_deps = [len(d) for d in deps]
        users: list[list[int]] = [[] for _ in self.groups]
        for gi, d in enumerate(deps):
            for p in d:
                users[p].append(gi)
        first = [self.pos[g.nodes[0]] for g in self.groups]
        heap = [(first[gi], gi) for gi in range(len(self.groups)) if n_deps[gi] == 0]
        heapq.heapify(heap)
        order: list[int] = []
        while heap:
            _, gi = heapq.heappop(heap)
            order.append(gi)
            for u in users[gi]:
                n_deps[u] -= 1
                if n_deps[u] == 0:
                    heapq.heappush(heap, (first[u], u))
        assert len(order) == len(self.groups), "operator graph has a cycle"
        return [self.groups[gi] for gi in order]


# ---------------------------------------------------------------- kinds


_FUNCTION_KINDS = {
    "cat": "concat",
    "stack": "concat",
    "concat": "concat",
    "mm": "matmul",
    "bmm": "matmul",
    "matmul": "matmul",
    "linear": "linear",
    "baddbmm": "matmul",
    "einsum": "matmul",
    "softmax": "softmax",
    "log_softmax": "softmax",
    "sum": "reduce",
    "mean": "reduce",
    "max": "reduce",
    "embedding": "embedding",
    "embedding_bag": "embedding",
}


def _target_name(n: fx.Node) -> str:
    t = n.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _module_kind(mod: nn.Module, qualname: str = "") -> str:
    """Kind of a module's work, from its type and what it contains."""
    subs = list(mod.modules())
    if any(isinstance(s, nn.Embedding | nn.EmbeddingBag) for s in subs):
        return "embedding"
    names = " ".join([type(s).__name__.lower() for s in subs] + [qualname.lower()])
    if any(isinstance(s, nn.RNNBase | nn.RNNCellBase) for s in subs) or "gru" in names:
        return "rnn"
    if "attention" in names or "attn" in names:
        return "attention"
    n_linear = sum(isinstance(s, nn.Linear) for s in subs)
    if n_linear:
        return "mlp" if n_linear > 1 else "linear"
    if not list(mod.parameters()):
        return "elementwise" if len(subs) == 1 and not qualname else "interaction"
    return type(mod).__name__.lower()


def _node_kind(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        mod = gm.get_submodule(n.target)
        return _module_kind(mod, "")
    name = _target_name(n).strip("_")
    return _FUNCTION_KINDS.get(name, "elementwise")


# ---------------------------------------------------------------- the graph


@dataclass(frozen=True)
class _Op:
    """What `OpGraph` needs to run one operator."""

    fn: Callable[..., tuple]
    ins: tuple[Key, ...]
    in_specs: tuple[_ValueSpec, ...]
    out_specs: tuple[_ValueSpec, ...]


class OpGraph:
    """An executable operator graph of one model at one granularity.

    `info` is the tensor-free view for the schedulers. `run(inputs)` reproduces
    `model(inputs)`; `new_env` / `run_ops` / `output` run it op by op, in any topological
    order, optionally on row ranges (see the module docstring for the env layout).
    """

    def __init__(
        self,
        info: GraphInfo,
        ops: Sequence[_Op],
        input_names: Sequence[str],
        input_specs: Mapping[str, _ValueSpec],
        out_fn: Callable[..., torch.Tensor],
        out_ins: Sequence[Key],
    ) -> None:
        assert len(ops) == len(info.ops)
        self.info = info
        self._ops = tuple(ops)
        self.input_names = tuple(input_names)
        self._input_specs = dict(input_specs)
        self._out_fn = out_fn
        self._out_ins = tuple(out_ins)

    def __len__(self) -> int:
        return len(self._ops)

    # -- env ------------------------------------------------------------------------------

    def new_env(self, inputs: Mapping[str, torch.Tensor]) -> Env:
        """A fresh per-batch execution state holding `inputs` (no op run yet)."""
        missing = [n for n in self.input_names if n not in inputs]
        assert not missing, f"missing inputs {missing}"
        name = self.input_names[0]
        dim, k = self._input_specs[name].leaves[0] or (0, 1)
        batch = int(inputs[name].shape[max(dim, 0)]) // max(k, 1)
        return {
            "inputs": dict(inputs),
            "batch": batch,
            "out": {},
            "parts": {},
            "lock": threading.Lock(),
        }

    def _value(self, env: Env, key: Key) -> Any:
        a, b = key
        if a == "in":
            return env["inputs"][b]
        try:
            return env["out"][a][b]
        except KeyError:
            raise RuntimeError(
                f"operator {self.info.ops[a].name!r} has not finished (or was run on only "
                "part of its rows) but a consumer needs it"
            ) from None

    def op_args(
        self,
        env: Env,
        i: int,
        rows: tuple[int, int] | None = None,
        local: Mapping[int, tuple] | None = None,
    ) -> list[Any]:
        """The arguments op `i` is called with, sliced to `rows` if given. `local` holds row
        slices of producers run on the same rows in the same `run_ops` call (used as is)."""
        op = self._ops[i]
        if rows is None:
            return [self._value(env, key) for key in op.ins]
        a, b = rows
        args = []
        for key, spec in zip(op.ins, op.in_specs, strict=True):
            j, p = key
            if local is not None and j in local:
                args.append(local[j][p])
            else:
                args.append(_slice(self._value(env, key), spec, a, b))
        return args

    def op_callable(self, env: Env, i: int) -> Callable[[], tuple]:
        """A no-argument call of op `i` on the whole batch that stores nothing (profiling)."""
        fn, args = self._ops[i].fn, self.op_args(env, i)
        return lambda: fn(*args)

    # -- execution ------------------------------------------------------------------------

    def run_ops(self, env: Env, ops: Sequence[int], rows: tuple[int, int] | None = None) -> None:
        """Run `ops` in the given order on `env`, on all rows or on rows `[a, b)` only.

        Every dependency must be complete in `env` (all its rows), or be run earlier in the
        same call on the same rows (so one call can run a chain, or the whole model, on a row
        range). Safe to call from several threads on one env for different ops, or for
        disjoint row ranges of the same op.
        """
        batch = env["batch"]
        if rows is not None:
            a, b = rows
            assert 0 <= a < b <= batch, f"rows {rows} outside the batch [0, {batch})"
            if (a, b) == (0, batch):
                rows = None
        local: dict[int, tuple] = {}
        with torch.inference_mode():
            for i in ops:
                op = self._ops[i]
                if rows is None:
                    env["out"][i] = op.fn(*self.op_args(env, i))
                    continue
                if not self.info.ops[i].splittable:
                    raise ValueError(
                        f"operator {self.info.ops[i].name!r} cannot run on a row range"
                    )
                local[i] = out = op.fn(*self.op_args(env, i, rows, local))
                self._add_part(env, i, rows, out)

    def _add_part(self, env: Env, i: int, rows: tuple[int, int], out: tuple) -> None:
        with env["lock"]:
            assert i not in env["out"], f"op {i} already complete"
            parts = env["parts"].setdefault(i, [])
            for a, b, _ in parts:
                assert rows[1] <= a or b <= rows[0], f"rows {rows} overlap [{a}, {b}) of op {i}"
            parts.append((rows[0], rows[1], out))
            if sum(b - a for a, b, _ in parts) < env["batch"]:
                return
            del env["parts"][i]
        env["out"][i] = _concat(sorted(parts, key=lambda p: p[0]), self._ops[i].out_specs)

    def output(self, env: Env) -> torch.Tensor:
        """The model's output `[B, out]`, once the output op has run on all rows."""
        with torch.inference_mode():
            return self._out_fn(*[self._value(env, k) for k in self._out_ins])

    def run(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Run every op in the stored topological order; equals `model(inputs)`."""
        env = self.new_env(inputs)
        self.run_ops(env, range(len(self._ops)))
        return self.output(env)


def _slice(value: Any, spec: _ValueSpec, a: int, b: int) -> Any:
    """Rows `[a, b)` of a value, along each leaf's batch dim (views, no copy)."""
    leaves, treespec = tree_flatten(value)
    out = []
    for leaf, ls in zip(leaves, spec.leaves, strict=True):
        assert ls is not None, "value cannot be split by rows"
        dim, k = ls
        out.append(leaf.narrow(dim, a * k, (b - a) * k) if dim >= 0 else leaf)
    return tree_unflatten(out, treespec)


def _concat(parts: list[tuple[int, int, tuple]], specs: Sequence[_ValueSpec]) -> tuple:
    """Join row slices (sorted, covering the batch) of an op's exported values."""
    for (_, b, _), (a, _, _) in zip(parts, parts[1:], strict=False):
        assert a == b, "row slices leave a gap"
    result = []
    for p, spec in enumerate(specs):
        flat = [tree_flatten(out[p])[0] for _, _, out in parts]
        leaves = []
        for li, ls in enumerate(spec.leaves):
            assert ls is not None
            dim = ls[0]
            leaves.append(torch.cat([f[li] for f in flat], dim) if dim >= 0 else flat[0][li])
        result.append(tree_unflatten(leaves, spec.treespec))
    return tuple(result)


# ---------------------------------------------------------------- building


def _compile(
    gm: fx.GraphModule, nodes: Sequence[fx.Node], ext: Sequence[fx.Node], exports: Sequence[fx.Node]
) -> fx.GraphModule:
    """A small GraphModule running `nodes` (graph order) from `ext`, returning `exports`."""
    g = fx.Graph()
    remap: dict[fx.Node, fx.Node] = {}
    for i, e in enumerate(ext):
        remap[e] = g.placeholder(f"arg{i}_{e.name}")
    for n in nodes:
        remap[n] = g.node_copy(n, lambda a: remap[a])
    g.output(tuple(remap[e] for e in exports))
    return fx.GraphModule(gm, g)


def _work(probe: _Probe, nodes: Sequence[fx.Node]) -> Work:
    total = Work()
    for n in nodes:
        total = total + probe.work[n]
    return total


def _per_item(w2: float, w4: float) -> tuple[float, float]:
    """(per item, fixed) of a quantity measured at the two probe batch sizes."""
    b2, b4 = PROBE_BATCHES
    per = max((w4 - w2) / (b4 - b2), 0.0)
    return per, max(w2 - per * b2, 0.0)


def _unique_name(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}#{k}"
    taken.add(out)
    return out


def _fine_module(n: fx.Node, stages: frozenset[str]) -> str | None:
    """The outermost coarse stage a fine node belongs to (from fx's module stack)."""
    cands = [_strip(q) for q, _ in (n.meta.get("nn_module_stack") or {}).values()]
    if n.op == "call_module":
        cands.append(_strip(n.target))
    for c in cands:
        if c in stages or any(c.startswith(s + ".") for s in stages):
            return next(s for s in stages if c == s or c.startswith(s + "."))
    return None


def build_graph(adapter: ModelAdapter, granularity: str = "coarse") -> OpGraph:
    """Trace `adapter`'s model into an executable operator graph ("coarse" or "fine"; "model"
    gives the one-operator graph of `recsched.graph.whole`)."""
    if granularity == "model":
        from recsched.graph.whole import build_model_graph

        return build_model_graph(adapter)  # type: ignore[return-value]
    gm, stages = trace(adapter, granularity)
    p2, p4 = (_probe(gm, adapter, b) for b in PROBE_BATCHES)
    grouper = _Grouper(gm, p2, stages, coarse=granularity == "coarse")
    groups = grouper.topo_groups()
    owner = {n: gi for gi, g in enumerate(groups) for n in g.nodes}

    closures = [grouper.closure(g.nodes, set(g.nodes)) for g in groups]
    out_ext, out_triv = grouper.closure([grouper.output], set())
    exports: list[list[fx.Node]] = [[] for _ in groups]
    for ext, _ in [*closures, (out_ext, out_triv)]:
        for e in ext:
            if e in owner and e not in exports[owner[e]]:
                exports[owner[e]].append(e)
    for ex in exports:
        ex.sort(key=grouper.pos.get)

    def key(e: fx.Node) -> Key:
        if e.op == "placeholder":
            return ("in", adapter.inputs[int(e.target.split("_")[1])].name)
        return (owner[e], exports[owner[e]].index(e))

    def spec(e: fx.Node) -> _ValueSpec:
        return _value_spec(p2.values[e], p4.values[e])

    taken: set[str] = set()
    infos, ops = [], []
    for gi, g in enumerate(groups):
        ext, triv = closures[gi]
        assert exports[gi], f"operator {g.nodes[0].name} has no consumer"
        fn = _compile(gm, sorted(triv + g.nodes, key=grouper.pos.get), ext, exports[gi])
        in_specs = tuple(spec(e) for e in ext)
        out_specs = tuple(spec(e) for e in exports[gi])
        ops.append(_Op(fn.forward, tuple(key(e) for e in ext), in_specs, out_specs))
        infos.append(
            _op_info(
                gi,
                g,
                gm,
                stages,
                granularity,
                p2,
                p4,
                owner,
                ext,
                taken,
                all(s.splittable for s in in_specs + out_specs),
            )
        )
    out_ops = {owner[e] for e in out_ext if e in owner}
    assert len(out_ops) == 1, "the output comes from exactly one operator"
    info = GraphInfo(adapter.name, granularity, tuple(infos), out_ops.pop())
    out_fn = _compile(gm, out_triv, out_ext, [grouper.output.all_input_nodes[0]])
    input_specs = {
        s.name: spec(
            next(n for n in gm.graph.nodes if n.op == "placeholder" and n.target == f"in_{i}")
        )
        for i, s in enumerate(adapter.inputs)
    }
    return OpGraph(
        info,
        ops,
        [s.name for s in adapter.inputs],
        input_specs,
        lambda *a: out_fn.forward(*a)[0],
        [key(e) for e in out_ext],
    )


def _op_info(
    gi: int,
    g: _Group,
    gm: fx.GraphModule,
    stages: frozenset[str],
    granularity: str,
    p2: _Probe,
    p4: _Probe,
    owner: Mapping[fx.Node, int],
    ext: Sequence[fx.Node],
    taken: set[str],
    splittable: bool,
) -> OpInfo:
    """The tensor-free description of one group: name, deps, work per item, class."""
    w2, w4 = _work(p2, g.nodes), _work(p4, g.nodes)
    f_item, f_fixed = _per_item(w2.flops, w4.flops)
    b_item, b_fixed = _per_item(w2.bytes, w4.bytes)
    if granularity == "coarse" and g.stage is not None:
        name, module = g.stage, g.stage
        kind = _module_kind(gm.get_submodule(f"{ROOT}.{g.stage}"), g.stage)
    else:
        main = max(g.nodes, key=lambda n: (p4.work[n].bytes, -p4.work[n].flops))
        name = _strip(main.target) if main.op == "call_module" else main.name
        module = _fine_module(main, stages)
        kind = _node_kind(gm, main)
    if w4.bytes and w4.embedding_bytes >= 0.5 * w4.bytes:
        kind = "embedding"
    flops = f_item * CLASSIFY_BATCH + f_fixed
    nbytes = b_item * CLASSIFY_BATCH + b_fixed
    return OpInfo(
        idx=gi,
        name=_unique_name(name, taken),
        deps=tuple(sorted({owner[e] for e in ext if e in owner})),
        cls=classify(kind, flops, nbytes),
        flops_per_item=f_item,
        bytes_per_item=b_item,
        bytes_fixed=b_fixed,
        module=module,
        kind=kind,
        flops_fixed=f_fixed,
        splittable=splittable,
        n_nodes=len(g.nodes),
    )
