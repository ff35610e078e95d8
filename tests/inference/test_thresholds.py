"""Auto-accept thresholds: chosen where the answer is known, stored in model.json by training and by
`fashiontag calibrate`, and used by tagging as its default review rule."""

import json
import shutil

import numpy as np
import pytest

from fashiontag import Tagger
from fashiontag.inference.predict import predict
from fashiontag.inference.thresholds import (
    PROMISE_Z,
    UNREACHABLE,
    at_threshold,
    choose_threshold,
    coverage_table,
    precision_lower_bound,
)
from fashiontag.training.calibrate import calibrate
from fashiontag.training.config import TrainConfig
from helpers import tiny_config


def test_the_lowest_threshold_that_reaches_the_target_is_chosen():
    conf = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5])
    correct = np.array([1, 1, 1, 1, 1, 0, 1, 0], bool)
    strict = choose_threshold(conf, correct, 1.0)
    assert strict["threshold"] == 0.75 and strict["coverage"] == 5 / 8 and strict["precision"] == 1.0
    # Precision dips below the target at 0.7 and comes back at 0.6 (6 of 7): the larger set is taken.
    loose = choose_threshold(conf, correct, 0.8)
    assert loose["threshold"] == 0.6 and loose["coverage"] == 7 / 8
    assert choose_threshold(conf, correct, 0.5)["threshold"] == 0.5
    table = coverage_table(conf, correct, (0.8, 1.0))
    assert table["0.80"]["coverage"] == 7 / 8 and table["1.00"]["coverage"] == 5 / 8


def test_equal_confidences_are_accepted_together_and_an_unreachable_target_accepts_nothing():
    conf = np.array([0.9, 0.9, 0.8])
    correct = np.array([True, False, True])
    refused = choose_threshold(conf, correct, 1.0)
    assert refused["threshold"] == UNREACHABLE and refused["coverage"] == 0.0 and refused["precision"] is None
    assert "0.667, below 1.0" in refused["why"]
    assert choose_threshold(conf, correct, 0.6)["threshold"] == 0.8
    assert choose_threshold(np.array([]), np.array([], bool), 0.9)["coverage"] == 0.0
    assert at_threshold(conf, correct, 0.85) == {"threshold": 0.85, "coverage": 2 / 3, "precision": 0.5}


def test_random_scores_meet_the_target_on_the_photos_they_were_chosen_on():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 5000)
    correct = rng.uniform(0, 1, 5000) < conf  # calibrated: right with probability = confidence
    for target in (0.9, 0.95, 0.98):
        c = choose_threshold(conf, correct, target)
        accepted = conf >= c["threshold"]
        assert correct[accepted].mean() >= target and c["coverage"] == accepted.mean()
        # one photo more (the next lower confidence) would fall below the target, unless all are taken
        lower = conf < c["threshold"]
        if lower.any():
            assert correct[conf >= conf[lower].max()].mean() < target
        # with calibrated scores the threshold sits near 2 * target - 1 (precision of U(t, 1) is (1 + t) / 2)
        assert abs(c["threshold"] - (2 * target - 1)) < 0.05


def test_a_threshold_promises_its_precision_on_new_photos_not_only_on_the_ones_it_was_chosen_on():
    """Calibrated scores whose true precision is known: accepting confidence >= t is right (1 + t) / 2 of the time.
    Chosen on 1,000 validation photos, the measured precision's threshold misses a 95% target on new photos in
    about half of the draws; the lower bound's keeps it in about 95% of them, and accepts less."""
    rng = np.random.default_rng(1)
    kept = {0.0: 0, PROMISE_Z: 0}
    for _ in range(100):
        conf = rng.uniform(0, 1, 1000)
        correct = rng.uniform(0, 1, 1000) < conf
        chosen = {z: choose_threshold(conf, correct, 0.95, z) for z in kept}
        for z, c in chosen.items():
            kept[z] += (1 + c["threshold"]) / 2 >= 0.95
        assert chosen[PROMISE_Z]["threshold"] >= chosen[0.0]["threshold"]
        assert chosen[PROMISE_Z]["threshold"] == UNREACHABLE or chosen[PROMISE_Z]["lower"] >= 0.95
    assert kept[PROMISE_Z] >= 90 and kept[0.0] <= 60
    # too few photos to show 98%: nothing accepted, and the record says why
    few = choose_threshold(np.full(50, 0.99), np.ones(50, bool), 0.98, PROMISE_Z)
    assert few["threshold"] == UNREACHABLE and "50 validation photos" in few["why"]
    assert precision_lower_bound(99, 100, 0.0) == pytest.approx(0.99)


