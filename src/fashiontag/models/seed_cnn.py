"""The original Keras notebook's network, kept as the baseline: three conv/pool stages, dense 100, one softmax per task."""

from __future__ import annotations

from torch import nn

from fashiontag import INPUT_HW
from fashiontag.models import Heads, Normalize, register


class SeedCNN(nn.Module):
    def __init__(self, heads: dict[str, int], filters: tuple[int, int, int] = (16, 32, 64),
                 kernels: tuple[int, int, int] = (5, 3, 3), dense: int = 100, dropout: float = 0.5,
                 batch_norm: bool = False, input_hw: tuple[int, int] = INPUT_HW):
        super().__init__()
        layers: list[nn.Module] = [Normalize()]
        cin, (h, w) = 3, input_hw
        for f, k in zip(filters, kernels):
            # Keras "valid" padding, as in the notebook.
            layers += [nn.Conv2d(cin, f, k), *( [nn.BatchNorm2d(f)] if batch_norm else []), nn.ReLU(), nn.MaxPool2d(2)]
            cin, h, w = f, (h - k + 1) // 2, (w - k + 1) // 2
        layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin * h * w, dense), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.heads = Heads(dense, heads)

    def forward(self, x):
        return self.heads(self.trunk(x))


@register("seed-cnn")
def seed_cnn(heads, **kw):
    return SeedCNN(heads, **kw)
