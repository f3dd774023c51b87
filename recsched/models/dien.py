"""DIEN, Deep Interest Evolution Network (Zhou et al., AAAI 2019), with DeepRecSys's tables
(one behaviour table per sequence position, as in DeepRecSys's DIEN config).

An interest extractor GRU turns the behaviour embeddings into interest states; an attention
score of each state against the candidate ad (the paper's bilinear form, softmax over the
valid positions) then gates the update gate of a second GRU (AUGRU), whose final state is the
evolved interest. Positions past the history length get attention 0, so AUGRU keeps its state
there and the final state is that of the last valid behaviour. The auxiliary loss is
training-only and not built.

Inputs (per batch of B items):
    profile  [B, 1] int64 in [0, profile_rows)
    hist     [B, S] int64 in [0, behaviour_rows)   column i reads table behaviour{i}, S = 40
    hist_len [B]    int64 in [1, S + 1)
    ad       [B, 1] int64 in [0, ad_rows)
    context  [B, 1] int64 in [0, context_rows)

Stages (the coarse operators):
    sparse_arch.profile / .behaviour{i} / .ad / .context   EmbeddingBag: [B, 1] -> [B, D]
    interest_extractor   GRU over the stacked behaviours [B, S, D] -> states [B, S, H]
    attention            softmax_i(h_i W e_ad) over valid positions -> [B, S]
    augru                AUGRU over (states, attention), S static steps -> [B, H]
    interaction          cat(profile, ad, context, evolved interest) -> [B, 3D + H]
    over_arch            MLP 200-80-2 (PReLU), softmax -> [B, 2]
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
class DIENConfig:
    """DIEN's table sizes, sequence length (= behaviour tables), GRU hidden size, top MLP."""

    profile_rows: int
    behaviour_rows: int
    ad_rows: int
    context_rows: int
    dim: int
    seq_len: int
    hidden: int
    top_mlp: tuple[int, ...]
    activation: str = "prelu"

    def __post_init__(self) -> None:
        n = type(self).__name__
        positive(n, profile_rows=self.profile_rows, behaviour_rows=self.behaviour_rows)
        positive(n, ad_rows=self.ad_rows, context_rows=self.context_rows, dim=self.dim)
        positive(n, seq_len=self.seq_len, hidden=self.hidden)
        if not self.top_mlp or self.top_mlp[-1] != 2:
            raise ValueError(f"{n}.top_mlp must end in 2 (softmax over click / no click)")
        if self.activation not in ("relu", "prelu", "sigmoid"):
            raise ValueError(f"{n}.activation must be relu, prelu or sigmoid")


class InterestExtractor(nn.Module):
    """A GRU over behaviours: `[B, S, D] -> [B, S, H]` (all states; causal, so the states of
    valid positions do not depend on the padding after them)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(dim, hidden, batch_first=True)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(seq)
        return states


class InterestAttention(nn.Module):
    """DIEN's attention: `a_i = softmax_i(h_i W e_ad)` over positions `< length`.

    states `[B, S, H]`, ad `[B, D]`, length `[B]` -> `[B, S]` (0 past the length).
    """

    def __init__(self, dim: int, hidden: int, seq_len: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden, bias=False)
        self.register_buffer("positions", torch.arange(seq_len), persistent=False)

    def forward(self, states: torch.Tensor, ad: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        scores = torch.bmm(states, self.proj(ad).unsqueeze(2)).squeeze(2)  # [B, S]
        mask = self.positions.unsqueeze(0) < length.unsqueeze(1)  # [B, S]
        return scores.masked_fill(~mask, float("-inf")).softmax(dim=1)


class AUGRU(nn.Module):
    """GRU with attentional update gate: `u'_t = a_t * u_t`, `h_t = (1 - u'_t) h_{t-1} +
    u'_t h~_t`. states `[B, S, H]`, attention `[B, S]` -> final `[B, H]`.

    A static loop over `seq_len` steps (traceable); the input projections of all steps are one
    matmul up front.
    """

    def __init__(self, hidden: int, seq_len: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.hidden = hidden
        self.x2h = nn.Linear(hidden, 3 * hidden)
        self.h2h = nn.Linear(hidden, 3 * hidden)

    def forward(self, states: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        H = self.hidden
        gx = self.x2h(states)  # [B, S, 3H]: reset and update (first 2H), candidate (last H)
        x_rz, x_n = gx[:, :, : 2 * H], gx[:, :, 2 * H :]
        h = torch.zeros_like(states[:, 0])  # [B, H]
        for t in range(self.seq_len):
            gh = self.h2h(h)  # [B, 3H]
            rz = torch.sigmoid(x_rz[:, t] + gh[:, : 2 * H])  # [B, 2H]
            n = torch.tanh(torch.addcmul(x_n[:, t], rz[:, :H], gh[:, 2 * H :]))  # [B, H]
            u = rz[:, H:] * att[:, t : t + 1]  # attentional update gate [B, H]
            h = torch.addcmul(h, u, n - h)  # (1 - u) h + u n
        return h


class DIEN(RecModel):
    """DIEN scoring `[B, 2]` (softmax over no-click / click). See the module docstring."""

    config_class = DIENConfig

    def __init__(self, cfg: DIENConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.behaviour_names = tuple(f"behaviour{i}" for i in range(cfg.seq_len))
        tables = {"profile": embedding_bag(cfg.profile_rows, cfg.dim)}
        tables |= {n: embedding_bag(cfg.behaviour_rows, cfg.dim) for n in self.behaviour_names}
        tables |= {
            "ad": embedding_bag(cfg.ad_rows, cfg.dim),
            "context": embedding_bag(cfg.context_rows, cfg.dim),
        }
        self.sparse_arch = nn.ModuleDict(tables)
        self.interest_extractor = InterestExtractor(cfg.dim, cfg.hidden)
        self.attention = InterestAttention(cfg.dim, cfg.hidden, cfg.seq_len)
        self.augru = AUGRU(cfg.hidden, cfg.seq_len)
        self.interaction = Concat()
        width = 3 * cfg.dim + cfg.hidden
        self.over_arch = MLP(width, cfg.top_mlp, act=cfg.activation, final="softmax")  # type: ignore[arg-type]
        self.out_dim = 2
        self.coarse_stages = (
            *(f"sparse_arch.{k}" for k in self.sparse_arch),
            "interest_extractor",
            "attention",
            "augru",
            "interaction",
            "over_arch",
        )

    def forward(self, x: Inputs) -> torch.Tensor:
        """`profile, hist [B, S], hist_len [B], ad, context` -> `[B, 2]`, rows sum to 1."""
        t = self.sparse_arch
        hist = x["hist"]
        behaviours = [t[n](hist[:, i : i + 1]) for i, n in enumerate(self.behaviour_names)]
        seq = torch.stack(behaviours, dim=1)  # [B, S, D]
        profile = t["profile"](x["profile"])  # [B, D]
        ad = t["ad"](x["ad"])  # [B, D]
        context = t["context"](x["context"])  # [B, D]
        states = self.interest_extractor(seq)  # [B, S, H]
        att = self.attention(states, ad, x["hist_len"])  # [B, S]
        interest = self.augru(states, att)  # [B, H]
        return self.over_arch(self.interaction([profile, ad, context, interest]))

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
            IdSource("hist", self.behaviour_names, c.behaviour_rows, 1),
            IdSource("ad", ("ad",), c.ad_rows, 1),
            IdSource("context", ("context",), c.context_rows, 1),
        )
