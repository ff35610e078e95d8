"""Catalog audit of a multi-label task (issue 24): each class is a label of its own (the product has it or not), and
classes planted wrong come out on top, on the sides the model never saw and, cross-fitted, on its training side."""

import json

import numpy as np
import pytest

from fashiontag.training.audit import audit
from fashiontag.training.train import train
from helpers import tiny_config
from shop import make_shop_catalog

FLIPS_PER_SIDE = 3
OCCASION = 7  # its column in shop.csv


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A shop model trained on its catalog, and a copy of that catalog with `party` (which follows red) added to or
    taken from the occasion cell of FLIPS_PER_SIDE products on each side; returns (model, catalog file, {sku:
    (planted cell, original cell)})."""
    shop = make_shop_catalog(tmp_path_factory.mktemp("shop"), n=240)
    model = train(tiny_config(shop.file, tmp_path_factory.mktemp("shoprun"), id_column="sku", image_column="photo",
                              title_column="title", tasks=("colour", "pattern", "occasion"), epochs=16))
    split = json.loads((model / "split.json").read_text())
    rng = np.random.default_rng(0)
    picked = [sku for sides in (("train",), ("val", "test"))
              for sku in rng.choice(sorted(s for side in sides for s in split[side]), FLIPS_PER_SIDE, replace=False)]
    root = tmp_path_factory.mktemp("planted")
    (root / "photos").symlink_to(shop.file.parent / "photos")
    lines = shop.file.read_text().splitlines()
    changes = {}
    for k, line in enumerate(lines[1:], 1):
        cells = line.split(",")
        if cells[0] in picked:
            values = cells[OCCASION].split("|")
            cell = "|".join([v for v in values if v != "party"] if "party" in values else values + ["party"])
            changes[cells[0]] = (cell, cells[OCCASION])
            cells[OCCASION] = cell
            lines[k] = ",".join(cells)
    (root / "shop.csv").write_text("\n".join(lines) + "\n")
    return model, root / "shop.csv", changes


def test_each_class_is_scored_and_the_planted_classes_rank_first(planted):
    model, data, changes = planted
    result = audit(data, model=model, tasks=("occasion",), side="all", progress=False)
    s = result.scores["occasion"]
    vocab = json.loads((model / "model.json").read_text())["vocabs"]["occasion"]
    party = s.classes == vocab.index("party")
    assert len(s.score) == len(vocab) * len(set(s.rows.tolist()))  # every product scored once per class
    ranked = [result.ids[r] for r in s.rows[party][np.argsort(-s.score[party], kind="stable")]]
    assert set(changes) <= set(ranked[:2 * len(changes)]), (ranked[:2 * len(changes)], changes)
    flags = {f.id: f for f in result.flags}
    for sku, (cell, original) in changes.items():
        assert flags[sku].task == "occasion" and flags[sku].catalog_label == cell
        assert set(flags[sku].suggested_label.split("|")) == set(original.split("|"))
    assert result.crossfit is not None and "occasion: multi-label" in result.notes[0]
    assert "occasion" in result.to_markdown()
