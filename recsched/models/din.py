"""DIN, Deep Interest Network (Zhou et al., KDD 2018), with DeepRecSys's tables.

The user's interest in the candidate ad is a weighted sum of the embeddings of their past
behaviours, each weighted by an attention unit (an MLP on [behaviour, ad, behaviour - ad,
behaviour * ad]). As in the paper the weights are not softmax-normalised (config
`attention_softmax` turns normalisation on, as in the authors' later code). Behaviours past
the user's history length are masked out.

Inputs (per batch of B items):
    profile  [B, 1] int64 in [0, profile_rows)        user profile id
    hist     [B, S] int64 in [0, behaviour_rows)      behaviour ids, S = seq_len (250)
    hist_len [B]    int64 in [1, S + 1)               valid behaviours: hist[:, :hist_len]
    ad       [B, 1] int64 in [0, ad_rows)             candidate ad id
    context  [B, 1] int64 in [0, context_rows)        context id

Stages (the coarse operators):
    sparse_arch.profile / .ad / .context   EmbeddingBag: [B, 1] -> [B, D]
    sparse_arch.behaviour                   Embedding: [B, S] -> [B, S, D]
    attention     activation unit + masked weighted sum: -> interest [B, D]
    interaction   cat(profile, interest, ad, context) -> [B, 4D]
    over_arch     MLP 200-80-2 (PReLU), softmax -> [B, 2]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsched.models.base import Inputs, InputSpec
from recsched.models.common import RecModel, positive
from recsched.models.inputs import IdSource
from recsched.models.layers import MLP, Concat, embedding_bag


@dataclass(frozen=True)
class DINConfig:
    """DIN's table sizes, behaviour sequence length, attention and top MLP widths."""

    profile_rows: int
    behaviour_rows: int
    ad_rows: int
    context_rows: int
    dim: int
    seq_len: int
    attention_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    attention_softmax: bool = False
    activation: str = "prelu"

    def __post_init__(self) -> None:
        n = type(self).__name__
        positive(n, profile_rows=self.profile_rows, behaviour_rows=self.behaviour_rows)
        positive(n, ad_rows=self.ad_rows, context_rows=self.context_rows, dim=self.dim)
        positive(n, seq_len=self.seq_len)
        if not self.attention_mlp:
            raise ValueError(f"{n}.attention_mlp needs at least one layer")
        if not self.top_mlp or self.top_mlp[-1] != 2:
            raise ValueError(f"{n}.top_mlp must end in 2 (softmax over click / no click)")
        if self.activation not in ("relu", "prelu", "sigmoid"):
            raise ValueError(f"{n}.activation must be relu, prelu or sigmoid")


class AttentionUnit(nn.Module):
    """DIN's activation unit and weighted sum pooling.

    keys `[B, S, D]` (behaviours), query `[B, D]` (ad), length `[B]` -> `[B, D]`.
    Scores `[B, S]` = MLP(cat(k, q, k - q, k * q)); positions `>= length` get weight 0.
    """

    def __init__(
        self, dim: int, seq_len: int, hidden: tuple[int, ...], act: str, softmax: bool
    ) -> None:
        super().__init__()
        self.mlp = MLP(4 * dim, (*hidden, 1), act=act, final="none")  # type: ignore[arg-type]
        self.softmax = softmax
        self.register_buffer("positions", torch.arange(seq_len), persistent=False)

    def forward(
        self, keys: torch.Tensor, query: torch.Tensor, length: torch.Tensor
    ) -> torch.Tensor:
        q = query.unsqueeze(1).expand_as(keys)  # [B, S, D]
        feats = torch.cat([keys, q, keys - q, keys * q], dim=-1)  # [B, S, 4D]
        scores = self.mlp(feats).squeeze(-1)  # [B, S]
        mask = self.positions.unsqueeze(0) < length.unsqueeze(1)  # [B, S]
        if self.softmax:
            weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=1)
        else:
            weights = scores * mask.to(scores.dtype)
        return torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # [B, D]


class DIN(RecModel):
    """DIN scoring `[B, 2]` (softmax over no-click / click). See the module docstring."""

    config_class = DINConfig

    def __init__(self, cfg: DINConfig) -> None:
        super().__init__()
        self.cfg = cfg
        behaviour = nn.Embedding(
            cfg.behaviour_rows, cfg.dim, _weight=torch.empty(cfg.behaviour_rows, cfg.dim)
        )
        self.sparse_arch = nn.ModuleDict(
            {
                "profile": embedding_bag(cfg.profile_rows, cfg.dim),
                "behaviour": behaviour,
                "ad": embedding_bag(cfg.ad_rows, cfg.dim),
                "context": embedding_bag(cfg.context_rows, cfg.dim),
            }
        )
        self.attention = AttentionUnit(
            cfg.dim, cfg.seq_len, cfg.attention_mlp, cfg.activation, cfg.attention_softmax
        )
        self.interaction = Concat()
        self.over_arch = MLP(4 * cfg.dim, cfg.top_mlp, act=cfg.activation, final="softmax")  # type: ignore[arg-type]
        self.out_dim = 2
        self.coarse_stages = (
            *(f"sparse_arch.{k}" for k in self.sparse_arch),
            "attention",
            "interaction",
            "over_arch",
        )

    def forward(self, x: Inputs) -> torch.Tensor:
        """`profile, hist [B, S], hist_len [B], ad, context` -> `[B, 2]`, rows sum to 1."""
        t = self.sparse_arch
        profile = t["profile"](x["profile"])  # [B, D]
        hist = t["behaviour"](x["hist"])  # [B, S, D]
        ad = t["ad"](x["ad"])  # [B, D]
        context = t["context"](x["context"])  # [B, D]
        interest = self.attention(hist, ad, x["hist_len"])  # [B, D]
        return self.over_arch(self.interaction([profile, interest, ad, context]))

    def input_specs(self) -> tuple[InputSpec, ...]:
        c = self.cfg
        i64 = torch.int64
        return (
            InputSpec("profile", (1,), i64, "index", 0, c.profile_rows),
            InputSpec("hist", (c.seq_len,), i64, "index", 0, c.behaviour_rows),
            InputSpec("hist_len", (), i64, "index", 1, c.seq_len + 1),
            InputSpec("ad", (1,), i64, "index", 0, c.ad_rows),
            InputSpec("context", (1,), i64, "index", 0, c.context_rows),
        )

    def id_sources(self) -> tuple[IdSource, ...]:
        c = self.cfg
        return (
            IdSource("profile", ("profile",), c.profile_rows, 1),
            IdSource("hist", ("behaviour",), c.behaviour_rows, c.seq_len),
            IdSource("ad", ("ad",), c.ad_rows, 1),
            IdSource("context", ("context",), c.context_rows, 1),
        )
