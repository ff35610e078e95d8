"""Known heads (issue 27): a shop whose columns rename and merge what the start model tags keeps that model's own
heads, frozen, as inputs to its heads; the model folder rebuilds them, ONNX exports them, and the taxonomy map says
which known task each shop column came from."""

import csv

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

import fashiontag.training.train as train_module
from fashiontag.inference.onnx_export import export_onnx
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import load_meta
from fashiontag.models import KnownHeads
from fashiontag.models.checkpoint import load_model
from fashiontag.training.evaluate import evaluate
from fashiontag.training.train import known_args, training_data
from helpers import tiny_config

# The shop's words for the synthetic Kaggle-like catalog's: renamed, lower-cased, two colours merged. (Not gender:
# the tiny start model has not learnt it.)
MERGED = {"red": "warm", "green": "warm"}
SHOP = {"id_column": "sku", "image_column": "photo", "title_column": "", "tasks": ("department", "colour"),
        "image_size": "80x60", "epochs": 6}


@pytest.fixture(scope="module")
def shop(catalog, tmp_path_factory):
    """The synthetic catalog's good products as a shop's CSV: masterCategory -> department, baseColour -> colour."""
    path = tmp_path_factory.mktemp("renamed") / "shop.csv"
    with (catalog.root / "styles.csv").open(newline="") as f:
        good = {str(i) for i in catalog.good_ids}
        rows = [r for r in csv.DictReader(f) if r["id"] in good]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sku", "photo", "department", "colour"])
        for r in rows:
            colour = r["baseColour"].lower()
            w.writerow([f"SKU-{r['id']}", str(catalog.root / "images" / f"{r['id']}.jpg"), r["masterCategory"].lower(),
                        MERGED.get(colour, colour)])
    return path


@pytest.fixture(scope="module")
def with_known(shop, trained, tmp_path_factory):
    # The tiny model trained on the synthetic Kaggle-like catalog stands in for the shipped one.
    patch = pytest.MonkeyPatch()
    patch.setattr(train_module, "DEFAULT_MODEL_DIR", trained)
    try:
        yield train_module.train(tiny_config(shop, tmp_path_factory.mktemp("known"), start="shipped", **SHOP))
    finally:
        patch.undo()


def test_the_start_models_heads_come_along_frozen(with_known, trained):
    known = load_meta(with_known)["arch_args"]["known"]
    start = load_meta(trained)
    assert known["tasks"] == {t: len(v) for t, v in start["vocabs"].items()}
    assert known["temperatures"] == start["temperatures"]
    after, before = load_file(str(with_known / "model.safetensors")), load_file(str(trained / "model.safetensors"))
    for t in start["vocabs"]:
        for p in ("weight", "bias"):
            assert torch.equal(after[f"known.{t}.{p}"], before[f"heads.heads.{t}.{p}"]), (t, p)
    # ... while the maps from them learnt something, each from the known task its taxonomy map names
    assert any(after[f"maps.{t}.weight"].abs().sum() > 0 for t in SHOP["tasks"])
    assert known["reads"]["colour"] == ["baseColour"]
    assert after["maps.colour.weight"].shape[1] == len(start["vocabs"]["baseColour"])


def test_a_model_whose_maps_read_every_known_task_still_loads(trained):
    """Shop models saved before `reads` have maps over every known task side by side."""
    from fashiontag.models import create_model
    start = load_meta(trained)
    known = {"tasks": {t: len(v) for t, v in start["vocabs"].items()}, "temperatures": start["temperatures"]}
    model = create_model(start["arch"], {"colour": 3}, (80, 60), **start["arch_args"], known=known)
    assert model.maps["colour"].weight.shape == (3, sum(known["tasks"].values()))
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 80, 60))["colour"].shape == (2, 3)


def test_the_taxonomy_map_names_the_known_task_each_column_came_from(with_known):
    tmap = load_meta(with_known)["taxonomy_map"]
    assert tmap["colour"]["known_task"] == "baseColour"
    # department is masterCategory renamed; the start model's subCategory, one per masterCategory here, explains it
    # as well: either names footwear by what the start model calls it
    assert tmap["department"]["known_task"] in ("masterCategory", "subCategory")
    assert tmap["department"]["classes"]["footwear"] in (["Footwear"], ["Shoes"])
    assert set(tmap["colour"]["classes"]["warm"]) == {"Red", "Green"}  # a merge lists both
    assert 0 < tmap["colour"]["score"] <= 1


def test_the_model_card_shows_the_taxonomy_map(with_known, shop, tmp_path):
    evaluate(shop, model=with_known, out=tmp_path, progress=False, plot=False)
    card = (tmp_path / "report.md").read_text()
    assert "## Taxonomy map" in card and "| colour | baseColour |" in card
    assert "warm = Red + Green" in card or "warm = Green + Red" in card


def test_the_folder_reloads_and_exports_to_onnx_with_the_same_outputs(with_known, tmp_path):
    model, meta = load_model(with_known)
    assert isinstance(model, KnownHeads)
    assert Tagger.load(with_known).tasks == list(SHOP["tasks"])
    x = np.random.default_rng(0).random((4, 3, 80, 60), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x))
    session = ort.InferenceSession(str(export_onnx(with_known, out=tmp_path / "m.onnx")),
                                   providers=["CPUExecutionProvider"])
    got = session.run(list(meta["vocabs"]), {"image": x})
    for t, v in zip(meta["vocabs"], got):
        np.testing.assert_allclose(v, expected[t].numpy(), atol=1e-4)


def test_known_heads_come_only_where_the_tasks_differ_and_can_be_turned_off(shop, trained, tmp_path):
    cfg = tiny_config(shop, tmp_path, init=str(trained), **SHOP)
    data, _ = training_data(cfg, None, progress=False).with_start_vocabs(load_meta(trained)["vocabs"])
    assert "known" in known_args(cfg, data, ["department", "colour"], resume=False, main=False)
    assert "known" not in known_args(cfg.override(known_heads=False), data, ["department"], resume=False, main=False)
    assert "known" not in known_args(cfg, data, [], resume=False, main=False)  # fine-tuning on the start's tasks


def test_start_heads_that_do_not_fit_the_trunk_are_one_clear_error(trained):
    from fashiontag.models import create_model
    start = load_meta(trained)
    known = {"tasks": {t: len(v) for t, v in start["vocabs"].items()}, "temperatures": start["temperatures"]}
    model = create_model("seed-cnn", {"colour": 3}, (80, 60), known=known)  # other features than the start's trunk
    with pytest.raises(ValueError, match="do not fit this model's features"):
        model.load_known(load_file(str(trained / "model.safetensors")))


def test_freeze_trunk_keeps_the_start_models_features_and_trains_the_heads(shop, trained, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "DEFAULT_MODEL_DIR", trained)
    best = train_module.train(tiny_config(shop, tmp_path, start="shipped", freeze_trunk=True, **SHOP))
    after, before = load_file(str(best / "model.safetensors")), load_file(str(trained / "model.safetensors"))
    trunk = [k for k in before if k.startswith("trunk.") and "num_batches_tracked" not in k]
    assert trunk and all(torch.equal(after[f"inner.{k}"], before[k]) for k in trunk)  # running stats too: eval mode
    assert any(after[f"maps.{t}.weight"].abs().sum() > 0 for t in SHOP["tasks"])
