"""Framing normalisation (issue 15): studio shots stay as they are; padded, shifted and grey-background photos
are cropped to the product; photos without a plain background are left whole."""

import numpy as np
import pytest
from PIL import Image

from fashiontag.data.framing import check_framing, find_product
from fashiontag.data.photos import letterbox


def studio_shot(h=80, w=60, top=0, bottom=80, left=12, right=48, background=255) -> np.ndarray:
    """A product (a textured dark-red block with a stripe) on a plain background, as the catalog shoots it."""
    img = np.full((h, w, 3), background, np.uint8)
    rng = np.random.default_rng(0)
    product = np.zeros((bottom - top, right - left, 3), np.uint8)
    product[:] = (150, 20, 30)
    product += rng.integers(0, 25, product.shape, dtype=np.uint8)
    product[(bottom - top) // 3:(bottom - top) // 3 + 4] = (240, 200, 60)
    img[top:bottom, left:right] = product
    return img


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def product_box(img: np.ndarray) -> np.ndarray:
    """Rows and columns where the (dark red) product is, in a letterboxed photo: top, bottom, left, right."""
    rows, cols = np.flatnonzero((img[..., 1] < 120).any(1)), np.flatnonzero((img[..., 1] < 120).any(0))
    return np.array([rows[0], rows[-1], cols[0], cols[-1]])


def test_a_studio_shot_comes_out_as_it_went_in():
    shot = studio_shot()
    framed = letterbox(Image.fromarray(shot), framing=True)
    assert diff(framed, shot) < 1.0


@pytest.mark.parametrize("case", ["padded to a square", "padded a lot", "shifted to a corner", "grey background"])
def test_seller_framing_is_cropped_back_to_the_product(case):
    shot = studio_shot()
    want = letterbox(Image.fromarray(shot), framing=True)
    if case.startswith("padded"):
        side = 80 if case == "padded to a square" else 240
        canvas = np.full((side, side, 3), 255, np.uint8)
        canvas[(side - 80) // 2:(side + 80) // 2, (side - 60) // 2:(side + 60) // 2] = shot
        photo = canvas
    elif case == "shifted to a corner":
        photo = np.full((300, 400, 3), 255, np.uint8)
        photo[10:90, 330:390] = shot
    else:
        photo = studio_shot(background=185)
    plain, framed = letterbox(Image.fromarray(photo)), letterbox(Image.fromarray(photo), framing=True)
    if case != "grey background":
        assert np.abs(product_box(plain) - product_box(want)).max() > 8  # without framing: small or elsewhere
    # framed, the product fills the photo as in the studio shot (the margin kept around it costs a pixel or two)
    assert np.abs(product_box(framed) - product_box(want)).max() <= 3


def test_grey_background_is_found_and_used_for_padding():
    photo = np.full((400, 400, 3), 190, np.uint8)
    photo[100:300, 150:250] = (30, 60, 150)
    found = find_product(Image.fromarray(photo))
    assert found is not None and found.background == (190, 190, 190)
    left, top, right, bottom = found.box
    assert 140 <= left <= 150 and 90 <= top <= 100 and 250 <= right <= 260 and 300 <= bottom <= 310
    framed = letterbox(Image.fromarray(photo), framing=True)
    assert tuple(framed[0, 0]) == (190, 190, 190)  # padded with the photo's own background, not white


@pytest.mark.parametrize("case", ["busy background", "blank photo", "product fills the photo"])
def test_photos_without_a_clear_product_are_left_whole(case):
    rng = np.random.default_rng(1)
    if case == "busy background":
        photo = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    elif case == "blank photo":
        photo = np.full((80, 60, 3), 255, np.uint8)
    else:
        photo = studio_shot(left=0, right=60)
    found = find_product(Image.fromarray(photo))
    assert found is None or found.box == (0, 0, photo.shape[1], photo.shape[0])
    assert diff(letterbox(Image.fromarray(photo), framing=True), letterbox(Image.fromarray(photo))) < 1.0


def test_framing_only_when_small_crops_a_small_product_and_leaves_a_studio_shot_whole():
    """framing=share: the product small in a corner of a phone photo is cropped to, with SMALL_MARGIN around it;
    a product spanning the share or more of the photo in one direction (every studio shot) is not touched."""
    shot = studio_shot()
    corner = np.full((300, 400, 3), 240, np.uint8)
    corner[10:90, 20:80] = shot  # spans 27% of the height, 15% of the width
    framed = letterbox(Image.fromarray(corner), framing=0.6)
    box = product_box(framed)
    assert box[1] - box[0] >= 50  # cropped: the product is 80 rows tall in an 80-row photo, less its margin
    assert box[1] - box[0] < product_box(letterbox(Image.fromarray(corner), framing=True))[1] - \
        product_box(letterbox(Image.fromarray(corner), framing=True))[0]  # the wider margin of a small product
    assert tuple(framed[0, 0]) == (240, 240, 240)
    assert diff(letterbox(Image.fromarray(shot), framing=0.6), letterbox(Image.fromarray(shot))) == 0
    half = np.full((100, 100, 3), 255, np.uint8)
    half[20:85, 30:70] = shot[::1, 10:50][:65]  # spans 65% of the height: at or above the share, whole
    assert diff(letterbox(Image.fromarray(half), framing=0.6), letterbox(Image.fromarray(half))) == 0
    assert diff(letterbox(Image.fromarray(half), framing=0.7), letterbox(Image.fromarray(half))) > 5


@pytest.mark.parametrize("when", [0, 1, 1.5, -0.2, "yes", None])
def test_framing_other_than_a_bool_or_a_share_is_refused(when):
    with pytest.raises(ValueError, match="framing is true"):
        check_framing(when)


def test_a_product_covering_well_under_one_percent_of_a_phone_photo_is_found_and_specks_are_not():
    """A ring on a table, or a light garment whose outline alone stands out, at a third of a phone photo's width:
    0.25% of the photo (framing used to keep anything under 1% whole). Dust and JPEG specks over as much of the
    photo are smoothed away first, so they are no product."""
    photo = np.full((300, 400, 3), 240, np.uint8)
    photo[40:60, 50:65] = (170, 160, 150)
    found = find_product(Image.fromarray(photo))
    assert found is not None
    left, top, right, bottom = found.box
    assert 44 <= left <= 50 and 34 <= top <= 40 and 65 <= right <= 71 and 60 <= bottom <= 66
    framed = letterbox(Image.fromarray(photo), framing=0.6)
    assert (framed[..., 0] < 200).mean() > 0.3  # cropped to: the product fills the model's photo
    specks = np.full((300, 400, 3), 240, np.uint8)
    rng = np.random.default_rng(2)
    specks[rng.integers(10, 290, 300), rng.integers(10, 390, 300)] = (120, 120, 120)  # 0.25% of the pixels
    assert find_product(Image.fromarray(specks)) is None
