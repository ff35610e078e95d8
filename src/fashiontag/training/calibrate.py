"""Calibration of a model folder: temperatures and auto-accept thresholds, per input condition.

One path for training's calibration (train.finish_model) and `fashiontag calibrate` (models made before, such as
the shipped one): both load the folder as a Tagger, compute the validation logits as tagging does by default (the
same engine, folded batch norms and precision; fitted on other logits, bf16 ones say, thresholds moved by up to
0.015) and decode them through decode.Decoder, as tagging does. A photo + title model is calibrated twice: with each product's title (model.json's top level) and on
the photo alone ("photo_only"), since a title makes the model surer and thresholds fitted with titles let wrong
photo-only tags through. Only model.json changes: the weights, and the vocabularies their header records, stay.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fashiontag.data.text import TitleDropout
from fashiontag.inference.decode import Decoder
from fashiontag.inference.tagger import Tagger
from fashiontag.inference.thresholds import decoded_confidence, fit_thresholds, precision_targets
from fashiontag.model_folder import MULTI, PHOTO_ONLY, ModelFolder, load_meta, write_meta
from fashiontag.models import TitleFusion
from fashiontag.models.checkpoint import load_model, save_model
from fashiontag.training.evaluate import model_dataset
from fashiontag.training.temperatures import fit_fusion_weights, fit_temperature, fit_temperatures
from fashiontag.training.title_linear import add_title_linear


def calibrate(model: str | Path, data: str | Path, *, precision: float | None = None,
              task_precision: dict[str, float] | None = None, cache_dir: str | None = None,
              progress: bool = True, fusion: bool = False, title_linear: float | None = None) -> dict:
    """Fit each task's temperature and threshold (fit_calibration) on the validation side of the model's split of
    `data`, write them into the folder's model.json, and re-export its model.onnx when it has one (the export
    records the model version, which model.json is part of). Targets: task_precision per task, else precision,
    else the model's config's. fusion: first refit a late-fusion photo + title model's weights on its photo and
    title parts (weigh_fusion; the weights change). title_linear: first fit the model's linear title part (a linear
    SVM on the TF-IDF of the titles, training.title_linear) with this C on the training side, adding one to a model
    without it; implies fusion. Returns the calibration record written."""
    tagger = Tagger.load(model)
    unknown = sorted(set(task_precision or {}) - set(tagger.tasks))
    if unknown:
        raise ValueError(f"--task-precision names tasks the model does not have: {', '.join(unknown)}; its tasks: "
                         f"{', '.join(tagger.tasks)}")
    config = dict(tagger.meta.get("config", {}))
    config.update({k: v for k, v in (("precision", precision), ("task_precision", task_precision)) if v is not None})
    ds = model_dataset(tagger, data, cache_dir, progress)
    rows = ds.rows["val"]
    if len(rows) == 0:
        raise ValueError(f"{data}: none of the model's validation photos is in this catalog; pass the catalog it "
                         "was trained on")
    folder = tagger.model_dir
    pixels, titles = np.asarray(ds.cache.pixels[rows]), [ds.catalog.titles[i] for i in rows]
    targets = {t: ds.targets[t][rows] for t in tagger.tasks}
    onnx = (folder / "model.onnx").exists()  # a refit rewrites the folder: its export is made again below
    if title_linear is not None:
        train = ds.rows["train"]
        add_title_linear(folder, [ds.catalog.titles[i] for i in train],
                         {t: ds.targets[t][train] for t in tagger.tasks}, title_linear, progress)
        tagger, fusion = Tagger.load(folder), True
    if fusion:
        if weigh_fusion(folder, tagger, pixels, titles, targets) is None:
            raise ValueError(f"{folder}: --fusion is for a photo + title model with late fusion")
        if onnx:
            from fashiontag.inference.onnx_export import export_onnx
            export_onnx(folder)
        tagger = Tagger.load(folder)
    # Judged as the tags will be given: a photo + title model with each product's title (others ignore it).
    record = fit_calibration(tagger, pixels, titles, targets, config)
    write_meta(folder, {**load_meta(folder), **record})
    if onnx:
        from fashiontag.inference.onnx_export import export_onnx
        export_onnx(folder)
    return record


def weigh_fusion(folder: Path, tagger: Tagger, pixels: np.ndarray, titles: list[str | None],
                 targets: dict[str, np.ndarray]) -> dict | None:
    """A late-fusion photo + title model: fit per task the factors on its photo part, its title part and its linear
    title part if it has one, and how they change with the title's length (fit_fusion_weights with lengths), on
    validation photos and their labels, each photo twice: with its title and with the title thinned as training
    thins it (its config's title_dropout: cut short or words dropped, never removed). Write the factors into the
    folder's weights, with model.json's fusion_weights: the factors applied since training (these times any applied
    before; title_scales, the title's factor alone, from older models), and the slopes into
    arch_args.title.length_slopes (models.title.LengthSlopes; added to any there). Returns the factors; None for
    any other model, which stays as it is. `tagger` is the folder's, loaded before: its engine gives the logits as
    tagging does.

    Weighed by the title's length, the shipped model with its linear part gained on whole titles and thinned ones
    alike over one factor per part (validation, two halves, fitted on one and scored on the other: articleType
    97.13 -> 97.43 and baseColour 90.09 -> 91.33 with whole titles, baseColour 83.67 -> 84.57 thinned:
    benchmarks/title.py lengths).

    Fitted on whole titles alone, the shipped model leant on the title so hard that a title with half its words
    lost 2.3 more points of gender and one without colour words 4.3 more of baseColour than fitted on both, for 0.1
    to 0.3 points gained with whole titles (test side, benchmarks/accuracy.py --modes)."""
    model, meta = load_model(folder)
    if not (isinstance(model, TitleFusion) and model.fusion == "late"):
        return None
    dropout = {**meta.get("config", {}).get("title_dropout", {}), "drop": 0.0}
    thinned = TitleDropout(**dropout)([title or "" for title in titles], np.random.default_rng(0))
    tokens = np.concatenate([tagger.tokenizer(t) for t in (titles, thinned)])
    count = (tokens > 0).sum(1)
    # The parts as the model weighs them now (a refit composes with what is there).
    old = model.lengths(torch.from_numpy(tokens)) if model.lengths is not None else None

    def weighed(part: str, task: str, logits: np.ndarray) -> np.ndarray:
        return logits * old[part][task].numpy() if old is not None else logits

    photo = tagger.engine.logits(pixels)
    both = tagger.engine.logits(np.concatenate([pixels] * 2), tokens)
    parts = {"photo": {t: weighed("photo", t, np.concatenate([photo[t]] * 2)) for t in photo}}
    linear = {t: weighed("linear", t, lg) for t, lg in _linear_part(model, tokens).items()}
    parts["title"] = {t: both[t] - parts["photo"][t] - linear.get(t, 0) for t in photo}
    if linear:
        parts["linear"] = linear
    whole = count[:len(titles)]
    slopes = meta["arch_args"]["title"].get("length_slopes") or {  # centred on a typical whole title
        "center": float(np.log(whole[whole > 0]).mean()) if (whole > 0).any() else 0.0}
    lengths = (np.log(np.maximum(count, 1)) - slopes["center"]) * (count > 0)
    fitted = fit_fusion_weights({name: {t: torch.from_numpy(lg) for t, lg in part.items()}
                                 for name, part in parts.items()},
                                {t: np.concatenate([y] * 2) for t, y in targets.items()}, torch.from_numpy(lengths))
    weights = {part: fitted[part] for part in parts}
    model.weigh_parts(weights["photo"], weights["title"], weights.get("linear"))
    before = meta.pop("fusion_weights", None) or {"photo": {}, "title": meta.pop("title_scales", {})}
    meta["fusion_weights"] = {part: {t: f * before.get(part, {}).get(t, 1.0) for t, f in weights[part].items()}
                              for part in weights}
    meta["arch_args"]["title"]["length_slopes"] = {
        "center": slopes["center"], **{part: {t: b + slopes.get(part, {}).get(t, 0.0)
                                              for t, b in fitted[f"{part} slope"].items()} for part in parts}}
    split = folder / "split.json"
    save_model(folder, model, meta, json.loads(split.read_text()) if split.exists() else None)
    return meta["fusion_weights"]


def _linear_part(model: TitleFusion, tokens: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """The linear title part's scores per task ({} for a model without one), in float32 as every engine gives them;
    in batches, since the part looks up a row of every class per id."""
    if model.linear is None:
        return {}
    with torch.no_grad():
        chunks = [model.linear(torch.from_numpy(tokens[i:i + batch])) for i in range(0, len(tokens), batch)]
    return {t: torch.cat([c[t] for c in chunks]).numpy() for t in model.linear.sizes}


def fit_calibration(tagger: Tagger, pixels: np.ndarray, titles: list[str | None], targets: dict[str, np.ndarray],
                    config: dict) -> dict:
    """model.json's calibration record from validation photos (letterboxed uint8), their titles and labels:
    temperatures, calibration_val, thresholds, threshold_precision and thresholds_val as tagging uses them with
    the titles, and for a photo + title model the same on the photo alone under "photo_only"."""
    targets = {t: targets[t] for t in tagger.tasks}
    record = _fit_condition(tagger, pixels, titles, targets, config, {})
    if tagger.tokenizer is not None:
        record[PHOTO_ONLY] = _fit_condition(tagger, pixels, None, targets, config, record)
    return record


def _fit_condition(tagger: Tagger, pixels: np.ndarray, titles: list[str | None] | None,
                   targets: dict[str, np.ndarray], config: dict, with_titles: dict) -> dict:
    """One input condition's temperatures (single-label tasks: multi-label ones decide per class) and then its
    thresholds on the probabilities they give, decoded jointly as tagging decodes them. with_titles: the record
    of the condition with titles, when this is the photo-only one (a Tagger reads photo-only values from there)."""
    tokens = tagger.tokenizer(titles) if tagger.tokenizer is not None and titles is not None else None
    titled = tokens.any(1) if tokens is not None else np.zeros(len(pixels), bool)
    logits = tagger.engine.logits(pixels, tokens)
    single = [t for t in tagger.tasks if tagger.kinds[t] != MULTI]
    temps, ece = fit_temperatures({t: torch.from_numpy(logits[t]) for t in single}, {t: targets[t] for t in single})
    record = {"temperatures": {t: temps.get(t, 1.0) for t in tagger.tasks}, "calibration_val": ece}
    meta = {**tagger.meta, **with_titles, PHOTO_ONLY: record} if with_titles else {**tagger.meta, **record}
    decoder = Decoder(ModelFolder.from_record(meta))
    probs = decoder.probabilities(logits, titled)
    confidence, correct = decoded_confidence(probs, decoder.choose(probs), targets)
    return {**record, **fit_thresholds(confidence, correct, precision_targets(config, tagger.tasks))}


# A task's temperature is refitted from reviews only on at least this many decided tags: fewer say little.
MIN_REVIEWED_FOR_TEMPERATURE = 100


def rescaled_by_reviews(decided: dict[str, dict[str, np.ndarray]], temperatures: dict[str, float],
                        skip: set[str] = frozenset()) -> tuple[dict[str, np.ndarray], dict[str, float], dict]:
    """Per task, a temperature refitted on the tags people decided (reviewed_tags: the kept confidences and which
    one people settled on), on top of the one the tags were given with: the queue keeps probabilities, not logits,
    but softmax(log p / f) is what a temperature f times as large gives, over the classes kept (the rest lumped).
    A factor is kept where it lowers the reviewed tags' NLL, on MIN_REVIEWED_FOR_TEMPERATURE tags or more (tasks in
    `skip`, multi-label ones, keep theirs). Returns each task's confidences as the new temperature gives them, the
    new temperatures, and per refitted task {factor, nll_before, nll_after, n}."""
    confidence, new, record = {}, {}, {}
    for t, d in decided.items():
        confidence[t] = d["confidence"]
        if t in skip or len(d["confidence"]) < MIN_REVIEWED_FOR_TEMPERATURE or t not in temperatures:
            continue
        logits, truth = torch.from_numpy(np.log(np.clip(d["probs"], 1e-12, None))), torch.from_numpy(d["truth"])
        factor = fit_temperature(logits, truth)
        before = float(torch.nn.functional.cross_entropy(logits, truth))
        after = float(torch.nn.functional.cross_entropy(logits / factor, truth)) if factor > 0 else before
        if not after < before:
            continue
        confidence[t] = (logits / factor).softmax(1)[:, 0].numpy()
        new[t] = float(temperatures[t]) * factor
        record[t] = {"factor": factor, "nll_before": before, "nll_after": after, "n": len(truth)}
    return confidence, new, record


def calibrate_from_reviews(model: str | Path, reviews: str, *, precision: float | None = None,
                           task_precision: dict[str, float] | None = None) -> dict:
    """Refit auto-accept thresholds on the tags people decided in a review database (review/stats.reviewed_tags:
    accepted = the model was right, corrected = wrong; bulk-accepted tags left out), through the same
    choose_threshold as validation (fit_thresholds: each target promised at 95% confidence), and write them into
    the folder's model.json, the temperatures refitted first where enough tags were decided (rescaled_by_reviews).
    A photo + title model's tags are fitted per input condition, as the queue recorded it for each
    photo: those tagged with their title into model.json's top level, the rest into its photo-alone record
    ("photo_only"); where a queue from before did not record it, by the threshold the tag carries (review.stats).
    A condition's tasks with no decided tag keep their thresholds and temperatures. Returns {titles (the model reads
    them), conditions: {condition: {record, fitted: {task: choose_threshold's record}, temperatures: {task:
    rescaled_by_reviews' record}, kept: [tasks]}}, queue_model}."""
    from fashiontag.review.stats import reviewed_tags
    from fashiontag.review.store import ReviewStore

    model = ModelFolder.open(model)
    folder, meta, tasks = model.path, model.record, model.tasks
    unknown = sorted(set(task_precision or {}) - set(tasks))
    if unknown:
        raise ValueError(f"--task-precision names tasks the model does not have: {', '.join(unknown)}; its tasks: "
                         f"{', '.join(tasks)}")
    store = ReviewStore(reviews, create=False)
    try:
        queued = store.model() or {}
        decided = reviewed_tags(store)
        shown = store.shown_url
    finally:
        store.close()
    if queued.get("vocabs") and queued["vocabs"] != meta["vocabs"]:
        raise ValueError(f"{shown} holds tags of a model with other tasks or classes than {folder}: calibrate the "
                         "model that tagged the queue")
    decided = {t: d for t, d in decided.items() if t in tasks and len(d["confidence"])}
    if not decided:
        raise ValueError(f"{shown}: no tag decided by a person yet (accepted or corrected on the review page)")
    config = dict(meta.get("config", {}))
    config.update({k: v for k, v in (("precision", precision), ("task_precision", task_precision)) if v is not None})
    targets = precision_targets(config, tasks)
    # condition -> which decided tags it is fitted on (None: all of them, a model without titles has one condition)
    groups = {"": True, PHOTO_ONLY: False} if model.takes_titles else {"": None}
    conditions = {}
    for condition, titled in groups.items():
        mine = {t: {k: v[d["titled"] == titled] for k, v in d.items()} if titled is not None else d
                for t, d in decided.items()}
        mine = {t: d for t, d in mine.items() if len(d["confidence"])}
        if not mine:
            continue
        old = meta.get(condition, {}) if condition else meta
        temperatures = old.get("temperatures", meta.get("temperatures", {}))
        # The factor applies to the temperatures the queue's confidences came from, so that a second run on the
        # same queue does not compound it (a queue from before they were kept: the model's own).
        given = (queued.get(condition, {}) if condition else queued).get("temperatures") or temperatures
        confidence, refitted, temperature_record = rescaled_by_reviews(
            mine, given, {t for t in mine if model.kinds.get(t) == MULTI})
        fitted = fit_thresholds(confidence, {t: d["correct"] for t, d in mine.items()}, {t: targets[t] for t in mine})
        for c in fitted["thresholds_val"].values():
            c["source"] = "reviews"
        record = {"temperatures": {**temperatures, **refitted}, "temperatures_reviews": temperature_record,
                  "thresholds": {**old.get("thresholds", meta.get("thresholds", {})), **fitted["thresholds"]},
                  "threshold_precision": {**old.get("threshold_precision", meta.get("threshold_precision", {})),
                                          **fitted["threshold_precision"]},
                  "thresholds_val": {**old.get("thresholds_val", meta.get("thresholds_val", {})),
                                     **fitted["thresholds_val"]},
                  "thresholds_reviews": {"db": shown, "tags": {t: len(d["confidence"]) for t, d in mine.items()},
                                         "queue_model": queued.get("version")}}
        meta = {**meta, condition: {**old, **record}} if condition else {**meta, **record}
        conditions[condition] = {"record": record, "fitted": fitted["thresholds_val"],
                                 "temperatures": temperature_record, "kept": [t for t in tasks if t not in mine]}
    write_meta(folder, meta)
    if (folder / "model.onnx").exists():
        from fashiontag.inference.onnx_export import export_onnx
        export_onnx(folder)
    return {"titles": model.takes_titles, "conditions": conditions, "queue_model": queued.get("version")}
