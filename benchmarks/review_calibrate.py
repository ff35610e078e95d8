"""Thresholds from a shop's own reviews, measured: does `fashiontag calibrate --reviews` keep the promise on photos
no one reviewed, and what does it accept?

Run by hand (not a test); a few minutes on 2 cores:

    PYTHONPATH=src .venv/bin/python benchmarks/review_calibrate.py [--audit-share 0.1]

1. New arrivals: half of the test side of the model's split, photos alone, tagged into a review queue as
   `fashiontag review` does, a share of the sure tags drawn as audits; the other half is left untouched.
2. A simulated reviewer sets the true label of every tag that needs review, audits included (review_loop.py).
3. A copy of the model is recalibrated from that queue (training.calibrate.calibrate_from_reviews: temperatures,
   then thresholds, of the photo-alone condition).
4. Both models tag the untouched half, photos alone: per task the share of tags at or above its threshold and how
   many of those are right, against the promise (threshold_precision).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from review_loop import queue_arrivals, simulate_reviewer

from fashiontag.inference.tagger import Tagger
from fashiontag.inference.thresholds import at_threshold, decoded_confidence
from fashiontag.model_folder import DEFAULT_MODEL_DIR, META, WEIGHTS
from fashiontag.training.calibrate import calibrate_from_reviews


def accepted(folder: Path, ds, rows: np.ndarray) -> dict[str, dict]:
    """Per task, at_threshold's record for the model's photo-alone thresholds on these rows' photos alone."""
    tagger = Tagger.load(folder)
    probs = tagger.probabilities(np.asarray(ds.cache.pixels[rows]))
    confidence, correct = decoded_confidence(probs, tagger.choose(probs), {t: ds.targets[t][rows]
                                                                          for t in tagger.tasks})
    thresholds = tagger.model.photo_alone.thresholds
    return {t: at_threshold(confidence[t], correct[t], thresholds[t]) for t in tagger.tasks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/fashion-small")
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--out", default="runs/review-calibrate")
    ap.add_argument("--audit-share", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model = Path(args.model)
    q = queue_arrivals(model, args.data, out, args.seed, args.audit_share)
    tagger, ds, row_of, arrivals, url = q["tagger"], q["ds"], q["row_of"], q["arrivals"], q["url"]
    counts = simulate_reviewer(url, q["truth"])

    refit = out / "model"
    shutil.rmtree(refit, ignore_errors=True)
    refit.mkdir()
    for name in (META, WEIGHTS, "split.json"):
        shutil.copy(model / name, refit / name)
    done = calibrate_from_reviews(refit, url)["conditions"]
    factors = {t: r["factor"] for c in done.values() for t, r in c["temperatures"].items()}

    rows = np.array([row_of[p] for p in q["untouched"] if ds.cache.ok[row_of[p]]])
    before, after = accepted(model, ds, rows), accepted(refit, ds, rows)
    promise = tagger.model.photo_alone.precision
    print(f"\n{len(arrivals):,} arrivals, photos alone: {counts['reviewed']:,} of {counts['tags']:,} tags reviewed "
          f"(audits at {args.audit_share:.0%} of the sure ones); scored on the {len(rows):,} untouched products\n")
    print("| task | promise | shipped thresholds: accepted / precision | from the reviews | temperature x |")
    print("|---|---|---|---|---|")

    def cell(r: dict) -> str:
        return f"{r['coverage']:.1%} / " + ("-" if r["precision"] is None else f"{r['precision']:.2%}")
    for t in tagger.tasks:
        factor = f"{factors[t]:.3f}" if t in factors else "-"
        print(f"| {t} | {promise.get(t, 0):.0%} | {cell(before[t])} | {cell(after[t])} | {factor} |")
    print(f"\n{(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
