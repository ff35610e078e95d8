"""Accuracy: the original notebook's baseline against our default recipe, trained on one split, scored on its test side.

Run by hand (not a test):

    .venv/bin/python benchmarks/accuracy.py                      # the full protocol: hours on a CPU
    .venv/bin/python benchmarks/accuracy.py --quick              # smoke test of this script: 1 epoch each, ~2 minutes
    .venv/bin/python benchmarks/accuracy.py --modes MODEL        # a photo + title model in four modes (~10 minutes)

Seed baseline, as in the notebook ("seed protocol"): masterCategory Accessories/Apparel/Footwear/Personal Care,
subCategories with at least a 1% share, three tasks (gender, masterCategory, subCategory); the `seed-cnn` network,
RMSprop at a constant lr 1e-3, batch 128, 22 epochs, equal loss weights, no label smoothing, augmentation, EMA,
weight decay or warm-up. Ours: the default TrainConfig recipe (rescnn, all seven tasks, all classes).

Ours trains first and makes the split; the baseline reuses its split.json, so both see the same train, validation
and test photos. Each is scored on its test side with fashiontag.training.evaluate (reports in OUT/reports/). Ours is also
scored on the seed protocol: the seed protocol's test photos and classes, each task's prediction being the most
probable of the seed protocol's classes (its vocabularies are subsets of ours). On the seed protocol both models are
scored the same way (argmax over those classes), so their columns compare directly; `fashiontag evaluate` decodes
the category tasks jointly, which can differ slightly. Prints a markdown table and writes it to OUT/accuracy.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fashiontag.data.catalog import KAGGLE_TASKS, NOTEBOOK_TASKS
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import load_meta
from fashiontag.training.config import TrainConfig
from fashiontag.training.dataset import load_dataset
from fashiontag.training.evaluate import evaluate
from fashiontag.training.train import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "fashion-small"
QUICK_MAX_TRAIN = 1000


def seed_config(data: str, out: Path, epochs: int, split: str, max_train: int, progress: bool = True) -> TrainConfig:
    """The notebook's recipe on the seed protocol."""
    return TrainConfig(data=data, out=str(out), model="seed-cnn", protocol="notebook", optimizer="rmsprop",
                       batch_size=128, epochs=epochs, lr=1e-3, weight_decay=0.0, warmup_epochs=0.0,
                       schedule="constant", label_smoothing=0.0, loss_weights={}, class_weighting=False, augment=False,
                       mixup=0.0, ema=0.0, patience=epochs, split=split, max_train=max_train,
                       progress=progress)


