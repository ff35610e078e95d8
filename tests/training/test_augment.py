"""Seller augmentations (issue 15): what they change, what they keep, and that they are reproducible."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fashiontag.data.photos import letterbox
from fashiontag.inference.engines import torch_input
from fashiontag.training.augment import _backgrounds, _weave, background_mask, seller_augment, studio_augment
from helpers import tiny_config


def photos(n=64) -> np.ndarray:
    """Studio shots: a dark product in the middle of white, with a white shirt-like patch inside it."""
    px = np.full((n, 80, 60, 3), 255, np.uint8)
    px[:, 15:65, 12:48] = (40, 60, 140)
    px[:, 30:40, 25:35] = 255  # white inside the product: not background
    return px


def test_background_mask_is_the_white_connected_to_the_border():
    mask = background_mask(photos(2))
    assert mask[0, 0, 0] == 1 and mask[0, 40, 30] == 0  # the corner is background; the shirt's white is not
    assert mask[0, 35, 30] == 0


def test_seller_augment_changes_framing_background_and_light_reproducibly():
    px = photos()
    x = torch_input(torch.from_numpy(px), torch.device("cpu"))
    a, ok_a = seller_augment(x, px, torch.Generator().manual_seed(1))
    b, ok_b = seller_augment(x, px, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(ok_a, ok_b)  # resume relies on it
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    corners = a[:, :, 0, 0]
    assert (corners < 0.9).any(1).float().mean() > 0.3  # many photos got another background (or light)
    assert 0.2 < ok_a.float().mean() < 0.95  # strong relighting drops some photos' colour labels, not most
    assert not torch.equal(studio_augment(x, torch.Generator().manual_seed(1)), a)


def test_seller_backgrounds_include_stripes_and_checks():
    """Issue 25: a striped bedspread cost 14-28 points of articleType while training drew only flat colours,
    gradients and noise. Stripes run across the photo at the drawn angle, checks cross them at a right angle."""
    h, w = 80, 60
    # angle 0, period 8, phase 0.25 of a turn, hard-edged: vertical stripes, every row the same
    r = torch.tensor([[0.0, 5 / 13, 0.25, 0.0, 0.0]] * 2)
    weave = _weave(r, torch.tensor([False, True]), h, w)
    stripes, checks = weave[0, 0], weave[1, 0]
    assert torch.equal(stripes, stripes[:1].expand(h, w)) and 0.4 < stripes.mean() < 0.6
    assert set(stripes.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(stripes[:, :8], stripes[:, 8:16])  # repeats every 8 pixels
    assert not torch.equal(checks, checks[:1].expand(h, w)) and set(checks.unique().tolist()) == {0.0, 0.5, 1.0}
    bg = _backgrounds(400, h, w, torch.Generator().manual_seed(0), "cpu")
    assert bg.shape == (400, 3, h, w) and 0 <= bg.min() and bg.max() <= 1
    # hard-edged stripes and checks: two or three colours with a visible step between them (noise has hundreds of
    # values, flat colours and gradients no step); a fifth of the draws or so
    steps = (bg[:, 0, :, 1:] - bg[:, 0, :, :-1]).abs().amax((1, 2)) > 0.05
    few = torch.tensor([len(b[0].unique()) <= 3 for b in bg])
    assert 0.1 < float((steps & few).float().mean()) < 0.4


def test_photos_outside_the_seller_share_keep_their_studio_background_and_light():
    px = photos(256)
    x = torch_input(torch.from_numpy(px), torch.device("cpu"))
    changed = {}
    for share in (0.25, 1.0):
        out, ok = seller_augment(x, px, torch.Generator().manual_seed(3), share=share)
        corners = out[:, :, :2, :2].amin((1, 2, 3))
        changed[share] = float((corners < 0.97).float().mean())
        if share < 1:
            assert ok.float().mean() > 1 - share * 0.4  # only seller-changed photos lose their colour label
    # A quarter changed: about a quarter of the corners leave the studio white, against most at share 1.
    assert changed[0.25] < 0.3 < 0.6 < changed[1.0]


@pytest.mark.slow
def test_the_seller_recipe_trains_a_model_that_frames_its_photos(catalog, tmp_path):
    from fashiontag.inference.tagger import Tagger
    from fashiontag.training.train import train
    best = train(tiny_config(catalog.root, tmp_path / "run", seller_augment=True, framing=0.6, epochs=12))
    meta = json.loads((best / "model.json").read_text())
    assert meta["preprocess"] == {"framing": 0.6} and meta["config"]["seller_augment"] is True
    assert meta["val_acc"]["articleType"] > 0.4  # drawn shapes are still learnt under the heavy augmentation
    tagger = Tagger.load(best)
    corner = np.full((300, 400, 3), 240, np.uint8)
    corner[10:90, 20:80] = photos(1)[0]  # a product small in a corner: every path prepares it cropped
    assert tagger.photo_input.framing == 0.6
    assert np.array_equal(tagger.prepare(corner), letterbox(Image.fromarray(corner), tagger.input_hw, 0.6))
    assert not np.array_equal(tagger.prepare(corner), letterbox(Image.fromarray(corner), tagger.input_hw))
    # fine-tuned from it, a model frames its photos as its start did unless told otherwise
    again = train(tiny_config(catalog.root, tmp_path / "again", init=str(best), epochs=1))
    assert json.loads((again / "model.json").read_text())["preprocess"] == {"framing": 0.6}
    other = train(tiny_config(catalog.root, tmp_path / "other", init=str(best), framing=False, epochs=1))
    assert json.loads((other / "model.json").read_text())["preprocess"] == {"framing": False}
