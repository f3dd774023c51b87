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
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

Inputs = dict[str, torch.Tensor]
Forward = Callable[[Inputs], torch.Tensor]

TRACE_BATCH = 16
CHECK_BATCHES = (1, 5, 67)


@dataclass(frozen=True)
class Compiled:
    """A forward callable and how it was made: `torchscript` or `eager` (with the reason)."""

    forward: Forward
    kind: str
    reason: str = ""


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
    return Compiled(frozen, "torchscript")
