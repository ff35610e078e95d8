"""The parts every family shares: input normalisation, the trunk-and-heads shape, one linear head per task."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel standardisation with the catalog's rough statistics (mostly white background)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.85, 0.83, 0.82]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.25, 0.26, 0.27]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


class TrunkAndHeads(nn.Module):
    """The shape every family shares: `self.trunk` maps photos to a feature vector, `self.heads` to logits per task."""

    trunk: nn.Module
    heads: "Heads"

    def forward(self, x):
        return self.heads(self.trunk(x))


class Heads(nn.Module):
    """One linear classifier per task on a shared feature vector."""

    def __init__(self, features: int, heads: dict[str, int]):
        super().__init__()
        self.heads = nn.ModuleDict({t: nn.Linear(features, n) for t, n in heads.items()})

    def forward(self, z):
        return {t: head(z) for t, head in self.heads.items()}
