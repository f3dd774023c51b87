"""The `model` granularity: the whole model as one operator, run by its compiled forward.

The coarsest operator graph. Python dispatch per operator is the enemy at small batches, and
on CPU lanes that share one GIL each eager operator is a turn on the interpreter; with the
whole model as one TorchScript call a task runs without the GIL from start to end. What the
operator-level policies still do at this granularity: order work by priority (value, slack,
aging), place it on the lane that hurts least, gate low-value work while high-value work
waits, and split long low-value batches along the batch dimension so no task holds a lane for
long (rows are independent). `ModelGraph` has `OpGraph`'s interface (`info`, `new_env`,
`run_ops`, `output`, `run`), so the engine runs it unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from recsched.graph.ops import GraphInfo, OpInfo
from recsched.models.base import ModelAdapter, batch_size, slice_rows

MODEL_OP = "model"

Env = dict[str, Any]


def model_graph_info(model: str, ops: Sequence[OpInfo] = ()) -> GraphInfo:
    """The one-op graph: op 0 is the whole model, splittable by rows, compute-bound. Its
    work per item (for analytic costs) is the sum over `ops`, the model's finer operators."""
    op = OpInfo(
        0,
        MODEL_OP,
        (),
        "compute",
        sum(o.flops_per_item for o in ops),
        sum(o.bytes_per_item for o in ops),
        sum(o.bytes_fixed for o in ops),
        module=None,
        kind="model",
        flops_fixed=sum(o.flops_fixed for o in ops),
        n_nodes=sum(o.n_nodes for o in ops) or 1,
    )
    return GraphInfo(model, "model", (op,), 0)


class ModelGraph:
    """An executable one-operator graph: op 0 on rows `[a, b)` is `forward(rows a..b)`."""

    def __init__(
        self,
        name: str,
        forward: Callable[[Mapping[str, torch.Tensor]], torch.Tensor],
        ops: Sequence[OpInfo] = (),
    ) -> None:
        self.info = model_graph_info(name, ops)
        self.forward = forward
        self.input_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return 1

    def new_env(self, inputs: Mapping[str, torch.Tensor]) -> Env:
        """Per-batch state: the inputs, the output being filled, the rows done."""
        return {
            "inputs": dict(inputs),
            "batch": batch_size(inputs),
            "out": None,
            "rows_done": 0,
            "lock": threading.Lock(),
        }

    def run_ops(self, env: Env, ops: Sequence[int], rows: tuple[int, int] | None = None) -> None:
        """Run the model on all rows, or on rows `[a, b)` into the batch's output."""
        assert list(ops) == [0], f"the model graph has one op (0), asked for {list(ops)}"
        n = env["batch"]
        a, b = rows if rows is not None else (0, n)
        assert 0 <= a < b <= n, f"rows {(a, b)} outside the batch [0, {n})"
        x = env["inputs"] if (a, b) == (0, n) else slice_rows(env["inputs"], a, b)
        with torch.inference_mode():
            y = self.forward(x)
        with env["lock"]:
            if (a, b) == (0, n):
                assert env["out"] is None, "the model already ran on this batch"
                env["out"] = y
            else:
                if env["out"] is None:
                    env["out"] = torch.empty((n, *y.shape[1:]), dtype=y.dtype)
                env["out"][a:b] = y
            env["rows_done"] += b - a
            assert env["rows_done"] <= n, "a row was scored twice"

    def output(self, env: Env) -> torch.Tensor:
        """The model's output `[B, out]`, once every row has run."""
        assert env["rows_done"] == env["batch"], "the model has not run on every row"
        return env["out"]

    def run(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        env = self.new_env(inputs)
        self.run_ops(env, [0])
        return self.output(env)


def build_model_graph(adapter: ModelAdapter, compiled: bool = True) -> ModelGraph:
    """The `model`-granularity graph of `adapter`, with its compiled forward by default (its
    work per item summed from the coarse graph, for analytic costs)."""
    from recsched.graph.fx import build_graph

    coarse = build_graph(adapter, "coarse").info.ops
    return ModelGraph(adapter.name, adapter.runner(compiled), coarse)
