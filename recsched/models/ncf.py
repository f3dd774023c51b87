"""NCF / NeuMF (He et al., WWW 2017): GMF and an MLP tower, fused by a final linear layer.

Inputs (per batch of B user-item pairs):
    user [B, 1] int64 in [0, user_rows)      the same id reads both user tables
    item [B, 1] int64 in [0, item_rows)      the same id reads both item tables

Stages (the coarse operators):
    sparse_arch.{user_mf, item_mf, user_mlp, item_mlp}   EmbeddingBag: [B, 1] -> [B, D]
    gmf         generalized matrix factorisation: user_mf * item_mf -> [B, D]
    mlp_tower   cat(user_mlp, item_mlp) [B, 2D] -> MLP (ReLU after every layer) -> [B, m]
    over_arch   NeuMF layer: cat(gmf, mlp) [B, D + m] -> Linear -> sigmoid -> [B, 1]
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
class NCFConfig:
    """NeuMF: user/item tables (an MF and an MLP table each) and the MLP tower's widths."""

    user_rows: int
    item_rows: int
    dim: int
    mlp: tuple[int, ...]

    def __post_init__(self) -> None:
        n = type(self).__name__
        positive(n, user_rows=self.user_rows, item_rows=self.item_rows, dim=self.dim)
        if not self.mlp:
            raise ValueError(f"{n}.mlp needs at least one layer")


class GMF(nn.Module):
    """Elementwise product of user and item MF vectors: `[B, D] x [B, D] -> [B, D]`."""

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return user * item


class MLPTower(nn.Module):
    """`cat(user, item)` `[B, 2D]` through the tower MLP -> `[B, mlp[-1]]`."""

    def __init__(self, dim: int, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.mlp = MLP(2 * dim, sizes, final="relu")
        self.out_dim = self.mlp.out_dim

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([user, item], dim=1))


class NeuMFHead(nn.Module):
    """Fusion: `cat(gmf [B, D], mlp [B, m])` -> Linear -> sigmoid -> `[B, 1]`."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.predict = nn.Linear(in_dim, 1)

    def forward(self, gmf: torch.Tensor, mlp: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.predict(torch.cat([gmf, mlp], dim=1)))


class NCF(RecModel):
    """NeuMF scoring `[B, 1]` interaction probabilities. See the module docstring."""

    config_class = NCFConfig

    def __init__(self, cfg: NCFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sparse_arch = nn.ModuleDict(
            {
                "user_mf": embedding_bag(cfg.user_rows, cfg.dim),
                "item_mf": embedding_bag(cfg.item_rows, cfg.dim),
                "user_mlp": embedding_bag(cfg.user_rows, cfg.dim),
                "item_mlp": embedding_bag(cfg.item_rows, cfg.dim),
            }
        )
        self.gmf = GMF()
        self.mlp_tower = MLPTower(cfg.dim, cfg.mlp)
        self.over_arch = NeuMFHead(cfg.dim + self.mlp_tower.out_dim)
        self.out_dim = 1
        self.coarse_stages = (
            *(f"sparse_arch.{k}" for k in self.sparse_arch),
            "gmf",
            "mlp_tower",
            "over_arch",
        )

    def forward(self, x: Inputs) -> torch.Tensor:
        """`user [B, 1]`, `item [B, 1]` -> `[B, 1]` in (0, 1)."""
        user, item = x["user"], x["item"]
        gmf = self.gmf(self.sparse_arch["user_mf"](user), self.sparse_arch["item_mf"](item))
        mlp = self.mlp_tower(self.sparse_arch["user_mlp"](user), self.sparse_arch["item_mlp"](item))
        return self.over_arch(gmf, mlp)

    def input_specs(self) -> tuple[InputSpec, ...]:
        c = self.cfg
        return (
            InputSpec("user", (1,), torch.int64, "index", 0, c.user_rows),
            InputSpec("item", (1,), torch.int64, "index", 0, c.item_rows),
        )

    def id_sources(self) -> tuple[IdSource, ...]:
        # One id per user (item) reads both of its tables: the pool is keyed by the input name.
        c = self.cfg
        return (
            IdSource("user", ("user",), c.user_rows, 1),
            IdSource("item", ("item",), c.item_rows, 1),
        )
