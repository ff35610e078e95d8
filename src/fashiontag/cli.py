"""The command line: each command parses flags and calls one library function."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from fashiontag import __version__
from fashiontag.data.catalog import did_you_mean
from fashiontag.errors import FashiontagError
from fashiontag.inference.thresholds import DEFAULT_PRECISION, MAX_CONFIDENCE, MIN_CONFIDENCE, MIN_TOP_K
from fashiontag.training.config import STARTS, TrainConfig

# What a user can fix, caught once for every command (_OneLineErrors): the package's own errors and what a wrong
# flag, file or value raises in the libraries below it (a ValueError, an OSError such as FileNotFoundError, a
# TypeError from a --set value of the wrong type).
USER_ERRORS = (FashiontagError, ValueError, OSError, TypeError)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


class _OneLineErrors(TyperGroup):
    """Runs every command, the review and users subcommands included: an error the user can fix (USER_ERRORS) is
    one line, `error: MESSAGE`, and exit 2; Ctrl-C exits 130. Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # `fashiontag predict | head`: click's own handling, a quiet exit
            raise
        except USER_ERRORS as e:
            _fail(str(e))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


# Plain click help: rich markup would eat text in brackets and label every option with its Python type.
app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None)

SET_HELP = ("any config field as FIELD=VALUE, JSON values (e.g. --set model_args='{\"width\": 48}'); repeatable. "
            "A field that has its own flag is set by the flag or by --set, not both: --epochs 5 --set epochs=5 "
            "is an error")

KAGGLE_HINT = ("No catalog given. Pass --data (a catalog file, CSV, TSV or JSON Lines, or a folder holding styles.csv "
               "and images/) or set FASHIONTAG_DATA.\n"
               "Get one: download the Kaggle dataset 'paramaggarwal/fashion-product-images-small'\n"
               "(kaggle datasets download -d paramaggarwal/fashion-product-images-small && unzip it),\n"
               "then FASHIONTAG_DATA=path/to/myntradataset make run")


def _data(data: Optional[str], fallback: str = "") -> str:
    data = data or os.environ.get("FASHIONTAG_DATA", "") or fallback
    if not data:
        raise typer.BadParameter(KAGGLE_HINT, param_hint="--data")
    if not Path(data).is_file() and not (Path(data) / "styles.csv").is_file():
        hint = did_you_mean(Path(data)) if Path(data).is_dir() else ""  # a shop's folder, not the Kaggle one
        raise typer.BadParameter(f"{data} is a folder without styles.csv; {hint}" if hint else
                                 f"{data} is neither a catalog file nor a folder holding styles.csv. {KAGGLE_HINT}",
                                 param_hint="--data")
    return data


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fashiontag {__version__}")
        raise typer.Exit()


@app.callback()
def _app(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="print the version and exit")):
    """Tag fashion product photos: train, evaluate, explore, predict, tune, export, serve."""


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


def _refuse_both(flags: dict, sets: dict) -> dict:
    """The flags given (not None); a field given both by its flag and by --set is an error."""
    given = {k: v for k, v in flags.items() if v is not None}
    both = sorted(given.keys() & sets.keys())
    if both:
        raise ValueError("; ".join(f"--{k.replace('_', '-')} and --set {k}= both given" for k in both))
    return given


def _start(where: Optional[str]) -> dict:
    """--from: a named starting point (TrainConfig.start) or a model folder to fine-tune (TrainConfig.init)."""
    if where is None:
        return {}
    return {"start": where} if where in STARTS else {"init": where}


def _train_config(config: Optional[Path], flags: dict, sets: dict, need_data: bool = True) -> TrainConfig:
    """config.json (or the defaults), changed by the flags given and the --set fields.

    data comes from --data or --set, else $FASHIONTAG_DATA, else the config file."""
    given = _refuse_both(flags, sets)
    cfg = TrainConfig.load(config) if config else TrainConfig()
    changes = {**sets, **given}
    if need_data:
        changes["data"] = _data(changes.get("data"), cfg.data)
    return cfg.override(**changes)


PROGRESS_HELP = "progress bars (default: on)"


DATA_HELP = ("catalog: a CSV, TSV or JSON Lines file, or a folder holding styles.csv and images/ (default: "
             "$FASHIONTAG_DATA)")
ID_HELP = "the id column (default: id)"
IMAGE_HELP = ("the photo column: paths relative to the catalog file, absolute paths, or names found as "
              "images/<name>.<ext> (default: images/<id>.<ext>)")
TITLE_HELP = "the product title column (default: productDisplayName where present)"


def _tasks(tasks: Optional[str]) -> Optional[tuple[str, ...]]:
    return tuple(t.strip() for t in tasks.split(",") if t.strip()) if tasks else None


