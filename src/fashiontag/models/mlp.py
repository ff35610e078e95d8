"""The notebook's dense-only baseline: flatten, 100, 50, one softmax per task."""

from __future__ import annotations

from torch import nn

from fashiontag.model_folder import INPUT_HW
from fashiontag.models.layers import Heads, Normalize, TrunkAndHeads
from fashiontag.models.registry import register


@register("mlp")
class MLP(TrunkAndHeads):
    def __init__(self, heads: dict[str, int], hidden: tuple[int, ...] = (100, 50), input_hw: tuple[int, int] = INPUT_HW):
        super().__init__()
        layers: list[nn.Module] = [Normalize(), nn.Flatten()]
        cin = 3 * input_hw[0] * input_hw[1]
        for h in hidden:
            layers += [nn.Linear(cin, h), nn.ReLU()]
            cin = h
        self.trunk = nn.Sequential(*layers)
        self.heads = Heads(cin, heads)
