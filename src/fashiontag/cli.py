"""The command line: each command parses flags and calls one library function."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from fashiontag.catalog import CatalogError
from fashiontag.config import TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Tag fashion product photos: train, evaluate, explore, predict, tune, export, serve.")

KAGGLE_HINT = ("No catalog given. Pass --data DIR or set FASHIONTAG_DATA to a folder holding styles.csv and images/.\n"
               "Get one: download the Kaggle dataset 'paramaggarwal/fashion-product-images-small'\n"
               "(kaggle datasets download -d paramaggarwal/fashion-product-images-small && unzip it),\n"
               "then FASHIONTAG_DATA=path/to/myntradataset make run")


def _data(data: Optional[str], fallback: str = "") -> str:
    data = data or os.environ.get("FASHIONTAG_DATA", "") or fallback
    if not data:
        raise typer.BadParameter(KAGGLE_HINT, param_hint="--data")
    if not (Path(data) / "styles.csv").is_file():
        raise typer.BadParameter(f"{data} has no styles.csv. {KAGGLE_HINT}", param_hint="--data")
    return data


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def _parse_sets(sets: List[str]) -> dict:
    """--set key=value pairs; values are JSON where they parse as JSON, else strings."""
    out = {}
    for s in sets:
        key, sep, value = s.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set {s!r}: expected key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@app.command()
def train(
    data: Optional[str] = typer.Option(None, help="catalog folder (default: $FASHIONTAG_DATA)"),
    out: Optional[str] = typer.Option(None, help="run folder [runs/default]"),
    model: Optional[str] = typer.Option(None, help="model family: rescnn, seed-cnn, mlp, efficientnet-lite0"),
    epochs: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    protocol: Optional[str] = typer.Option(None, help="all: every task; seed: the notebook's three tasks and classes"),
    max_train: Optional[int] = typer.Option(None, help="train on at most this many photos (quick runs)"),
    seed: Optional[int] = typer.Option(None),
    config: Optional[Path] = typer.Option(None, help="a config.json to start from"),
    set_: List[str] = typer.Option([], "--set", help="any config field, e.g. --set model_args='{\"width\": 48}'"),
    resume: bool = typer.Option(False, help="continue an interrupted run in --out"),
    progress: bool = typer.Option(True),
):
    """Train a model; the best checkpoint lands in OUT/best (safetensors + JSON)."""
    from fashiontag.train import train as run_training
    cfg = TrainConfig.load(config) if config else TrainConfig()
    try:
        cfg = cfg.override(data=None if resume and not data else _data(data, cfg.data), out=out, model=model, epochs=epochs,
                           batch_size=batch_size, lr=lr, protocol=protocol, max_train=max_train, seed=seed,
                           progress=progress, **_parse_sets(set_))
        best = run_training(cfg, resume=resume)
    except (CatalogError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        raise typer.Exit(130)
    typer.echo(f"best model: {best}")


@app.command()
def evaluate(
    data: Optional[str] = typer.Option(None, help="catalog folder (default: $FASHIONTAG_DATA)"),
    model: Optional[str] = typer.Option(None, help="model folder (default: the shipped model)"),
    out: str = typer.Option("reports/latest", help="report folder"),
    side: str = typer.Option("unseen", help="unseen: every photo the model did not train on (on its own catalog "
                             "the validation and test sides; another catalog: every photo); test, val, train or all"),
    flip: bool = typer.Option(False, help="test-time flip: average each photo with its mirror image"),
    engine: str = typer.Option("torch", help="torch, onnx or onnx-int8: score the exported model as it will run"),
):
    """Score a model on its test split; writes report.md, metrics.json and plots."""
    from fashiontag.evaluate import evaluate as run_evaluation
    try:
        summary = run_evaluation(_data(data), model, out, side, flip=flip, engine=engine)
    except (CatalogError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    for t, m in summary["tasks"].items():
        typer.echo(f"{t:15s} accuracy {m['accuracy']:.2%}  macro-F1 {m['macro_f1']:.3f}  "
                   f"top-{m['top_k']} {m['top_k_accuracy']:.2%}")
    typer.echo(f"report: {Path(out) / 'report.md'}")


@app.command()
def predict(
    paths: List[str] = typer.Argument(..., help="image files and folders (searched recursively)"),
    out: Optional[str] = typer.Option(None, help="output file: .csv, .tsv or .jsonl (default: CSV on stdout)"),
    model: Optional[str] = typer.Option(None, help="model folder (default: the shipped model)"),
    format: Optional[str] = typer.Option(None, help="csv, tsv or jsonl (default: from --out's extension, else csv)"),
    top_k: int = typer.Option(1, min=1, help="also write the K-1 runners-up per task"),
    min_confidence: float = typer.Option(0.0, min=0.0, max=1.0,
                                         help="flag tags less sure than this in <task>_needs_review columns "
                                              "(the label is kept)"),
    batch_size: int = typer.Option(512, min=1, help="photos per batch"),
    progress: bool = typer.Option(True, help="progress bar on stderr, when stderr is a terminal"),
    engine: str = typer.Option("torch", help="torch, onnx (onnxruntime: fastest start) or onnx-int8 (quantized)"),
    flip: bool = typer.Option(False, help="test-time flip: a little more accurate, half the speed"),
    on: Optional[str] = typer.Option(None, help="ray or ray://HOST:PORT: tag on a Ray cluster into Parquet shards "
                                                "in the folder or URI --out; PATHS may be URIs (s3://bucket/prefix/)"),
    actors: Optional[int] = typer.Option(None, min=1, help="with --on: tagging actors (default: half the CPUs)"),
    csv: bool = typer.Option(False, help="with --on: also merge the shards into one tags.csv in --out"),
):
    """Tag photos into CSV, TSV or JSON lines: path, id, then <task> and <task>_confidence per task, and error.

    Exits 1 when a path does not exist, a folder cannot be read, or nothing could be tagged (the rows of the
    photos that could be read are written all the same). With --on, a re-run into the same --out tags only the
    photos that are new or changed since."""
    if on:
        return _predict_on_ray(on, paths, out, model, top_k, min_confidence, batch_size, progress, engine, flip,
                               actors, csv)
    from fashiontag.predict import predict as run_predict
    try:
        counts = run_predict(paths, out, model, format, top_k, min_confidence, batch_size,
                             progress and sys.stderr.isatty(), engine=engine, flip=flip)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    tagged = counts["rows"] - counts["errors"]
    typer.echo(f"tagged {tagged:,} photos; {counts['errors']:,} could not be read"
               + (f"; wrote {out}" if out else ""), err=True)
    if counts["missing"] or counts["unreadable_folders"] or not tagged:
        typer.secho("error: " + ("nothing to tag" if not counts["rows"] else "not every photo could be tagged")
                    + f" ({counts['missing']} missing paths, {counts['unreadable_folders']} unreadable folders, "
                    f"{counts['errors']} unreadable photos)", fg="red", err=True)
        raise typer.Exit(1)


def _predict_on_ray(on: str, paths: List[str], out: Optional[str], model: Optional[str], top_k: int,
                    min_confidence: float, batch_size: int, progress: bool, engine: str, flip: bool,
                    actors: Optional[int], csv: bool) -> None:
    if on != "ray" and not on.startswith("ray://"):
        _fail(f"--on {on}: use ray (RAY_ADDRESS, a cluster on this machine, or a new local one) or ray://HOST:PORT")
    if not out:
        _fail("--on needs --out: the folder or URI that receives the Parquet shards")
    try:
        from fashiontag.batch import tag_on_ray
    except ImportError as e:
        _fail(f"--on ray needs Ray: pip install 'fashiontag[ray]' ({e})")
    try:
        s = tag_on_ray(paths, out, address=None if on == "ray" else on, engine=engine, model=model, top_k=top_k,
                       min_confidence=min_confidence, flip=flip, csv=csv, actors=actors, batch_size=batch_size,
                       progress=progress and sys.stderr.isatty())
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"tagged {s['tagged']:,} photos, {s['errors']:,} could not be read, {s['skipped']:,} were tagged "
               f"before; {s['photos_per_s']:,.0f} photos/s; {s['shards']} new shards in {out}"
               + (f"; wrote {s['csv']}" if s["csv"] else ""), err=True)
    if not s["tagged"] and not s["skipped"]:
        typer.secho("error: nothing could be tagged", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def explore(
    data: Optional[str] = typer.Option(None, help="catalog folder (default: $FASHIONTAG_DATA)"),
    out: str = typer.Option("reports/explore"),
):
    """Class distributions, malformed rows, unusable photos and duplicate groups of a catalog."""
    from fashiontag.explore import explore as run_explore
    try:
        s = run_explore(_data(data), out)
    except CatalogError as e:
        _fail(str(e))
    typer.echo(f"{s['rows']:,} rows, {len(s['malformed_rows'])} malformed, {len(s['unusable_photos'])} unusable photos, "
               f"{s['duplicate_groups']:,} duplicate groups; report: {Path(out) / 'explore.md'}")


@app.command()
def run(
    data: Optional[str] = typer.Option(None, help="catalog folder (default: $FASHIONTAG_DATA)"),
    out: str = typer.Option("runs/default"),
    report: str = typer.Option("reports/default"),
    resume: bool = typer.Option(False),
):
    """The main job of `make run`: train the default recipe, then evaluate it on the test split."""
    from fashiontag.evaluate import evaluate as run_evaluation
    from fashiontag.train import train as run_training
    try:
        d = _data(data)
    except typer.BadParameter as e:
        typer.secho(str(e.message), fg="yellow", err=True)
        raise typer.Exit(2)
    best = run_training(TrainConfig(data=d, out=out), resume=resume and (Path(out) / "last").exists())
    summary = run_evaluation(d, best, report, side="test")
    for t, m in summary["tasks"].items():
        typer.echo(f"{t:15s} test accuracy {m['accuracy']:.2%}")
    typer.echo(f"model: {best}\nreport: {Path(report) / 'report.md'}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, min=1, max=65535),
    model: Optional[str] = typer.Option(None, help="model folder (default: the shipped model)"),
    access_log: bool = typer.Option(True, help="log every request (off: a little faster under heavy load)"),
    engine: str = typer.Option("onnx", help="onnx (fastest on a service's small batches), torch or onnx-int8"),
):
    """Serve the web page (/) and the HTTP API (POST /v1/tag, docs at /docs), batching concurrent requests."""
    from fashiontag.serve import serve as run_server
    try:
        run_server(host, port, model, access_log=access_log, engine=engine)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))


@app.command()
def export(
    model: Optional[str] = typer.Option(None, help="model folder (default: the shipped model)"),
    out: Optional[str] = typer.Option(None, help="output file (default: MODEL/model.onnx)"),
    format: str = typer.Option("onnx", help="onnx (the only format so far)"),
    int8: bool = typer.Option(False, "--int8", help="also write an int8-quantized model beside it (*.int8.onnx)"),
    calibration: List[str] = typer.Option([], help="photos or folders to calibrate int8 on (default: the training "
                                                   "catalog)"),
):
    """Export a model to ONNX (dynamic batch, input 'image' float (N,3,80,60) in [0,1], logits per task)."""
    if format != "onnx":
        _fail(f"unknown format {format!r}: only onnx")
    from fashiontag.export import export_onnx
    from fashiontag.model_meta import default_model_dir
    try:
        path = export_onnx(model or default_model_dir(), out, quantize=int8, calibration=calibration or None)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"wrote {path.with_name(path.name.replace('.int8', ''))} and {path}" if int8 else f"wrote {path}")


@app.command()
def tune(
    data: Optional[str] = typer.Option(None, help="catalog folder (default: $FASHIONTAG_DATA)"),
    model: str = typer.Option("seed-cnn", help="search space: seed-cnn (the notebook's dimensions) or rescnn"),
    trials: int = typer.Option(20, min=1, help="trials to add to the study"),
    epochs: Optional[int] = typer.Option(None, help="epochs per trial"),
    max_train: Optional[int] = typer.Option(None, help="train each trial on at most this many photos"),
    out: str = typer.Option("runs/tune", help="folder: trial-N/ runs, study.db, best.json, plots"),
    study: Optional[str] = typer.Option(None, help="study name (default: the model name); continued if it exists"),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default: sqlite:///OUT/study.db)"),
    timeout: Optional[float] = typer.Option(None, help="stop starting trials after this many seconds"),
    config: Optional[Path] = typer.Option(None, help="a config.json to start from"),
    set_: List[str] = typer.Option([], "--set", help="any config field, fixed for every trial"),
    progress: bool = typer.Option(True),
):
    """Search hyper-parameters with Optuna (TPE, median pruning); resumable, writes best.json and plots."""
    from fashiontag.tune import tune as run_tune
    cfg = TrainConfig.load(config) if config else TrainConfig()
    try:
        cfg = cfg.override(data=_data(data, cfg.data), epochs=epochs, max_train=max_train, progress=progress,
                           **_parse_sets(set_))
        summary = run_tune(cfg, trials, study or model, storage, model, timeout, out)
    except (CatalogError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        raise typer.Exit(130)
    typer.echo(f"best.json: {Path(out) / 'best.json'}" + ("" if summary["best"] else " (no trial completed)"))


def main() -> None:
    app(prog_name="fashiontag")


if __name__ == "__main__":
    sys.exit(main())
