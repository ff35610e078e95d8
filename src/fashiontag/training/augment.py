"""Training augmentations: the catalog's studio shots turned into what sellers upload.

`studio_augment` is the catalog-only recipe (flips, small shifts and scales, nothing else). `seller_augment` adds
what a seller's phone does: the product smaller or larger and off-centre, tilted, on another background (flat
colours, gradients, noise, stripes and checks), under other light (exposure, contrast, gamma, white balance),
blurred or softened.
Colour is a task, so photometric changes beyond a mild range return colour_ok False for that photo and training
leaves its colour loss out (the other tasks still learn from it).

Both take float (N, 3, H, W) photos in [0, 1] on the training device and a torch.Generator; seller_augment also
takes the uint8 photos the batch was made from, to find each photo's studio background.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# Photometric factors within these bounds (as |log factor|) keep colours true enough for the colour head.
MILD = math.log(1.15)
NEAR_WHITE = 243                # the studio background, JPEG noise included
MAX_BACKGROUND_SHARE = 0.7
REPLACED_BACKGROUND = 0.6       # the share of seller-changed photos put on another background
# How often each kind of background is drawn: flat, gradient, noise, stripes, checks. Patterns are half: a bedspread
# cost far more than a wall (benchmarks/robustness.py), and one in five drawn backgrounds learnt it too slowly.
BACKGROUND_KINDS = torch.tensor([2.0, 1.0, 1.0, 2.0, 2.0])


def colour_tasks(tasks) -> set[str]:
    """The tasks whose loss skips strongly relit photos: those that name a colour (baseColour, colour, color)."""
    return {t for t in tasks if re.search(r"colou?r", t, re.IGNORECASE)}


def studio_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a small random scale and shift. No colour change: colour is a task."""
    n = x.shape[0]
    r = torch.rand(n, 4, generator=gen).to(x.device)
    flip = torch.where(r[:, 0] < 0.5, -1.0, 1.0)
    scale = 1 + (r[:, 1] - 0.5) * 0.2             # 0.9 .. 1.1
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = flip / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = (r[:, 2:] - 0.5) * 0.16       # up to 4% of the side either way
    return _warp(x, theta)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Shifted towards 0 so that out-of-frame pixels come in as the white catalog background (1 in every channel).
    return F.grid_sample(x - 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1


def background_mask(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W) float32, 1 where a photo shows the studio background: near-white pixels connected to the border
    (a white shirt's inside is not connected, so it stays)."""
    masks = np.zeros(pixels.shape[:3], np.float32)
    for i, photo in enumerate(pixels):
        labels, _ = ndimage.label((photo >= NEAR_WHITE).all(2))
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        masks[i] = np.isin(labels, border[border > 0])
    return masks


def _backgrounds(n: int, h: int, w: int, gen: torch.Generator, device) -> torch.Tensor:
    """Random seller backgrounds: flat colours, linear gradients, noisy textures and woven patterns (stripes at any
    angle and checks: a bedspread, a tablecloth, a rug), mostly light and muted."""
    r = torch.rand(n, 14, generator=gen)
    base = 0.35 + 0.6 * r[:, :1] + 0.15 * (r[:, 1:4] - 0.5)        # a muted colour, light more often than dark
    other = base + 0.3 * (r[:, 4:7] - 0.5)
    yy = torch.linspace(0, 1, h).view(1, 1, h, 1).expand(n, 1, h, w)
    xx = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(n, 1, h, w)
    ramp = torch.where((r[:, 7] < 0.5).view(n, 1, 1, 1), yy, xx)
    # The second colour of a pattern may be much darker too (a brown stripe on beige): down to 0.4 below the first.
    stripe_colour = other - 0.4 * r[:, 8:9]
    kind = torch.multinomial(BACKGROUND_KINDS, n, replacement=True, generator=gen)
    flat = base.view(n, 3, 1, 1).expand(n, 3, h, w)
    gradient = base.view(n, 3, 1, 1) + (other - base).view(n, 3, 1, 1) * ramp
    noise = base.view(n, 3, 1, 1) + 0.08 * torch.randn(n, 1, h, w, generator=gen)
    pattern = base.view(n, 3, 1, 1) + (stripe_colour - base).view(n, 3, 1, 1) * _weave(r[:, 9:14], kind == 4, h, w)
    bg = torch.where((kind == 0).view(n, 1, 1, 1), flat, torch.where((kind == 1).view(n, 1, 1, 1), gradient,
                     torch.where((kind == 2).view(n, 1, 1, 1), noise, pattern)))
    return bg.clamp(0, 1).to(device)


def _weave(r: torch.Tensor, checked: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1]: stripes at a random angle, period 3 to 16 pixels, hard or soft edged, and where
    `checked`, crossed by the same stripes at a right angle. r: (N, 5) uniform numbers."""
    n = len(r)
    angle = (r[:, 0] * math.pi).view(n, 1, 1, 1)
    period = (3 + 13 * r[:, 1]).view(n, 1, 1, 1)
    phase = (2 * math.pi * r[:, 2]).view(n, 1, 1, 1)
    yy = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
    xx = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
    along = torch.sin(2 * math.pi * (xx * torch.cos(angle) + yy * torch.sin(angle)) / period + phase)
    across = torch.sin(2 * math.pi * (yy * torch.cos(angle) - xx * torch.sin(angle)) / period + phase)
    hard = (r[:, 3] < 0.6).view(n, 1, 1, 1)
    along = torch.where(hard, (along > 0).float(), (along + 1) / 2)
    across = torch.where(hard, (across > 0).float(), (across + 1) / 2)
    return torch.where(checked.view(n, 1, 1, 1), (along + across) / 2, along)


def seller_augment(x: torch.Tensor, pixels: np.ndarray, gen: torch.Generator, share: float = 1.0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The photos as sellers shoot them, and per photo whether its colours are still true (see the module).

    Only `share` of the photos are changed so; the others only get a flip, a scale within 10% and a small shift,
    as in the studio recipe: the catalog's own studio shots stay in every batch, which keeps the accuracy on them."""
    n, _, h, w = x.shape
    device = x.device
    r = torch.rand(n, 12, generator=gen)
    studio = r[:, 10] >= share
    # Geometry: flip, zoom out to 0.6 or in to 1.35 (an eighth cut off each side), shift up to 10% of the side,
    # tilt up to 15 degrees. The background mask travels with the photo, so what the warp brings in is background too.
    replace = (r[:, 7] < REPLACED_BACKGROUND) & ~studio  # another background (masks are only needed for these)
    mask = torch.zeros(n, 1, h, w)
    if replace.any():
        mask[replace] = torch.from_numpy(background_mask(pixels[replace.numpy()])).unsqueeze(1)
    mask = mask.to(device)
    flip = torch.where(r[:, 0] < 0.5, -1.0, 1.0)
    scale = torch.where(r[:, 1] < 0.5, 0.6 + 0.4 * r[:, 2], 1 + 0.35 * r[:, 2])
    scale = torch.where(studio, 1 + (r[:, 2] - 0.5) * 0.2, scale)
    angle = (r[:, 3] - 0.5) * 2 * math.radians(15) * ((r[:, 4] < 0.6) & ~studio)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = flip * cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = flip * sin * w / h, cos
    theta[:, :, 2] = (r[:, 5:7] - 0.5) * 0.2
    warped = _warp(torch.cat([x, mask], 1), theta.to(device))
    x, mask = warped[:, :3], warped[:, 3:]
    # Not where the "background" is most of the photo: that is a white product merging with the studio white,
    # and replacing it would paint the product over.
    replace = (replace.to(device) & (mask.mean((1, 2, 3)) < MAX_BACKGROUND_SHARE)).view(n, 1, 1, 1)
    x = torch.where(replace, x * (1 - mask) + _backgrounds(n, h, w, gen, device) * mask, x)
    # Light: exposure, contrast, gamma and white balance, each drawn log-uniformly: mild for half the photos
    # (colours stay true), strong for a third (their colour label is dropped), unchanged for the rest.
    p = torch.rand(n, 6, generator=gen) * 2 - 1
    strong_range = torch.tensor([math.log(1.45), math.log(1.25), math.log(1.3)] + [math.log(1.12)] * 3)
    strong = (r[:, 8] < 0.35) & ~studio
    mild = (r[:, 8] >= 0.35) & (r[:, 8] < 0.85) & ~studio
    logs = p * torch.where(strong.view(n, 1), strong_range, torch.full((6,), MILD)) * (strong | mild).view(n, 1)
    f = logs.exp().to(device)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x * f[:, 0].view(n, 1, 1, 1) - mean) * f[:, 1].view(n, 1, 1, 1) + mean
    x = x.clamp(1e-4, 1) ** f[:, 2].view(n, 1, 1, 1)
    x = x * f[:, 3:6].view(n, 3, 1, 1)
    colour_ok = (~strong).to(device)
    # Softness: the detail lost to a low-resolution or shaky camera, for one photo in ten.
    soft = ((r[:, 9] < 0.1) & ~studio).to(device).view(n, 1, 1, 1)
    small = F.interpolate(x, scale_factor=0.65, mode="bilinear", align_corners=False, antialias=True)
    x = torch.where(soft, F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False), x)
    return x.clamp(0, 1).contiguous(memory_format=torch.channels_last), colour_ok
