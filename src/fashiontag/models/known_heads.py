"""Known heads: a start model's own heads, frozen, feeding what they know to a new model's heads (issue 27).

Built by create_model when arch_args has a "known" entry, e.g. model.json
    "arch_args": {"width": 32, "title": {...}, "known": {"tasks": {"gender": 5, "articleType": 141, ...},
                  "temperatures": {...}, "photo_temperatures": {...}, "title": true, "linear": true,
                  "length_slopes": {...},
                  "reads": {"colour": ["baseColour"], ...}}}
so a model folder rebuilds it and the ONNX export includes it; its weights are ordinary tensors (known.*,
known_title.*, known_linear.*, maps.*) in model.safetensors.

A shop's columns are mostly renamings, merges and splits of what the start model already tags. Per known task the
start model's head (and, photo + title late fusion, its title head, linear title part and length slopes: the start
model's own logits) reads this model's features; their temperature-scaled log-probabilities go through one linear
map per shop task (zero when built; training fits them before its first epoch, train.fit_known_maps) that is added
to the shop head's logits: a linear head on [features, known log-probabilities]. Log-probabilities, not probabilities: the map's weight 1 on a renamed class then gives the
start model's own calibrated logits, where probabilities in [0, 1] would need weights of tens.

Each shop task's map reads the known tasks `reads` names for it: training gives a single-label task the one known
task that explains it best (its taxonomy map), since a map from every known task's 200 classes, fitted on a few
hundred products, learns chance agreements (colour from articleType) where a renaming needs one block: on the shop
of 900 of benchmarks/few_shot.py, colour went from 85.5 to 87.0 with titles and from 60.2 to 64.4 from the photo
(docs/results.md). A task `reads` does not name (multi-label ones, models saved before it) reads every known task.
"""

from __future__ import annotations

import torch
from torch import nn

from fashiontag.models.title import LengthSlopes, TitleLinear, add_parts

# The floor of a known log-probability: a class the start model rules out says "no", not minus infinity.
LOG_FLOOR = -9.0


class KnownHeads(nn.Module):
    """`inner` (any family, photo or photo + title) with a start model's heads as known heads; forward(x[, tokens])
    returns inner's logits per task plus each task's map of the known log-probabilities."""

    def __init__(self, inner: nn.Module, heads: dict[str, int], tasks: dict[str, int],
                 temperatures: dict[str, float], photo_temperatures: dict[str, float] | None = None,
                 title: bool = False, reads: dict[str, list[str]] | None = None, linear: bool = False,
                 length_slopes: dict | None = None):
        super().__init__()
        self.inner = inner
        self.takes_titles = getattr(inner, "takes_titles", False)  # engines and export pass tokens if so
        features = next(iter(inner.heads.heads.values())).in_features
        # A ModuleDict of its own, not layers.Heads: a model folder's check finds a model's tasks by the names
        # heads.<task>.weight, and these are the start model's tasks, not this model's.
        self.known = nn.ModuleDict({t: nn.Linear(features, n) for t, n in tasks.items()})
        # The start model's title heads: only late fusion has them, on the title encoder this model shares.
        self.known_title = (nn.ModuleDict({t: nn.Linear(inner.text.features, n, bias=False) for t, n in tasks.items()})
                            if title else None)
        # ... and its linear title part, which reads the title's ids (models/title.py TitleLinear).
        self.known_linear = TitleLinear(inner.text.embed.num_embeddings, tasks) if title and linear else None
        self.known_lengths = LengthSlopes(list(tasks), length_slopes) if title and length_slopes else None
        # Temperatures come from model.json ("known"), not the weights: rebuilt, not learnt.
        photo = photo_temperatures or temperatures
        self.register_buffer("t_title", torch.tensor([float(temperatures[t]) for t in tasks]), persistent=False)
        self.register_buffer("t_photo", torch.tensor([float(photo[t]) for t in tasks]), persistent=False)
        self.reads = {t: list((reads or {}).get(t, tasks)) for t in heads}
        self.maps = nn.ModuleDict({t: nn.Linear(sum(tasks[k] for k in self.reads[t]), n, bias=False)
                                   for t, n in heads.items()})
        for m in self.maps.values():
            nn.init.zeros_(m.weight)
        self.freeze()

    def freeze(self) -> None:
        """The known heads keep the start model's weights: what they know is the point."""
        self.known.requires_grad_(False)
        if self.known_title is not None:
            self.known_title.requires_grad_(False)

    def known_log_probabilities(self, features: torch.Tensor, tokens: torch.Tensor | None
                                ) -> dict[str, torch.Tensor]:
        """Per known task, the start model's temperature-scaled log-probabilities (N, classes): with the title's
        part and the with-title temperature for a row that has a title, the photo-alone ones otherwise."""
        logits = {t: head(features) for t, head in self.known.items()}
        present = None
        if self.known_title is not None and tokens is not None:
            encoded, present = self.inner.text(tokens)
            parts = {"photo": logits, "title": {t: head(encoded * present) for t, head in self.known_title.items()}}
            if self.known_linear is not None:
                parts["linear"] = self.known_linear(tokens)
            logits = add_parts(parts, self.known_lengths, tokens)
        out = {}
        for i, (t, lg) in enumerate(logits.items()):
            temperature = self.t_photo[i] if present is None else torch.where(present, self.t_title[i],
                                                                               self.t_photo[i])
            out[t] = torch.log_softmax(lg.float() / temperature, dim=1).clamp(min=LOG_FLOOR)
        return out

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        features = self.inner.trunk(x)
        own = self.inner.heads(features) if not self.takes_titles else self.inner.from_features(features, tokens)
        known = self.known_log_probabilities(features, tokens)
        return {t: lg + self.maps[t](self.map_input(known, t).to(lg.dtype)) for t, lg in own.items()}

    def map_input(self, known: dict[str, torch.Tensor], task: str) -> torch.Tensor:
        """What task's map reads: the known log-probabilities of the tasks it reads, side by side."""
        return torch.cat([known[k] for k in self.reads[task]], 1)

    @torch.no_grad()
    def load_known(self, start: dict[str, torch.Tensor]) -> int:
        """The start model's heads (heads.heads.<task>.*, title_heads.<task>.weight of a start model's state dict)
        copied into the known heads; returns the number of tensors copied. A start model that lacks one is an error:
        a known head left random would feed noise under a name that promises knowledge."""
        wanted = {f"known.{t}.{p}": f"heads.heads.{t}.{p}" for t in self.known for p in ("weight", "bias")}
        if self.known_title is not None:
            wanted.update({f"known_title.{t}.weight": f"title_heads.{t}.weight" for t in self.known_title})
        if self.known_linear is not None:
            wanted.update({f"known_linear.{b}": f"linear.{b}" for b, _ in self.known_linear.named_buffers()})
        missing = sorted(k for k in wanted.values() if k not in start)
        if missing:
            raise ValueError(f"the start model has no {', '.join(missing[:3])}: its heads cannot be known heads")
        own = self.state_dict()
        unfit = sorted(v for k, v in wanted.items() if own[k].shape != start[v].shape)
        if unfit:
            raise ValueError(f"the start model's {', '.join(unfit[:3])} do not fit this model's features")
        self.load_state_dict({k: start[v] for k, v in wanted.items()}, strict=False)
        return len(wanted)
