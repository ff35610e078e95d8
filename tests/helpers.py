"""Helpers that tests import (conftest.py holds the fixtures)."""

import pytest

from fashiontag.training.config import TrainConfig


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
    import fashiontag.training.train as train_mod
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


def write_over_onnx(path) -> None:
    """Up to 4 KB written over inside an ONNX file's largest weight tensor (issue 20 #2): onnxruntime loads the file
    without a word, and computes NaN."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    data = path.read_bytes()
    weights = max((i.raw_data for i in onnx.load(str(path)).graph.initializer), key=len)
    start, n = data.find(weights), min(4096, len(weights)) // 4
    path.write_bytes(data[:start] + np.full(n, np.nan, np.float32).tobytes() + data[start + 4 * n:])
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image": np.random.default_rng(0).random((2, 3, 80, 60), dtype=np.float32)})
    assert all(np.isnan(o).all() for o in out)


def nan_model(model, dest):
    """A copy of the model folder whose gender head's weights are NaN: a model damaged where no check can see it
    (the safetensors file is whole), so every photo's outputs are NaN."""
    import shutil

    from safetensors.torch import load_file, save_file

    from fashiontag.model_folder import WEIGHTS, weight_header
    shutil.copytree(model, dest)
    weights = load_file(dest / WEIGHTS)
    next(v for k, v in weights.items() if k.endswith("heads.gender.weight")).fill_(float("nan"))
    save_file(weights, dest / WEIGHTS, weight_header(dest / WEIGHTS)["__metadata__"])
    return dest
