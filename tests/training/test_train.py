"""The training run's pieces (train.py): every model family trains from the command line, a config.json saved
before fields were dropped still loads, and the batch loss mixes mixup partners and teachers as it says."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fashiontag.cli import app
from fashiontag.model_folder import DEFAULT_MODEL_DIR, load_meta
from fashiontag.training.config import DROPPED, TrainConfig
from fashiontag.training.train import Batch, BatchLoss, relit_colours_unknown, soft_loss, task_losses
from helpers import tiny_config, train_interrupted
from synthetic import make_catalog


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
    # the shipped model's config as saved before the fields were dropped: with their one value each
    shipped = {**load_meta(DEFAULT_MODEL_DIR)["config"], **DROPPED}
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


# Training never breaks quietly (issue 10): tasks without labels, calibration, resume.
# 
# The run folder's lock is tested in tests/test_cli.py.

@pytest.fixture(scope="module")
def no_usage_catalog(tmp_path_factory):
    """A small clean catalog whose usage column is empty in every row."""
    cat = make_catalog(tmp_path_factory.mktemp("no-usage"), n=120, bad=False)
    styles = cat.root / "styles.csv"
    lines = styles.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        row[8] = ""
    styles.write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    return cat


def test_task_without_labels_is_left_out_with_a_warning(no_usage_catalog, tmp_path, capsys):
    from fashiontag.training.train import train
    best = train(tiny_config(no_usage_catalog.root, tmp_path / "run", epochs=1))
    meta = json.loads((best / "model.json").read_text())
    assert "usage" not in meta["vocabs"] and "gender" in meta["vocabs"]
    assert "warning: task usage left out" in capsys.readouterr().err


def test_no_task_with_labels_is_a_clear_error(no_usage_catalog):
    from fashiontag.training.dataset import load_dataset
    with pytest.raises(ValueError, match="no task has two classes with 100000 training photos"):
        load_dataset(no_usage_catalog.root, min_count=100000, progress=False)


def test_notebook_protocol_keeps_its_three_tasks(no_usage_catalog):
    from fashiontag.data.catalog import NOTEBOOK_TASKS
    from fashiontag.training.dataset import load_dataset
    data = load_dataset(no_usage_catalog.root, protocol="notebook", min_count=2, progress=False)
    assert set(data.vocabs) == set(NOTEBOOK_TASKS)


def _overconfident_logits(n=600, classes=4, scale=4.0, seed=0):
    """Logits whose softmax is calibrated, multiplied by `scale` (overconfident), and labels drawn from them."""
    gen = torch.Generator().manual_seed(seed)
    calibrated = torch.randn(n, classes, generator=gen)
    y = torch.multinomial(calibrated.softmax(1), 1, generator=gen).squeeze(1)
    return calibrated * scale, y.numpy()


def test_a_temperature_far_from_1_is_found():
    """Logits a fifth as large as calibrated ones want T near 0.2: L-BFGS's fixed steps stopped far off (0.05 at
    the clamp, or 0.10 where 0.16 was best); with a line search the minimum is found wherever it lies."""
    from fashiontag.training.temperatures import fit_temperature
    for scale in (0.2, 0.1, 8.0):
        logits, y = _overconfident_logits(n=4000, scale=scale, seed=1)
        assert fit_temperature(logits, torch.from_numpy(y)) == pytest.approx(scale, rel=0.15)


def test_calibration_keeps_a_temperature_that_helps():
    from fashiontag.training.temperatures import fit_temperatures
    logits, y = _overconfident_logits()
    temps, record = fit_temperatures({"gender": logits}, {"gender": y})
    assert 3 < temps["gender"] < 5.5 and record["gender"]["kept"] and record["gender"]["why"] is None
    assert record["gender"]["after"] < record["gender"]["before"]
    assert record["gender"]["nll_after"] < record["gender"]["nll_before"]


def test_calibration_never_keeps_nan_temperature(capsys):
    from fashiontag.training.temperatures import fit_temperatures
    logits, y = _overconfident_logits()
    logits[5, 2] = float("nan")  # one diverged photo makes the whole fit NaN
    temps, record = fit_temperatures({"season": logits, "gender": _overconfident_logits()[0]},
                                     {"season": y, "gender": y})
    assert temps["season"] == 1.0 and not record["season"]["kept"]
    assert "not a positive number" in record["season"]["why"]
    assert record["gender"]["kept"]
    json.dumps(record, allow_nan=False)  # model.json stays valid JSON for the web page
    err = capsys.readouterr().err
    assert "warning: calibration of season" in err and "gender" not in err


def test_calibration_drops_a_temperature_that_worsens_nll_and_ece(monkeypatch, capsys):
    import fashiontag.training.temperatures as calibration
    logits, y = _overconfident_logits(scale=1.0)  # already calibrated: a temperature of 5 makes it worse
    monkeypatch.setattr(calibration, "fit_temperature", lambda lg, y: 5.0)
    temps, record = calibration.fit_temperatures({"usage": logits}, {"usage": y})
    assert temps["usage"] == 1.0 and record["usage"]["fitted"] == 5.0 and not record["usage"]["kept"]
    assert record["usage"]["after"] == record["usage"]["before"]
    assert "lowers neither" in record["usage"]["why"]
    assert "warning: calibration of usage" in capsys.readouterr().err


@pytest.fixture(scope="module")
def resumed_run(catalog, tmp_path_factory):
    """The same training twice: straight through, and interrupted in its second epoch then resumed."""
    from fashiontag.training.train import train
    tmp = tmp_path_factory.mktemp("resume")
    cfg = dict(epochs=3, checkpoint_minutes=0.0, patience=99)
    full = train(tiny_config(catalog.root, tmp / "full", **cfg))
    # 10 batches an epoch: stopped at the 4th of epoch 2.
    train_interrupted(tiny_config(catalog.root, tmp / "cut", **cfg), at_batch=14)
    return full, train(tiny_config(catalog.root, tmp / "cut"), resume=True)


def test_resume_after_interruption_loses_nothing(resumed_run):
    a, b = (load_file(str(folder / "model.safetensors")) for folder in resumed_run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_resume_mid_epoch_keeps_the_epochs_train_loss_and_accuracy(resumed_run):
    full, resumed = (json.loads((folder / "model.json").read_text())["history"] for folder in resumed_run)
    assert len(full) == len(resumed) == 3
    for a, b in zip(full, resumed):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["train_acc"] == pytest.approx(a["train_acc"], abs=1e-3)


def test_resume_without_resume_state_is_refused(catalog, tmp_path):
    from fashiontag.training.train import train
    cfg = tiny_config(catalog.root, tmp_path / "run")
    (tmp_path / "run").mkdir()
    cfg.save(tmp_path / "run" / "config.json")  # what a run writes before its first batch
    with pytest.raises(FileNotFoundError, match="no resume state in .*last.*without --resume"):
        train(cfg, resume=True)


def test_trunk_lr_scales_the_trunks_and_title_encoders_learning_rate_only():
    from fashiontag.models import create_model
    from fashiontag.training.train import build_optimizer
    model = create_model("rescnn", {"colour": 3}, (80, 60), title={"dim": 8, "tokenizer": {"buckets": 64}})
    trunk = {id(p) for p in [*model.trunk.parameters(), *model.text.parameters()]}
    opt, lr_at = build_optimizer(TrainConfig(trunk_lr=0.1, warmup_epochs=0), model, steps_per_epoch=10)
    scales = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert scales == {id(p): 0.1 if id(p) in trunk else 1.0 for p in model.parameters()}
    # at 1 (the default) there is no split: two groups, as resume states saved before trunk_lr have them
    opt, _ = build_optimizer(TrainConfig(), model, steps_per_epoch=10)
    assert len(opt.param_groups) == 2
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="trunk_lr"):
        TrainConfig(trunk_lr=0)
