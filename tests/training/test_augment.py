"""Seller augmentations (issue 15): what they change, what they keep, and that they are reproducible."""

import json

import numpy as np
import pytest
import torch

from fashiontag.inference.engines import torch_input
from fashiontag.training.augment import background_mask, seller_augment, studio_augment
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
    best = train(tiny_config(catalog.root, tmp_path / "run", seller_augment=True, framing=True, epochs=8))
    meta = json.loads((best / "model.json").read_text())
    assert meta["preprocess"] == {"framing": True} and meta["config"]["seller_augment"] is True
    assert meta["val_acc"]["articleType"] > 0.4  # drawn shapes are still learnt under the heavy augmentation
    assert Tagger.load(best).photo_input.framing
