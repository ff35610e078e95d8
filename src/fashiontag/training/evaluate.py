"""Evaluation: per-task metrics on photos the model did not train on, written as a report folder (markdown, JSON,
plots). The model is run through the same Tagger as `predict` and `serve`, so what is scored is what users get."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    top_k_accuracy_score,
)

from fashiontag.data.catalog import CatalogSpec
from fashiontag.data.taxonomy import Taxonomy
from fashiontag.inference.tagger import Tagger
from fashiontag.inference.thresholds import at_threshold, coverage_table, decoded_confidence
from fashiontag.model_folder import MULTI
from fashiontag.training import plots
from fashiontag.training.dataset import load_dataset
from fashiontag.training.taxonomy_map import map_markdown
from fashiontag.training.temperatures import expected_calibration_error

# unseen: every photo the model did not train on; all: every photo; or one side of the model's split.
SIDES = ("unseen", "test", "val", "train", "all")
# A catalog is the model's own when this share of its photos' ids are in the model's split; a shop's catalog whose
# ids merely collide with a few of the training ids is another catalog, and all its photos are unseen.
OWN_CATALOG_SHARE = 0.9


def task_metrics(y: np.ndarray, probs: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """sklearn's metrics for one task, over rows whose label is known."""
    known = y >= 0
    y, probs, pred = y[known], probs[known], pred[known]
    labels = list(range(len(classes)))
    k = min(3, len(classes) - 1)  # top-3 where a task has more than 3 classes; top-k of k+1 classes is trivial
    report = classification_report(y, pred, labels=labels, target_names=classes, output_dict=True, zero_division=0)
    return {
        "n": int(len(y)),
        "accuracy": accuracy_score(y, pred),
        "macro_f1": f1_score(y, pred, labels=labels, average="macro", zero_division=0),
        "balanced_accuracy": balanced_accuracy_score(y, pred),
        "top_k": max(k, 1),
        "top_k_accuracy": (top_k_accuracy_score(y, probs, k=k, labels=labels) if k > 1
                           else accuracy_score(y, pred)),
        "ece": expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(y)),
        "majority_baseline": float(np.bincount(y, minlength=len(classes)).max() / max(len(y), 1)),
        "per_class": {c: report[c] for c in classes},
        "confusion": confusion_matrix(y, pred, labels=labels).tolist(),
    }


def multi_label_metrics(y: np.ndarray, probs: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """sklearn's multi-label metrics for one task, over rows whose labels are known: exact-match accuracy,
    sample-F1 (the F1 of each photo's label set, averaged), macro-F1 and per-class precision and recall."""
    known = y[:, 0] >= 0
    y, pred = y[known] > 0, pred[known]
    report = classification_report(y, pred, target_names=classes, output_dict=True, zero_division=0)
    return {
        "kind": MULTI,
        "n": int(len(y)),
        "accuracy": accuracy_score(y, pred),
        "sample_f1": f1_score(y, pred, average="samples", zero_division=1.0),
        "macro_f1": f1_score(y, pred, average="macro", zero_division=0),
        "per_class": {c: report[c] for c in classes},
    }


def is_own_catalog(ds) -> bool:
    """Whether ds (model_dataset) is the catalog the model was trained on: its split names nearly all its photos."""
    usable = np.flatnonzero(ds.cache.ok)
    split_ids = set().union(*(ds.split[s] for s in ("train", "val", "test")))
    return sum(ds.catalog.ids[i] in split_ids for i in usable) >= OWN_CATALOG_SHARE * len(usable)


def rows_to_score(ds, side: str) -> tuple[np.ndarray, str]:
    """Catalog rows to score for `side` (see SIDES), and a description of them for the report."""
    if not is_own_catalog(ds):
        return (np.flatnonzero(ds.cache.ok),
                "whole catalog (not the catalog the model was trained on, so none of it was seen)")
    if side == "unseen":
        return np.union1d(ds.rows["val"], ds.rows["test"]), "unseen (the validation and test sides of its split)"
    if side == "all":
        return np.concatenate([ds.rows[s] for s in ("train", "val", "test")]), "all (training photos included)"
    return ds.rows[side], side


def evaluate(data: str | Path, *, model: str | Path | None = None, out: str | Path = "reports/latest",
             side: str = "unseen", cache_dir: str | None = None, progress: bool = True, plot: bool = True,
             flip: bool = False, engine: str = "torch", bf16: bool | None = None, titles: bool = True) -> dict:
    """Score a model; writes report.md, metrics.json and PNG plots into `out`.

    side: see SIDES; on another catalog than the model's own every photo is scored whatever the side.
    engine, bf16 and flip are the Tagger's: which runtime computes the logits, in which precision, and test-time
    flipping. titles: a photo + title model reads each product's title (False: photos alone)."""
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}: use {', '.join(SIDES)}")
    tagger = Tagger.load(model, engine=engine, bf16=bf16, flip=flip)
    ds = model_dataset(tagger, data, cache_dir, progress)
    rows, side = rows_to_score(ds, side)
    if len(rows) == 0:
        raise ValueError(f"{data}: no usable photos to score")
    print(f"scoring {len(rows):,} photos: {side}")
    pixels = np.asarray(ds.cache.pixels[rows])
    # A photo + title model is scored as it is used where titles exist: with each product's title.
    with_titles = titles and tagger.tokenizer is not None
    probs = tagger.probabilities(pixels, [ds.catalog.titles[i] for i in rows] if with_titles else None)
    chosen = tagger.choose(probs)
    metrics = {t: (multi_label_metrics if tagger.kinds[t] == MULTI else task_metrics)(
        ds.targets[t][rows], probs[t], chosen[t], tagger.vocabs[t]) for t in tagger.tasks}
    confidence, correct = decoded_confidence(probs, chosen, {t: ds.targets[t][rows] for t in tagger.tasks})
    # Each product is judged by its condition's thresholds: the photo alone's where it came without a title.
    thresholds = tagger.thresholds if with_titles else tagger.photo_thresholds
    for t in tagger.tasks:
        metrics[t]["coverage"] = coverage_table(confidence[t], correct[t])
        metrics[t]["at_threshold"] = at_threshold(confidence[t], correct[t], thresholds[t])
    summary = {"model": str(tagger.model_dir), "model_version": tagger.info()["version"], "data": str(data),
               "side": side, "engine": engine, "flip": flip, "titles": with_titles,
               "n": int(len(rows)), "catalog_problems": len(ds.catalog.problems), "unusable_photos": len(ds.cache.errors),
               "tasks": metrics}

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    figures = {}
    if plot:
        figures = plots.report_plots(out, ds, rows, pixels, probs, chosen, tagger.meta, metrics)
        plots.risk_coverage(out / "risk_coverage.png", confidence, correct, thresholds)
        figures["risk_coverage"] = "risk_coverage.png"
    (out / "report.md").write_text(render_report(summary, tagger.meta, figures))
    return summary


