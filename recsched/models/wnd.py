"""Wide & Deep (Cheng et al., DLRS 2016) and its multi-task form (MT-WnD, as in DeepRecSys).

Both concatenate the raw dense features with the pooled embeddings (no bottom MLP). The deep
part is an MLP on that vector; the wide part is a linear model on the same raw features (the
dense values and, through the embeddings, the one-hot sparse ids; the paper's hand-made
cross-product features are omitted). Output: sigmoid(wide + deep).

Inputs (per batch of B items):
    dense  [B, dense_in] float32
    sparse [B, T, 1] int64 in [0, rows)                 T one-lookup tables
    MT-WnD adds sparse_large [B, T2, 1] in [0, large_rows)  (its bigger tables)

Stages (the coarse operators):
    sparse_arch.t{i}  EmbeddingBag: [B, 1] -> [B, D]   (MT-WnD: t0..t{T+T2-1}, large last)
    interaction       concatenation -> [B, dense_in + n_tables*D]
    wide              Linear -> [B, 1] (MT-WnD: [B, n_tasks])
    over_arch         WnD: deep MLP (ReLU between layers) -> logit [B, 1]
                      MT-WnD: shared MLP (ReLU) -> [B, shared[-1]]
    heads.{k}         MT-WnD only: one MLP per task -> logit [B, 1]
    output            sigmoid(wide + deep) -> WnD [B, 1], MT-WnD [B, n_tasks]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsched.models.base import Inputs, InputSpec
from recsched.models.common import RecModel, positive
from recsched.models.dlrm import CatInteraction
from recsched.models.inputs import IdSource
from recsched.models.layers import MLP, embedding_bag


@dataclass(frozen=True)
class WnDConfig:
    """Wide & Deep: `num_tables` one-lookup tables, raw dense features, deep MLP widths."""

    num_tables: int
    rows: int
    dim: int
    dense_in: int
    top_mlp: tuple[int, ...]
    lookups: int = 1

    def __post_init__(self) -> None:
        n = type(self).__name__
        positive(n, num_tables=self.num_tables, rows=self.rows, dim=self.dim)
        positive(n, dense_in=self.dense_in, lookups=self.lookups)
        if not self.top_mlp or self.top_mlp[-1] != 1:
            raise ValueError(f"{n}.top_mlp must end in 1 (a logit)")


@dataclass(frozen=True)
class MTWnDConfig:
    """MT-WnD: `num_tables` x `rows` and `num_large_tables` x `large_rows` tables, a shared MLP
    and `n_tasks` task MLPs (each ending in 1)."""

    num_tables: int
    rows: int
    num_large_tables: int
    large_rows: int
    dim: int
    dense_in: int
    shared_mlp: tuple[int, ...]
    task_mlp: tuple[int, ...]
    n_tasks: int = 3
    lookups: int = 1

    def __post_init__(self) -> None:
        n = type(self).__name__
        positive(n, num_tables=self.num_tables, rows=self.rows, dim=self.dim)
        positive(n, num_large_tables=self.num_large_tables, large_rows=self.large_rows)
        positive(n, dense_in=self.dense_in, n_tasks=self.n_tasks, lookups=self.lookups)
        if not self.shared_mlp:
            raise ValueError(f"{n}.shared_mlp needs at least one layer")
        if not self.task_mlp or self.task_mlp[-1] != 1:
            raise ValueError(f"{n}.task_mlp must end in 1 (a logit per task)")


class SigmoidSum(nn.Module):
    """`sigmoid(wide + deep)`, both `[B, k]` -> `[B, k]`."""

    def forward(self, wide: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(wide + deep)


def _pool(model: nn.Module, names: tuple[str, ...], ids: torch.Tensor) -> list[torch.Tensor]:
    """Look up `ids [B, len(names), L]` column by column: `len(names)` x `[B, D]`."""
    return [model.sparse_arch[n](ids[:, i]) for i, n in enumerate(names)]


class WideAndDeep(RecModel):
    """Wide & Deep scoring `[B, 1]` probabilities. See the module docstring for the stages."""

    config_class = WnDConfig

    def __init__(self, cfg: WnDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.table_names = tuple(f"t{i}" for i in range(cfg.num_tables))
        self.sparse_arch = nn.ModuleDict(
            {n: embedding_bag(cfg.rows, cfg.dim) for n in self.table_names}
        )
        width = cfg.dense_in + cfg.num_tables * cfg.dim
        self.interaction = CatInteraction()
        self.wide = nn.Linear(width, 1)
        self.over_arch = MLP(width, cfg.top_mlp, final="none")
        self.output = SigmoidSum()
        self.out_dim = 1
        self.coarse_stages = (
            *(f"sparse_arch.{n}" for n in self.table_names),
            "interaction",
            "wide",
            "over_arch",
            "output",
        )

    def forward(self, x: Inputs) -> torch.Tensor:
        """`dense [B, dense_in]`, `sparse [B, T, L]` -> `[B, 1]` in (0, 1)."""
        z = self.interaction(x["dense"], _pool(self, self.table_names, x["sparse"]))
        return self.output(self.wide(z), self.over_arch(z))

    def input_specs(self) -> tuple[InputSpec, ...]:
        c = self.cfg
        return (
            InputSpec("dense", (c.dense_in,), torch.float32, "dense"),
            InputSpec("sparse", (c.num_tables, c.lookups), torch.int64, "index", 0, c.rows),
        )

    def id_sources(self) -> tuple[IdSource, ...]:
        return (IdSource("sparse", self.table_names, self.cfg.rows, self.cfg.lookups),)


class MultiTaskWnD(RecModel):
    """MT-WnD scoring `[B, n_tasks]` probabilities (one per task). See the module docstring."""

    config_class = MTWnDConfig

    def __init__(self, cfg: MTWnDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_small, n_large = cfg.num_tables, cfg.num_large_tables
        self.table_names = tuple(f"t{i}" for i in range(n_small))
        self.large_names = tuple(f"t{n_small + i}" for i in range(n_large))
        tables = {n: embedding_bag(cfg.rows, cfg.dim) for n in self.table_names}
        tables |= {n: embedding_bag(cfg.large_rows, cfg.dim) for n in self.large_names}
        self.sparse_arch = nn.ModuleDict(tables)
        width = cfg.dense_in + (n_small + n_large) * cfg.dim
        self.interaction = CatInteraction()
        self.wide = nn.Linear(width, cfg.n_tasks)
        self.over_arch = MLP(width, cfg.shared_mlp, final="relu")
        self.heads = nn.ModuleList(
            MLP(self.over_arch.out_dim, cfg.task_mlp, final="none") for _ in range(cfg.n_tasks)
        )
        self.output = SigmoidSum()
        self.out_dim = cfg.n_tasks
        self.coarse_stages = (
            *(f"sparse_arch.{n}" for n in self.table_names + self.large_names),
            "interaction",
            "wide",
            "over_arch",
            *(f"heads.{k}" for k in range(cfg.n_tasks)),
            "output",
        )

    def forward(self, x: Inputs) -> torch.Tensor:
        """`dense`, `sparse [B, T, L]`, `sparse_large [B, T2, L]` -> `[B, n_tasks]` in (0, 1)."""
        pooled = _pool(self, self.table_names, x["sparse"])
        pooled += _pool(self, self.large_names, x["sparse_large"])
        z = self.interaction(x["dense"], pooled)
        shared = self.over_arch(z)
        deep = torch.cat([head(shared) for head in self.heads], dim=1)  # [B, n_tasks]
        return self.output(self.wide(z), deep)

    def input_specs(self) -> tuple[InputSpec, ...]:
        c = self.cfg
        return (
            InputSpec("dense", (c.dense_in,), torch.float32, "dense"),
            InputSpec("sparse", (c.num_tables, c.lookups), torch.int64, "index", 0, c.rows),
            InputSpec(
                "sparse_large",
                (c.num_large_tables, c.lookups),
                torch.int64,
                "index",
                0,
                c.large_rows,
            ),
        )

    def id_sources(self) -> tuple[IdSource, ...]:
        c = self.cfg
        return (
            IdSource("sparse", self.table_names, c.rows, c.lookups),
            IdSource("sparse_large", self.large_names, c.large_rows, c.lookups),
        )
