"""Hyper-parameter search with Optuna: TPE sampling, median pruning on per-epoch validation scores, a resumable
SQLite study, and plots plus best.json in the output folder.

Each trial is an ordinary training run in OUT/trial-N (its config.json can be passed to `fashiontag train --config`),
scored by its best mean validation accuracy. All trials share one split, OUT/split.json (or base_cfg.split).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import optuna

from fashiontag.models.seed_cnn import BATCH_NORM
from fashiontag.training.config import TrainConfig

TUNABLE = ("seed-cnn", "rescnn")
RESCNN_DEPTHS = ("1-1-1-1", "1-1-2-1", "1-2-2-1", "2-2-2-2", "1-1-2", "2-2-2")


def suggest(trial: optuna.Trial, model: str) -> dict:
    """Config changes for one trial: TrainConfig fields, with the architecture's choices under model_args.

    seed-cnn: the notebook's dimensions (filters and kernel size per conv stage, dense units, batch-norm placement,
    dropout). rescnn: width, depths, stem stride and dropout, plus the training recipe (lr, weight decay, label
    smoothing, mixup)."""
    if model == "seed-cnn":
        return {"model_args": {
            "filters": [trial.suggest_categorical("filters1", [16, 32, 64]),
                        trial.suggest_categorical("filters2", [32, 64, 128]),
                        trial.suggest_categorical("filters3", [64, 128, 256])],
            "kernels": [trial.suggest_categorical("kernel1", [3, 5, 7]),
                        trial.suggest_categorical("kernel2", [3, 5]),
                        trial.suggest_categorical("kernel3", [3, 5])],
            "dense": trial.suggest_categorical("dense", [64, 100, 128, 256, 512]),
            "batch_norm": trial.suggest_categorical("batch_norm", list(BATCH_NORM)),
            "dropout": trial.suggest_float("dropout", 0.0, 0.6, step=0.1)}}
    if model == "rescnn":
        return {"model_args": {
                    "width": trial.suggest_categorical("width", [16, 24, 32, 48, 64]),
                    "depths": [int(d) for d in trial.suggest_categorical("depths", list(RESCNN_DEPTHS)).split("-")],
                    "stem_stride": trial.suggest_categorical("stem_stride", [1, 2]),
                    "dropout": trial.suggest_float("dropout", 0.0, 0.5, step=0.1)},
                "lr": trial.suggest_float("lr", 1e-3, 1e-2, log=True),
                "weight_decay": trial.suggest_float("weight_decay", 1e-3, 0.2, log=True),
                "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2, step=0.05),
                "mixup": trial.suggest_float("mixup", 0.0, 0.4, step=0.1)}
    raise ValueError(f"no search space for model {model!r}: use {' or '.join(TUNABLE)}")


def trial_config(base_cfg: TrainConfig, model: str, changes: dict, out: Path) -> TrainConfig:
    """base_cfg with one trial's changes; the base's model_args carry over only when it is the same model."""
    args = dict(base_cfg.model_args) if base_cfg.model == model else {}
    args.update(changes.get("model_args", {}))
    return base_cfg.override(**{**changes, "model": model, "model_args": args, "out": str(out)})


def shared_split(base_cfg: TrainConfig, out: Path) -> str:
    """The split file every trial uses: base_cfg.split, else OUT/split.json, made once from the catalog."""
    if base_cfg.split:
        return base_cfg.split
    path = out / "split.json"
    if not path.exists():
        from fashiontag.data.split import save_split
        from fashiontag.training.train import training_data
        save_split(training_data(base_cfg, None, base_cfg.progress).split, path)
    return str(path)


def tune(base_cfg: TrainConfig, *, trials: int = 20, study_name: str = "seed-cnn", storage: str | None = None,
         model: str = "seed-cnn", timeout: float | None = None, out: str | Path = "runs/tune",
         pruner: optuna.pruners.BasePruner | None = None) -> dict:
    """Run `trials` more trials of study `study_name` (created, or continued when storage already holds it).

    storage: an Optuna storage URL; default sqlite:///OUT/study.db. Writes OUT/best.json and PNG plots; returns
    what best.json holds."""
    from fashiontag.training.train import train
    if model not in TUNABLE:
        raise ValueError(f"no search space for model {model!r}: use {' or '.join(TUNABLE)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "best.json").exists():
        previous = json.loads((out / "best.json").read_text()).get("study")
        if previous != study_name:
            raise ValueError(f"{out} holds study {previous!r}, not {study_name!r}: use another output folder")
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    split = shared_split(base_cfg, out)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
                                pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
    # Seeded by the trials already run, so a continued study does not replay its first session's draws.
    study.sampler = optuna.samplers.TPESampler(seed=base_cfg.seed + len(study.trials))

    def objective(trial: optuna.Trial) -> float:
        cfg = trial_config(base_cfg, model, suggest(trial, model), out / f"trial-{trial.number}")
        cfg = cfg.override(split=split)
        trial.set_user_attr("out", cfg.out)
        scores: list[float] = []

        def report(epoch: int, score: float) -> None:
            scores.append(score)
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: mean val {score:.4f}")

        train(cfg, on_epoch=report)
        return max(scores, default=float("nan"))

    study.optimize(objective, n_trials=trials, timeout=timeout, catch=(RuntimeError,))
    summary = summarize(study, storage, model)
    summary["plots"] = write_plots(study, out)
    (out / "best.json").write_text(json.dumps(summary, indent=2))
    best = summary["best"]
    print(f"study {study_name!r}: {summary['complete']} complete, {summary['pruned']} pruned, "
          f"{summary['failed']} failed trials")
    if best:
        print(f"best trial {best['number']}: mean val accuracy {best['value']:.4f} ({best['out']})\n"
              + "\n".join(f"  {k} = {v}" for k, v in best["params"].items()))
        print(f"train it: fashiontag train --config {Path(best['out']) / 'config.json'} --out runs/NAME "
              "(add --epochs N --max-train 0 to lift the tuning limits)")
    return summary


def summarize(study: optuna.Study, storage: str, model: str) -> dict:
    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = None
    if complete:
        t = study.best_trial
        cfg_path = Path(t.user_attrs["out"]) / "config.json"
        best = {"number": t.number, "value": t.value, "params": t.params, "out": t.user_attrs["out"],
                "config": json.loads(cfg_path.read_text()) if cfg_path.exists() else None}
    return {"study": study.study_name, "storage": storage, "model": model, "trials": len(study.trials),
            "complete": len(complete), "pruned": states.count(optuna.trial.TrialState.PRUNED),
            "failed": states.count(optuna.trial.TrialState.FAIL), "best": best}


def write_plots(study: optuna.Study, out: Path) -> list[str]:
    """Optimization history; with two or more complete trials also parameter importances and parallel coordinates."""
    from optuna.visualization import matplotlib as vis

    from fashiontag.training.plots import plt  # pyplot on the file-only Agg backend

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)]
    plots = {"optimization_history.png": vis.plot_optimization_history}
    if len(complete) >= 2:
        plots["param_importances.png"] = vis.plot_param_importances
        plots["parallel_coordinate.png"] = vis.plot_parallel_coordinate
    written = []
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning on every matplotlib plot
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as e:  # e.g. importances when every trial drew the same values
                print(f"note: no {name}: {e}")
                continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(14 if name.startswith("parallel") else 9, 5)  # room for one axis per parameter
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(name)
    return written
