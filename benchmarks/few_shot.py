"""A shop's first model from a few hundred labelled products (issue 27): the learning curve of the plain command.

Shops are simulated from the real catalog's products the shipped model never trained on (the validation and test
sides of its split, about 7,900; anything else leaks): each draw takes n of them as the shop's labelled catalog
and 1,000 others as its new arrivals. The shop speaks its own words: gender -> audience, masterCategory ->
department, articleType -> category, baseColour -> colour, values lower-cased, and some merged (its "sneakers"
are two articleTypes, its "kids" two genders). Each shop trains with the README's plain command (`fashiontag train
--data shop.csv --id-column sku --image-column photo [--title-column name]`), from the shipped model (the
default; photo only and photo + title) and `--from scratch` (photo only); scored on the new arrivals with
`fashiontag evaluate`. From a model, the shop's heads also read the shipped model's own frozen heads (known heads,
the default; `--known-heads on off` trains both ways, `known_heads=false` being the other). The mean validation
score of each run is printed beside its test figures: it, not the test side, chooses the default.
A TF-IDF (character 2-5-grams) + linear SVM on the same titles is the baseline. Run by hand (minutes per shop):

    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/few_shot.py --n 900 --draws 1
    ... benchmarks/few_shot.py --n 100 300 1000 3000 --draws 3       # the whole curve (hours on two cores)
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from itertools import product
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from fashiontag.model_folder import DEFAULT_MODEL_DIR, load_meta
from fashiontag.training.config import TrainConfig
from fashiontag.training.evaluate import evaluate
from fashiontag.training.train import train

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data" / "fashion-small").resolve()
COLUMNS = {"gender": "audience", "masterCategory": "department", "articleType": "category", "baseColour": "colour"}
MERGED = {"casual shoes": "sneakers", "sports shoes": "sneakers", "boys": "kids", "girls": "kids"}
NEW_ARRIVALS = 1000


def unseen_products() -> list[dict]:
    """The catalog rows on the shipped model's validation and test sides, with a photo."""
    split = json.loads((DEFAULT_MODEL_DIR / "split.json").read_text())
    unseen = set(split["val"]) | set(split["test"])
    with (DATA / "styles.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["id"] in unseen]
    return [r for r in rows if (DATA / "images" / f"{r['id']}.jpg").is_file()]


def shop_row(row: dict) -> dict:
    out = {"sku": f"SKU-{row['id']}", "photo": str(DATA / "images" / f"{row['id']}.jpg"),
           "name": row["productDisplayName"]}
    for kaggle, own in COLUMNS.items():
        value = row[kaggle].strip().lower()
        out[own] = MERGED.get(value, value)
    return out


def write_shop(rows: list[dict], path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, ["sku", "photo", "name", *COLUMNS.values()])
        w.writeheader()
        w.writerows(shop_row(r) for r in rows)
    return path


def svm_baseline(labelled: list[dict], arrivals: list[dict]) -> dict[str, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    x = vec.fit_transform([r["productDisplayName"] for r in labelled])
    x_new = vec.transform([r["productDisplayName"] for r in arrivals])
    scores = {}
    for own in COLUMNS.values():
        y, y_new = [shop_row(r)[own] for r in labelled], [shop_row(r)[own] for r in arrivals]
        scores[own] = 100 * float(np.mean(LinearSVC().fit(x, y).predict(x_new) == np.array(y_new)))
    return scores


def run(n: int, draw: int, work: Path, starts: list[str], known: list[str]) -> list[dict]:
    products = unseen_products()
    order = np.random.default_rng(draw).permutation(len(products))
    labelled = [products[i] for i in order[:n]]
    arrivals = [products[i] for i in order[n:n + NEW_ARRIVALS]]
    shop, new = write_shop(labelled, work / "shop.csv"), write_shop(arrivals, work / "arrivals.csv")
    results = [{"n": n, "draw": draw, "model": "TF-IDF + SVM, title", "seconds": None,
                **svm_baseline(labelled, arrivals)}]
    for start in starts:
        # From scratch a model has no title branch unless model_args build one: photo only.
        for title, with_known in product(("",) if start == "scratch" else ("", "name"),
                                         ("off",) if start == "scratch" else known):
            out = work / f"{start}-{title or 'photo'}-{with_known}"
            cfg = TrainConfig(data=str(shop), id_column="sku", image_column="photo", title_column=title,
                              tasks=tuple(COLUMNS.values()), out=str(out), start=start, seed=draw, progress=False,
                              known_heads=with_known == "on")
            began = time.time()
            best = train(cfg)
            seconds = time.time() - began
            summary = evaluate(new, model=best, out=work / "report", progress=False, plot=False)
            heads = ", known heads" if with_known == "on" and start != "scratch" else ""
            results.append({"n": n, "draw": draw, "model": f"from {start}{heads}, photo{' + title' if title else ''}",
                            "seconds": round(seconds), "val": 100 * float(np.mean(list(load_meta(best)["val_acc"].values()))),
                            **{t: 100 * m["accuracy"] for t, m in summary["tasks"].items()}})
            print(results[-1], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[900], help="labelled products per shop")
    parser.add_argument("--draws", type=int, default=1)
    parser.add_argument("--from", dest="starts", nargs="+", default=["shipped", "scratch"])
    parser.add_argument("--known-heads", dest="known", nargs="+", choices=["on", "off"], default=["on"],
                        help="from a model: with the start model's heads as inputs (on, the default), without, or both")
    args = parser.parse_args()
    rows = []
    for n in args.n:
        for draw in range(args.draws):
            with TemporaryDirectory() as tmp:
                rows += run(n, draw, Path(tmp), args.starts, args.known)
    tasks = list(COLUMNS.values())
    print(f"\n| n | draw | model | {' | '.join(tasks)} | training | val mean |\n"
          f"|---|---|---|{'---|' * len(tasks)}---|---|")
    for r in rows:
        trained, val = (f"{r['seconds']} s", f"{r['val']:.1f}") if r["seconds"] is not None else ("", "")
        print(f"| {r['n']} | {r['draw']} | {r['model']} | {' | '.join(f'{r[t]:.1f}' for t in tasks)} | {trained} "
              f"| {val} |")


if __name__ == "__main__":
    main()
