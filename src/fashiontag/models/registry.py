"""Model families by name: each registers itself with the arguments a training run gives it by default; a name
registered twice is an error."""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

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


def model_names() -> list[str]:
    return sorted(_REGISTRY)
