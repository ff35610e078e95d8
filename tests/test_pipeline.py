"""train -> evaluate -> predict on the synthetic catalog, and DDP with 2 processes (resume: training/test_train.py)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fashiontag.inference.predict import predict
from fashiontag.inference.tagger import Tagger
from fashiontag.models import create_model, model_names
from fashiontag.models.checkpoint import load_model
from fashiontag.training.evaluate import evaluate
from helpers import tiny_config


@pytest.mark.parametrize("name", ["rescnn", "seed-cnn", "mlp", "efficientnet-lite0"])
def test_every_model_returns_logits_per_task(name):
    heads = {"gender": 5, "articleType": 40}
    model = create_model(name, heads).eval()
    out = model(torch.rand(3, 3, 80, 60))
    assert {t: tuple(v.shape) for t, v in out.items()} == {"gender": (3, 5), "articleType": (3, 40)}
    assert name in model_names()


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError, match="rescnn"):
        create_model("vgg99", {"gender": 2})


def test_training_writes_a_model_that_learned(trained):
    files = {p.name for p in trained.iterdir()}
    assert files == {"model.safetensors", "model.json", "split.json"}
    meta = json.loads((trained / "model.json").read_text())
    # colour and article type are drawn into the pixels; the model must read them better than chance
    assert meta["val_acc"]["baseColour"] > 0.6
    assert meta["val_acc"]["articleType"] > 0.6
    assert set(meta["temperatures"]) == set(meta["vocabs"])
    assert (trained.parent / "config.json").exists()


def test_evaluate_writes_report_and_beats_majority(trained, catalog, tmp_path):
    summary = evaluate(catalog.root, model=trained, out=tmp_path / "report", progress=False)
    for t in ("articleType", "baseColour", "masterCategory"):
        m = summary["tasks"][t]
        assert m["accuracy"] > m["majority_baseline"], t
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| baseColour |" in report and "macro-F1" in report
    for png in ("class_distributions.png", "training_curves.png", "confusion_gender.png", "examples_usage.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["tasks"]["gender"]["n"] > 0 and len(saved["tasks"]["gender"]["confusion"]) == 2


def test_predict_writes_csv_with_errors_as_rows(trained, catalog, tmp_path):
    out = tmp_path / "tags.csv"
    counts = predict([str(catalog.root / "images"), str(tmp_path / "nope.jpg")], out=str(out), model=str(trained),
                     top_k=2, progress=False)
    rows = list(csv.DictReader(out.open()))
    assert counts["rows"] == len(rows) == len(list((catalog.root / "images").iterdir())) + 1
    assert list(rows[0])[:4] == ["path", "id", "gender", "gender_confidence"]
    assert "articleType_top2" in rows[0]
    by_id = {r["id"]: r for r in rows}
    assert "empty" in by_id["9002"]["error"] and by_id["9002"]["gender"] == ""
    assert "not found" in by_id["nope"]["error"]
    assert by_id["9101"]["error"] == ""  # greyscale photos are tagged, not refused
    good = [r for r in rows if not r["error"]]
    assert all(0 <= float(r["usage_confidence"]) <= 1 for r in good)


def test_predict_respects_hierarchy_and_min_confidence(trained, catalog):
    tagger = Tagger.load(trained)
    pixels = np.stack([np.asarray(__import__("synthetic").draw(a, "Red", "Men")) for a in
                       ("Tshirts", "Jeans", "Casual Shoes", "Watches")])
    combos = {tuple(r) for r in tagger.meta["hierarchy"][1:]}
    cols = tagger.meta["hierarchy"][0]
    results = tagger.tag_pixels(pixels)
    for r in results:
        assert tuple(r[t].label for t in cols) in combos
    # Below the threshold the best guess is kept and flagged, never replaced.
    confidences = sorted(r[t].confidence for r in results for t in tagger.tasks)
    middle = confidences[len(confidences) // 2]
    for r, flagged in zip(results, tagger.tag_pixels(pixels, min_confidence=middle)):
        for t in tagger.tasks:
            assert flagged[t].label == r[t].label
            assert flagged[t].needs_review == (r[t].confidence < middle)
    assert 0 < sum(f[t].needs_review for f in tagger.tag_pixels(pixels, min_confidence=middle)
                   for t in tagger.tasks) < len(confidences)


def test_flip_averages_each_photo_with_its_mirror_image(trained):
    pixels = np.random.default_rng(0).integers(0, 256, (6, 80, 60, 3), dtype=np.uint8)
    plain, flipped = Tagger.load(trained), Tagger.load(trained, flip=True)
    a, b = plain.probabilities(pixels), plain.probabilities(np.ascontiguousarray(pixels[:, :, ::-1]))
    both = flipped.probabilities(pixels)
    for t in plain.tasks:
        np.testing.assert_allclose(both[t], (a[t] + b[t]) / 2, atol=1e-6)
        np.testing.assert_allclose(both[t].sum(1), 1, atol=1e-5)


def test_predict_jsonl_to_stdout(trained, catalog, capsys):
    predict([str(catalog.root / "images" / "1000.jpg")], out=None, model=str(trained), fmt="jsonl", progress=False)
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["id"] == "1000" and row["error"] == "" and "season_confidence" in row


def test_model_loads_without_pickle(trained):
    assert not list(trained.glob("*.pt")) and not list(trained.glob("*.pkl"))
    load_file(str(trained / "model.safetensors"))
    model, meta = load_model(trained)
    assert meta["arch"] == "rescnn"


@pytest.mark.slow
def test_cli_train_two_processes_with_ddp(catalog, tmp_path):
    out = tmp_path / "ddp"
    cfg = tiny_config(catalog.root, out, epochs=2)
    cfg.save(tmp_path / "cfg.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a rendezvous on a free local port, so parallel test runs do not collide on a fixed one.
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                           "-m", "fashiontag", "train", "--config", str(tmp_path / "cfg.json"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "best" / "model.safetensors").exists()
    history = json.loads((out / "best" / "model.json").read_text())["history"]
    assert len(history) == 2


def test_cli_reports_bad_flags_clearly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fashiontag", "train", "--data", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "styles.csv" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "fashiontag", "predict", "x.jpg", "--top-k", "0"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "top-k" in proc.stderr


def test_evaluate_on_another_catalog_scores_every_photo(trained, tmp_path):
    from synthetic import make_catalog
    other = make_catalog(tmp_path / "other", n=60, seed=5, bad=False, first_id=50000)
    summary = evaluate(other.root, model=trained, out=tmp_path / "report", progress=False, plot=False)
    assert summary["n"] == 60 and "whole catalog" in summary["side"]
