"""Model registry: every family is a plain nn.Module whose forward(x) returns {task: logits}.

x is a float tensor (N, 3, H, W) with values in [0, 1]; each model normalises its input itself, so
callers (training, prediction, ONNX export, serving) all feed the same thing.
"""

from __future__ import annotations

from torch import nn

from fashiontag.model_folder import INPUT_HW
from fashiontag.models import efficientnet_lite, mlp, rescnn, seed_cnn  # noqa: F401  (registers the families)
from fashiontag.models.known_heads import KnownHeads
from fashiontag.models.registry import _family, family_args, model_names, register  # noqa: F401  (the package face)
from fashiontag.models.title import TitleFusion


def create_model(name: str, heads: dict[str, int], input_hw: tuple[int, int] = INPUT_HW, title: dict | None = None,
                 known: dict | None = None, **kwargs) -> nn.Module:
    """Build model `name` with one head per task (task -> number of classes) for photos of input_hw pixels, from
    exactly the arguments given (a model.json's arch_args; a training run's come from family_args). With
    `title` (TitleFusion's arguments: tokenizer, dim, hidden, fusion), the family's trunk fused with a title
    encoder: forward(x, tokens). With `known` (KnownHeads' arguments: tasks, temperatures, photo_temperatures,
    title), a start model's frozen heads whose calibrated outputs the heads read too."""
    model = _family(name)(heads=heads, input_hw=tuple(input_hw), **kwargs)
    model = model if title is None else TitleFusion(model, heads, **title)
    return model if known is None else KnownHeads(model, heads, **known)
