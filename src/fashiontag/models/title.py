"""Photo + title: a hashed n-gram text encoder fused with the trunk of any registered photo family.

Built by create_model when arch_args has a "title" entry, e.g. model.json
    "arch": "rescnn", "arch_args": {"width": 32, "title": {"dim": 64, "fusion": "late",
                                                           "tokenizer": {"buckets": 65536, ...}}}
so a model folder rebuilds the fused model from arch + arch_args like any other. The tokens come from
fashiontag.data.text.Tokenizer(**title["tokenizer"]), outside the model (numpy, shared by every engine).

forward(x, tokens=None): tokens None, or a row of zeros, is "no title": a learned stand-in takes the text
features' place, so one model tags photo-only, title-only (a blank photo is still needed) and both.
"""

from __future__ import annotations

import torch
from torch import nn

from fashiontag.data.text import Tokenizer
from fashiontag.models.layers import Heads, TrunkAndHeads

FUSIONS = ("late", "gated")


POOLS = ("mean", "sqrt")


class TextEncoder(nn.Module):
    """The title's token embeddings pooled (padding excluded), optionally through one ReLU layer: their mean, or
    their sum over the square root of their count ("sqrt": a title's length then counts, as in an l2-normalised
    bag of words). An embedding bag written as Embedding + masked sum: ONNX has no EmbeddingBag with padding."""

    def __init__(self, buckets: int, dim: int, hidden: int = 0, pool: str = "mean"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
        self.pool = pool
        self.embed = nn.Embedding(buckets, dim, padding_idx=0)
        nn.init.normal_(self.embed.weight, std=0.1)
        self.embed.weight.data[0].zero_()
        self.out = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.features = hidden or dim

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L) int64 -> features (N, features) and whether each row has a title (N, 1) bool."""
        count = (tokens > 0).sum(1, keepdim=True)
        scale = count.clamp(min=1).to(self.embed.weight.dtype)
        pooled = self.embed(tokens).sum(1) / (scale if self.pool == "mean" else scale.sqrt())  # padding rows are 0
        return self.out(pooled), count > 0


class TitleFusion(TrunkAndHeads):
    """A photo family's trunk and heads, a TextEncoder, and what joins them.

    fusion "late": per task, logits = the photo model's own head on the photo features + a title head (no bias,
    zero at the start) on the title's features; without a title, nothing is added. The photo part keeps the photo
    model's names (trunk.*, heads.*), so a photo model's weights load into it as they are: started from one, the
    fused model tags photo-only exactly as that model does, whatever the title branch learns, and training can
    leave the photo part frozen (TrainConfig.freeze_trunk).
    fusion "gated": a gated multimodal unit (Arevalo et al. 2017): per feature, a learned gate from both inputs
    mixes tanh projections of each, so the title can override the photo feature by feature; new heads read the
    result, and a learned stand-in takes the title's place when there is none."""

    takes_titles = True  # engines and training pass tokens to models that have this

    def __init__(self, image: TrunkAndHeads, heads: dict[str, int], tokenizer: dict | None = None, dim: int = 64,
                 hidden: int = 0, fusion: str = "late", pool: str = "mean"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        self.fusion = fusion
        self.trunk = image.trunk
        photo = next(iter(image.heads.heads.values())).in_features
        self.text = TextEncoder(Tokenizer(**(tokenizer or {})).buckets, dim, hidden, pool)
        text = self.text.features
        if fusion == "late":
            self.heads = image.heads
            self.title_heads = nn.ModuleDict({t: nn.Linear(text, n, bias=False) for t, n in heads.items()})
            for head in self.title_heads.values():
                nn.init.zeros_(head.weight)
        else:
            self.no_title = nn.Parameter(torch.zeros(text))
            self.photo_proj, self.text_proj = nn.Linear(photo, photo), nn.Linear(text, photo)
            self.gate = nn.Linear(photo + text, photo)
            self.heads = Heads(photo, heads)

    def photo_part(self) -> list[nn.Module]:
        """The modules that came from the photo model (what TrainConfig.freeze_photo keeps as it is)."""
        return [self.trunk, self.heads] if self.fusion == "late" else [self.trunk]

    @torch.no_grad()
    def weigh_parts(self, photo: dict[str, float], title: dict[str, float]) -> None:
        """Late fusion: multiply each task's photo part (its head, bias included) and title part by their factors
        (fitted on validation photos, see train.py), so logits = photo * a + title * b."""
        for t, factor in photo.items():
            self.heads.heads[t].weight.mul_(factor)
            self.heads.heads[t].bias.mul_(factor)
        for t, factor in title.items():
            self.title_heads[t].weight.mul_(factor)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.from_features(self.trunk(x), tokens)

    def title_logits(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Late fusion: the title part of the logits alone (zero for a row without a title)."""
        encoded, present = self.text(tokens)
        return {t: head(encoded * present) for t, head in self.title_heads.items()}

    def from_features(self, photo: torch.Tensor, tokens: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Logits from photo features (N, F) and tokens (N, L) or None. Public so that a frozen trunk's features
        can be computed once and the rest trained on them."""
        if self.fusion == "late":
            out = self.heads(photo)
            if tokens is None:
                return out
            title = self.title_logits(tokens)  # a photo without a title gets nothing added
            return {t: out[t] + title[t] for t in out}
        if tokens is None:
            text = self.no_title.expand(len(photo), -1)
        else:
            encoded, present = self.text(tokens)
            text = torch.where(present, encoded, self.no_title)
        gate = torch.sigmoid(self.gate(torch.cat([photo, text], 1)))
        return self.heads(gate * torch.tanh(self.photo_proj(photo)) + (1 - gate) * torch.tanh(self.text_proj(text)))
