"""Configuration checks (issue 9): field types, schedules and the protocol's name."""

import pytest

from fashiontag.training.config import TrainConfig


@pytest.mark.parametrize("field, value, expected", [
    ("epochs", "ten", "config field epochs: expected int"),
    ("epochs", True, "config field epochs: expected int"),
    ("lr", "fast", "config field lr: expected float"),
    ("tasks", [1, 2], "config field tasks: expected tuple"),
    ("compile", "yes", "config field compile: expected bool | None"),
    ("model_args", [48], "config field model_args: expected dict"),
])
def test_config_refuses_a_value_of_the_wrong_type_naming_the_field(field, value, expected):
    with pytest.raises(ValueError, match=expected):
        TrainConfig.from_dict({field: value})


def test_config_takes_ints_for_floats_and_lists_for_tuples():
    cfg = TrainConfig.from_dict({"lr": 1, "tasks": ["gender", "usage"], "teachers": "runs/a/best", "compile": None})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.tasks == ("gender", "usage") and cfg.teachers == ("runs/a/best",) and cfg.compile is None


def test_config_refuses_an_unknown_schedule():
    with pytest.raises(ValueError, match="schedule: 'linear' is not one of cosine, constant"):
        TrainConfig(schedule="linear")


def test_the_protocols_are_all_and_notebook_and_seed_is_gone():
    assert TrainConfig(protocol="notebook").protocol == "notebook"
    with pytest.raises(ValueError, match="unknown protocol 'seed'"):
        TrainConfig.from_dict({"protocol": "seed"})
    with pytest.raises(ValueError, match="unknown protocol"):
        TrainConfig(protocol="kaggle")


@pytest.mark.parametrize("field, value, expected", [
    ("epochs", 0, "config field epochs: 0 is not 1 or more"),
    ("batch_size", -4, "config field batch_size: -4 is not 1 or more"),
    ("patience", 0, "config field patience: 0 is not 1 or more"),
    ("lr", float("nan"), "config field lr: nan is not a finite number"),
    ("lr", float("inf"), "config field lr: inf is not a finite number"),
    ("lr", 0, "config field lr: 0.0 is not above 0"),
    ("weight_decay", -0.1, "config field weight_decay: -0.1 is not 0 or more"),
    ("label_smoothing", 1.0, "config field label_smoothing: 1.0 is not from 0 to below 1"),
    ("ema", 1, "config field ema: 1.0 is not 0 \\(off\\) or more and below 1"),
    ("distill", 1.5, "config field distill: 1.5 is not from 0 to 1"),
    ("seller_share", 0, "config field seller_share: 0.0 is not above 0 and at most 1"),
    ("framing", 1.5, "config field framing: 1.5 is not true, false or a share above 0 and below 1"),
    ("max_train", -1, "config field max_train: -1 is not 0 \\(all\\) or more"),
    ("checkpoint_minutes", -1, "config field checkpoint_minutes: -1.0 is not 0 or more"),
])
def test_config_refuses_a_number_out_of_range_naming_the_field(field, value, expected):
    """Issue 20 #14: `train --epochs 0` or `--set lr=NaN` worked for a minute (the photo cache built) and then
    failed; a config is now checked when it is made."""
    with pytest.raises(ValueError, match=expected):
        TrainConfig.from_dict({field: value})
    assert TrainConfig.from_dict({"ema": 0, "mixup": 0, "max_train": 0, "threads": 0, "warmup_epochs": 0})  # off
    assert TrainConfig.from_dict({"framing": 0.6}).framing == 0.6 and TrainConfig.from_dict({"framing": True}).framing


@pytest.mark.parametrize("args, words", [(["--epochs", "0"], "config field epochs: 0 is not 1 or more"),
                                         (["--set", "lr=NaN"], "config field lr: nan is not a finite number")])
def test_train_refuses_a_bad_setting_before_building_the_photo_cache(catalog, tmp_path, monkeypatch, args, words):
    from typer.testing import CliRunner

    from fashiontag.cli import app
    monkeypatch.setenv("FASHIONTAG_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["train", "--data", str(catalog.root), "--out", str(tmp_path / "run"),
                                      "--no-progress", *args])
    assert result.exit_code == 2 and f"error: {words}" in result.output
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()
