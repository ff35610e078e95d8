"""Helpers that tests import (conftest.py holds the fixtures)."""

import pytest

from fashiontag.config import TrainConfig


def tiny_config(data, out, **changes) -> TrainConfig:
    """A model and schedule small enough to train on the synthetic catalog in a few seconds.

    One torch thread: for models this small, more threads only fight each other and the machine's other jobs (ten
    times slower on a busy 2-core machine); conftest gives each test its thread count back."""
    base = dict(data=str(data), out=str(out), model_args={"width": 8, "depths": [1, 1], "stem_stride": 2},
                epochs=12, batch_size=32, lr=1e-2, warmup_epochs=0.5, ema=0.9, patience=10, min_count=2, progress=False,
                threads=1)
    base.update(changes)
    return TrainConfig(**base)


def train_interrupted(cfg: TrainConfig, at_batch: int) -> None:
    """Train cfg and stop it as Ctrl-C would, at its at_batch-th training batch (counted from 1 over all epochs).

    With cfg.checkpoint_minutes == 0 the resume state is saved after every batch, so it stops right there."""
    import fashiontag.train as train_mod
    real_augment, calls = train_mod.augment, {"n": 0}

    def flaky_augment(*args):
        calls["n"] += 1
        if calls["n"] == at_batch:
            raise KeyboardInterrupt
        return real_augment(*args)

    train_mod.augment = flaky_augment
    try:
        with pytest.raises(KeyboardInterrupt):
            train_mod.train(cfg)
    finally:
        train_mod.augment = real_augment
