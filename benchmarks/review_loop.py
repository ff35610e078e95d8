"""The review loop, measured: tag new arrivals, auto-accept the sure tags, let a reviewer fix the rest, train on the
reviewed rows, and see what the model gains.

Run by hand (not a test); one command, about 15 minutes on 2 cores:

    .venv/bin/python benchmarks/review_loop.py --data ../shared/data/fashion-small

1. New arrivals: half of the test side of the model's split (products it never trained on), tagged into a review
   queue (SQLite) exactly as `fashiontag review` does; the other half is left untouched for scoring.
2. A simulated reviewer takes every tag that needs review and sets the true label (through the store, as the page
   does); tags at or above the model's thresholds are accepted as they are.
3. `fashiontag review export` writes reviewed.csv; two fine-tunings of the model start from it with the same
   schedule and seed: one on its training side alone (the control), one with `--extra reviewed.csv`.
4. Both are scored on the untouched half. Reports the share of tags auto-accepted, the share that needed review,
   the accuracy of the auto-accepted tags, and the accuracy gain per task.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from fashiontag.data.split import load_split, save_split
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import DEFAULT_MODEL_DIR
from fashiontag.review.csv_export import export_reviewed
from fashiontag.review.queue import fill_queue
from fashiontag.review.store import ReviewStore
from fashiontag.training.config import TrainConfig
from fashiontag.training.evaluate import evaluate, model_dataset
from fashiontag.training.train import train


def arrivals_and_untouched(split: dict, seed: int) -> tuple[list[str], list[str]]:
    test = np.array(sorted(split["test"]))
    np.random.default_rng(seed).shuffle(test)
    half = len(test) // 2
    return sorted(test[:half].tolist()), sorted(test[half:].tolist())


def queue_arrivals(model: Path, data: str, out: Path, seed: int, audit_share: float) -> dict:
    """Half the model's test side (arrivals_and_untouched) queued as `fashiontag review` queues it, in
    out/review.db: {tagger, ds (the catalog as the model reads it), row_of (id -> catalog row), arrivals, untouched,
    url (the queue's), filled (fill_queue's counts), truth (each arrival's labels)}."""
    tagger = Tagger.load(model)
    arrivals, untouched = arrivals_and_untouched(load_split(model / "split.json"), seed)
    ds = model_dataset(tagger, data, progress=False)
    row_of = {pid: i for i, pid in enumerate(ds.catalog.ids)}
    truth = {pid: {t: ds.vocabs[t][ds.targets[t][row_of[pid]]] for t in tagger.tasks
                   if ds.targets[t][row_of[pid]] >= 0} for pid in arrivals}
    db = out / "review.db"
    db.unlink(missing_ok=True)
    url = f"sqlite:///{db.resolve()}"
    store = ReviewStore(url)
    try:
        filled = fill_queue(store, [str(ds.catalog.photos[row_of[p]]) for p in arrivals], model,
                            audit_share=audit_share)
    finally:
        store.close()
    return {"tagger": tagger, "ds": ds, "row_of": row_of, "arrivals": arrivals, "untouched": untouched, "url": url,
            "filled": filled, "truth": truth}


def simulate_reviewer(db: str, truth: dict[str, dict[str, str]]) -> dict:
    """Every needs_review tag set to its true label (kept where the truth is unknown); returns tag counts."""
    store = ReviewStore(db)
    counts = {"tags": 0, "auto": 0, "auto_right": 0, "reviewed": 0, "corrected": 0}
    try:
        for photo in store.photos():
            if photo["error"]:
                continue
            decisions = {}
            for task, tag in photo["tags"].items():
                true = truth[photo["item_id"]].get(task)
                counts["tags"] += 1
                if tag["status"] == "needs_review":
                    counts["reviewed"] += 1
                    label = true or tag["label"]
                    counts["corrected"] += label != tag["label"]
                    decisions[task] = {"label": label, "version": tag["version"]}
                else:
                    counts["auto"] += 1
                    counts["auto_right"] += true == tag["label"] if true else 1
            if decisions:
                store.review(photo["id"], decisions, reviewer="simulated", confirm=True)
    finally:
        store.close()
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/fashion-small")
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--out", default="runs/review-loop")
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of each of the two runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    split = load_split(Path(args.model) / "split.json")
    # No audits: the loop measures the thresholds' own split between auto-accepted and reviewed tags.
    q = queue_arrivals(Path(args.model), args.data, out, args.seed, audit_share=0.0)
    arrivals, untouched, url = q["arrivals"], q["untouched"], q["url"]
    counts = simulate_reviewer(url, q["truth"])
    exported = export_reviewed(url, out / "reviewed.csv", force=True)  # a rerun replaces its own

    # The arrivals leave the split: they come back only as reviewed rows, on the training side.
    loop_split = {**split, "test": untouched, "meta": {**split.get("meta", {}), "review_loop": "test = untouched"}}
    save_split(loop_split, out / "split.json")
    base = TrainConfig(data=args.data, init=args.model, split=str(out / "split.json"), epochs=args.epochs,
                       lr=1e-3, warmup_epochs=0.2, seed=args.seed, compile=False, progress=False)
    scores = {}
    for name, extra in (("control", ()), ("with_reviewed", (str(out / "reviewed.csv"),))):
        best = train(base.override(out=str(out / name), extra=extra))
        scores[name] = {t: m["accuracy"] for t, m in
                        evaluate(args.data, model=best, out=out / f"report-{name}", side="test", progress=False,
                                 plot=False)["tasks"].items()}

    summary = {"arrivals": len(arrivals), "untouched": len(untouched), "queued": q["filled"]["queued"],
               "exported": exported, "tags": counts["tags"],
               "auto_accepted_share": counts["auto"] / counts["tags"],
               "needed_review_share": counts["reviewed"] / counts["tags"],
               "auto_accepted_accuracy": counts["auto_right"] / max(counts["auto"], 1),
               "corrected_share_of_reviewed": counts["corrected"] / max(counts["reviewed"], 1),
               "accuracy_untouched": scores, "minutes": round((time.time() - started) / 60, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{len(arrivals):,} new arrivals, {counts['tags']:,} tags: {summary['auto_accepted_share']:.1%} "
          f"auto-accepted ({summary['auto_accepted_accuracy']:.2%} of them right), "
          f"{summary['needed_review_share']:.1%} needed review ({summary['corrected_share_of_reviewed']:.1%} of "
          f"those corrected)")
    print(f"\naccuracy on the {len(untouched):,} untouched products after {args.epochs} fine-tuning epochs:")
    print(f"{'task':16s} {'control':>8s} {'+reviewed':>10s} {'gain':>7s}")
    for t in scores["control"]:
        a, b = scores["control"][t], scores["with_reviewed"][t]
        print(f"{t:16s} {a:8.2%} {b:10.2%} {(b - a) * 100:+7.2f}")
    print(f"\n{summary['minutes']} min; {out / 'summary.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