def test_precision_targets_are_checked_in_the_config():
    with pytest.raises(ValueError, match="task_precision: colour"):
        TrainConfig(tasks=("gender",), task_precision={"colour": 0.9})
    with pytest.raises(ValueError, match="gender is 1.5"):
        TrainConfig(task_precision={"gender": 1.5})


def test_training_stores_thresholds_that_tagging_uses_by_default(trained, catalog, tmp_path):
    meta = json.loads((trained / "model.json").read_text())
    tasks = list(meta["vocabs"])
    assert set(meta["thresholds"]) == set(tasks) and meta["threshold_precision"] == dict.fromkeys(tasks, 0.98)
    for t, c in meta["thresholds_val"].items():
        assert c["threshold"] == meta["thresholds"][t] and (c["precision"] is None or c["precision"] >= 0.98)
    tagger = Tagger.load(trained)
    photos = sorted((catalog.root / "images").glob("1*.jpg"))[:60]
    results = tagger(photos, top_k=2)
    for r in results:
        for t, tag in r.tags.items():
            assert tag.threshold == meta["thresholds"][t]
            assert tag.needs_review == (tag.confidence < meta["thresholds"][t])
            assert r.to_dict()["tags"][t]["status"] == ("needs_review" if tag.needs_review else "auto")
    # --min-confidence still overrides; 0 flags nothing
    assert not any(tag.needs_review for r in tagger(photos, min_confidence=0.0) for tag in r.tags.values())
    predict([str(p) for p in photos], out=str(tmp_path / "tags.csv"), model=str(trained))
    header = (tmp_path / "tags.csv").read_text().splitlines()[0].split(",")
    assert "gender_needs_review" in header


@pytest.fixture(scope="module", params=[False, True], ids=["fp32", "bf16"])
def trained_at_precision(request, catalog, tmp_path_factory):
    """A model trained, calibrated and then re-calibrated with bf16 forced off or on (CPUs differ: with AVX-512
    torch computes in bf16 by default, without it in fp32), so both machines' paths are tested on either."""
    from fashiontag.training.train import train
    with pytest.MonkeyPatch.context() as mp:
        for where in ("fashiontag.inference.engines.bf16_supported", "fashiontag.training.train.bf16_supported"):
            mp.setattr(where, lambda device: request.param)
        yield train(tiny_config(catalog.root, tmp_path_factory.mktemp("run"), epochs=4))


def test_a_model_without_thresholds_flags_nothing_and_calibrate_fits_them(trained_at_precision, catalog,
                                                                          tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(trained_at_precision, folder)
    meta = json.loads((folder / "model.json").read_text())
    fitted = {k: meta.pop(k) for k in ("thresholds", "threshold_precision", "thresholds_val")}
    (folder / "model.json").write_text(json.dumps(meta))
    photos = sorted((catalog.root / "images").glob("1*.jpg"))[:20]
    assert not any(tag.needs_review for r in Tagger.load(folder)(photos) for tag in r.tags.values())

    record = calibrate(folder, catalog.root, progress=False)
    # training and calibrate fit thresholds through one path: the same photos give the same choice, exactly
    assert record["thresholds"] == fitted["thresholds"] and record["thresholds_val"] == fitted["thresholds_val"]
    strict = calibrate(folder, catalog.root, precision=0.9, task_precision={"gender": 1.0}, progress=False)
    assert strict["threshold_precision"]["gender"] == 1.0 and strict["threshold_precision"]["season"] == 0.9
    assert json.loads((folder / "model.json").read_text())["thresholds"] == strict["thresholds"]
    with pytest.raises(ValueError, match="colour"):
        calibrate(folder, catalog.root, task_precision={"colour": 0.9}, progress=False)
