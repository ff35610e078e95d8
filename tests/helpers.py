"""Helpers that tests import (conftest.py holds the fixtures)."""

from fashiontag.config import TrainConfig


def tiny_config(data, out, **changes) -> TrainConfig:
    """A model and schedule small enough to train on the synthetic catalog in a few seconds."""
    base = dict(data=str(data), out=str(out), model_args={"width": 8, "depths": [1, 1], "stem_stride": 2},
                epochs=12, batch_size=32, lr=1e-2, warmup_epochs=0.5, ema=0.9, patience=10, min_count=2, progress=False)
    base.update(changes)
    return TrainConfig(**base)