@app.command()
def train(
    data: Optional[str] = typer.Option(None, metavar="PATH", help=DATA_HELP),
    tasks: Optional[str] = typer.Option(None, metavar="A,B,...", help="task columns (default: the Kaggle layout's "
                                        "seven, else every column with few distinct values; a column whose cells "
                                        "hold several values joined by | is multi-label)"),
    id_column: Optional[str] = typer.Option(None, metavar="NAME", help=ID_HELP),
    image_column: Optional[str] = typer.Option(None, metavar="NAME", help=IMAGE_HELP),
    title_column: Optional[str] = typer.Option(None, metavar="NAME", help=TITLE_HELP),
    hierarchy: Optional[List[str]] = typer.Option(None, metavar="CHILD>PARENT",
                                                  help="a hierarchy to decode jointly, e.g. category>department "
                                                  "(default: the one found in the data)"),
    image_size: Optional[str] = typer.Option(None, metavar="HxW", help="model input in pixels, e.g. 160x120 "
                                             "(default: the catalog's typical photo size, longer side at most 160)"),
    extra: Optional[List[str]] = typer.Option(None, metavar="FILE", help="reviewed tags (`fashiontag review export`) "
                                              "to train on as well; repeatable. They never join validation or test"),
    out: Optional[str] = typer.Option(None, metavar="DIR", help=f"run folder (default: {TrainConfig.out})"),
    model: Optional[str] = typer.Option(None, metavar="NAME",
                                        help="model family: rescnn (default), seed-cnn, mlp, efficientnet-lite0"),
    start: Optional[str] = typer.Option(None, "--from", metavar="WHERE",
                                        help="where training starts: shipped (the shipped model's trunk and title "
                                             "encoder, with the catalog's own heads), scratch, imagenet (with --model "
                                             "efficientnet-lite0) or a model folder (fine-tuning). Default: shipped "
                                             "for your own catalog, scratch for the Kaggle layout"),
    epochs: Optional[int] = typer.Option(None, metavar="N", help=f"epochs to train (default: {TrainConfig.epochs}, "
                                         f"ending early after {TrainConfig.patience} without a better validation "
                                         "score); given, exactly N unless --set patience=K"),
    batch_size: Optional[int] = typer.Option(None, metavar="N",
                                             help=f"photos per training step (default: {TrainConfig.batch_size})"),
    lr: Optional[float] = typer.Option(None, metavar="RATE", help=f"peak learning rate (default: {TrainConfig.lr})"),
    protocol: Optional[str] = typer.Option(None, metavar="all|notebook",
                                           help="all (default): every task and class; notebook: the original "
                                           "notebook's three tasks and classes"),
    max_train: Optional[int] = typer.Option(None, metavar="N", help="train on at most this many photos (quick runs)"),
    seed: Optional[int] = typer.Option(None, metavar="N", help="random seed of the split, the initial weights and "
                                       f"augmentation (default: {TrainConfig.seed})"),
    precision: Optional[float] = typer.Option(None, metavar="P", help="auto-accept thresholds: per task the lowest "
                                              "confidence whose validation precision reaches P (default: "
                                              f"{TrainConfig.precision}; per task: --set task_precision=...)"),
    config: Optional[Path] = typer.Option(None, metavar="FILE", help="a config.json to start from"),
    set_: List[str] = typer.Option([], "--set", metavar="FIELD=VALUE", help=SET_HELP),
    resume: bool = typer.Option(False, help="continue an interrupted run in --out"),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
):
    """Train a model; the best checkpoint lands in OUT/best (safetensors + JSON)."""
    from fashiontag.training.train import train as run_training
    sets = _parse_sets(set_)
    cfg = _train_config(config, dict(data=data, out=out, model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                                     protocol=protocol, max_train=max_train, seed=seed, progress=progress,
                                     tasks=_tasks(tasks), id_column=id_column, image_column=image_column,
                                     title_column=title_column, hierarchy=tuple(hierarchy) if hierarchy else None,
                                     image_size=image_size, precision=precision,
                                     extra=tuple(extra) if extra else None, **_start(start)),
                        sets, need_data=not (resume and not data))
    if epochs is not None and "patience" not in sets:
        # The epochs a user asks for are the epochs trained: early stopping would end the run sooner than asked.
        cfg = cfg.override(patience=max(cfg.patience, epochs))
    best = run_training(cfg, resume=resume)
    typer.echo(f"best model: {best}")


@app.command()
def evaluate(
    data: Optional[str] = typer.Option(None, metavar="PATH", help=DATA_HELP + "; read with the model's columns"),
    model: Optional[str] = typer.Option(None, metavar="DIR", help="model folder (default: the shipped model)"),
    out: str = typer.Option("reports/latest", metavar="DIR", help="report folder"),
    side: str = typer.Option("unseen", metavar="SIDE",
                             help="unseen: every photo the model did not train on (on its own catalog "
                             "the validation and test sides; another catalog: every photo); test, val, train or all"),
    flip: bool = typer.Option(False, help="test-time flip: average each photo with its mirror image"),
    engine: str = typer.Option("torch", metavar="NAME",
                               help="torch, onnx or onnx-int8: score the exported model as it will run"),
    titles: bool = typer.Option(True, help="a photo + title model reads each product's title (--no-titles: "
                                "photos alone)"),
):
    """Score a model on its test split; writes report.md, metrics.json and plots."""
    from fashiontag.training.evaluate import evaluate as run_evaluation
    summary = run_evaluation(_data(data), model=model, out=out, side=side, flip=flip, engine=engine, titles=titles)
    for t, m in summary["tasks"].items():
        typer.echo(f"{t:15s} accuracy {m['accuracy']:.2%}  macro-F1 {m['macro_f1']:.3f}  " + (
            f"sample-F1 {m['sample_f1']:.3f} (multi-label)" if "sample_f1" in m
            else f"top-{m['top_k']} {m['top_k_accuracy']:.2%}"))
    typer.echo(f"report: {Path(out) / 'report.md'}")


