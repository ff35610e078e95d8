"""Dominant product colours with the studio background removed, and colour classes learnt from labelled photos."""

import numpy as np

from fashiontag.data.colours import (
    colour_centroids,
    colour_features,
    dominant_colours,
    hex_to_rgb,
    nearest_class,
    product_masks,
    rgb_to_lab,
)

RED, BLUE, WHITE = (200, 20, 30), (20, 30, 190), (248, 248, 246)


def _shirt(colour=RED, print_colour=BLUE, background=WHITE):
    """A 40x30 shirt on an 80x60 studio photo, a sixth of it covered by a print."""
    photo = np.empty((80, 60, 3), np.uint8)
    photo[:] = background
    photo[20:60, 15:45] = colour
    photo[30:40, 20:40] = print_colour
    return photo


def _close(hex_colour, rgb, tol=8):
    return np.abs(hex_to_rgb(hex_colour).astype(int) - rgb).max() <= tol


def test_red_shirt_on_white_is_red_with_its_share_of_the_product():
    colours = dominant_colours(_shirt())
    assert _close(colours[0][0], RED) and abs(colours[0][1] - 1000 / 1200) < 0.02
    assert _close(colours[1][0], BLUE) and abs(colours[1][1] - 200 / 1200) < 0.02
    assert abs(sum(s for _, s in colours) - 1) < 1e-5


def test_photo_without_background_is_all_product():
    photo = np.empty((80, 60, 3), np.uint8)
    photo[:, :20], photo[:, 20:] = BLUE, (240, 230, 40)   # fills the frame: the border is not plain
    assert product_masks(photo[None]).all()
    colours = dominant_colours(photo)
    assert _close(colours[0][0], (240, 230, 40)) and abs(colours[0][1] - 2 / 3) < 0.02


def test_plain_product_is_one_colour_not_three_shades():
    photo = _shirt(print_colour=RED)
    photo[20:60, 15:45] += np.random.default_rng(0).integers(0, 6, (40, 30, 3), dtype=np.uint8)  # JPEG-like noise
    (hex_colour, share), = dominant_colours(photo)
    assert _close(hex_colour, RED) and share > 0.99


def test_features_and_centroids_give_nearest_class():
    photos = np.stack([_shirt(c, c) for c in (RED, RED, BLUE, BLUE, (30, 30, 30))])
    feats = colour_features(photos)
    assert feats.shape == (5, 12) and feats.dtype == np.float32
    centroids = colour_centroids(photos, ["Red", "Red", "Blue", "Blue", ""])   # "" (unknown) is skipped
    assert sorted(centroids) == ["Blue", "Red"]
    assert nearest_class("#c0182a", centroids) == "Red"
    assert nearest_class(rgb_to_lab(np.array(BLUE, np.uint8)), centroids) == "Blue"
