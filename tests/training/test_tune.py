"""Hyper-parameter search: a small Optuna study on the synthetic catalog that resumes from its SQLite file, pruning,
and the search spaces and batch-norm placements it draws from."""

import json

import optuna
import pytest
import torch

from fashiontag.models import create_model
from fashiontag.training.tune import RESCNN_DEPTHS, suggest, trial_config, tune
from helpers import tiny_config


def _base(catalog, tmp_path, **changes):
    base = {"model": "seed-cnn", "model_args": {}, "epochs": 2, **changes}
    return tiny_config(catalog.root, tmp_path / "unused", **base)


def test_study_resumes_from_sqlite_and_writes_plots(catalog, tmp_path):
    out = tmp_path / "tune"
    first = tune(_base(catalog, tmp_path), trials=2, study_name="s", model="seed-cnn", out=out)
    assert first["trials"] == 2 and (out / "study.db").exists() and (out / "split.json").exists()
    second = tune(_base(catalog, tmp_path), trials=1, study_name="s", model="seed-cnn", out=out)
    assert second["trials"] == 3  # added to the same study, not a new one
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 3  # the resumed session drew anew

    best = json.loads((out / "best.json").read_text())
    assert best["study"] == "s" and best["best"]["value"] > 0.3
    assert best["best"]["config"]["model"] == "seed-cnn" and best["best"]["config"]["epochs"] == 2
    assert (out / f"trial-{best['best']['number']}" / "best" / "model.safetensors").exists()
    for n in range(3):  # every trial trained on the one shared split
        assert json.loads((out / f"trial-{n}" / "config.json").read_text())["split"] == str(out / "split.json")
    # Fewer than five trials are never pruned (n_startup_trials), so all three completed and every plot is drawn.
    assert second["complete"] == 3
    assert {"param_importances.png", "parallel_coordinate.png"} <= set(best["plots"])
    assert "optimization_history.png" in best["plots"]
    for png in best["plots"]:
        assert (out / png).stat().st_size > 1000

    with pytest.raises(ValueError, match="holds study 's'"):
        tune(_base(catalog, tmp_path), trials=1, study_name="other", out=out)


def test_pruned_trial_stops_after_its_first_epoch(catalog, tmp_path):
    out = tmp_path / "pruned"
    # Every mean accuracy is below 1.01, so the threshold pruner stops each trial at its first report.
    summary = tune(_base(catalog, tmp_path, epochs=3), trials=1, study_name="p", out=out,
                   pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    assert summary["pruned"] == 1 and summary["complete"] == 0 and summary["best"] is None
    trial = optuna.load_study(study_name="p", storage=f"sqlite:///{out / 'study.db'}").trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]
    assert (out / "best.json").exists() and (out / "optimization_history.png").exists()


@pytest.mark.parametrize("model", ["seed-cnn", "rescnn"])
def test_search_space_builds_working_models(model, tmp_path):
    base = tiny_config("data", tmp_path)  # rescnn args: carried over for rescnn, dropped for seed-cnn
    if model == "seed-cnn":
        trials = [{"filters1": f, "filters2": 32, "filters3": 64, "kernel1": k, "kernel2": 5, "kernel3": 5,
                   "dense": 64, "batch_norm": bn, "dropout": 0.1}
                  for f, k, bn in [(16, 7, "none"), (64, 3, "before_activation"), (32, 5, "after_activation")]]
    else:
        trials = [{"width": 16, "depths": d, "stem_stride": s, "dropout": 0.0, "lr": 3e-3, "weight_decay": 0.01,
                   "label_smoothing": 0.1, "mixup": 0.2} for d, s in [(RESCNN_DEPTHS[0], 1), (RESCNN_DEPTHS[-1], 2)]]
    for params in trials:
        cfg = trial_config(base, model, suggest(optuna.trial.FixedTrial(params), model), tmp_path / "t")
        assert cfg.model == model and cfg.out == str(tmp_path / "t")
        net = create_model(cfg.model, {"gender": 2, "articleType": 4}, **cfg.model_args).eval()
        assert net(torch.rand(2, 3, 80, 60))["articleType"].shape == (2, 4)
    if model == "rescnn":
        assert cfg.mixup == 0.2 and cfg.model_args["depths"] == [2, 2, 2]


def test_seed_cnn_batch_norm_placement():
    def kinds(bn):
        trunk = create_model("seed-cnn", {"gender": 2}, batch_norm=bn).trunk
        return [type(m).__name__ for m in trunk][1:5]
    assert kinds(False) == kinds("none") == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d"]
    assert kinds(True) == kinds("before_activation") == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert kinds("after_activation") == ["Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d"]
    with pytest.raises(ValueError, match="batch_norm"):
        create_model("seed-cnn", {"gender": 2}, batch_norm="sideways")


def test_cli_tune(catalog, tmp_path):
    from typer.testing import CliRunner

    from fashiontag.cli import app
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["tune", "--data", str(catalog.root), "--model", "seed-cnn", "--trials", "1",
                                      "--epochs", "1", "--max-train", "100", "--out", str(out), "--no-progress",
                                      "--set", "threads=1", "--set", "batch_size=32", "--set", "min_count=2"])
    assert result.exit_code == 0, result.output
    assert "best trial 0" in result.output and (out / "best.json").exists()
    config = json.loads((out / "trial-0" / "config.json").read_text())
    assert config["max_train"] == 100 and config["epochs"] == 1 and config["model"] == "seed-cnn"
