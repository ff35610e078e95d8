"""Catalog audit on planted errors: does `fashiontag audit` find labels we know are wrong?

Run by hand (not a test), on a CPU:

    .venv/bin/python benchmarks/audit.py                 # the shipped model, the test side of its split (a minute)
    .venv/bin/python benchmarks/audit.py --side train    # its training side, cross-fitted (about 15 minutes)

On one side of the model's split 3% of the gender, articleType and baseColour labels are changed to another class
of the same task, drawn by the classes' frequency on that side (a plausible slip, not a uniform one), in 3 draws.
The test side (photos and labels the model never saw) is scored by the model's own probabilities, which do not
depend on the labels, so they are computed once. The training side is scored as `fashiontag audit --side train`
scores it: cross-fitted (training/crossfit.py), heads refit per fold on the catalog's labels, planted ones included,
so per draw; the suggestion there is the fold heads' most probable other class (the audit's own choice is joint over
the hierarchy, whose other tasks this benchmark does not fit). Per task and method: recall of the planted errors
within the top 2n of that task's ranking (n: the number planted), precision and recall at n/2, n, 2n and 4n, how
often the suggestion is the original label, cleanlab's find_label_issues' own precision and recall, and the share of
the catalog's own (unplanted) labels scoring 0.5 or more. The catalog's own errors count as false alarms here, so
precision is a lower bound. Methods: cleanlab's label quality scores, "self_confidence" (fashiontag audit's score:
it is the baseline 1 - p(catalog label) itself), "normalized_margin" and "confidence_weighted_entropy". Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from fashiontag.data.vocab import OTHER
from fashiontag.inference.tagger import Tagger
from fashiontag.training.audit import METHOD, score_labels
from fashiontag.training.crossfit import DIMS, FOLDS, L2, cross_fit, model_outputs
from fashiontag.training.evaluate import model_dataset

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "fashion-small"
TASKS = ("gender", "articleType", "baseColour")
TARGETS = {"gender": 0.90, "articleType": 0.85, "baseColour": 0.70}
LENGTHS = (0.5, 1, 2, 4)
METHODS = (METHOD, "normalized_margin", "confidence_weighted_entropy")  # list lengths, in multiples of the number planted


def plant(labels: np.ndarray, share: float, classes: list[str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """labels with `share` of them changed to another class drawn by the classes' frequency; and which changed."""
    n_classes = len(classes)
    allowed = np.ones(n_classes, bool)
    if OTHER in classes:
        allowed[classes.index(OTHER)] = False  # the pooled rare classes are no label a person would type
    freq = np.bincount(labels, minlength=n_classes).astype(float) * allowed
    planted = rng.choice(len(labels), round(share * len(labels)), replace=False)
    noisy = labels.copy()
    for k in planted:
        p = freq.copy()
        p[labels[k]] = 0.0
        noisy[k] = rng.choice(n_classes, p=p / p.sum())
    flipped = np.zeros(len(labels), bool)
    flipped[planted] = True
    return noisy, flipped


