"""Issue 25: on gender, masterCategory, subCategory and articleType the shipped model with titles and the title
baseline are level (benchmarks/title.py paired). Is there more to win there, or are both at the ceiling the
catalog's labels set? Two parts, each printing markdown tables, run by hand:

    PYTHONPATH=src .venv/bin/python benchmarks/title_ceiling.py labels   # gender labels their title contradicts
    PYTHONPATH=src .venv/bin/python benchmarks/title_ceiling.py fusion   # other ways to weigh the parts, on val

labels: a title that names one gender ("Men", "Women's", "Boys", "Girl's", "Unisex"...; data.text.ClassNames, the
rule by which `fashiontag audit` lists the labels their own title contradicts) against the product's own gender
label, per side; then every gender error of the shipped model (with titles, decoded as `fashiontag evaluate`
decodes) and of the baseline on the validation and test sides, split by whether the label contradicts the gender
the title names: such an error is the model reading the title and the label disagreeing with it.

fusion: the shipped rule (a factor per part and task, each by the title's length, models.title.LengthSlopes)
against richer ones, each fitted on a random half of the validation side and scored on the other half, both
ways, over ten halvings (so every figure counts each product ten times): the baseline's own decision values added
as a fourth part; each part's factor by the title parts' top-2 margin instead of the title's length; a full
multinomial logistic regression per task on the parts' logits (stacking). If none beats the shipped rule, what
the parts know is used; the rest is in the labels.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from title import (
    DATA,
    SHIPPED,
    baseline,
    baseline_scores,
    dataset,
    model_tokenizer,
    print_table,
    shipped_parts,
    side_targets,
    titles,
)

from fashiontag.data.text import ClassNames, Tokenizer
from fashiontag.training.temperatures import fit_fusion_weights

HALVINGS = 10


def labels(args):
    from fashiontag.inference.tagger import Tagger
    from fashiontag.training.evaluate import model_dataset
    tagger = Tagger.load(SHIPPED)
    ds = model_dataset(tagger, args.data, progress=False)
    vocab = ds.vocabs["gender"]
    genders = ClassNames(vocab)  # the audit's rule (fashiontag audit, "labels their own title contradicts")
    named = {side: [next(iter(n)) if len(n := genders.named_in(t)) == 1 else None for t in titles(ds, side)]
             for side in ("train", "val", "test")}
    print("\nGender labels against the gender the product's own title names\n\n"
          "| side | products | titles naming one gender | of them, the label is another |\n|---|---|---|---|")
    for side, names in named.items():
        y = side_targets(ds, side)["gender"]
        naming = [(n, vocab[g]) for n, g in zip(names, y) if n is not None and g >= 0]
        other = sum(n != g for n, g in naming)
        print(f"| {side} | {len(names):,} | {len(naming):,} | {other} ({100 * other / len(naming):.2f}%) |")

    both = baseline(titles(ds, "train"), {"gender": side_targets(ds, "train")["gender"]},
                    titles(ds, "val") + titles(ds, "test"))["gender"]  # one fit for both sides
    base = {"val": both[:len(ds.rows["val"])], "test": both[len(ds.rows["val"]):]}
    print("\nGender errors on products the model never saw, by whether the label contradicts the title\n\n"
          "| side | model | right | wrong | wrong, the label contradicting the title | wrong otherwise |\n"
          "|---|---|---|---|---|---|")
    for side in ("val", "test"):
        rows, side_titles = ds.rows[side], titles(ds, side)
        fused = tagger.choose(tagger.probabilities(np.asarray(ds.cache.pixels[rows]), side_titles))["gender"]
        y = side_targets(ds, side)["gender"]
        contradicts = np.array([n is not None and g >= 0 and n != vocab[g] for n, g in zip(named[side], y)])
        for name, pred in (("photo + title", fused), ("baseline", base[side])):
            wrong = (pred != y) & (y >= 0)
            print(f"| {side} | {name} | {100 * (1 - wrong.sum() / (y >= 0).sum()):.2f}% | {wrong.sum()} | "
                  f"{(wrong & contradicts).sum()} | {(wrong & ~contradicts).sum()} |")
    if args.list:
        print("\nTest products whose gender label contradicts their title\n")
        y = side_targets(ds, "test")["gender"]
        for r, n, g in zip(ds.rows["test"], named["test"], y):
            if n is not None and g >= 0 and n != vocab[g]:
                print(f"- {ds.catalog.ids[r]}: {ds.catalog.titles[r]!r}, labelled {vocab[g]}")


def fusion(args):
    ds = dataset()
    y, val_titles = side_targets(ds, "val"), titles(ds, "val")
    parts = shipped_parts(ds, "val", val_titles)
    svm = baseline_scores(titles(ds, "train"), side_targets(ds, "train"), val_titles)
    parts["baseline"] = {t: torch.from_numpy(_padded(svm[t], parts["photo"][t].shape[1])) for t in y}
    count = (Tokenizer(**model_tokenizer())(val_titles) > 0).sum(1)
    centre = np.log(count[count > 0]).mean()
    length = torch.from_numpy((np.log(np.maximum(count, 1)) - centre) * (count > 0)).float()
    shipped = ["photo", "title", "linear"]
    rules = {"shipped: a factor per part, by the title's length": (shipped, "length"),
             "+ the baseline as a fourth part": (shipped + ["baseline"], "length"),
             "factors by the title parts' margin": (shipped, "margin"),
             "stacking: logistic regression on the parts' logits": (shipped, "stack")}
    n = len(val_titles)
    right = {rule: {t: 0 for t in y} for rule in rules}
    for seed in range(HALVINGS):
        half = np.random.default_rng(seed).permutation(n) < n // 2
        for fit_on in (half, ~half):
            for rule, (names, how) in rules.items():
                for t in y:
                    pred = _weighed(parts, names, how, t, y[t], length, fit_on)
                    known = y[t][~fit_on] >= 0
                    right[rule][t] += int((pred[known] == y[t][~fit_on][known]).sum())
    print_table({rule: {t: 100 * r[t] / (HALVINGS * (y[t] >= 0).sum()) for t in y} for rule, r in right.items()},
                f"Validation side ({n:,} products), weighed on one half and scored on the other, "
                f"{HALVINGS} halvings both ways", digits=2)


def _padded(scores: np.ndarray, classes: int) -> np.ndarray:
    """The baseline's scores with a column for every class of the model's vocabulary."""
    full = np.full((len(scores), classes), scores.min(), dtype=np.float32)
    full[:, :scores.shape[1]] = scores
    return full


def _weighed(parts, names: list[str], how: str, task: str, y: np.ndarray, length: torch.Tensor,
             fit_on: np.ndarray) -> np.ndarray:
    """One rule's predictions for `task` on the rows outside fit_on, fitted on the rows in it."""
    logits = {p: parts[p][task] for p in names}
    if how == "stack":
        from sklearn.linear_model import LogisticRegression
        x = torch.cat(list(logits.values()), 1).numpy()
        known = fit_on & (y >= 0)
        return LogisticRegression(C=1.0, max_iter=2000).fit(x[known], y[known]).predict(x[~fit_on])
    if how == "margin":
        top = (logits["title"] + logits["linear"]).topk(2, 1).values
        margin = top[:, 0] - top[:, 1]
        z = (margin - margin[fit_on].mean()) / margin[fit_on].std()
    else:
        z = length
    w = fit_fusion_weights({p: {task: lg[fit_on]} for p, lg in logits.items()}, {task: y[fit_on]}, z[fit_on])
    scored = ~fit_on
    return sum(w[p][task] * (w[f"{p} slope"][task] * z[scored]).exp()[:, None] * lg[scored]
               for p, lg in logits.items()).argmax(1).numpy()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["labels", "fusion"])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--list", action="store_true", help="labels: list the test products whose label contradicts")
    args = p.parse_args()
    {"labels": labels, "fusion": fusion}[args.part](args)


if __name__ == "__main__":
    main()
