"""DLRM (Naumov et al. 2019) as in DeepRecSys's RMC1/2/3, laid out like TorchRec's `DLRM`.

Inputs (per batch of B items):
    dense  [B, dense_in] float32     continuous features
    sparse [B, T, L] int64           L ids per table for T tables, each in [0, rows)

Stages (the coarse operators):
    sparse_arch.t{i}  EmbeddingBag(rows, D, mode="sum"): sparse[:, i] [B, L] -> [B, D]
    dense_arch        bottom MLP: [B, dense_in] -> [B, d] (ReLU after every layer)
    interaction       "cat" (DeepRecSys): [B, d + T*D]; "dot" (DLRM paper, needs d == D):
                      [B, d + (T+1)T/2] (the bottom output and the pairwise dot products)
    over_arch         top MLP, ReLU between layers, sigmoid at the end: -> [B, 1]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsched.models.base import Inputs, InputSpec
from recsched.models.common import RecModel, positive
from recsched.models.inputs import IdSource
from recsched.models.layers import MLP, embedding_bag


@dataclass(frozen=True)
class DLRMConfig:
    """One DLRM: T tables of `rows` x `dim`, `lookups` ids per table, bottom and top MLPs."""

    num_tables: int
    rows: int
    dim: int
    lookups: int
    dense_in: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    interaction: str = "cat"

    def __post_init__(self) -> None:
        n = type(self).__name__
        positive(n, num_tables=self.num_tables, rows=self.rows, dim=self.dim)
        positive(n, lookups=self.lookups, dense_in=self.dense_in)
        if not self.bottom_mlp or not self.top_mlp:
            raise ValueError(f"{n}: bottom_mlp and top_mlp need at least one layer")
        if self.top_mlp[-1] != 1:
            raise ValueError(f"{n}: top_mlp must end in 1 (a click probability)")
        if self.interaction not in ("cat", "dot"):
            raise ValueError(f"{n}.interaction must be 'cat' or 'dot', got {self.interaction!r}")
        if self.interaction == "dot" and self.bottom_mlp[-1] != self.dim:
            raise ValueError(
                f"{n}: 'dot' interaction needs bottom_mlp[-1] == dim "
                f"({self.bottom_mlp[-1]} != {self.dim})"
            )


class CatInteraction(nn.Module):
    """Concatenation: dense `[B, d]` and T x `[B, D]` -> `[B, d + T*D]`."""

    def forward(self, dense: torch.Tensor, sparse: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([dense, *sparse], dim=1)


class DotInteraction(nn.Module):
    """DLRM's pairwise dot products: dense `[B, D]`, T x `[B, D]` -> `[B, D + (T+1)T/2]`.

    The T+1 vectors are stacked to `[B, T+1, D]`; the strictly lower triangle of their Gram
    matrix `[B, T+1, T+1]` is kept and concatenated after the dense vector.
    """

    def __init__(self, num_sparse: int) -> None:
        super().__init__()
        n = num_sparse + 1
        tril = [i * n + j for i in range(n) for j in range(i)]  # flat (i, j), i > j
        self.register_buffer("tril", torch.tensor(tril, dtype=torch.int64), persistent=False)
        self.out_pairs = len(tril)

    def forward(self, dense: torch.Tensor, sparse: list[torch.Tensor]) -> torch.Tensor:
        t = torch.stack([dense, *sparse], dim=1)  # [B, T+1, D]
        gram = torch.bmm(t, t.transpose(1, 2))  # [B, T+1, T+1]
        pairs = gram.flatten(1).index_select(1, self.tril)  # [B, (T+1)T/2]
        return torch.cat([dense, pairs], dim=1)


class DLRM(RecModel):
    """DLRM scoring `[B, 1]` click probabilities. See the module docstring for the stages."""

    config_class = DLRMConfig

    def __init__(self, cfg: DLRMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.table_names = tuple(f"t{i}" for i in range(cfg.num_tables))
        self.sparse_arch = nn.ModuleDict(
            {name: embedding_bag(cfg.rows, cfg.dim) for name in self.table_names}
        )
        self.dense_arch = MLP(cfg.dense_in, cfg.bottom_mlp, final="relu")
        d = cfg.bottom_mlp[-1]
        if cfg.interaction == "cat":
            self.interaction: nn.Module = CatInteraction()
            inter_out = d + cfg.num_tables * cfg.dim
        else:
            dot = DotInteraction(cfg.num_tables)
            self.interaction = dot
            inter_out = d + dot.out_pairs
        self.over_arch = MLP(inter_out, cfg.top_mlp, final="sigmoid")
        self.out_dim = 1
        self.coarse_stages = (
            *(f"sparse_arch.{n}" for n in self.table_names),
            "dense_arch",
            "interaction",
            "over_arch",
        )

    def forward(self, x: Inputs) -> torch.Tensor:
        """`dense [B, dense_in]`, `sparse [B, T, L]` -> `[B, 1]` in (0, 1)."""
        sparse = x["sparse"]
        pooled = [self.sparse_arch[n](sparse[:, i]) for i, n in enumerate(self.table_names)]
        dense = self.dense_arch(x["dense"])
        return self.over_arch(self.interaction(dense, pooled))

    def input_specs(self) -> tuple[InputSpec, ...]:
        c = self.cfg
        return (
            InputSpec("dense", (c.dense_in,), torch.float32, "dense"),
            InputSpec("sparse", (c.num_tables, c.lookups), torch.int64, "index", 0, c.rows),
        )

    def id_sources(self) -> tuple[IdSource, ...]:
        return (IdSource("sparse", self.table_names, self.cfg.rows, self.cfg.lookups),)
