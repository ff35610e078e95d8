"""A shop's own catalog starts from what fashiontag already knows: the shipped model's trunk, fresh heads for the
shop's own tasks and classes (issue 27)."""

import json

import pytest
from typer.testing import CliRunner

import fashiontag.training.train as train_module
from fashiontag.cli import app
from fashiontag.inference.tagger import Tag
from fashiontag.model_folder import DEFAULT_MODEL_DIR, load_meta
from fashiontag.training.config import TrainConfig
from fashiontag.training.evaluate import evaluate
from fashiontag.training.train import starting_point
from helpers import tiny_config
from shop import make_shop_catalog

SHOP = dict(id_column="sku", image_column="photo", title_column="", tasks=("department", "category", "colour"),
            image_size="80x60", epochs=8)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop_catalog(tmp_path_factory.mktemp("fewshot"), n=200)


def test_a_shop_started_from_the_shipped_model_beats_the_same_recipe_from_scratch(shop, trained, tmp_path,
                                                                                 monkeypatch, capsys):
    # The tiny model trained on the synthetic Kaggle-like catalog stands in for the shipped one.
    monkeypatch.setattr(train_module, "DEFAULT_MODEL_DIR", trained)
    accuracy = {}
    for start in ("scratch", "shipped"):
        best = train_module.train(tiny_config(shop.file, tmp_path / start, start=start, **SHOP))
        meta = load_meta(best)
        assert set(meta["vocabs"]) == set(SHOP["tasks"])  # the shop's own tasks and classes, not the start's
        summary = evaluate(shop.file, model=best, out=tmp_path / f"report-{start}", progress=False, plot=False)
        accuracy[start] = {t: m["accuracy"] for t, m in summary["tasks"].items()}
    assert "started from" in capsys.readouterr().out
    assert accuracy["shipped"]["category"] >= accuracy["scratch"]["category"] + 0.1, accuracy


def test_each_starting_point_is_chosen_or_refused_clearly(shop, catalog, trained, monkeypatch):
    def start(**fields) -> TrainConfig:
        return starting_point(TrainConfig(**fields))[0]

    shipped_args = {"width": 32, "stem_stride": 2}
    # auto: the shipped model for a shop's catalog, random weights for the Kaggle layout it was trained on
    assert start(data=str(shop.file), model_args=shipped_args).init == str(DEFAULT_MODEL_DIR)
    assert start(data=str(catalog.root), model_args=shipped_args).init == ""
    assert start(data=str(shop.file), model_args={"width": 8}).init == ""  # a trunk it does not fit
    assert start(data=str(catalog.root), start="shipped", model_args=shipped_args).init == str(DEFAULT_MODEL_DIR)
    assert start(data=str(shop.file), start="scratch", model_args=shipped_args).init == ""
    with pytest.raises(ValueError, match="does not fit"):
        start(data=str(shop.file), start="shipped", model_args={"width": 8})
    with pytest.raises(ValueError, match="takes 80x60 photos"):
        start(data=str(shop.file), start="shipped", model_args=shipped_args, image_size="160x120")
    with pytest.raises(ValueError, match="--model efficientnet-lite0"):
        start(data=str(shop.file), start="imagenet")
    assert start(data=str(shop.file), start="imagenet", model="efficientnet-lite0").pretrained
    with pytest.raises(ValueError, match="start: 'nowhere'"):
        TrainConfig(start="nowhere")
    # --from on the command line: a name, or a model folder to fine-tune; a folder of another family: one error
    result = CliRunner().invoke(app, ["train", "--data", str(shop.file), "--id-column", "sku", "--image-column",
                                      "photo", "--tasks", "department,category", "--from", str(trained),
                                      "--model", "seed-cnn", "--epochs", "1", "--no-progress"])
    assert result.exit_code == 2 and "tensors match its weights" in result.output, result.output


def test_a_fine_tuning_keeps_the_start_models_classes_where_they_cover_the_catalogs(catalog, trained, tmp_path):
    from fashiontag.training.train import training_data
    data = training_data(tiny_config(catalog.root, tmp_path, init=str(trained)), None, progress=False)
    start = load_meta(trained)["vocabs"]
    narrowed = {t: v[:2] for t, v in start.items()}  # a start model that knows only two classes of each task
    kept_all, kept = data.with_start_vocabs(start)
    assert kept == list(data.vocabs) and kept_all.vocabs == start
    fresh, kept = data.with_start_vocabs(narrowed)
    assert kept == [t for t, v in data.vocabs.items() if set(v) <= set(narrowed[t])]
    assert fresh.vocabs["articleType"] == data.vocabs["articleType"]


def test_the_pooled_other_class_always_needs_review():
    assert Tag("Other", 0.99, threshold=0.5).needs_review and not Tag("Shirts", 0.99, threshold=0.5).needs_review
    assert json.dumps(Tag("Other", 0.99, threshold=0.5).to_dict())  # still a plain JSON tag


def test_the_review_queue_holds_other_for_a_person_too(tmp_path):
    from fashiontag.review.store import ReviewStore
    store = ReviewStore(f"sqlite:///{tmp_path / 'q.db'}")
    tag = {"confidence": 0.99, "runners_up": [], "threshold": 0.5}
    store.add_photos([{"path": str(tmp_path / "a.jpg"), "item_id": "a", "error": "",
                       "tags": {"category": {**tag, "label": "Other"}, "colour": {**tag, "label": "navy"}}}])
    statuses = {task: t["status"] for task, t in store.photos()[0]["tags"].items()}
    assert statuses == {"category": "needs_review", "colour": "auto"}


def test_min_count_follows_where_the_run_starts(shop, catalog, trained, tmp_path):
    from fashiontag.training.train import MIN_COUNT, MIN_COUNT_TRANSFER, min_count_for
    plain = TrainConfig(data=str(shop.file), out=str(tmp_path), min_count=None)
    assert min_count_for(plain)[0].min_count == MIN_COUNT
    # a shop started from the shipped model keeps a class with a handful of photos, and says so
    cfg, note = min_count_for(plain.override(init=str(trained), start="shipped"))
    assert cfg.min_count == MIN_COUNT_TRANSFER and "min_count 3" in note
    # fine-tuning keeps the start model's classes: its min_count
    tuned = TrainConfig(data=str(catalog.root), out=str(tmp_path), min_count=None, init=str(trained))
    assert min_count_for(tuned)[0].min_count == load_meta(trained)["config"]["min_count"] == 2
    assert TrainConfig(data="x", min_count=7).min_count == 7  # given, it is kept


def test_the_trunk_is_frozen_for_a_small_shop_started_from_the_shipped_model(tmp_path):
    from fashiontag.training.train import FREEZE_BELOW, freeze_for
    shop = TrainConfig(data="shop.csv", out=str(tmp_path), start="shipped", init="m",
                       model_args={"known": {"tasks": {}}})
    assert freeze_for(shop, 700, main=False)
    assert not freeze_for(shop, FREEZE_BELOW, main=False)  # enough photos to fine-tune the whole network
    assert not freeze_for(shop.override(model_args={}), 700, main=False)  # no known heads (known_heads=false)
    assert not freeze_for(shop.override(start="scratch", init=""), 700, main=False)
