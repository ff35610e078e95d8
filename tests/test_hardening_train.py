"""Training never breaks quietly (issue 10): tasks without labels, calibration, resume.

The run folder's lock is tested in test_hardening_cli.py."""

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_config, train_interrupted
from synthetic import make_catalog


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