def ranking_metrics(score: np.ndarray, flipped: np.ndarray) -> dict:
    order = np.argsort(-score, kind="stable")
    n = int(flipped.sum())
    out = {}
    for m in LENGTHS:
        k = max(1, round(m * n))
        hits = int(flipped[order[:k]].sum())
        out[m] = (hits / k, hits / n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--side", choices=("test", "train"), default="test",
                    help="test: scored by the model; train: cross-fitted")
    ap.add_argument("--folds", type=int, default=FOLDS)
    ap.add_argument("--l2", type=float, default=L2, help="cross-fitting: L2 on the heads' weights")
    ap.add_argument("--dims", type=int, default=DIMS, help="cross-fitting: principal components the heads read")
    ap.add_argument("--share", type=float, default=0.03)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", module="cleanlab")

    tagger = Tagger.load(args.model)
    ds = model_dataset(tagger, args.data, progress=False)
    rows = ds.rows[args.side]
    t0 = time.perf_counter()
    outputs = model_outputs(tagger, ds.cache.pixels, ds.catalog.titles if tagger.tokenizer is not None else None, rows)
    model_picks = tagger.choose(outputs.probs)
    predict_s = time.perf_counter() - t0
    print(f"{len(rows):,} {args.side} products; the model's probabilities and features in {predict_s:.1f} s")

    results: dict = {}  # (task, method) -> list over seeds of metrics
    score_s = fit_s = 0.0
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        planted = {}  # task -> (labels known, original labels, planted labels, which were changed)
        for t in TASKS:
            known = ds.targets[t][rows] >= 0
            labels = ds.targets[t][rows][known]
            planted[t] = (known, labels, *plant(labels, args.share, tagger.vocabs[t], rng))
        probs, picks = outputs.probs, model_picks
        if args.side == "train":
            t1 = time.perf_counter()
            catalog = {t: np.where(known, 0, -1) for t, (known, *_) in planted.items()}
            for t, (known, _, noisy, _) in planted.items():
                catalog[t][known] = noisy
            probs = cross_fit(outputs.features, catalog, {t: len(tagger.vocabs[t]) for t in TASKS}, tagger.kinds,
                              rows, ds.cache.hashes[rows], args.folds, l2=args.l2, dims=args.dims).probs
            picks = None
            fit_s += time.perf_counter() - t1
        for t, (known, labels, noisy, flipped) in planted.items():
            n = int(flipped.sum())
            p, pick = probs[t][known], None if picks is None else picks[t][known]
            for method in METHODS:
                t1 = time.perf_counter()
                s = score_labels(noisy, p, pick, tagger.vocabs[t], method=method)
                if method == METHOD:
                    score_s += time.perf_counter() - t1
                top = np.argsort(-s.score, kind="stable")[: 2 * n]
                top_flipped = top[flipped[top]]
                found = int((s.issue & flipped).sum())
                r = results.setdefault((t, method), {"rank": [], "suggest": [], "cleanlab": [], "own": [], "n": n})
                r["rank"].append(ranking_metrics(s.score, flipped))
                r["suggest"].append(float((s.suggested[top_flipped] == labels[top_flipped]).mean()))
                r["cleanlab"].append((found / max(1, int(s.issue.sum())), found / n))
                r["own"].append(float((s.score[~flipped] >= 0.5).mean()))

    fitted = (f"; cross-fitting ({args.folds} folds, {len(TASKS)} tasks, L2 {args.l2:g}, {args.dims} components) "
              f"{fit_s / args.seeds:.0f} s per draw") if args.side == "train" else ""
    print(f"\nscoring ({METHOD} and find_label_issues, {len(TASKS)} tasks) {score_s / args.seeds:.2f} s per draw; "
          f"probabilities {predict_s:.1f} s{fitted}\n")
    print("| task (planted per draw) | method | recall in top 2n (target) | precision / recall at n/2 | at n | at 2n | "
          "at 4n | suggestion = original (top 2n) | cleanlab issues: precision / recall | own labels at score >= 0.5 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (t, method), r in results.items():
        mean = {m: np.mean([x[m] for x in r["rank"]], axis=0) for m in LENGTHS}
        spread = np.std([x[2][1] for x in r["rank"]])
        ok = "met" if mean[2][1] >= TARGETS[t] else "missed"
        cells = " | ".join(f"{mean[m][0]:.0%} / {mean[m][1]:.0%}" for m in LENGTHS)
        suggest = f"{np.mean(r['suggest']):.0%}"
        cl = f"{np.mean([c[0] for c in r['cleanlab']]):.0%} / {np.mean([c[1] for c in r['cleanlab']]):.0%}"
        print(f"| {t} ({r['n']}) | {method} | **{mean[2][1]:.1%}** ± {spread:.1%} ({TARGETS[t]:.0%}: {ok}) | "
              f"{cells} | {suggest} | {cl} | {np.mean(r['own']):.1%} |")


if __name__ == "__main__":
    main()
