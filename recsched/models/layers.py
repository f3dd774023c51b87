"""Building blocks shared by the zoo: MLPs, concatenation, embedding tables, and the
deterministic initialisation every model goes through.

Every block is an `nn.Module` with no data-dependent control flow, so `torch.fx` traces it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

Activation = Literal["relu", "prelu", "sigmoid", "none"]
Final = Literal["relu", "prelu", "sigmoid", "softmax", "none"]


def _act(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return nn.PReLU()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "softmax":
        return nn.Softmax(dim=-1)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}")


class MLP(nn.Sequential):
    """Linear layers of widths `sizes` on `in_dim` features: `[..., in_dim] -> [..., sizes[-1]]`.

    `act` follows every hidden layer; `final` follows the last one ("softmax" is over the last
    dimension). Children are `0, 1, ...` (Linear, activation, Linear, ...), as in DLRM.
    """

    def __init__(
        self, in_dim: int, sizes: Sequence[int], act: Activation = "relu", final: Final = "relu"
    ) -> None:
        assert in_dim > 0 and len(sizes) > 0 and all(s > 0 for s in sizes), (in_dim, sizes)
        layers: list[nn.Module] = []
        prev = in_dim
        for i, size in enumerate(sizes):
            layers.append(nn.Linear(prev, size))
            name = final if i == len(sizes) - 1 else act
            if name != "none":
                layers.append(_act(name))
            prev = size
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = prev


class Concat(nn.Module):
    """Concatenate feature vectors: list of `[B, d_i]` -> `[B, sum d_i]`."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, dim=1)


def embedding_bag(rows: int, dim: int) -> nn.EmbeddingBag:
    """A sum-pooled table `[rows, dim]`: input `[B, L]` int64 -> `[B, dim]`.

    The weight is left uninitialised (no default `normal_` over millions of rows):
    `init_weights` fills it deterministically. Under `torch.device("meta")` it allocates nothing.
    """
    return nn.EmbeddingBag(rows, dim, mode="sum", _weight=torch.empty(rows, dim))


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """Fill every parameter of `module` from `generator`, in registration order (deterministic).

    Linear: weight ~ N(0, sqrt(2 / (fan_in + fan_out))), bias ~ N(0, sqrt(1 / fan_out)) (DLRM's
    initialisation). Embedding tables: U(-1/sqrt(dim), 1/sqrt(dim)) so that pooled vectors are
    neither vanishing nor saturating. GRU: U(-1/sqrt(hidden), 1/sqrt(hidden)) (PyTorch's).
    PReLU: 0.25.
    """
    done: set[int] = set()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                fan_out, fan_in = m.weight.shape
                m.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)
                if m.bias is not None:
                    m.bias.normal_(0.0, math.sqrt(1.0 / fan_out), generator=generator)
            elif isinstance(m, nn.EmbeddingBag | nn.Embedding):
                a = 1.0 / math.sqrt(m.embedding_dim)
                m.weight.uniform_(-a, a, generator=generator)
            elif isinstance(m, nn.GRU | nn.GRUCell):
                a = 1.0 / math.sqrt(m.hidden_size)
                for p in m.parameters():
                    p.uniform_(-a, a, generator=generator)
            elif isinstance(m, nn.PReLU):
                m.weight.fill_(0.25)
            else:
                continue
            done.update(id(p) for p in m.parameters())
    missed = [n for n, p in module.named_parameters() if id(p) not in done]
    assert not missed, f"parameters without an initialiser: {missed}"
