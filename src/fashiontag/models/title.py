"""Photo + title: a hashed n-gram text encoder fused with the trunk of any registered photo family.

Built by create_model when arch_args has a "title" entry, e.g. model.json
    "arch": "rescnn", "arch_args": {"width": 32, "title": {"dim": 64, "fusion": "late",
                                                           "tokenizer": {"buckets": 65536, ...}}}
so a model folder rebuilds the fused model from arch + arch_args like any other. The tokens come from
fashiontag.text.Tokenizer(**title["tokenizer"]), outside the model (numpy, shared by every engine).

forward(x, tokens=None): tokens None, or a row of zeros, is "no title": a learned stand-in takes the text
features' place, so one model tags photo-only, title-only (a blank photo is still needed) and both.
"""

from __future__ import annotations

import torch
from torch import nn

from fashiontag.models import Heads, TrunkAndHeads
from fashiontag.text import Tokenizer

FUSIONS = ("late", "gated")


class TextEncoder(nn.Module):
    """Mean of the title's token embeddings (padding excluded), optionally through one ReLU layer.
    An embedding bag written as Embedding + masked mean: ONNX has no EmbeddingBag with padding."""

    def __init__(self, buckets: int, dim: int, hidden: int = 0):
        super().__init__()
        self.embed = nn.Embedding(buckets, dim, padding_idx=0)
        nn.init.normal_(self.embed.weight, std=0.1)
        self.embed.weight.data[0].zero_()
        self.out = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.features = hidden or dim

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L) int64 -> features (N, features) and whether each row has a title (N, 1) bool."""
        count = (tokens > 0).sum(1, keepdim=True)
        mean = self.embed(tokens).sum(1) / count.clamp(min=1).to(self.embed.weight.dtype)  # padding rows are zero
        return self.out(mean), count > 0


class TitleFusion(TrunkAndHeads):
    """A photo family's trunk, a TextEncoder and one head per task on the fused features.

    fusion "late": heads on [photo features, text features], i.e. per-task logits = photo part + text part. The
    photo model's heads are copied into the photo columns and the text columns start at zero, so a fused model
    built on a trained photo model starts out exactly as accurate as it, with or without a title.
    fusion "gated": a gated multimodal unit (Arevalo et al. 2017): per feature, a learned gate from both inputs
    mixes tanh projections of each, so the title can override the photo feature by feature."""

    takes_titles = True  # engines and training pass tokens to models that have this

    def __init__(self, image: TrunkAndHeads, heads: dict[str, int], tokenizer: dict | None = None, dim: int = 64,
                 hidden: int = 0, fusion: str = "late"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        self.fusion = fusion
        self.trunk = image.trunk
        photo = next(iter(image.heads.heads.values())).in_features
        self.text = TextEncoder(Tokenizer(**(tokenizer or {})).buckets, dim, hidden)
        text = self.text.features
        self.no_title = nn.Parameter(torch.zeros(text))
        if fusion == "late":
            self.heads = Heads(photo + text, heads)
            self._start_from(image.heads, photo)
        else:
            self.photo_proj, self.text_proj = nn.Linear(photo, photo), nn.Linear(text, photo)
            self.gate = nn.Linear(photo + text, photo)
            self.heads = Heads(photo, heads)

    @torch.no_grad()
    def _start_from(self, photo_heads: Heads, photo: int) -> None:
        for task, head in self.heads.heads.items():
            head.weight[:, :photo] = photo_heads.heads[task].weight
            head.weight[:, photo:] = 0
            head.bias.copy_(photo_heads.heads[task].bias)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.heads(self.fuse(self.trunk(x), tokens))

    def fuse(self, photo: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """Photo features (N, F) and tokens (N, L) or None -> the features the heads read. Public so that a
        frozen trunk's features can be computed once and the rest trained on them."""
        if tokens is None:
            text = self.no_title.expand(len(photo), -1)
        else:
            encoded, present = self.text(tokens)
            text = torch.where(present, encoded, self.no_title)
        both = torch.cat([photo, text], 1)
        if self.fusion == "late":
            return both
        gate = torch.sigmoid(self.gate(both))
        return gate * torch.tanh(self.photo_proj(photo)) + (1 - gate) * torch.tanh(self.text_proj(text))
