"""A model's forward compiled to TorchScript, checked against eager, with eager as fallback.

Why: in eager mode every operator of a forward is a Python call that needs the GIL, so two
thread lanes running small batches take turns on one interpreter instead of running side by
side (rmc1 small, batch 64, two lanes: 53k items/s eager). A traced, frozen TorchScript module
runs its whole graph in C++ with the GIL released (130k items/s, the same two lanes; see
BENCHMARKS.md). This is also what Triton's PyTorch backend serves.

`compile_forward(module, make_inputs)` traces with a small example, freezes it,
then checks the compiled outputs against eager ones at several batch sizes other
than the traced one (a trace can bake a batch size into the graph). Anything that fails
(tracing, freezing, a mismatch) falls back to the eager module and says why, so a model
brought by a user is never served wrong, only slower.

`Compiled.parts(list_of_inputs)` runs a merged batch: the inputs of several queries
concatenated along the batch and the model, in one TorchScript call (the traced model inside
a scripted wrapper, frozen), so a lane crosses the GIL once per task instead of once per
input tensor's `torch.cat` plus once for the forward: each crossing can wait for another
thread's Python (up to the switch interval) and a wake-up. Checked like `forward`; where
the wrapper does not compile or match, `parts` concatenates in Python and calls `forward`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

Inputs = dict[str, torch.Tensor]
Forward = Callable[[Inputs], torch.Tensor]
PartsForward = Callable[[Sequence[Inputs]], torch.Tensor]

TRACE_BATCH = 16
CHECK_BATCHES = (1, 5, 67)


def concat_rows(parts: Sequence[Inputs]) -> Inputs:
    """Concatenate inputs along the batch dimension (a merged batch)."""
    if len(parts) == 1:
        return dict(parts[0])
    return {k: torch.cat([p[k] for p in parts], dim=0) for k in parts[0]}


def python_parts(forward: Forward) -> PartsForward:
    """`parts` for a forward without a fused one: concatenate in Python, then call it."""
    return lambda parts: forward(concat_rows(parts))


class _Parts(nn.Module):
    """Concatenate several queries' inputs along the batch, then run the model (scripted)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, parts: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        if len(parts) == 1:
            return self.model(parts[0])
        x: dict[str, torch.Tensor] = {}
        for k in parts[0].keys():
            x[k] = torch.cat([p[k] for p in parts], 0)
        return self.model(x)


@dataclass(frozen=True)
class Compiled:
    """A forward callable and how it was made: `torchscript` or `eager` (with the reason).

    `parts`: the forward of a merged batch (a list of inputs), `parts_kind` how it was made:
    `torchscript` (concatenation inside the compiled call) or `python`.
    """

    forward: Forward
    kind: str
    reason: str = ""
    parts: PartsForward = field(default=None)  # type: ignore[assignment]
    parts_kind: str = "python"

    def __post_init__(self) -> None:
        if self.parts is None:
            object.__setattr__(self, "parts", python_parts(self.forward))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


@torch.inference_mode()
def compile_forward(
    module: nn.Module,
    make_inputs: Callable[[int, int], Inputs],
    trace_batch: int = TRACE_BATCH,
    check_batches: Sequence[int] = CHECK_BATCHES,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> Compiled:
    """Trace + freeze `module`; check it at `check_batches`; eager on any failure.

    `make_inputs(n, seed)` gives `n` rows of valid inputs. The module is put in eval mode.
    """
    module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: the checks below decide
            example = make_inputs(trace_batch, 7)
            traced = torch.jit.trace(module, (example,), strict=False, check_trace=False)
            frozen = torch.jit.freeze(traced.eval())
    except Exception as exc:  # noqa: BLE001 - any failure means: serve eager
        return Compiled(module, "eager", f"tracing failed: {type(exc).__name__}: {exc}"[:300])
    for n in check_batches:
        x = make_inputs(n, 1000 + n)
        try:
            got, want = frozen(x), module(x)
        except Exception as exc:  # noqa: BLE001
            return Compiled(module, "eager", f"compiled forward failed at batch {n}: {exc}"[:300])
        if got.shape != want.shape or not torch.allclose(got, want, atol=atol, rtol=rtol):
            diff = _max_diff(got, want)
            return Compiled(
                module, "eager", f"compiled output differs from eager at batch {n} (max {diff:g})"
            )
    parts = _fused_parts(traced, module, make_inputs, check_batches, atol, rtol)
    if parts is None:
        return Compiled(frozen, "torchscript")
    return Compiled(frozen, "torchscript", parts=parts, parts_kind="torchscript")


def _fused_parts(
    traced: torch.jit.ScriptModule,
    module: nn.Module,
    make_inputs: Callable[[int, int], Inputs],
    check_batches: Sequence[int],
    atol: float,
    rtol: float,
) -> PartsForward | None:
    """The traced model in a scripted, frozen `_Parts` wrapper, checked against eager on one
    input and on a merged batch of several; None where it fails to compile or to match."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fused = torch.jit.freeze(torch.jit.script(_Parts(traced)).eval())
        xs = [make_inputs(n, 2000 + n) for n in check_batches]
        for parts in ([xs[0]], xs):
            got, want = fused(parts), module(concat_rows(parts))
            if got.shape != want.shape or not torch.allclose(got, want, atol=atol, rtol=rtol):
                return None
    except Exception:  # noqa: BLE001 - the Python concatenation still serves it right
        return None
    return fused
