"""Configuration checks (issue 9): field types, schedules and the protocol's name."""

import pytest

from fashiontag.config import TrainConfig


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


def test_protocol_seed_is_a_deprecated_name_for_notebook():
    assert TrainConfig(protocol="notebook").protocol == "notebook"
    with pytest.warns(FutureWarning, match='now called "notebook"'):
        assert TrainConfig.from_dict({"protocol": "seed"}).protocol == "notebook"
    with pytest.raises(ValueError, match="unknown protocol"):
        TrainConfig(protocol="kaggle")
