"""Model registry: every family is a plain nn.Module whose forward(x) returns {task: logits}.

x is a float tensor (N, 3, H, W) with values in [0, 1]; each model normalises its input itself, so
callers (training, prediction, ONNX export, serving) all feed the same thing.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from fashiontag import INPUT_HW

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DEFAULT_ARGS: dict[str, dict] = {}


def register(name: str, default_args: dict | None = None):
    """Class decorator: makes the model family buildable by name. default_args: the arguments a training run gets
    unless its model_args say otherwise (family_args). They are not the constructor's defaults because a model.json
    records its arguments as trained and is rebuilt with the constructor's defaults for what it leaves out: changing
    those would change models already trained."""
    def add(cls):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = cls
        _DEFAULT_ARGS[name] = dict(default_args or {})
        return cls
    return add


def _family(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def family_args(name: str, args: dict) -> dict:
    """A training run's model arguments: `args` (TrainConfig.model_args) over family `name`'s default_args. An
    argument the family does not take is an error naming those it does, before any photo is read."""
    taken = sorted(set(inspect.signature(_family(name)).parameters) - {"heads", "input_hw"} | {"title"})
    unknown = sorted(set(args) - set(taken))
    if unknown:
        raise ValueError(f"model_args: model {name!r} takes no {', '.join(map(repr, unknown))}; its arguments are "
                         f"{', '.join(taken)}")
    return {**_DEFAULT_ARGS[name], **args}


def create_model(name: str, heads: dict[str, int], input_hw: tuple[int, int] = INPUT_HW, title: dict | None = None,
                 **kwargs) -> nn.Module:
    """Build model `name` with one head per task (task -> number of classes) for photos of input_hw pixels, from
    exactly the arguments given (a model.json's arch_args; a training run's come from family_args). With
    `title` (TitleFusion's arguments: tokenizer, dim, hidden, fusion), the family's trunk fused with a title
    encoder: forward(x, tokens)."""
    model = _family(name)(heads=heads, input_hw=tuple(input_hw), **kwargs)
    return model if title is None else TitleFusion(model, heads, **title)


def model_names() -> list[str]:
    return sorted(_REGISTRY)


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


from fashiontag.models import efficientnet_lite, mlp, rescnn, seed_cnn  # noqa: E402,F401  (registers the families)
from fashiontag.models.title import TitleFusion  # noqa: E402
