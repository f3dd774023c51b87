"""A model recsched has never seen (DeepFM-style), for the bring-your-own-model tests."""

import torch
from torch import nn

from recsched.models.base import InputSpec, ModelAdapter
from recsched.models.registry import adapter_for


class TinyDeepFM(nn.Module):
    """FM + deep part over F fields: ids [B, F] int64, dense [B, 3] -> scores [B, 1]."""

    def __init__(self, fields: int = 4, rows: int = 50, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(fields * rows, dim)
        self.lin = nn.Embedding(fields * rows, 1)
        self.deep = nn.Sequential(nn.Linear(fields * dim + 3, 16), nn.ReLU(), nn.Linear(16, 1))
        self.register_buffer("offsets", torch.arange(fields) * rows, persistent=False)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = x["ids"] + self.offsets  # [B, F]
        v = self.emb(ids)  # [B, F, D]
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1, keepdim=True)  # [B, 1]
        deep = self.deep(torch.cat([v.flatten(1), x["dense"]], dim=1))
        return torch.sigmoid(fm + self.lin(ids).sum(1) + deep)


def make_deepfm(scale: str = "small", seed: int = 0) -> ModelAdapter:
    torch.manual_seed(seed)
    specs = (
        InputSpec("ids", (4,), torch.int64, "index", 0, 50),
        InputSpec("dense", (3,), torch.float32),
    )
    return adapter_for("deepfm", TinyDeepFM(), specs)
