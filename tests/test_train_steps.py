"""The training run's pieces (train.py): every model family trains from the command line, a config.json saved
before fields were dropped still loads, and the batch loss mixes mixup partners and teachers as it says."""

import json
import warnings

import pytest
import torch
from typer.testing import CliRunner

from fashiontag.cli import app
from fashiontag.model_folder import DEFAULT_MODEL_DIR, load_meta
from fashiontag.training.config import DROPPED, TrainConfig
from fashiontag.training.train import Batch, BatchLoss, relit_colours_unknown, soft_loss, task_losses


@pytest.mark.parametrize("family", ["seed-cnn", "mlp", "efficientnet-lite0"])
def test_every_family_trains_from_the_command_line(family, catalog, tmp_path):
    """`fashiontag train --model X` with the family's own default arguments (issue 22: rescnn's crashed them)."""
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(catalog.root), "--model", family, "--out", str(out),
                                      "--epochs", "1", "--max-train", "64", "--batch-size", "32", "--no-progress",
                                      "--set", "min_count=2", "--set", "threads=1"])
    assert result.exit_code == 0, result.output
    assert f"best model: {out / 'best'}" in result.output
    meta = load_meta(out / "best")
    assert meta["arch"] == family and len(meta["history"]) == 1
    assert json.loads((out / "config.json").read_text())["model"] == family


def test_a_config_saved_before_fields_were_dropped_still_loads(tmp_path):
    shipped = load_meta(DEFAULT_MODEL_DIR)["config"]  # the shipped model's, saved with device and cache_dir
    assert set(DROPPED) <= set(shipped)
    (tmp_path / "config.json").write_text(json.dumps(shipped))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old fixed values: nothing to say
        cfg = TrainConfig.load(tmp_path / "config.json")
    assert cfg.model_args == shipped["model_args"] and not set(DROPPED) & set(vars(cfg))
    (tmp_path / "edited.json").write_text(json.dumps({**shipped, "device": "cpu"}))
    with pytest.warns(UserWarning, match="config field device is no longer read.*'cpu' is ignored"):
        TrainConfig.load(tmp_path / "edited.json")
    # Set now, a dropped field is unknown, as any other name would be.
    with pytest.raises(ValueError, match="unknown config field"):
        TrainConfig().override(device="cpu")


def test_the_batch_loss_mixes_partners_and_teachers():
    torch.manual_seed(0)
    kinds = {"gender": "single", "baseColour": "single"}
    logits = {t: torch.randn(4, 3) for t in kinds}
    y = {t: torch.tensor([0, 1, 2, 1]) for t in kinds}
    soft = {t: torch.softmax(torch.randn(4, 3), 1) for t in kinds}
    cfg = TrainConfig(distill=0.25, loss_weights={"gender": 2.0})
    loss = BatchLoss(cfg, kinds, {t: None for t in kinds}, {"gender": 2.0, "baseColour": 1.0}, soft,
                     torch.device("cpu"))
    partner = torch.tensor([1, 0, 3, 2])
    batch = Batch(torch.arange(4), None, y, lam=0.7, partner=partner)
    plain = task_losses(logits, y, cfg, {t: None for t in kinds}, kinds)
    other = task_losses(logits, {t: v[partner] for t, v in y.items()}, cfg, {t: None for t in kinds}, kinds)
    expected = 0
    for t, w in (("gender", 2.0), ("baseColour", 1.0)):
        target = 0.7 * soft[t] + 0.3 * soft[t][partner]
        expected += w * (0.75 * (0.7 * plain[t] + 0.3 * other[t]) + 0.25 * soft_loss(logits[t], target, "single"))
    torch.testing.assert_close(loss(logits, batch), expected)


def test_a_relit_photo_keeps_its_colour_label_unknown_and_the_rest():
    y = {"gender": torch.tensor([0, 1]), "baseColour": torch.tensor([2, 3])}
    masked = relit_colours_unknown(dict(y), torch.tensor([True, False]))
    assert masked["baseColour"].tolist() == [2, -1] and masked["gender"].tolist() == [0, 1]
    assert relit_colours_unknown(dict(y), None)["baseColour"].tolist() == [2, 3]
