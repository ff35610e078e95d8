"""The original Keras notebook's network, kept as the baseline: three conv/pool stages, dense 100, one softmax per task."""

from __future__ import annotations

from torch import nn

from fashiontag.model_folder import INPUT_HW
from fashiontag.models.layers import Heads, Normalize, TrunkAndHeads
from fashiontag.models.registry import register

# Where each conv stage puts its BatchNorm, the placements the notebook tried: none; between the convolution and its
# ReLU ("before_activation", Conv2D then BatchNormalization then Activation); after the ReLU ("after_activation",
# Conv2D(activation="relu") then BatchNormalization). True and False are the older spellings of the first two.
BATCH_NORM = ("none", "before_activation", "after_activation")


@register("seed-cnn")
class SeedCNN(TrunkAndHeads):
    def __init__(self, heads: dict[str, int], filters: tuple[int, int, int] = (16, 32, 64),
                 kernels: tuple[int, int, int] = (5, 3, 3), dense: int = 100, dropout: float = 0.5,
                 batch_norm: bool | str = False, input_hw: tuple[int, int] = INPUT_HW):
        super().__init__()
        placement = {False: "none", True: "before_activation"}.get(batch_norm, batch_norm)
        if placement not in BATCH_NORM:
            raise ValueError(f"batch_norm {batch_norm!r}: use one of {', '.join(BATCH_NORM)}")
        layers: list[nn.Module] = [Normalize()]
        cin, (h, w) = 3, input_hw
        for f, k in zip(filters, kernels):
            bn = [nn.BatchNorm2d(f)] if placement != "none" else []
            act = [nn.ReLU()]
            # Keras "valid" padding, as in the notebook.
            layers += [nn.Conv2d(cin, f, k), *(bn + act if placement == "before_activation" else act + bn),
                       nn.MaxPool2d(2)]
            cin, h, w = f, (h - k + 1) // 2, (w - k + 1) // 2
        layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin * h * w, dense), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.heads = Heads(dense, heads)
