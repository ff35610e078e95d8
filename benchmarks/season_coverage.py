"""How much of a task (season by default) auto-accept can cover at its promise, under other acceptance rules than
the shipped one (issue 23's coverage target: season with titles for 30% of products at 98%).

Run by hand (under a minute on 2 cores):

    PYTHONPATH=src .venv/bin/python benchmarks/season_coverage.py [--task season] [--model DIR] [--no-titles]

Each rule is fitted on the validation side and applied to the test side of the model's split, through the same
decoding as tagging (Tagger.probabilities and choose) and the same rule as calibration (thresholds.choose_threshold:
Wilson's one-sided 95% lower bound of the precision at the target). Rules: the shipped one (one threshold per task);
the point estimate instead of the bound (what the promise would cost without its margin); one threshold per
predicted class; one per predicted masterCategory; each photo averaged with its mirror image; and, for scale, a
threshold chosen on the test side itself at the point estimate (what the ranking allows; not a rule anyone can use).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fashiontag.inference.tagger import Tagger
from fashiontag.inference.thresholds import PROMISE_Z, choose_threshold, decoded_confidence
from fashiontag.model_folder import DEFAULT_MODEL_DIR
from fashiontag.training.evaluate import model_dataset

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "fashion-small"


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
            rows["chosen on the test side itself (for scale)"] = (None, oracle["coverage"], oracle["precision"])
    print(f"{args.task}, {'photo + title' if args.titles else 'photo alone'}, target {args.precision:.0%}; "
          f"fitted on validation ({len(val['conf']):,}), applied to test ({len(test['conf']):,})\n")
    print("| rule | validation: accepted | test: accepted | test: precision |\n|---|---|---|---|")
    for name, (cv, ct, pt) in rows.items():
        print(f"| {name} | {'-' if cv is None else f'{cv:.1%}'} | {ct:.1%} | {'-' if pt is None else f'{pt:.2%}'} |")


if __name__ == "__main__":
    main()
