"""A residual CNN sized for 80x60 product photos: a shared trunk and one linear head per task. Larger inputs are
pooled after the stem back to about that size, so the cost of a photo grows only in the stem."""

from __future__ import annotations

from torch import nn

from fashiontag.model_folder import INPUT_HW
from fashiontag.models.layers import Heads, Normalize, TrunkAndHeads
from fashiontag.models.registry import register


def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    """The ResNet basic block: two 3x3 convs with a shortcut (projected when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride), nn.ReLU(inplace=True), conv_bn(cout, cout))
        self.body[-1][1].weight.data.zero_()  # each block starts as identity: steadier early training
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, stride, kernel=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


@register("rescnn", default_args={"width": 32, "stem_stride": 2})  # the shipped model's trunk
class ResCNN(TrunkAndHeads):
    def __init__(self, heads: dict[str, int], width: int = 32, depths: tuple[int, ...] = (1, 1, 2, 1),
                 stem_stride: int = 1, dropout: float = 0.2, input_hw: tuple[int, int] = INPUT_HW):
        super().__init__()
        widths = [width * 2 ** i for i in range(len(depths))]
        layers: list[nn.Module] = [Normalize(), conv_bn(3, widths[0], stem_stride), nn.ReLU(inplace=True)]
        pool = max(1, round(min(input_hw[0] / 80, input_hw[1] / 60)))
        if pool > 1:
            layers.append(nn.MaxPool2d(pool))
        cin = widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            for j in range(d):
                layers.append(Block(cin, w, stride=2 if j == 0 else 1))
                cin = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
        self.trunk = nn.Sequential(*layers)
        self.heads = Heads(cin, heads)
