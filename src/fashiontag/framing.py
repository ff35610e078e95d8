"""Framing normalisation: find the product against a plain background and crop to it, so that a seller's photo
(product small in a large frame, off-centre, on a grey wall) reaches the model framed like a studio shot.

The background colour is estimated from the photo's border; pixels that differ from it by more than a tolerance
are the product. A photo whose border is not one plain colour (a bedspread, a busy room) has no clear background:
it is left whole. A studio shot, whose product already spans the frame in one direction, comes out as it went in.
Training and inference both decode photos through images.decode, so both see the same framing (models record
whether they were trained with it: model.json's preprocess.framing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

RING = 0.04           # border ring sampled for the background, as a share of the short side (at least 1 pixel)
UNIFORM_SHARE = 0.75  # share of ring pixels that must match the background colour for it to count as plain
TOLERANCE = 30        # largest channel difference from the background still counted as background (JPEG noise)
MIN_PRODUCT = 0.01    # a product smaller than this share of the photo is more likely noise: keep the photo whole
MARGIN = 0.02         # kept around the product's box, as a share of its size (at least 1 pixel)
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
    no clear product."""
    small = img if max(img.size) <= MASK_SIDE else img.copy()
    if small is not img:
        small.thumbnail((MASK_SIDE, MASK_SIDE), Image.BILINEAR)
    a = np.asarray(small, dtype=np.int16)
    h, w, _ = a.shape
    r = max(1, round(RING * min(h, w)))
    if h <= 2 * r or w <= 2 * r:
        return None
    ring = np.concatenate([a[:r].reshape(-1, 3), a[-r:].reshape(-1, 3),
                           a[r:-r, :r].reshape(-1, 3), a[r:-r, -r:].reshape(-1, 3)])
    background = np.median(ring, axis=0)
    if (_distance(ring, background) <= TOLERANCE).mean() < UNIFORM_SHARE:
        return None
    if background.mean() < BACKGROUND_MIN_BRIGHTNESS or np.ptp(background) > BACKGROUND_MAX_CHROMA:
        return None
    product = _distance(a, background) > TOLERANCE
    # A row or column belongs to the product where enough of its pixels do: single noisy pixels do not count.
    rows = np.flatnonzero(product.sum(1) > max(1, 0.01 * w))
    cols = np.flatnonzero(product.sum(0) > max(1, 0.01 * h))
    if len(rows) == 0 or len(cols) == 0 or product.sum() < MIN_PRODUCT * h * w:
        return None
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    my, mx = max(1, round(MARGIN * (bottom - top))), max(1, round(MARGIN * (right - left)))
    sx, sy = img.width / w, img.height / h
    box = (max(0, int((left - mx) * sx)), max(0, int((top - my) * sy)),
           min(img.width, int(np.ceil((right + mx) * sx))), min(img.height, int(np.ceil((bottom + my) * sy))))
    return Framing(box, tuple(int(round(c)) for c in background))


def _distance(pixels: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Largest channel difference from colour, per pixel (numpy's max over a last axis of 3 is slow)."""
    d = np.abs(pixels - colour.astype(np.int16))
    return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])


def frame(img: Image.Image) -> tuple[Image.Image, tuple[int, int, int] | None]:
    """The photo cropped to its product, and the background colour to pad it with (None: no plain background,
    the photo is returned whole)."""
    found = find_product(img)
    if found is None:
        return img, None
    if found.box == (0, 0, img.width, img.height):
        return img, found.background
    return img.crop(found.box), found.background
