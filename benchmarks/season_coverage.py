"""How much of a task (season by default) auto-accept can cover at its promise, under other acceptance rules than
the shipped one (issue 23's coverage target: season with titles for 30% of products at 98%).

Run by hand (under a minute on 2 cores):

    PYTHONPATH=src .venv/bin/python benchmarks/season_coverage.py [--task season] [--model DIR] [--no-titles]

Each rule is fitted on the validation side and applied to the test side of the model's split, through the same
decoding as tagging (Tagger.probabilities and choose) and the same rule as calibration (thresholds.choose_threshold:
Wilson's one-sided 95% lower bound of the precision at the target). Rules: the shipped one (one threshold per task);
the point estimate instead of the bound (what the promise would cost without its margin); one threshold per
predicted class; one per predicted masterCategory; each photo averaged with its mirror image; with titles, the
fused model's three parts (photo, title encoder, linear title part) weighed anew for the task, the factors chosen
from a grid for the coverage they give on validation (the tag then comes from the re-weighed logits too); and, for
scale, a threshold chosen on the test side itself at the point estimate (what the ranking allows; not a rule anyone
can use).

Then, per task, how consistent the catalog's own labels are where they should be most predictable: validation
products whose title appears word for word on the training side at least MIN_SEEN times, always with the same
label. A model that reads the title can be no surer of any product than of these, so the share of them whose
label is that same one bounds the precision its surest tags can reach.
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from fashiontag.data.text import normalise
from fashiontag.inference.tagger import Tagger
from fashiontag.inference.thresholds import PROMISE_Z, choose_threshold, decoded_confidence
from fashiontag.model_folder import DEFAULT_MODEL_DIR
from fashiontag.models.checkpoint import load_model
from fashiontag.models.title import TitleFusion
from fashiontag.training.evaluate import model_dataset

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "fashion-small"
MIN_SEEN = 3
# Each fused part's factor on top of the model's own, for the re-weighed rule.
FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)


def side(tagger: Tagger, ds, name: str, titles: bool, task: str) -> dict:
    """One side's confidence and correctness for `task`, the predicted class and masterCategory, as the tagger
    decodes them (a flipping tagger: each photo averaged with its mirror image)."""
    rows = ds.rows[name]
    probs = tagger.probabilities(np.asarray(ds.cache.pixels[rows]),
                                 [ds.catalog.titles[i] for i in rows] if titles else None)
    chosen = tagger.choose(probs)
    targets = {t: ds.targets[t][rows] for t in tagger.tasks}
    conf, correct = decoded_confidence(probs, chosen, targets)
    known = targets[task] >= 0
    return {"conf": conf[task], "correct": correct[task], "cls": chosen[task][known],
            "master": chosen["masterCategory"][known] if "masterCategory" in chosen else np.zeros(known.sum(), int)}


def grouped(val: dict, test: dict, key: str, precision: float) -> tuple[float, float, float | None]:
    """One threshold per group (val[key]), each promising `precision`: coverage on validation and test, and the
    precision of the accepted test tags."""
    accepted_val, accepted = 0.0, np.zeros(len(test["conf"]), bool)
    for g in np.unique(val[key]):
        v, t = val[key] == g, test[key] == g
        c = choose_threshold(val["conf"][v], val["correct"][v], precision, PROMISE_Z)
        accepted_val += c["coverage"] * v.sum()
        accepted |= t & (test["conf"] >= c["threshold"])
    return accepted_val / len(val["conf"]), accepted.mean(), _precision(test, accepted)


def _precision(test: dict, accepted: np.ndarray) -> float | None:
    return float(test["correct"][accepted].mean()) if accepted.any() else None


def fused_parts(tagger: Tagger, model: TitleFusion, ds, name: str, task: str) -> dict[str, np.ndarray]:
    """A late-fusion model's logits of `task` on one side's photos and titles, split into its parts as the model
    weighs them for each title's length: photo, title (the encoder) and linear; and the labels (y)."""
    rows = ds.rows[name]
    pixels = np.asarray(ds.cache.pixels[rows])
    tokens = tagger.tokenizer([ds.catalog.titles[i] for i in rows])
    with torch.no_grad():
        factors = {p: f[task].numpy() for p, f in model.lengths(torch.from_numpy(tokens)).items()}
        linear = torch.cat([model.linear(torch.from_numpy(tokens[i:i + 256]))[task]
                            for i in range(0, len(tokens), 256)]).numpy() * factors["linear"]
    photo = tagger.engine.logits(pixels)[task] * factors["photo"]
    return {"photo": photo, "title": tagger.engine.logits(pixels, tokens)[task] - photo - linear, "linear": linear,
            "y": ds.targets[task][rows]}


