"""The contract every servable model meets, built-in or brought by the user.

A model takes `inputs: dict[str, Tensor]` where every tensor has the batch (item) dimension
first, and returns scores `[B, out_dim]`. Rows are independent: scoring rows `[a, b)` alone
gives the same scores as rows `[a, b)` of the whole batch. That is what lets the schedulers
split and merge queries freely.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from recsched.models.compiled import Compiled, PartsForward, compile_forward, python_parts
from recsched.models.compiled import concat_rows as concat_rows  # re-exported

Inputs = dict[str, torch.Tensor]


class InputError(ValueError):
    """A request's inputs do not match the model's input spec. The message names the input."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"input '{name}': {problem}")
        self.input_name = name
        self.problem = problem


@dataclass(frozen=True)
class InputSpec:
    """One named input tensor, per item (the batch dimension is not in `shape`).

    kind `dense`: float features, must be finite.
    kind `index`: integer ids in `[low, high)` (embedding rows, sequence lengths).
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: Literal["dense", "index"] = "dense"
    low: int = 0
    high: int | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class ModelAdapter:
    """A servable model: the module, its input spec, and a synthetic input maker.

    `make_inputs(n, seed)` returns a dict of tensors with `n` rows, deterministic in `seed`.
    Bring your own model by constructing one of these around any `nn.Module`.
    """

    name: str
    module: nn.Module
    inputs: tuple[InputSpec, ...]
    make_inputs: Callable[[int, int], Inputs]
    out_dim: int = 1
    info: dict[str, object] = field(default_factory=dict)
    _compiled: Compiled | None = field(default=None, init=False, repr=False, compare=False)

    def spec(self, name: str) -> InputSpec:
        for s in self.inputs:
            if s.name == name:
                return s
        raise KeyError(name)

    @torch.inference_mode()
    def forward(self, inputs: Inputs) -> torch.Tensor:
        """The eager forward (the reference every other path is checked against)."""
        return self.module(inputs)

    def compiled(self) -> Compiled:
        """The TorchScript forward (compiled once, checked against eager; eager on failure).

        Call it before handing the adapter to threads: the first call compiles.
        """
        if self._compiled is None:
            self._compiled = compile_forward(self.module, self.make_inputs)
        return self._compiled

    def runner(self, compiled: bool = True) -> Callable[[Inputs], torch.Tensor]:
        """The forward to serve with: compiled (default) or the eager module."""
        return self.compiled().forward if compiled else self.module

    def accepts_int32_ids(self, compiled: bool = True) -> bool:
        """Whether the forwards served (eager; with `compiled`, the compiled forward and the
        merged-batch forward too) score INT32 index inputs as they score int64 ones, on a
        small batch. A server may then hand over the wire's INT32 ids without widening them
        (PyTorch's embedding ops take either; a model that gathers by its ids may not)."""
        idx = {s.name for s in self.inputs if s.kind == "index" and s.dtype == torch.int64}
        if not idx:
            return False
        x = self.make_inputs(8, 0)
        x32 = {k: v.to(torch.int32) if k in idx else v for k, v in x.items()}
        try:
            ref = self.forward(x)
            pairs = [(self.forward(x32), ref)]
            if compiled:
                c = self.compiled()
                pairs += [(c.forward(x32), ref), (c.parts([x32, x32]), torch.cat([ref, ref]))]
        except Exception:  # an op that wants int64 ids: widen them
            return False
        return all(
            got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5)
            for got, want in pairs
        )

    def parts_runner(self, compiled: bool = True) -> PartsForward:
        """The forward of a merged batch (a list of inputs, concatenated along the batch):
        fused into one compiled call where it compiles (`Compiled.parts`)."""
        return self.compiled().parts if compiled else python_parts(self.module)


def validate_inputs(
    specs: Sequence[InputSpec], inputs: Mapping[str, torch.Tensor], max_batch: int = 1 << 16
) -> int:
    """Check names, dtypes, shapes, index ranges and finiteness; return the batch size.

    Raises `InputError` naming the first bad input. Cheap enough for every request.
    """
    names = {s.name for s in specs}
    for extra in sorted(set(inputs) - names):
        takes = ", ".join(sorted(names))
        raise InputError(extra, f"unexpected input (the model takes {takes})")
    batch: int | None = None
    for s in specs:
        if s.name not in inputs:
            raise InputError(s.name, "missing")
        t = inputs[s.name]
        if not isinstance(t, torch.Tensor):
            raise InputError(s.name, f"expected a tensor, got {type(t).__name__}")
        if t.dtype != s.dtype:
            raise InputError(s.name, f"dtype {t.dtype} but the model expects {s.dtype}")
        if t.dim() != 1 + len(s.shape) or tuple(t.shape[1:]) != s.shape:
            want = "[" + ", ".join(["B", *map(str, s.shape)]) + "]"
            raise InputError(s.name, f"shape {list(t.shape)} but the model expects {want}")
        b = int(t.shape[0])
        if batch is None:
            batch = b
        elif b != batch:
            raise InputError(s.name, f"batch dimension {b} differs from the other inputs' {batch}")
        if s.kind == "dense":
            if t.numel() and not bool(torch.isfinite(t).all()):
                raise InputError(s.name, "contains NaN or inf")
        elif t.numel():
            lo, hi = int(t.min()), int(t.max())
            if lo < s.low or (s.high is not None and hi >= s.high):
                bounds = f"[{s.low}, {s.high})"
                raise InputError(s.name, f"index out of range {bounds}: min {lo}, max {hi}")
    assert batch is not None, "a model has at least one input"
    if batch < 1:
        raise InputError(specs[0].name, "batch of 0 items")
    if batch > max_batch:
        raise InputError(specs[0].name, f"batch of {batch} items exceeds the limit {max_batch}")
    return batch


def slice_rows(inputs: Mapping[str, torch.Tensor], start: int, stop: int) -> Inputs:
    """Rows `[start, stop)` of every input (views, no copy)."""
    return {k: v[start:stop] for k, v in inputs.items()}


def batch_size(inputs: Mapping[str, torch.Tensor]) -> int:
    return int(next(iter(inputs.values())).shape[0])
