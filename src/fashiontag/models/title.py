"""Photo + title: a hashed n-gram text encoder fused with the trunk of any registered photo family.

Built by create_model when arch_args has a "title" entry, e.g. model.json
    "arch": "rescnn", "arch_args": {"width": 32, "title": {"dim": 64, "fusion": "late",
                                                           "tokenizer": {"buckets": 65536, ...}}}
so a model folder rebuilds the fused model from arch + arch_args like any other. The tokens come from
fashiontag.data.text.Tokenizer(**title["tokenizer"]), outside the model (numpy, shared by every engine).

forward(x, tokens=None): tokens None, or a row of zeros, is "no title": a learned stand-in takes the text
features' place, so one model tags photo-only, title-only (a blank photo is still needed) and both.

Late fusion can have a third part beside the photo and the title encoder: a linear model on the title's TF-IDF
(TitleLinear, arch_args.title.linear), the shape of the linear SVM baseline of issue 25, fitted by
training.title_linear after the rest is trained.
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


class TitleLinear(nn.Module):
    """Per task, scores linear in the title's TF-IDF: each distinct id's value is (1 + log of its count in the
    title) x its idf, the row scaled to unit length (sklearn's TfidfVectorizer with sublinear_tf, over the ids the
    Tokenizer gives instead of its own n-grams), times a weight per id and class, plus a bias; 0 for a row without
    a title. Not trained by gradient: training.title_linear fits it as a linear SVM and writes its buffers (idf,
    weight, bias). All zero when built, so a model whose path is not fitted yet tags as without one.

    Computed from the (N, L) ids as they are, duplicates and padding included, so that ONNX takes it as it is:
    sorted, each distinct id is a run whose length is its count (comparing each id with every other of its row cost
    3.5 times as much in onnxruntime: 105 against 30 microseconds a title). The sum is written as multiply-and-sum,
    not matmul, so that bf16 autocast leaves it in float32. The weights are stored in int8 with a float scale per
    class (32,768 ids x 200 classes: 6.6 MB, not 26 in float32), so that the shipped model folder stays small; a
    score moves by at most the sum of its TF-IDF values x half its class's scale (set_weights)."""

    def __init__(self, buckets: int, heads: dict[str, int]):
        super().__init__()
        self.sizes = dict(heads)
        self.register_buffer("idf", torch.zeros(buckets))
        self.register_buffer("weight", torch.zeros(buckets, sum(heads.values()), dtype=torch.int8))
        self.register_buffer("scale", torch.zeros(sum(heads.values())))
        self.register_buffer("bias", torch.zeros(sum(heads.values())))

    @torch.no_grad()
    def set_weights(self, idf: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Take fitted float weights (ids, classes): each class's column rounded to 255 levels of its largest
        magnitude."""
        scale = weight.abs().amax(0) / 127
        self.idf.copy_(idf)
        self.weight.copy_(torch.round(weight / torch.where(scale > 0, scale, 1)).to(torch.int8))
        self.scale.copy_(scale)
        self.bias.copy_(bias)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = tokens.sort(1).values  # padding first, then each distinct id's run
        first = torch.cat([ids[:, :1] > 0, (ids[:, 1:] != ids[:, :-1]) & (ids[:, 1:] > 0)], 1)
        run = (first.long().cumsum(1) - 1).clamp(min=0)  # padding joins run 0, adding 0 to its count
        count = torch.zeros_like(ids, dtype=torch.float32).scatter_add(1, run, (ids > 0).float())
        value = (1 + count.gather(1, run).clamp(min=1).log()) * self.idf[ids] * first  # at each run's first id
        norm = (value * value).sum(1, keepdim=True).sqrt().clamp(min=1e-12)
        scores = (self.weight[ids].float() * (value / norm)[:, :, None]).sum(1) * self.scale
        scores = scores + self.bias * first.any(1, keepdim=True)
        return dict(zip(self.sizes, scores.split(list(self.sizes.values()), 1)))


PARTS = ("photo", "title", "linear")  # late fusion's parts of the logits, in LengthSlopes' order


class LengthSlopes(nn.Module):
    """Late fusion's weights by the title's length: per task, each part's logits times exp(slope x (ln n - center))
    for a title of n ids (1 at `center`, a title of typical length; 1 without a title). A short title says less, so
    the photo should count for more beside it and the title for less; one factor per part, fitted on whole and
    thinned titles together, had to settle for what suits both. Fitted with the fusion weights
    (training.temperatures.fit_fusion_weights) and recorded in arch_args.title.length_slopes: {"center": c,
    "photo": {task: slope}, "title": {...}, "linear": {...}}; not weights, so a model folder rebuilds them."""

    def __init__(self, tasks: list[str], slopes: dict):
        super().__init__()
        self.tasks = list(tasks)
        self.register_buffer("center", torch.tensor(float(slopes.get("center", 0.0))), persistent=False)
        self.register_buffer("slopes", torch.tensor([[float(slopes.get(p, {}).get(t, 0.0)) for t in self.tasks]
                                                     for p in PARTS]), persistent=False)

    def forward(self, tokens: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """Per part and task, the (N, 1) factors of rows of ids (N, L)."""
        count = (tokens > 0).sum(1, keepdim=True)
        z = (count.clamp(min=1).float().log() - self.center) * (count > 0)
        factors = torch.exp(z[None] * self.slopes[:, None, :])  # (parts, N, tasks)
        return {p: {t: factors[i, :, j:j + 1] for j, t in enumerate(self.tasks)} for i, p in enumerate(PARTS)}


def add_parts(parts: dict[str, dict[str, torch.Tensor]], lengths: LengthSlopes | None,
              tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Late fusion's logits per task: the sum of its parts ({part: {task: logits}}, PARTS' names), each weighed by
    the title's length when `lengths` are given."""
    if lengths is not None:
        factors = lengths(tokens)
        parts = {p: {t: lg * factors[p][t] for t, lg in part.items()} for p, part in parts.items()}
    first = next(iter(parts.values()))
    return {t: sum(part[t] for part in parts.values()) for t in first}


class TitleFusion(TrunkAndHeads):
    """A photo family's trunk and heads, a TextEncoder, and what joins them.

    fusion "late": per task, logits = the photo model's own head on the photo features + a title head (no bias,
    zero at the start) on the title's features; without a title, nothing is added. The photo part keeps the photo
    model's names (trunk.*, heads.*), so a photo model's weights load into it as they are: started from one, the
    fused model tags photo-only exactly as that model does, whatever the title branch learns, and training can
    leave the photo part frozen (TrainConfig.freeze_trunk).
    fusion "gated": a gated multimodal unit (Arevalo et al. 2017): per feature, a learned gate from both inputs
    mixes tanh projections of each, so the title can override the photo feature by feature; new heads read the
    result, and a learned stand-in takes the title's place when there is none.
    linear (late fusion only): {"C": c} adds a TitleLinear part to the logits, a linear SVM with that C.
    length_slopes (late fusion only): the parts weighed by the title's length (LengthSlopes)."""

    takes_titles = True  # engines and training pass tokens to models that have this

    def __init__(self, image: TrunkAndHeads, heads: dict[str, int], tokenizer: dict | None = None, dim: int = 64,
                 hidden: int = 0, fusion: str = "late", pool: str = "mean", linear: dict | None = None,
                 length_slopes: dict | None = None):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        if (linear is not None or length_slopes is not None) and fusion != "late":
            raise ValueError("a linear title part (linear) and length_slopes need late fusion")
        self.fusion = fusion
        self.trunk = image.trunk
        photo = next(iter(image.heads.heads.values())).in_features
        self.text = TextEncoder(Tokenizer(**(tokenizer or {})).buckets, dim, hidden, pool)
        text = self.text.features
        self.linear = TitleLinear(self.text.embed.num_embeddings, heads) if linear is not None else None
        self.lengths = LengthSlopes(list(heads), length_slopes) if length_slopes else None
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
    def weigh_parts(self, photo: dict[str, float], title: dict[str, float],
                    linear: dict[str, float] | None = None) -> None:
        """Late fusion: multiply each task's photo part (its head, bias included), title part and linear title
        part by their factors (fitted on validation photos, training.calibrate.weigh_fusion), so logits = photo *
        a + title * b [+ linear * c]."""
        for t, factor in photo.items():
            self.heads.heads[t].weight.mul_(factor)
            self.heads.heads[t].bias.mul_(factor)
        for t, factor in title.items():
            self.title_heads[t].weight.mul_(factor)
        start = 0
        for t, size in (self.linear.sizes.items() if self.linear is not None and linear else ()):
            self.linear.scale[start:start + size] *= linear.get(t, 1.0)
            self.linear.bias[start:start + size] *= linear.get(t, 1.0)
            start += size

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None, photo_alone: bool = False):
        """Logits per task; photo_alone (training, TrainConfig.photo_loss): (logits with tokens, logits without),
        the trunk run once for both."""
        features = self.trunk(x)
        if photo_alone:
            return self.from_features(features, tokens), self.from_features(features, None)
        return self.from_features(features, tokens)

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
            parts = {"photo": out, "title": self.title_logits(tokens)}  # no title: nothing added, factors 1
            if self.linear is not None:
                parts["linear"] = self.linear(tokens)
            return add_parts(parts, self.lengths, tokens)
        if tokens is None:
            text = self.no_title.expand(len(photo), -1)
        else:
            encoded, present = self.text(tokens)
            text = torch.where(present, encoded, self.no_title)
        gate = torch.sigmoid(self.gate(torch.cat([photo, text], 1)))
        return self.heads(gate * torch.tanh(self.photo_proj(photo)) + (1 - gate) * torch.tanh(self.text_proj(text)))
