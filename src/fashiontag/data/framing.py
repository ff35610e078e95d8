"""Framing normalisation: find the product against a plain background and crop to it, so that a seller's photo
(product small in a large frame, off-centre, on a grey wall) reaches the model framed like a studio shot.

The background colour is estimated from the photo's border; pixels that differ from it by more than a tolerance
are the product. A photo whose border is not one plain colour (a bedspread, a busy room) has no clear background:
it is left whole. A studio shot, whose product already spans the frame in one direction, comes out as it went in.
Framing is either always on or only for small products (`frame`'s `when`): a product spanning less than a share
of the photo both ways (a ring on a table, a shoe in a corner of the room) is cropped to, while a studio shot,
which fills its frame in one direction, stays whole and keeps its product's size as a cue. Training and inference
both decode photos through photos.decode, so both see the same framing (models record how they were trained:
model.json's preprocess.framing, true, false or that share).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageFilter

RING = 0.04           # border ring sampled for the background, as a share of the short side (at least 1 pixel)
UNIFORM_SHARE = 0.75  # share of ring pixels that must match the background colour for it to count as plain
TOLERANCE = 30        # largest channel difference from the background still counted as background (JPEG noise)
# A product smaller than this share of the photo (after noise is smoothed away) is no product: keep the photo whole.
# Small, because a ring on a table or a light garment (only its outline and print differ from a light frame) at a
# third of a phone photo's width covers well under 1% of it.
MIN_PRODUCT = 0.001
# Part of a framed photo cache's key (data/cache.py): a change to what framing crops must not reuse old caches.
# 2: the product's size is counted after smoothing, against MIN_PRODUCT 0.001 instead of 0.01.
VERSION = 2
MARGIN = 0.02         # kept around the product's box, as a share of its size (at least 1 pixel)
# Kept around a small product cropped to (framing only when small), as a share of its size on each side: a studio
# shot, what the model learnt from, leaves about that much room around its product.
SMALL_MARGIN = 0.1
MASK_SIDE = 256       # the mask is computed on a copy no larger than this: big uploads stay cheap
# A background is a light, nearly neutral colour (white, grey or beige walls, sheets, paper). A border of strong or
# dark colour is more likely the product itself filling the frame, and cropping would cut it down to its print.
BACKGROUND_MIN_BRIGHTNESS = 110
BACKGROUND_MAX_CHROMA = 60


@dataclass(frozen=True)
class Framing:
    """Where the product is in a photo: box (left, top, right, bottom) in its pixels, and the background colour."""
    box: tuple[int, int, int, int]
    background: tuple[int, int, int]


def find_product(img: Image.Image) -> Framing | None:
    """The product's box against a plain background (RGB image), or None when the photo has no plain border or
    no clear product. PIL's C operations throughout: framing runs on every photo, and must cost little beside
    decoding it."""
    small = img if max(img.size) <= MASK_SIDE else img.copy()
    if small is not img:
        small.thumbnail((MASK_SIDE, MASK_SIDE), Image.BILINEAR)
    w, h = small.size
    r = max(1, round(RING * min(h, w)))
    if h <= 2 * r + 2 or w <= 2 * r + 2:
        return None
    ring, ring_pixels = _ring_mask(small.size, r)
    counts = np.asarray(small.histogram(ring)).reshape(3, 256).cumsum(1)
    background = tuple(int(np.searchsorted(c, ring_pixels / 2)) for c in counts)  # the ring's median colour
    if sum(background) / 3 < BACKGROUND_MIN_BRIGHTNESS or max(background) - min(background) > BACKGROUND_MAX_CHROMA:
        return None
    channels = ImageChops.difference(small, Image.new("RGB", small.size, background)).split()
    product = ImageChops.lighter(ImageChops.lighter(channels[0], channels[1]), channels[2]).point(_THRESHOLD)
    if product.histogram(ring)[255] > (1 - UNIFORM_SHARE) * ring_pixels:
        return None
    # Smoothed and thresholded again: single noisy pixels (JPEG ringing, dust) neither count as product nor stretch
    # the box.
    product = product.filter(ImageFilter.BoxBlur(1)).point(_MAJORITY)
    if product.histogram()[255] < MIN_PRODUCT * w * h:
        return None
    left, top, right, bottom = product.getbbox()
    my, mx = max(1, round(MARGIN * (bottom - top))), max(1, round(MARGIN * (right - left)))
    sx, sy = img.width / w, img.height / h
    box = (max(0, int((left - mx) * sx)), max(0, int((top - my) * sy)),
           min(img.width, int(np.ceil((right + mx) * sx))), min(img.height, int(np.ceil((bottom + my) * sy))))
    return Framing(box, background)


_THRESHOLD = [255 if v > TOLERANCE else 0 for v in range(256)]
_MAJORITY = [255 if v >= 255 * 5 / 9 - 1 else 0 for v in range(256)]  # most of the 9 pixels around are product


@lru_cache(maxsize=64)
def _ring_mask(size: tuple[int, int], r: int) -> tuple[Image.Image, int]:
    mask = Image.new("L", size, 255)
    mask.paste(0, (r, r, size[0] - r, size[1] - r))
    return mask, size[0] * size[1] - (size[0] - 2 * r) * (size[1] - 2 * r)


def check_framing(when) -> bool | float:
    """`when` as frame takes it (a bool, or a share above 0 and below 1), or ValueError."""
    if isinstance(when, bool) or (isinstance(when, (int, float)) and 0 < when < 1):
        return when
    raise ValueError(f"framing is true (always), false (never) or the share of the photo below which a product is "
                     f"cropped to (above 0 and below 1), got {when!r}")


def frame(img: Image.Image, when: bool | float = True) -> tuple[Image.Image, tuple[int, int, int] | None]:
    """The photo cropped to its product, and the background colour to pad it with (None: no plain background,
    the photo is returned whole).

    when: True crops every photo with a plain background; a share s crops only those whose product spans less
    than s of the photo both ways, widened by SMALL_MARGIN (the rest come back whole, with their background)."""
    found = find_product(img) if when else None
    if found is None:
        return img, None
    left, top, right, bottom = found.box
    if when is not True:
        if max((right - left) / img.width, (bottom - top) / img.height) >= when:
            return img, found.background
        mx, my = round(SMALL_MARGIN * (right - left)), round(SMALL_MARGIN * (bottom - top))
        left, top, right, bottom = max(0, left - mx), max(0, top - my), min(img.width, right + mx), \
            min(img.height, bottom + my)
    if (left, top, right, bottom) == (0, 0, img.width, img.height):
        return img, found.background
    return img.crop((left, top, right, bottom)), found.background