def reweighed(parts: dict[str, np.ndarray], weights: tuple[float, float, float], temperature: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and correctness of the tags from the parts weighed anew (photo, title, linear factors)."""
    logits = sum(w * parts[p] for w, p in zip(weights, ("photo", "title", "linear"))) / temperature
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    known = parts["y"] >= 0
    return probs.max(1)[known], (probs.argmax(1) == parts["y"])[known]


def reweighed_rule(tagger: Tagger, ds, task: str, precision: float) -> tuple[str, tuple] | None:
    """The factors whose re-weighed tags cover the most of validation at the promise, applied to test: the row's
    name (with the factors and the task's accuracy on each side against the model's own) and its figures. None: not
    a late-fusion model with a linear title part."""
    model, _ = load_model(tagger.model_dir)
    if not (isinstance(model, TitleFusion) and model.fusion == "late" and model.linear is not None):
        return None
    val, test = (fused_parts(tagger, model, ds, s, task) for s in ("val", "test"))
    temperature = tagger.meta["temperatures"][task]
    grid = list(itertools.product(FACTORS, repeat=3))
    best = max(grid, key=lambda w: choose_threshold(*reweighed(val, w, temperature), precision, PROMISE_Z)[
        "coverage"])
    c = choose_threshold(*reweighed(val, best, temperature), precision, PROMISE_Z)
    conf, correct = reweighed(test, best, temperature)
    accepted = conf >= c["threshold"]
    accuracy = {s: [100 * reweighed(parts, w, temperature)[1].mean() for w in ((1.0, 1.0, 1.0), best)]
                for s, parts in (("validation", val), ("test", test))}
    name = (f"lower bound, the parts re-weighed (photo x{best[0]:g}, title encoder x{best[1]:g}, linear "
            f"x{best[2]:g}; {task} accuracy " + ", ".join(f"{s} {a:.2f} -> {b:.2f}" for s, (a, b) in
                                                          accuracy.items()) + ")")
    return name, (c["coverage"], accepted.mean(), float(correct[accepted].mean()) if accepted.any() else None)


def label_agreement(ds, task: str) -> tuple[int, float]:
    """Validation products whose normalised title the training side has at least MIN_SEEN times, always with one
    label of `task`: how many, and the share whose own label is that one."""
    labels = defaultdict(Counter)
    for i in ds.rows["train"]:
        if ds.catalog.titles[i] and ds.targets[task][i] >= 0:
            labels[normalise(ds.catalog.titles[i])][ds.targets[task][i]] += 1
    agree = []
    for i in ds.rows["val"]:
        seen = labels.get(normalise(ds.catalog.titles[i] or ""))
        if seen and len(seen) == 1 and seen.total() >= MIN_SEEN and ds.targets[task][i] >= 0:
            agree.append(next(iter(seen)) == ds.targets[task][i])
    return len(agree), float(np.mean(agree)) if agree else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--task", default="season")
    ap.add_argument("--precision", type=float, default=0.98)
    ap.add_argument("--no-titles", dest="titles", action="store_false")
    args = ap.parse_args()
    plain = Tagger.load(args.model)
    ds = model_dataset(plain, args.data, progress=False)
    rows = {}
    for flip in (False, True):
        tagger = Tagger(plain.engine, plain.model, flip=flip)
        val, test = (side(tagger, ds, s, args.titles, args.task) for s in ("val", "test"))
        rules = {"point estimate": 0.0, "lower bound (shipped)": PROMISE_Z} if not flip else {
            "lower bound, each photo averaged with its mirror image": PROMISE_Z}
        for name, z in rules.items():
            c = choose_threshold(val["conf"], val["correct"], args.precision, z)
            accepted = test["conf"] >= c["threshold"]
            rows[name] = (c["coverage"], accepted.mean(), _precision(test, accepted))
        if not flip:
            rows["lower bound, one threshold per predicted class"] = grouped(val, test, "cls", args.precision)
            rows["lower bound, one threshold per predicted masterCategory"] = grouped(val, test, "master",
                                                                                       args.precision)
            oracle = choose_threshold(test["conf"], test["correct"], args.precision, 0.0)
            rule = reweighed_rule(plain, ds, args.task, args.precision) if args.titles else None
            if rule:
                rows[rule[0]] = rule[1]
            rows["chosen on the test side itself (for scale)"] = (None, oracle["coverage"], oracle["precision"])
    print(f"{args.task}, {'photo + title' if args.titles else 'photo alone'}, target {args.precision:.0%}; "
          f"fitted on validation ({len(val['conf']):,}), applied to test ({len(test['conf']):,})\n")
    print("| rule | validation: accepted | test: accepted | test: precision |\n|---|---|---|---|")
    for name, (cv, ct, pt) in rows.items():
        print(f"| {name} | {'-' if cv is None else f'{cv:.1%}'} | {ct:.1%} | {'-' if pt is None else f'{pt:.2%}'} |")
    print(f"\nValidation products whose title the training side has {MIN_SEEN} or more times, always with one label:"
          "\n\n| task | products | their own label is that one |\n|---|---|---|")
    for task in (t for t in plain.tasks if ds.targets[t].ndim == 1):  # one label a product
        n, share = label_agreement(ds, task)
        print(f"| {task} | {n:,} | {share:.2%} |")


if __name__ == "__main__":
    main()