def restricted_argmax(scores: np.ndarray, vocab: list[str], classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Per row, the index into `classes` of the highest-scoring of those classes.

    scores: (N, len(vocab)) logits or probabilities of a model over its own vocabulary `vocab`; `classes`: another,
    smaller vocabulary (the seed protocol's), whose names should all be in `vocab`. A class that is not can never be
    predicted; the missing names are returned so the caller can say so."""
    column = {c: i for i, c in enumerate(vocab)}
    missing = [c for c in classes if c not in column]
    picked = np.full((len(scores), len(classes)), -np.inf, dtype=np.float64)
    for j, c in enumerate(classes):
        if c in column:
            picked[:, j] = scores[:, column[c]]
    return picked.argmax(1), missing


def seed_protocol_accuracy(model_dir: Path, data: str, seed_vocabs: dict[str, list[str]], split: Path,
                           notes: list[str]) -> tuple[dict[str, float], int]:
    """A model's accuracy per seed task on the seed protocol's test photos and classes; and how many photos."""
    tagger = Tagger.load(model_dir)
    ds = load_dataset(data, NOTEBOOK_TASKS, "notebook", split_path=split, vocabs=seed_vocabs, progress=False)
    rows = ds.rows["test"]
    logits = tagger.engine.logits(np.asarray(ds.cache.pixels[rows]))
    acc = {}
    for t in NOTEBOOK_TASKS:
        pred, missing = restricted_argmax(logits[t], tagger.vocabs[t], seed_vocabs[t])
        if missing:
            notes.append(f"{model_dir}: {t} classes {missing} are not in its vocabulary; never predicted")
        y = ds.targets[t][rows]
        known = y >= 0
        acc[t] = float((pred[known] == y[known]).mean())
    return acc, len(rows)


def timed_train(cfg: TrainConfig) -> tuple[Path, float]:
    start = time.perf_counter()
    best = train(cfg)
    return best, time.perf_counter() - start


def param_count(model_dir: Path) -> int:
    from fashiontag.models.checkpoint import load_model
    model, _ = load_model(model_dir)
    return sum(p.numel() for p in model.parameters())


def render(r: dict) -> str:
    pct = lambda v: f"{v:.2%}" if v is not None else "—"  # noqa: E731
    epochs = lambda n: f"{n} epoch{'s' * (n != 1)}"  # noqa: E731
    s, o, full = r["seed"]["seed_protocol"], r["ours"]["seed_protocol"], r["ours"]["all"]
    quick = f" **Quick run** (max_train {r['max_train']}, one epoch each): not a result." if r["quick"] else ""
    lines = ["# Accuracy: the notebook's baseline vs ours", "",
             f"Catalog `{r['data']}`; one split for both (`{r['split']}`); test side. "
             f"Seed protocol: {r['n_seed']:,} test photos, three tasks; all: {r['n_all']:,} test photos, "
             f"{len(full)} tasks.{quick}",
             "", "| task | seed-cnn, notebook recipe (seed protocol) | ours (seed protocol) | ours (all classes) |",
             "|---|---|---|---|"]
    for t in full:
        lines.append(f"| {t} | {pct(s.get(t))} | {pct(o.get(t))} | {pct(full[t])} |")
    lines.append(f"| **seed-protocol average** | **{pct(np.mean(list(s.values())))}** | "
                 f"**{pct(np.mean(list(o.values())))}** | — |")
    lines.append(f"| training wall-clock | {r['seed']['train_minutes']:.1f} min ({epochs(r['seed']['epochs'])}) | "
                 f"{r['ours']['train_minutes']:.1f} min ({epochs(r['ours']['epochs'])}) | (the same model) |")
    lines.append(f"| parameters | {r['seed']['params']:,} | {r['ours']['params']:,} | |")
    lines += ["", "Seed-protocol columns: argmax over the seed protocol's classes, the same for both models. "
              "Last column: `fashiontag evaluate` on every test photo and class (category tasks decoded jointly). "
              "`fashiontag evaluate` of the baseline (joint decoding): "
              + ", ".join(f"{t} {pct(v)}" for t, v in r["seed"]["evaluate"].items()) + ".",
              "", f"Reports: `{r['seed']['report']}`, `{r['ours']['report']}`."]
    lines += [f"\nNote: {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


def title_modes(model: str, data: str, svm: bool = True, seed: int = 0) -> str:
    """A photo + title model on its test side in four modes, beside the title-only TF-IDF + linear SVM baseline:
    per task accuracy, macro-F1 and the share of photos whose tag is right with 98% precision (coverage).

    photo only: no titles. title only: a blank white photo with each title. photo + title. photo + a degraded title:
    half the words dropped at random, and the colour and gender words removed (a seller's title is often poorer
    than this catalog's)."""
    from sklearn.metrics import f1_score

    from fashiontag.data.text import drop_words, remove_words, words_of
    from fashiontag.inference.thresholds import coverage_table, decoded_confidence
    from fashiontag.training.evaluate import model_dataset

    tagger = Tagger.load(model)
    ds = model_dataset(tagger, data, progress=False)
    rows = ds.rows["test"]
    pixels = np.asarray(ds.cache.pixels[rows])
    titles = [ds.catalog.titles[i] for i in rows]
    truth = {t: ds.targets[t][rows] for t in tagger.tasks}
    rng = np.random.default_rng(seed)
    unsaid = words_of([c for t in tagger.tasks if "colour" in t.lower() or t == "gender" for c in tagger.vocabs[t]])
    modes = {"photo only": (pixels, None), "title only": (np.full_like(pixels, 255), titles),
             "photo + title": (pixels, titles),
             "photo + half the title's words": (pixels, [drop_words(t, 0.5, rng) for t in titles]),
             "photo + title without colour and gender words": (pixels, [remove_words(t, unsaid) for t in titles])}
    table: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, (photos, text) in modes.items():
        probs = tagger.probabilities(photos, text)
        chosen = tagger.choose(probs)
        confidence, correct = decoded_confidence(probs, chosen, truth)
        table[name] = {}
        for t in tagger.tasks:
            known = truth[t] >= 0
            table[name][t] = (float((chosen[t][known] == truth[t][known]).mean()),
                              f1_score(truth[t][known], chosen[t][known], average="macro"),
                              coverage_table(confidence[t], correct[t], (0.98,))["0.98"]["coverage"])
    if svm:
        table["title only: TF-IDF char 2-5 + linear SVM"] = svm_baseline(ds, tagger.tasks)
    lines = [f"Model `{model}` on its test side ({len(rows):,} products); per task: accuracy / macro-F1 / coverage "
             "at 98% precision (the share of photos whose tag is accepted at a threshold where 98% are right).", "",
             "| mode | " + " | ".join(tagger.tasks) + " |", "|---|" + "---|" * len(tagger.tasks)]
    for name, r in table.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{a:.2%} / {f:.3f} / " + (f"{c:.0%}" if c is not None else "-") for a, f, c in r.values()) + " |")
    return "\n".join(lines) + "\n"


def svm_baseline(ds, tasks: list[str]) -> dict[str, tuple[float, float, None]]:
    """Character 2-5-gram TF-IDF and a linear SVM per task on the titles alone: trained on the train side, scored
    on the test side (accuracy, macro-F1; no probabilities, so no coverage)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import f1_score
    from sklearn.svm import LinearSVC
    train, test = ds.rows["train"], ds.rows["test"]
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
    x_train = vec.fit_transform([ds.catalog.titles[i] for i in train])
    x_test = vec.transform([ds.catalog.titles[i] for i in test])
    out = {}
    for t in tasks:
        y_train, y_test = ds.targets[t][train], ds.targets[t][test]
        pred = LinearSVC(C=0.5).fit(x_train[y_train >= 0], y_train[y_train >= 0]).predict(x_test)
        known = y_test >= 0
        out[t] = (float((pred[known] == y_test[known]).mean()), f1_score(y_test[known], pred[known], average="macro"),
                  None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="catalog folder [../shared/data/fashion-small]")
    ap.add_argument("--epochs-seed", type=int, default=22, help="the notebook's 22")
    ap.add_argument("--epochs-ours", type=int, default=TrainConfig.epochs, help="the default recipe's")
    ap.add_argument("--out", default="runs/accuracy", help="runs, reports and accuracy.md go here")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke test: {QUICK_MAX_TRAIN} training photos, 1 epoch each, no report plots")
    ap.add_argument("--modes", metavar="MODEL", help="instead: score this photo + title model in four modes "
                    "(photo only, title only, both, degraded titles) beside a title-only TF-IDF + SVM baseline")
    ap.add_argument("--no-svm", action="store_true", help="with --modes: leave the SVM baseline out (minutes)")
    args = ap.parse_args()
    out, data = Path(args.out), str(Path(args.data).resolve())
    if args.modes:
        table = title_modes(args.modes, data, svm=not args.no_svm)
        out.mkdir(parents=True, exist_ok=True)
        (out / "title_modes.md").write_text(table)
        print(table)
        return
    max_train = QUICK_MAX_TRAIN if args.quick else 0
    epochs_seed, epochs_ours = (1, 1) if args.quick else (args.epochs_seed, args.epochs_ours)
    notes: list[str] = []

    ours_cfg = TrainConfig(data=data, out=str(out / "ours"), epochs=epochs_ours, max_train=max_train,
                           progress=not args.quick)
    ours_best, ours_seconds = timed_train(ours_cfg)
    split = out / "ours" / "split.json"
    seed_best, seed_seconds = timed_train(seed_config(data, out / "seed", epochs_seed, str(split), max_train,
                                                               progress=not args.quick))
    seed_split = json.loads((seed_best / "split.json").read_text())
    ours_split = json.loads((ours_best / "split.json").read_text())
    assert seed_split["test"] == ours_split["test"], "the two models were not trained on the same split"

    reports = {name: out / "reports" / name for name in ("seed", "ours")}
    evals = {name: evaluate(data, model=best, out=reports[name], progress=False, plot=not args.quick)
             for name, best in (("seed", seed_best), ("ours", ours_best))}
    seed_vocabs = load_meta(seed_best)["vocabs"]
    seed_acc, n_seed = seed_protocol_accuracy(seed_best, data, seed_vocabs, split, notes)
    ours_acc, n_seed_ours = seed_protocol_accuracy(ours_best, data, seed_vocabs, split, notes)
    assert n_seed == n_seed_ours

    def history_len(best: Path) -> int:
        return len(json.loads((best / "model.json").read_text())["history"])

    result = {
        "data": data, "split": str(split), "quick": args.quick, "max_train": max_train,
        "n_seed": n_seed, "n_all": evals["ours"]["n"], "notes": notes,
        "seed": {"seed_protocol": seed_acc, "train_minutes": seed_seconds / 60, "epochs": history_len(seed_best),
                 "params": param_count(seed_best), "report": str(reports["seed"] / "report.md"),
                 "evaluate": {t: m["accuracy"] for t, m in evals["seed"]["tasks"].items()}},
        "ours": {"seed_protocol": ours_acc, "train_minutes": ours_seconds / 60, "epochs": history_len(ours_best),
                 "params": param_count(ours_best), "report": str(reports["ours"] / "report.md"),
                 "all": {t: evals["ours"]["tasks"][t]["accuracy"] for t in KAGGLE_TASKS if t in evals["ours"]["tasks"]}},
    }
    table = render(result)
    (out / "accuracy.md").write_text(table)
    (out / "accuracy.json").write_text(json.dumps(result, indent=1))
    print(table)
    print(f"wrote {out / 'accuracy.md'}")


if __name__ == "__main__":
    main()