def model_dataset(tagger: Tagger, data: str | Path, cache_dir: str | None = None, progress: bool = True):
    """The catalog `data` as the model sees it: its vocabularies, its split (split.json in its folder) and its
    photo preparation."""
    split_path = tagger.model_dir / "split.json"
    meta, hierarchy = tagger.meta, tagger.model.hierarchy
    ds = load_dataset(CatalogSpec.from_record(data, tagger.model.catalog),
                      protocol=meta.get("config", {}).get("protocol", "all"), split_path=split_path,
                      vocabs=tagger.vocabs, cache_dir=cache_dir, progress=progress, framing=tagger.photo_input.framing,
                      hw=tagger.input_hw, taxonomy=Taxonomy(tagger.kinds, tuple(hierarchy[0]) if hierarchy else ()))
    if not split_path.exists():
        print(f"note: {tagger.model_dir} has no split.json; using a fresh split of this catalog")
    return ds


def render_report(summary: dict, meta: dict, figures: dict[str, str]) -> str:
    m = summary["tasks"]
    lines = ["# fashiontag evaluation", "",
             f"Model `{summary['model']}` ({meta.get('arch')}, {meta.get('arch_args')}), "
             f"trained {meta.get('train_seconds', 0) / 60:.1f} min; scored on **{summary['side']}** of "
             f"`{summary['data']}`: {summary['n']:,} photos"
             f"{' (each averaged with its mirror image)' if summary.get('flip') else ''}; "
             f"engine {summary.get('engine', 'torch')}"
             f"{'; with their titles' if summary.get('titles') else ''}. "
             f"Catalog rows skipped as malformed: {summary['catalog_problems']}; photos unusable: {summary['unusable_photos']}.",
             "", "| task | classes | accuracy | macro-F1 | balanced acc. | top-k acc. (k) | majority baseline | ECE |",
             "|---|---|---|---|---|---|---|---|"]
    for t, v in m.items():
        if v.get("kind") == MULTI:
            lines.append(f"| {t} (multi-label: exact match; sample-F1 {v['sample_f1']:.3f}) | {len(v['per_class'])} | "
                         f"{v['accuracy']:.2%} | {v['macro_f1']:.3f} | | | | |")
            continue
        lines.append(f"| {t} | {len(v['per_class'])} | {v['accuracy']:.2%} | {v['macro_f1']:.3f} | "
                     f"{v['balanced_accuracy']:.2%} | {v['top_k_accuracy']:.2%} ({v['top_k']}) | {v['majority_baseline']:.2%} | "
                     f"{v['ece']:.3f} |")
    lines += ["", "Auto-accept coverage: the share of photos whose tag can be taken without review at a given "
              "precision (the lowest confidence threshold reaching it on these photos), and at the model's own "
              "thresholds (chosen on its validation photos).", "",
              "| task | " + " | ".join(f"at {float(p):.0%}" for p in next(iter(m.values()))["coverage"])
              + " | model threshold | its coverage | its precision |",
              "|---" * (len(next(iter(m.values()))["coverage"]) + 4) + "|"]
    for t, v in m.items():
        a = v["at_threshold"]
        lines.append(f"| {t} | " + " | ".join(f"{c['coverage']:.1%}" for c in v["coverage"].values())
                     + f" | {a['threshold']:.3f} | {a['coverage']:.1%} | "
                     + ("n/a" if a["precision"] is None else f"{a['precision']:.2%}") + " |")
    for key in ("distributions", "curves", "risk_coverage"):
        if key in figures:
            lines += ["", f"![{key}]({figures[key]})"]
    if meta.get("taxonomy_map"):
        lines += [""] + map_markdown(meta["taxonomy_map"], meta.get("config", {}).get("init") or "the start model")
    for t, v in m.items():
        lines += ["", f"## {t}", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for c, r in v["per_class"].items():
            lines.append(f"| {c} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1-score']:.3f} | {int(r['support'])} |")
        for key in (f"confusion_{t}", f"examples_{t}"):
            if key in figures:
                lines += ["", f"![{key}]({figures[key]})"]
    return "\n".join(lines) + "\n"