@app.command()
def audit(
    data: Optional[str] = typer.Option(None, metavar="CATALOG", help=DATA_HELP + "; read with the model's columns"),
    model: Optional[str] = typer.Option(None, metavar="DIR", help="model folder (default: the shipped model)"),
    tasks: Optional[str] = typer.Option(None, metavar="A,B,...", help="tasks to audit (default: all the model's "
                                        "tasks)"),
    side: str = typer.Option("unseen", metavar="SIDE", help="on the model's own catalog: unseen (validation and "
                             "test sides), val or test, scored by the model; train, cross-fitted (its labels were "
                             "learnt: heads refit in 5 folds on the model's features); all, both. Another catalog "
                             "is audited whole"),
    out: str = typer.Option("audit.csv", metavar="FILE", help="the flagged labels, most likely wrong first; "
                            "audit.md, a report, and <FILE>-titles.csv, the labels their own title contradicts, "
                            "are written beside it"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
):
    """Find the catalog's labels that are likely wrong, from a model that did not learn them (cleanlab)."""
    from fashiontag.training.audit import LEVELS
    from fashiontag.training.audit import audit as run_audit
    result = run_audit(_data(data), model=model, tasks=_tasks(tasks), side=side, progress=progress)
    try:
        report, titles = result.save(out)
    except OSError as e:
        _fail(f"cannot write {out}: {e.strerror or e}")
    typer.echo(f"audited {result.scope}")
    for t, s in result.summary.items():
        typer.echo(f"{t:15s} {s['scored']:,} labels: " + ", ".join(f"{s[f'at_{x}']:,} at score >= {x}" for x in LEVELS)
                   + f"; cleanlab finds {s['cleanlab']:,}" + (f"; {s['unknown']:,} not the model's classes"
                                                               if s["unknown"] else ""))
    for note in result.notes:
        typer.echo(note)
    typer.echo(f"identical photos with different labels: {len(result.duplicates):,} groups")
    by_task = Counter(c["task"] for c in result.titles)
    typer.echo(f"labels their own title contradicts: {len(result.titles):,}"
               + (f" ({', '.join(f'{t} {n:,}' for t, n in by_task.items())}): {titles}" if by_task else ""))
    typer.echo(f"{len(result.flags):,} flags: {out}; report: {report}")


@app.command()
def calibrate(
    model: str = typer.Option(..., metavar="DIR", help="model folder whose model.json receives the thresholds"),
    data: Optional[str] = typer.Option(None, metavar="DIR", help="the catalog it was trained on (default: "
                                       "$FASHIONTAG_DATA); its validation side is used"),
    precision: Optional[float] = typer.Option(None, min=0.0, max=1.0, metavar="P",
                                              help="target precision of every task (default: the model's "
                                                   f"training config, else {DEFAULT_PRECISION})"),
    task_precision: List[str] = typer.Option([], metavar="TASK=P", help="one task's own target; repeatable"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
    reviews: Optional[str] = typer.Option(None, metavar="URL", help="instead of --data: refit the thresholds on the "
                                          "tags people decided in this review database (accepted: the model was "
                                          "right; corrected: wrong); temperatures stay"),
    fusion: bool = typer.Option(False, "--fusion", help="a photo + title model: first refit the weights of its "
                                "photo and title parts per task on the validation side (its weights change)"),
    title_linear: Optional[float] = typer.Option(None, "--title-linear", metavar="C",
                                                 help="a photo + title model: first fit its linear title part (a "
                                                      "linear SVM with this C on the TF-IDF of the training side's "
                                                      "titles; added if it has none), then --fusion"),
):
    """Fit temperatures and auto-accept thresholds onto an existing model folder, with titles and for the photo
    alone (model.json; model.onnx re-exported if present); with --reviews, thresholds from a review queue."""
    if reviews is not None:
        if fusion or title_linear is not None:
            raise typer.BadParameter("--fusion and --title-linear fit on the photos of --data, not on --reviews")
        return _calibrate_from_reviews(model, reviews, data, precision, task_precision)
    from fashiontag.training.calibrate import calibrate as run_calibrate
    record = run_calibrate(model, _data(data), precision=precision, task_precision=_task_precision(task_precision),
                           progress=progress, fusion=fusion, title_linear=title_linear)
    for condition, fitted in (("with titles" if "photo_only" in record else "", record),
                              ("photo alone", record.get("photo_only"))):
        if fitted is None:
            continue
        if condition:
            typer.echo(f"{condition}:")
        for t, c in fitted["thresholds_val"].items():
            typer.echo(f"{t:15s} threshold {c['threshold']:.4f}  auto-accepts {c['coverage']:.1%} of validation "
                       f"photos at {fitted['threshold_precision'][t]:.0%} precision (95% sure)"
                       + (f": {c['why']}" if c.get("why") else ""))


def _task_precision(pairs: List[str]) -> dict[str, float]:
    """--task-precision TASK=P pairs."""
    per_task = _parse_sets(pairs)
    for task, p in per_task.items():
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise typer.BadParameter(f"{task}={p!r}: not a number", param_hint="--task-precision")
    return {task: float(p) for task, p in per_task.items()}


def _calibrate_from_reviews(model: str, reviews: str, data: Optional[str], precision: Optional[float],
                            task_precision: List[str]) -> None:
    from fashiontag.training.calibrate import calibrate_from_reviews
    if data is not None:
        _fail("--reviews and --data: one or the other (thresholds from reviewed tags, or from the validation side)")
    done = calibrate_from_reviews(model, reviews, precision=precision, task_precision=_task_precision(task_precision))
    for condition, fitted in done["conditions"].items():
        if done["titles"]:
            typer.echo("photo alone (photo_only): the photos queued without a title" if condition else
                       "photo + title: the photos queued with their titles (from a predict output)")
        promised = fitted["record"]["threshold_precision"]
        for t, c in fitted["temperatures"].items():
            typer.echo(f"{t:15s} temperature x{c['factor']:.3f} (NLL of {c['n']} reviewed tags {c['nll_before']:.4f} "
                       f"-> {c['nll_after']:.4f})")
        for t, c in fitted["fitted"].items():
            why = f": {c['why']}" if c.get("why") else ""
            typer.echo(f"{t:15s} threshold {c['threshold']:.4f}  auto-accepts {c['coverage']:.1%} of {c['n']} "
                       f"reviewed tags at {promised[t]:.0%} precision (95% sure){why}")
        if fitted["kept"]:
            typer.echo(f"kept (no reviewed tag): {', '.join(fitted['kept'])}")


@app.command()
def predict(
    paths: Optional[List[str]] = typer.Argument(None, metavar="PATH...",
                                                help="image files and folders (searched recursively); with --on also "
                                                     "URIs (s3://bucket/prefix/)"),
    data: Optional[str] = typer.Option(None, metavar="CATALOG",
                                       help="instead of PATH...: tag every row of a catalog (its photo and title, "
                                            "read with the model's columns), keyed by the catalog's id"),
    id_column: str = typer.Option("", metavar="NAME", help="with --data: the id column (default: the model's, "
                                  "else id)"),
    image_column: str = typer.Option("", metavar="NAME", help="with --data: the photo column (default: the model's, "
                                     "else images/<id>.<ext>)"),
    title_column: str = typer.Option("", metavar="NAME", help="with --data: the title column (default: the model's, "
                                     "else productDisplayName)"),
    out: Optional[str] = typer.Option(None, metavar="FILE",
                                      help="output file: .csv, .tsv or .jsonl (default: CSV on stdout); with --on "
                                           "the folder or URI that receives the Parquet shards"),
    model: Optional[str] = typer.Option(None, metavar="DIR", help="model folder (default: the shipped model)"),
    format: Optional[str] = typer.Option(None, metavar="NAME",
                                         help="csv, tsv or jsonl (default: from --out's extension, else csv)"),
    top_k: int = typer.Option(MIN_TOP_K, min=MIN_TOP_K, metavar="K", help="also write the K-1 runners-up per task"),
    min_confidence: Optional[float] = typer.Option(None, min=MIN_CONFIDENCE, max=MAX_CONFIDENCE, metavar="P",
                                                   help="flag tags less sure than this in <task>_needs_review "
                                                        "columns (the label is kept); default: the model's "
                                                        "auto-accept threshold per task; 0 flags nothing"),
    batch_size: int = typer.Option(512, min=1, metavar="N", help="photos per batch"),
    progress: bool = typer.Option(True, help="progress bar on stderr, when stderr is a terminal"),
    engine: str = typer.Option("torch", metavar="NAME",
                               help="torch, onnx (onnxruntime: fastest start) or onnx-int8 (quantized)"),
    flip: bool = typer.Option(False, help="test-time flip: a little more accurate, half the speed"),
    colours: bool = typer.Option(False, "--colours", help="also a colours column: the product's dominant colours "
                                 "(hex, share of its area, nearest colour class)"),
    on: Optional[str] = typer.Option(None, metavar="ray[://HOST:PORT]",
                                     help="tag on a Ray cluster (pip install 'fashiontag[ray]'); a re-run into the "
                                          "same --out skips the photos tagged before"),
    actors: Optional[int] = typer.Option(None, min=1, metavar="N",
                                         help="with --on: tagging actors (default: half the cluster's CPUs)"),
    csv: bool = typer.Option(False, help="with --on: also merge the shards into one tags.csv in --out"),
):
    """Tag photos into CSV, TSV or JSON lines: path, id, then <task> and <task>_confidence per task, and error.

    Exits 1 when a path does not exist, a folder cannot be read, or nothing could be tagged (the rows of the
    photos that could be read are written all the same). With --on, a re-run into the same --out tags only the
    photos that are new or changed since."""
    if on:
        if data:
            _fail("--data is not taken with --on yet: tag the catalog's photo folder")
        return _predict_on_ray(on, paths or [], out, model, top_k, min_confidence, batch_size, progress, engine,
                               flip, actors, csv)
    from fashiontag.inference.predict import predict as run_predict
    counts = run_predict(paths or [], out=out, model=model, fmt=format, top_k=top_k, min_confidence=min_confidence,
                         batch_size=batch_size, progress=progress and sys.stderr.isatty(), engine=engine, flip=flip,
                         data=data, catalog_columns={"id_column": id_column, "image_column": image_column,
                                                     "title_column": title_column}, colours=colours)
    tagged = counts["rows"] - counts["errors"]
    typer.echo(f"tagged {tagged:,} photos; {counts['errors']:,} could not be read"
               + (f"; wrote {out}" if out else ""), err=True)
    if counts["missing"] or counts["unreadable_folders"] or not tagged:
        typer.secho("error: " + ("nothing to tag" if not counts["rows"] else "not every photo could be tagged")
                    + f" ({counts['missing']} missing paths, {counts['unreadable_folders']} unreadable folders, "
                    f"{counts['errors']} unreadable photos)", fg="red", err=True)
        raise typer.Exit(1)


def _predict_on_ray(on: str, paths: List[str], out: Optional[str], model: Optional[str], top_k: int,
                    min_confidence: Optional[float], batch_size: int, progress: bool, engine: str, flip: bool,
                    actors: Optional[int], csv: bool) -> None:
    if on != "ray" and not on.startswith("ray://"):
        _fail(f"--on {on}: use ray (RAY_ADDRESS, a cluster on this machine, or a new local one) or ray://HOST:PORT")
    if not out:
        _fail("--on needs --out: the folder or URI that receives the Parquet shards")
    try:
        from fashiontag.inference.ray_backend import tag_on_ray
    except ImportError as e:
        _fail(f"--on ray needs Ray: pip install 'fashiontag[ray]' ({e})")
    s = tag_on_ray(paths, out, address=None if on == "ray" else on, engine=engine, model=model, top_k=top_k,
                   min_confidence=min_confidence, flip=flip, csv=csv, actors=actors, batch_size=batch_size,
                   progress=progress and sys.stderr.isatty())
    typer.echo(f"tagged {s['tagged']:,} photos, {s['errors']:,} could not be read, {s['skipped']:,} were tagged "
               f"before; {s['photos_per_s']:,.0f} photos/s; {s['shards']} new shards in {out}"
               + (f"; wrote {s['csv']}" if s["csv"] else ""), err=True)
    if not s["tagged"] and not s["skipped"]:
        typer.secho("error: nothing could be tagged", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def explore(
    data: Optional[str] = typer.Option(None, metavar="PATH", help=DATA_HELP),
    id_column: str = typer.Option("", metavar="NAME", help=ID_HELP),
    image_column: str = typer.Option("", metavar="NAME", help=IMAGE_HELP),
    title_column: str = typer.Option("", metavar="NAME", help=TITLE_HELP),
    out: str = typer.Option("reports/explore", metavar="DIR", help="report folder", show_default=True),
    map_to: str = typer.Option("shipped", metavar="MODEL|none", help="the taxonomy map: which of this model's tasks "
                               "explains each column (the shipped model; a model folder; none: no map)"),
):
    """Columns and their kinds, class counts, hierarchies, photo sizes, malformed rows, unusable photos, repeated
    ids and duplicate photos of a catalog, and the taxonomy map of its columns onto what a model already tags."""
    from fashiontag.data.catalog import CatalogSpec
    from fashiontag.model_folder import DEFAULT_MODEL_DIR
    from fashiontag.training.explore import explore as run_explore
    from fashiontag.training.taxonomy_map import map_lines
    known = {"shipped": DEFAULT_MODEL_DIR, "none": None}.get(map_to, map_to)
    s = run_explore(CatalogSpec(_data(data), id_column, image_column, title_column), out=out, map_to=known)
    kinds = ", ".join(f"{c} ({k})" for c, k in s["columns"].items())
    typer.echo(f"{s['rows']:,} rows, {len(s['malformed_rows'])} problems in the file, "
               f"{len(s['unusable_photos'])} unusable photos, {s['duplicate_groups']:,} duplicate groups\n"
               f"columns: {kinds}\ntasks by default: {', '.join(s['tasks'])}\n"
               f"hierarchies: {', '.join(h['child'] + ' > ' + h['parent'] for h in s['hierarchies']) or 'none'}")
    for line in map_lines(s.get("taxonomy_map", {}).get("columns", {})):
        typer.echo(f"taxonomy map: {line}")
    typer.echo(f"report: {Path(out) / 'explore.md'}")
    if s["photo_trouble"]:  # training would refuse this catalog: say so now
        typer.secho(f"error: {s['photo_trouble']}", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def run(
    data: Optional[str] = typer.Option(None, metavar="PATH", help=DATA_HELP),
    out: str = typer.Option("runs/default", metavar="DIR", help="run folder", show_default=True),
    report: str = typer.Option("reports/default", metavar="DIR", help="report folder", show_default=True),
    resume: bool = typer.Option(False, help="continue an interrupted run in --out, if it saved resume state"),
):
    """The main job of `make run`: train the default recipe, then evaluate it on the test split."""
    from fashiontag.training.evaluate import evaluate as run_evaluation
    from fashiontag.training.train import train as run_training
    try:
        d = _data(data)
    except typer.BadParameter as e:
        typer.secho(str(e.message), fg="yellow", err=True)
        raise typer.Exit(2)
    if resume and not (Path(out) / "last").exists():
        typer.echo(f"nothing to resume: {Path(out) / 'last'} does not exist; training from scratch", err=True)
        resume = False
    best = run_training(TrainConfig(data=d, out=out), resume=resume)
    summary = run_evaluation(d, model=best, out=report, side="test")
    for t, m in summary["tasks"].items():
        typer.echo(f"{t:15s} test accuracy {m['accuracy']:.2%}")
    typer.echo(f"model: {best}\nreport: {Path(report) / 'report.md'}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", metavar="HOST", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, metavar="PORT", min=1, max=65535),
    model: Optional[str] = typer.Option(None, metavar="DIR", help="model folder (default: the shipped model)"),
    access_log: bool = typer.Option(True, help="log every request (off: a little faster under heavy load)"),
    engine: str = typer.Option("onnx", metavar="NAME",
                               help="onnx (fastest on a service's small batches), torch or onnx-int8"),
    token_file: Optional[str] = typer.Option(None, metavar="FILE", help="POST /v1/tag then needs `Authorization: "
                                             "Bearer TOKEN`, TOKEN being this file's first line (default: the "
                                             "FASHIONTAG_TOKEN variable, if set); /healthz stays open"),
    allowed_host: Optional[List[str]] = typer.Option(None, metavar="NAME", help="a Host name the service answers "
                                                     "to besides localhost, 127.0.0.1, [::1] and --host "
                                                     "(repeatable); others get 400"),
    upload_deadline: float = typer.Option(60.0, min=1.0, metavar="S", help="seconds an upload may take in all"),
    min_upload_rate: float = typer.Option(10.0, min=0.0, metavar="KIB_S", help="slowest average upload rate "
                                          "(KiB/s) allowed after the first 5 s (0: none)"),
):
    """Serve the web page (/) and the HTTP API (POST /v1/tag, docs at /docs), batching concurrent requests."""
    from fashiontag.serve import serve as run_server
    from fashiontag.serve.app import read_token
    from fashiontag.serve.hosts import is_loopback, serve_hosts
    token = read_token(token_file)
    _warn_hosts(host, allowed_host or ())
    if token is None and not is_loopback(host):
        typer.echo(f"warning: serving on {host} without a token: anyone who reaches the port can tag photos "
                   "(--token-file FILE or FASHIONTAG_TOKEN to require one)", err=True)
    run_server(host=host, port=port, model=model, access_log=access_log, engine=engine, token=token,
               allowed_hosts=serve_hosts(host, allowed_host or ()), upload_deadline=upload_deadline,
               min_upload_rate=min_upload_rate * 1024)


def _warn_hosts(host: str, allowed: tuple[str, ...] | list[str]) -> None:
    from fashiontag.serve.hosts import serve_hosts
    if serve_hosts(host, allowed) == ["*"]:
        typer.echo(f"warning: listening on {host} with no --allowed-host: any Host header is accepted (name the "
                   "server's names with --allowed-host to refuse the others)", err=True)


class _StartByDefault(TyperGroup):
    """`fashiontag review PATH...` is `fashiontag review start PATH...`; `review export` is its sibling."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


review_app = typer.Typer(cls=_StartByDefault, no_args_is_help=True, rich_markup_mode=None,
                         help="The review loop: `review PATH...` queues photos and serves the review page; "
                              "`review export` writes the reviewed tags as a catalog CSV.")
app.add_typer(review_app, name="review")


@review_app.command("start")
def review_start(
    paths: List[str] = typer.Argument(..., metavar="PATH...", help="photos and folders to tag, or one predict "
                                      "output (.csv, .tsv, .jsonl) to load, or one `fashiontag audit` file "
                                      "(audit.csv: its flagged labels, the catalog's beside the suggestion; or "
                                      "audit-titles.csv: the class the title names beside the label)"),
    db: Optional[str] = typer.Option(None, metavar="URL", help="SQLAlchemy database URL (default: SQLite beside "
                                     "the first PATH: photos/ -> photos.review.db, tags.csv -> tags.review.db)"),
    model: Optional[str] = typer.Option(None, metavar="DIR", help="model folder (default: the shipped model)"),
    min_confidence: Optional[float] = typer.Option(None, min=MIN_CONFIDENCE, max=MAX_CONFIDENCE, metavar="P",
                                                   help="review every tag less sure than P (default: the model's "
                                                        "auto-accept threshold per task)"),
    host: str = typer.Option("127.0.0.1", metavar="HOST", help="address to listen on"),
    port: int = typer.Option(8000, metavar="PORT", min=1, max=65535),
    engine: str = typer.Option("onnx", metavar="NAME", help="onnx, torch or onnx-int8"),
    serve: bool = typer.Option(True, help="serve the review page once the queue is filled"),
    root: Optional[List[str]] = typer.Option(None, metavar="DIR", help="another folder the photos may come from "
                                             "(repeatable): the page is served photos from inside the folders "
                                             "given as PATH (a predict output's or audit's own folder) and "
                                             "these only: an audit's photos need their catalog's images folder"),
    no_auth: bool = typer.Option(False, "--no-auth", help="serve beyond loopback (--host 0.0.0.0, ...) even with no "
                                 "accounts in the database: anyone who reaches the port can read and change "
                                 "everything (see `review users add`)"),
    allowed_host: Optional[List[str]] = typer.Option(None, metavar="NAME", help="a Host name the service answers "
                                                     "to besides localhost, 127.0.0.1, [::1] and --host "
                                                     "(repeatable); others get 400"),
    secure_cookies: Optional[bool] = typer.Option(None, "--secure-cookies/--no-secure-cookies",
                                                  help="mark the sign-in cookies Secure (default: when the request "
                                                       "came over https, X-Forwarded-Proto from a proxy on this "
                                                       "machine included)"),
    audit_share: float = typer.Option(0.02, min=0.0, max=1.0, metavar="SHARE",
                                      help="share of the sure (auto-accepted) tags of the photos added that is "
                                           "queued for review all the same, marked as audits: what `review stats` "
                                           "measures the live precision on (0: none)"),
):
    """Queue photos for review (tags, runners-up, thresholds into the database) and serve the review page at /."""
    from fashiontag.review.service import start_review
    if serve:
        _warn_hosts(host, allowed_host or ())
    start_review(paths, db=db, model=model, min_confidence=min_confidence, host=host, port=port, engine=engine,
                 serve=serve, announce=lambda line: typer.echo(line, err=True), roots=root or (), no_auth=no_auth,
                 allowed_hosts=tuple(allowed_host or ()), cookie_secure=secure_cookies, audit_share=audit_share)


users_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Reviewer accounts in a review database: with one or more, the review page needs a "
                             "sign-in and records each action under the signed-in account.")
review_app.add_typer(users_app, name="users")


def _on_store(db: str, work, create: bool = False):
    """work(store) on the review database of `db`, closed after. create: `users add` may create the database, so
    that a team's accounts exist before its first photos are queued."""
    from fashiontag.review.store import ReviewStore
    store = ReviewStore(db, create=create)
    try:
        return work(store)
    finally:
        store.close()


@users_app.command("add")
def users_add(
    name: str = typer.Argument(..., metavar="NAME"),
    db: str = typer.Option(..., metavar="URL", help="the review queue's database URL"),
    role: str = typer.Option("reviewer", metavar="ROLE", help="reviewer (reviews, undoes their own actions) or "
                             "admin (also undoes anyone's)"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from the first line of "
                                        "standard input instead of a prompt"),
):
    """Add an account (the password is asked for twice, or read from standard input)."""
    from fashiontag.review.auth import add_user
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt(f"password for {name}", hide_input=True, confirmation_prompt=True)
    added = _on_store(db, lambda store: add_user(store, name, password, role), create=True)
    typer.echo(f"added {role} {added!r}", err=True)


@users_app.command("list")
def users_list(db: str = typer.Option(..., metavar="URL", help="the review queue's database URL")):
    """The accounts: name, role, when added."""
    from fashiontag.review.auth import list_users
    found = _on_store(db, list_users)
    for u in found:
        typer.echo(f"{u['name']}\t{u['role']}\t{u['created_at']}")
    if not found:
        typer.echo("no accounts: the review page needs no sign-in (and serves on loopback only)", err=True)


@users_app.command("remove")
def users_remove(name: str = typer.Argument(..., metavar="NAME"),
                 db: str = typer.Option(..., metavar="URL", help="the review queue's database URL")):
    """Remove an account: its sessions end at once; the actions it took stay recorded under its name."""
    from fashiontag.review.auth import remove_user
    removed = _on_store(db, lambda store: remove_user(store, name))
    if not removed:
        _fail(f"no account {name!r}")
    typer.echo(f"removed {name!r}", err=True)


@review_app.command("export")
def review_export(
    db: str = typer.Option(..., metavar="URL", help="the review queue's database URL"),
    out: str = typer.Option(..., metavar="FILE", help="CSV to write: the catalog's id column and one per task"),
    all_: bool = typer.Option(False, "--all", help="also photos with tags still needing review (their model "
                                                   "guesses)"),
    force: bool = typer.Option(False, "--force", help="replace --out if it exists"),
):
    """Write the reviewed tags in the catalog's schema (id column, the model's tasks, the photo's path)."""
    from fashiontag.review.csv_export import export_reviewed
    counts = export_reviewed(db, out, include_pending=all_, force=force)
    typer.echo(f"wrote {counts['written']:,} photos to {out}; {counts['pending']:,} still need review"
               + ("" if all_ else " (left out)"), err=True)


@review_app.command("stats")
def review_stats(
    db: str = typer.Option(..., metavar="URL", help="the review queue's database URL"),
    as_json: bool = typer.Option(False, "--json", help="print the numbers as JSON"),
):
    """Per task, the live precision of auto-accepted tags from reviewed audits (95% interval; flagged below its
    promise), the share auto-accepted against validation's, and each reviewer's throughput."""
    from fashiontag.review.stats import print_stats
    from fashiontag.review.stats import review_stats as measure
    stats = _on_store(db, measure)
    if as_json:
        typer.echo(json.dumps(stats, indent=1))
    else:
        print_stats(stats)


@app.command()
def export(
    model: Optional[str] = typer.Option(None, metavar="DIR", help="model folder (default: the shipped model)"),
    out: Optional[str] = typer.Option(None, metavar="FILE", help="output file (default: MODEL/model.onnx)"),
    format: str = typer.Option("onnx", metavar="NAME", help="onnx (the only format so far)"),
    int8: bool = typer.Option(False, "--int8", help="also write an int8-quantized model beside it (*.int8.onnx)"),
    calibration: List[str] = typer.Option([], metavar="PATH",
                                          help="photos or folders to calibrate int8 on (default: the training "
                                                   "catalog)"),
):
    """Export a model to ONNX (dynamic batch, input 'image' float (N,3,H,W) in [0,1], logits per task)."""
    if format != "onnx":
        _fail(f"unknown format {format!r}: only onnx")
    from fashiontag.inference.onnx_export import export_onnx
    from fashiontag.model_folder import default_model_dir
    path = export_onnx(model or default_model_dir(), out=out, quantize=int8, calibration=calibration or None)
    typer.echo(f"wrote {path.with_name(path.name.replace('.int8', ''))} and {path}" if int8 else f"wrote {path}")


@app.command()
def tune(
    data: Optional[str] = typer.Option(None, metavar="PATH", help=DATA_HELP),
    model: Optional[str] = typer.Option(None, metavar="NAME", help="search space: seed-cnn (default; the notebook's "
                                        "dimensions) or rescnn"),
    trials: int = typer.Option(20, min=1, metavar="N", help="trials to add to the study", show_default=True),
    epochs: Optional[int] = typer.Option(None, metavar="N", help=f"epochs per trial (default: {TrainConfig.epochs})"),
    max_train: Optional[int] = typer.Option(None, metavar="N", help="train each trial on at most this many photos"),
    out: Optional[str] = typer.Option(None, metavar="DIR", help="folder: trial-N/ runs, study.db, best.json, plots "
                                      "(default: runs/tune)"),
    study: Optional[str] = typer.Option(None, metavar="NAME",
                                        help="study name (default: the model name); continued if it exists"),
    storage: Optional[str] = typer.Option(None, metavar="URL",
                                          help="Optuna storage URL (default: sqlite:///OUT/study.db)"),
    timeout: Optional[float] = typer.Option(None, metavar="SECONDS", help="stop starting trials after this long"),
    config: Optional[Path] = typer.Option(None, metavar="FILE", help="a config.json to start from"),
    set_: List[str] = typer.Option([], "--set", metavar="FIELD=VALUE", help="the same for every trial: " + SET_HELP),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
):
    """Search hyper-parameters with Optuna (TPE, median pruning); resumable, writes best.json and plots."""
    from fashiontag.training.tune import tune as run_tune
    sets = _parse_sets(set_)
    _refuse_both(dict(model=model, out=out), sets)
    # --model and --out (or --set model=, out=) are the search space and the study's folder, not trial settings.
    space = sets.pop("model", None) or model or "seed-cnn"
    folder = sets.pop("out", None) or out or "runs/tune"
    cfg = _train_config(config, dict(data=data, epochs=epochs, max_train=max_train, progress=progress), sets)
    summary = run_tune(cfg, trials=trials, study_name=study or space, storage=storage, model=space, timeout=timeout,
                       out=folder)
    typer.echo(f"best.json: {Path(folder) / 'best.json'}" + ("" if summary["best"] else " (no trial completed)"))
